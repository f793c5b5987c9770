"""Exported graphs kept on disk beside the checkpoint they were built from, keyed by everything that
determines them.

    <checkpoint>/backends/
        onnx-unet1d-3f9c2a1b7d4e5f60.onnx    the graph (weights inside)
        onnx-unet1d-3f9c2a1b7d4e5f60.json    its key, the sha256 of the .onnx, versions, shapes, the eager check

The key hashes the weights (every parameter and buffer, bytes and shapes), the denoiser's class and module
tree, the fixed shapes, the exporter and runtime versions and the cache format; a graph whose key differs is
stale and never read (a new one is built under its own name). Files are written atomically (temp file, fsync,
rename), the .onnx first, so a crash leaves no sidecar pointing at half a graph. A checkpoint directory that
cannot be written falls back to the user cache (`$XDG_CACHE_HOME/rtdp/backends`, else `~/.cache/...`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = 1  # bump when what a cached graph holds or how it is checked changes


class CorruptGraph(Exception):
    """A cached graph that cannot be trusted (unreadable, changed since written, another key)."""


def weights_digest(module: nn.Module) -> str:
    """sha256 of every parameter and buffer of `module` (names, dtypes, shapes, bytes), in a fixed order."""
    h = hashlib.sha256()
    tensors = dict(module.named_parameters())
    tensors.update({f"buffer:{k}": v for k, v in module.named_buffers()})
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def graph_key(parts: Mapping[str, Any]) -> str:
    """sha256 of the JSON of `parts` (the cache format is always part of it)."""
    return hashlib.sha256(json.dumps({"format": FORMAT, **parts}, sort_keys=True, default=str).encode()).hexdigest()


def default_cache_dir() -> Path:
    """The user cache for graphs of policies without a (writable) checkpoint directory."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rtdp" / "backends"


def writable(directory: Path) -> bool:
    """Whether graphs can be written into `directory` (created if missing)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK)


def paths(directory: Path, stem: str) -> tuple[Path, Path]:
    """The graph file and its sidecar for `stem` (e.g. `onnx-unet1d-<key prefix>`)."""
    return directory / f"{stem}.onnx", directory / f"{stem}.json"


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the cache from other users of the checkpoint
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def store(directory: Path, stem: str, graph: bytes, meta: Mapping[str, Any]) -> Path:
    """Write a graph and its sidecar (with the graph's sha256) atomically; returns the graph's path."""
    graph_path, meta_path = paths(directory, stem)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(graph_path, graph)
    record = {**meta, "sha256": hashlib.sha256(graph).hexdigest(), "bytes": len(graph)}
    _write_atomic(meta_path, json.dumps(record, indent=2, default=str).encode())
    return graph_path


def load(directory: Path, stem: str, key: str) -> tuple[bytes, dict[str, Any]] | None:
    """The cached graph for `key` and its sidecar; None when there is none; `CorruptGraph` (with the reason)
    when what is there cannot be trusted."""
    graph_path, meta_path = paths(directory, stem)
    if not graph_path.exists() and not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        graph = graph_path.read_bytes()
    except (OSError, ValueError) as err:
        raise CorruptGraph(f"unreadable: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    if not isinstance(meta, dict) or meta.get("key") != key:
        raise CorruptGraph("its sidecar names another key")
    if meta.get("sha256") != hashlib.sha256(graph).hexdigest():
        raise CorruptGraph(f"its bytes changed since it was written ({len(graph)} bytes, "
                           f"{meta.get('bytes')} recorded)")
    return graph, meta


def remove(directory: Path, stem: str) -> None:
    """Delete a graph and its sidecar (a corrupt one, before it is rebuilt)."""
    for path in paths(directory, stem):
        path.unlink(missing_ok=True)
