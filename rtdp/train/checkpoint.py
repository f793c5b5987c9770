"""Checkpoints: a directory of safetensors + YAML/JSON, written atomically, never a pickle.

    <run>/checkpoints/step_0001000/
        model.safetensors        raw weights ("model.*") and EMA weights ("ema.*")
        normalizer.safetensors   the data normaliser's stats
        config.yaml              the resolved training config + what the data looked like (obs shapes, Da)
        optimizer.safetensors    AdamW moments, LR-schedule and RNG states (for resume=true)
        train_state.json         step, EMA step, optimiser hyper-parameters, elapsed time
    <run>/checkpoints/last -> step_0001000   (symlink, replaced atomically)

A checkpoint is written into a hidden temporary directory, every file fsynced and listed with its SHA-256 in
`manifest.json`, then renamed into place; re-saving a step renames the old copy aside before the new one
moves in, so a crash leaves either the previous checkpoint or the new one, never half of one, and `last`
resolves to a complete one. `clean_stale` removes what a killed writer left behind.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from rtdp.normalizer import Normalizer
from rtdp.policy.loading import LAST, MANIFEST, file_digest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------------ optimizer
def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """AdamW state as flat tensors `state.<param index>.<name>` plus JSON-able param groups."""
    sd = optimizer.state_dict()
    tensors = {f"state.{idx}.{name}": torch.as_tensor(value) for idx, st in sd["state"].items()
               for name, value in st.items()}
    return tensors, sd["param_groups"]


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                           param_groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in param_groups]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ------------------------------------------------------------------------------------------------ save
def save_checkpoint(run_dir: str | Path, step: int, *, model: torch.nn.Module, ema_model: torch.nn.Module | None,
                    normalizer: Normalizer, config: DictConfig | Mapping[str, Any], data_meta: Mapping[str, Any],
                    optimizer: torch.optim.Optimizer | None = None, lr_scheduler: Any = None,
                    rng: Mapping[str, torch.Tensor] | None = None, train_state: Mapping[str, Any] | None = None,
                    keep: int = 3) -> Path:
    """Write `<run_dir>/checkpoints/step_<step>` atomically and point `last` at it; keep the newest `keep`."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema_model is not None:
        weights.update({f"ema.{k}": v for k, v in ema_model.state_dict().items()})
    _save_tensors(tmp / "model.safetensors", weights, {"step": str(step)})
    _save_tensors(tmp / "normalizer.safetensors", normalizer.state_dict())
    cfg = OmegaConf.create(OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig)
                           else dict(config))
    cfg["checkpoint"] = {"step": step, **{k: v for k, v in data_meta.items()}}
    _write_bytes(tmp / "config.yaml", OmegaConf.to_yaml(cfg).encode())
    if optimizer is not None:
        tensors, groups = optimizer_to_tensors(optimizer)
        tensors.update({f"rng.{k}": v for k, v in (rng or {}).items()})
        _save_tensors(tmp / "optimizer.safetensors", tensors)
        state = {"step": step, "param_groups": groups,
                 "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
                 **dict(train_state or {})}
        _write_bytes(tmp / "train_state.json", json.dumps(state, indent=2).encode())
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in sorted(tmp.iterdir())}
    _write_bytes(tmp / MANIFEST, json.dumps({"version": 1, "files": files}, indent=2).encode())
    _fsync_dir(tmp)
    aside = root / f".old_step_{step:07d}_{os.getpid()}"
    if final.exists():  # re-saving a step (e.g. the final save right after a periodic one): swap, then delete
        os.replace(final, aside)
    os.replace(tmp, final)
    link_tmp = root / f".{LAST}.{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(final.name, link_tmp)
    os.replace(link_tmp, root / LAST)
    _fsync_dir(root)
    shutil.rmtree(aside, ignore_errors=True)
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def clean_stale(run_dir: str | Path) -> list[Path]:
    """Tidy what a killed `save_checkpoint` left in `<run_dir>/checkpoints`: a set-aside copy whose replacement
    never moved in is moved back (it is complete); temporary copies and half-made `last` links are removed. Call
    it only where no other writer runs. Returns what was removed."""
    root = Path(run_dir) / "checkpoints"
    for aside in sorted(root.glob(".old_step_*")):
        final = root / "_".join(aside.name[len(".old_"):].split("_")[:2])  # .old_step_0000006_<pid> -> step_0000006
        if not final.exists():
            os.replace(aside, final)
    removed = []
    for p in sorted(root.glob(".tmp_step_*")) + sorted(root.glob(".old_step_*")) + sorted(root.glob(f".{LAST}.*")):
        if p.is_symlink() or p.is_file():
            p.unlink()
        else:
            shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed
