"""Checkpoints: a directory of safetensors + YAML/JSON, written atomically, never a pickle.

    <run>/checkpoints/step_0001000/
        model.safetensors        raw weights ("model.*") and EMA weights ("ema.*")
        normalizer.safetensors   the data normaliser's stats
        config.yaml              the resolved training config + what the data looked like (obs shapes, Da)
        optimizer.safetensors    AdamW moments, LR-schedule and RNG states (for resume=true)
        train_state.json         step, EMA step, optimiser hyper-parameters, elapsed time
    <run>/checkpoints/last -> step_0001000   (symlink, replaced atomically)

A checkpoint is written into a hidden temporary directory, every file fsynced, then renamed into place,
so a crash leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from rtdp.policy.normalizer import Normalizer

LAST = "last"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked (missing, from another policy type, bad override)."""


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
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. final save right after a periodic one)
        shutil.rmtree(final)
    os.replace(tmp, final)
    link_tmp = root / f".{LAST}.{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(final.name, link_tmp)
    os.replace(link_tmp, root / LAST)
    _fsync_dir(root)
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------------ load
def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself, a run directory (its `checkpoints/last`) or `checkpoints/`."""
    path = Path(path)
    for candidate in (path, path / LAST, path / "checkpoints" / LAST):
        if (candidate / "model.safetensors").is_file() and (candidate / "config.yaml").is_file():
            return candidate.resolve()
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; pass a run directory or a "
                              "checkpoints/step_* directory written by `rtdp train`")
    raise CheckpointError(f"{str(path)!r} holds no checkpoint (no model.safetensors + config.yaml in it, its "
                          "'last' or 'checkpoints/last'); pass a directory written by `rtdp train`")


def load_config(ckpt: str | Path) -> DictConfig:
    return OmegaConf.load(Path(ckpt) / "config.yaml")


def _split_weights(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_weights(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], what: str, policy_name: str) -> None:
    """Load a state dict, turning a shape or key mismatch into one clear message."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another shape"
                  f" (e.g. {(missing or unexpected or wrong)[0]!r})")
        raise CheckpointError(f"the checkpoint's {what} weights do not fit a {policy_name!r} policy ({detail}): "
                              "it was trained with another policy type or size; use the policy it was trained with")
    module.load_state_dict(weights)


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Hydra-style overrides on a saved config: `sampler=ddim` loads a config group, `a.b=v` sets a value.

    The policy group cannot change (the weights belong to one architecture); `task=` may, to evaluate on
    another task with the same observations.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as err:  # hydra's parser error names the bad token
        raise CheckpointError(f"bad override: {err}") from err
    group_dir = Path(__file__).resolve().parents[1] / "configs"
    for ov in parsed:
        key, value = ov.key_or_group, ov.value()
        if (group_dir / key).is_dir():
            if key == "policy" and value != cfg.policy.get("name"):
                raise CheckpointError(f"this checkpoint holds a {cfg.policy.get('name')!r} policy; it cannot be "
                                      f"loaded as policy={value}")
            src = group_dir / key / f"{value}.yaml"
            if not src.is_file():
                options = sorted(p.stem for p in (group_dir / key).glob("*.yaml"))
                raise CheckpointError(f"no {key} config {value!r}; choose one of {', '.join(options)}")
            if key != "policy":
                cfg[key] = OmegaConf.load(src)
            continue
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__" and not ov.is_add():
            raise CheckpointError(f"config key {key!r} does not exist in this checkpoint's config; "
                                  f"prefix it with '+' to add it")
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def load_policy(path: str | Path, overrides: Iterable[str] = (), device: str | torch.device | None = None,
                ema: bool = True):
    """The (EMA) policy saved at `path` (checkpoint or run directory), ready for `act`, with overrides applied
    (`sampler=ddim`, `sampler.num_steps=10`, ...)."""
    from rtdp.policy.factory import make_policy

    ckpt = resolve_checkpoint(path)
    cfg = apply_overrides(load_config(ckpt), overrides)
    meta = cfg.get("checkpoint")
    if meta is None:
        raise CheckpointError(f"{ckpt}/config.yaml has no 'checkpoint' section: not written by `rtdp train`")
    normalizer = Normalizer.from_state_dict(load_file(str(ckpt / "normalizer.safetensors")))
    policy = make_policy(cfg.policy, cfg.sampler, {k: tuple(v) for k, v in meta.obs_shapes.items()},
                         int(meta.action_dim), normalizer, fps=float(cfg.task.get("fps", 10)),
                         crop_shape=cfg.task.get("crop_shape"))
    weights = load_file(str(ckpt / "model.safetensors"))
    prefix = "ema" if ema and any(k.startswith("ema.") for k in weights) else "model"
    load_weights(policy, _split_weights(weights, prefix), prefix, str(cfg.policy.get("name")))
    policy.config = cfg
    policy.checkpoint_path = ckpt
    device = device or cfg.get("device", "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"
    return policy.to(device).eval()
