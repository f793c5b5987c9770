"""`rtdp data info|stats|convert|import-lerobot|export-lerobot`: inspect, convert and move replay buffers.

Every bad input (missing path, not a replay buffer, missing key, corrupt chunk, inconsistent store, an
unwritable output) is a one-line `CLIError` (exit 2), and commands that write do so into a temporary sibling
that is renamed into place only on success, so a failure writes nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rtdp.cli.main import CLIError
from rtdp.datasets.replay_buffer import ReplayBuffer, ReplayBufferError, _progress, _slabs, is_image_shape


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rtdp data", description="Inspect, convert and import/export replay buffers.")
    sub = p.add_subparsers(dest="cmd", required=True)

    info = sub.add_parser("info", help="episodes, steps, keys, shapes, dtypes, chunks, length histogram; checks "
                                       "episode and low-dim checksums")
    info.add_argument("path")
    info.add_argument("--verify", action="store_true",
                      help="also check every image chunk (decode + checksum): finds every corrupt chunk")
    info.add_argument("--json", metavar="OUT", help="also write the summary as JSON (rtdp.metrics schema)")

    stats = sub.add_parser("stats", help="per-key min/max/mean/std over all steps (reads every chunk)")
    stats.add_argument("path")
    stats.add_argument("--keys", help="comma-separated keys (default: all)")
    stats.add_argument("--json", metavar="OUT", help="also write the stats as JSON (rtdp.metrics schema)")

    conv = sub.add_parser("convert", help="copy a store (e.g. zarr v2) to a new zarr v3 store, per-frame images")
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--keys", help="comma-separated keys to keep (default: all)")
    conv.add_argument("--image-dtype", choices=["keep", "uint8"], default="uint8",
                      help="uint8: store float images holding exact 0..255 integers as uint8 (default)")
    conv.add_argument("--overwrite", action="store_true")

    imp = sub.add_parser("import-lerobot", help="LeRobot v3.0 dataset directory → zarr replay buffer")
    imp.add_argument("path")
    imp.add_argument("out")
    imp.add_argument("--repo-id", help="repo id recorded in the dataset (default: local/<dir name>)")
    imp.add_argument("--rename", action="append", default=[], metavar="FEATURE=KEY",
                     help="override the key for one LeRobot feature (repeatable)")
    imp.add_argument("--overwrite", action="store_true")

    exp = sub.add_parser("export-lerobot", help="zarr replay buffer → LeRobot v3.0 dataset directory")
    exp.add_argument("path")
    exp.add_argument("out_dir")
    exp.add_argument("--fps", type=int, required=True)
    exp.add_argument("--images", choices=["video", "image"], default="video",
                     help="store cameras as video (lossy, small) or PNG images (lossless)")
    exp.add_argument("--task", help="task string of every frame (default: the store's name)")
    exp.add_argument("--keys", help="comma-separated keys to export (default: all)")
    exp.add_argument("--rename", action="append", default=[], metavar="KEY=FEATURE",
                     help="override the LeRobot feature name of one key (repeatable)")
    exp.add_argument("--episodes", help="episode range START:STOP to export (default: all)")
    return p


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one `CLIError` line (exit 2)."""

    def error(self, message: str):  # type: ignore[override]
        raise CLIError(f"{message} (see rtdp data --help)")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"info": _info, "stats": _stats, "convert": _convert, "import-lerobot": _import,
                "export-lerobot": _export}[args.cmd](args)
    except ReplayBufferError as err:
        raise CLIError(str(err)) from None


# ---------------------------------------------------------------------- info
def summarize(buf: ReplayBuffer) -> dict[str, Any]:
    """Episodes, steps, per-key shape/dtype/chunks and a length histogram, as a JSON-ready dict."""
    lengths = buf.episode_lengths
    keys = {}
    for key in buf.keys():  # noqa: SIM118 (ReplayBuffer is not a dict)
        arr = buf[key]
        keys[key] = {"shape": list(buf.shape(key)), "dtype": str(np.dtype(arr.dtype)),
                     "chunks": list(arr.chunks) if hasattr(arr, "chunks") else None,
                     "image": is_image_shape(tuple(arr.shape))}
    hist_counts, hist_edges = (np.histogram(lengths, bins=min(10, max(1, len(np.unique(lengths)))))
                               if len(lengths) else (np.zeros(0), np.zeros(0)))
    fmt = None
    if buf._root is not None:
        fmt = buf._root.metadata.zarr_format
    return {"path": str(buf.path), "zarr_format": fmt, "episodes": buf.n_episodes, "steps": buf.n_steps,
            "uncommitted_steps": buf.uncommitted_steps, "checksums": buf.checksums, "keys": keys,
            "episode_length": {"min": int(lengths.min()) if len(lengths) else 0,
                               "max": int(lengths.max()) if len(lengths) else 0,
                               "mean": float(lengths.mean()) if len(lengths) else 0.0,
                               "histogram": {"counts": hist_counts.astype(int).tolist(),
                                             "edges": hist_edges.tolist()}}}


def _info(args: argparse.Namespace) -> int:
    buf = ReplayBuffer.open(args.path, "r")  # checks every episode's checksum
    lowdim = [k for k in buf.keys() if not is_image_shape(tuple(buf[k].shape))]  # noqa: SIM118
    buf.verify(keys=None if args.verify else lowdim, progress=True)  # low-dim data is small: always
    s = summarize(buf)
    from rich.console import Console
    from rich.table import Table
    console = Console(soft_wrap=True)  # lines carry paths: never break them at the terminal width
    console.print(f"[bold]{s['path']}[/] (zarr v{s['zarr_format']}): {s['episodes']} episodes, {s['steps']} steps"
                  + (" — every chunk decodes" if args.verify else ""))
    if buf.checksums:
        console.print(f"checksums: {buf.checksums} per chunk and per episode; episodes and low-dim chunks match"
                      + (", and every image chunk" if args.verify else " (--verify checks image chunks too)"))
    else:
        console.print("[yellow]no checksums: written before rtdp stored them; chunks are checked for presence "
                      "and decoding only (`rtdp data convert` writes a copy with checksums)[/]")
    if s["uncommitted_steps"]:
        console.print(f"[yellow]{s['uncommitted_steps']} uncommitted steps after the last episode "
                      "(an interrupted append; the next append discards them)[/]")
    table = Table("key", "shape", "dtype", "chunks")
    for key, k in s["keys"].items():
        table.add_row(key, str(tuple(k["shape"])), k["dtype"], str(tuple(k["chunks"] or ())))
    console.print(table)
    el = s["episode_length"]
    console.print(f"episode length: min {el['min']}, mean {el['mean']:.1f}, max {el['max']}")
    counts, edges = el["histogram"]["counts"], el["histogram"]["edges"]
    width = max(counts, default=1) or 1
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        console.print(f"  {lo:7.1f}–{hi:7.1f} | {'█' * round(40 * c / width):<40} {c}")
    if args.json:
        _write_json(args.json, "data.info", s)
    return 0


# ---------------------------------------------------------------------- stats
def key_stats(buf: ReplayBuffer, key: str) -> dict[str, Any]:
    """min/max/mean/std per trailing dimension (per channel for images), streamed over ~64 MB slabs."""
    arr = buf[key]
    image = is_image_shape(tuple(arr.shape))
    lo = hi = None
    total = total_sq = None
    count = 0
    for start, stop in _slabs(arr, buf.n_steps):
        x = buf._read(key, slice(start, stop))
        x = x.reshape(-1, x.shape[-1]) if image else x.reshape(len(x), -1)
        x64 = x.astype(np.float64)
        bmin, bmax = x64.min(axis=0), x64.max(axis=0)
        lo = bmin if lo is None else np.minimum(lo, bmin)
        hi = bmax if hi is None else np.maximum(hi, bmax)
        total = x64.sum(axis=0) if total is None else total + x64.sum(axis=0)
        total_sq = (x64 ** 2).sum(axis=0) if total_sq is None else total_sq + (x64 ** 2).sum(axis=0)
        count += len(x64)
    if count == 0:
        return {"per": "channel" if image else "dimension", "min": [], "max": [], "mean": [], "std": []}
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return {"per": "channel" if image else "dimension", "min": lo.tolist(), "max": hi.tolist(),
            "mean": mean.tolist(), "std": std.tolist()}


def _stats(args: argparse.Namespace) -> int:
    buf = ReplayBuffer.open(args.path, "r")
    keys = buf._select_keys(_split(args.keys))
    out: dict[str, Any] = {}
    with _progress(True) as bar:
        job = bar.add_task("stats", total=len(keys))
        for i, key in enumerate(keys):
            out[key] = key_stats(buf, key)
            bar.update(job, completed=i + 1)
    from rich.console import Console
    console = Console(soft_wrap=True)  # lines carry paths: never break them at the terminal width
    console.print(f"[bold]{buf.path}[/]: {buf.n_episodes} episodes, {buf.n_steps} steps")
    for key, s in out.items():
        console.print(f"[bold]{key}[/] (per {s['per']})")
        for field in ("min", "max", "mean", "std"):
            console.print(f"  {field:>4}: " + " ".join(f"{v:9.3f}" for v in s[field][:12])
                          + (" …" if len(s[field]) > 12 else ""))
    if args.json:
        _write_json(args.json, "data.stats", {"path": str(buf.path), "episodes": buf.n_episodes,
                                              "steps": buf.n_steps, "keys": out})
    return 0


# ---------------------------------------------------------------------- convert
def _convert(args: argparse.Namespace) -> int:
    src = ReplayBuffer.open(args.src, "r")
    keys = src._select_keys(_split(args.keys))
    dst = Path(args.dst)
    if dst.exists() and not args.overwrite:
        raise CLIError(f"{dst}: already exists (pass --overwrite to replace it)")
    if dst.resolve() == Path(args.src).resolve():
        raise CLIError(f"{dst}: destination is the source")
    _check_writable(dst)
    tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    try:
        out = src.save_to(tmp, keys=keys, overwrite=True, image_uint8=args.image_dtype == "uint8", progress=True)
        out.verify()
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    done = ReplayBuffer.open(dst, "r")
    print(f"wrote {dst}: {done.n_episodes} episodes, {done.n_steps} steps, "
          + ", ".join(f"{k} {done.dtype(k)}" for k in done.keys()))  # noqa: SIM118
    return 0


# ---------------------------------------------------------------------- LeRobot
def _quiet_lerobot() -> None:
    """LeRobot is an optional extra; keep its encoder logs and per-episode progress bars off our output."""
    try:
        import datasets
        import lerobot  # noqa: F401
    except ImportError:
        raise CLIError("LeRobot is not installed: pip install 'rtdp[lerobot]'") from None
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only
    datasets.disable_progress_bars()


def _import(args: argparse.Namespace) -> int:
    from rtdp.datasets.lerobot_io import import_lerobot
    _quiet_lerobot()
    path = Path(args.path)
    if not path.exists():
        raise CLIError(f"{path}: no such file or directory")
    _check_writable(Path(args.out))
    buf = import_lerobot(path, args.out, repo_id=args.repo_id, rename=_pairs(args.rename, "--rename"),
                         overwrite=args.overwrite, progress=True)
    print(f"wrote {args.out}: {buf.n_episodes} episodes, {buf.n_steps} steps, keys {', '.join(buf.keys())}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from rtdp.datasets.lerobot_io import export_lerobot
    _quiet_lerobot()
    buf = ReplayBuffer.open(args.path, "r")
    if args.fps <= 0:
        raise CLIError(f"--fps must be positive, got {args.fps}")
    episodes = None
    if args.episodes:
        try:
            start, stop = (int(x) if x else None for x in args.episodes.split(":"))
        except ValueError:
            raise CLIError(f"--episodes must be START:STOP, got {args.episodes!r}") from None
        episodes = range(buf.n_episodes)[slice(start, stop)]
        if len(episodes) == 0:
            raise CLIError(f"--episodes {args.episodes} selects no episodes ({buf.path} has {buf.n_episodes}: "
                           f"give START < STOP within 0:{buf.n_episodes})")
    _check_writable(Path(args.out_dir))
    out = export_lerobot(buf, args.out_dir, fps=args.fps, use_videos=args.images == "video", task=args.task,
                         keys=_split(args.keys), rename=_pairs(args.rename, "--rename"), episodes=episodes,
                         progress=True)
    n = len(episodes) if episodes is not None else buf.n_episodes
    print(f"wrote {out}: {n} episodes as a LeRobot v3.0 dataset ({args.images}s for cameras)")
    return 0


# ---------------------------------------------------------------------- helpers
def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise CLIError(f"{flag} wants OLD=NEW, got {item!r}")
        old, new = item.split("=", 1)
        out[old] = new
    return out


def _check_writable(path: Path) -> None:
    """Refuse before any work when nothing can be created beside `path` (probes with a temporary directory)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{path.name}.probe-", dir=parent))
    except OSError as err:
        raise CLIError(f"{path}: cannot write in {parent} ({err.strerror or err}): pick a writable directory") from None


def _write_json(path: str, kind: str, fields: dict[str, Any]) -> None:
    from rtdp.metrics import record, write_json
    write_json(path, record(kind, **fields))
