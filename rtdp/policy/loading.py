"""Loading a policy from a checkpoint directory written by `rtdp train` (what `rtdp eval`, `rtdp run` and the
benchmarks call, without importing any training code).

    <run>/checkpoints/step_0001000/
        model.safetensors        raw weights ("model.*") and EMA weights ("ema.*")
        normalizer.safetensors   the data normaliser's stats
        config.yaml              the resolved training config + what the data looked like (obs shapes, Da)
        manifest.json            size and SHA-256 of every other file, checked before anything is read
    <run>/checkpoints/last -> step_0001000

A damaged checkpoint (truncated, flipped bytes, a garbage file) is refused with one line naming the file.
Configs and checkpoints written by older versions (no manifest) still load, unverified; their configs are
upgraded on load (`upgrade_config`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import SafetensorError
from safetensors.torch import load_file

from rtdp.normalizer import Normalizer

LAST = "last"
MANIFEST = "manifest.json"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
RENAMED = {"policy.n_action_steps": "sampler.n_action_steps"}  # override keys of older versions -> their home now


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked (missing, from another policy type, bad override)."""


def _complete(candidate: Path) -> bool:
    return (candidate / "model.safetensors").is_file() and (candidate / "config.yaml").is_file()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself, a run directory (its `checkpoints/last`) or `checkpoints/`. When
    `last` points at nothing complete (a crash between writes), the newest complete `step_*` is used."""
    path = Path(path)
    for candidate in (path, path / LAST, path / "checkpoints" / LAST):
        if _complete(candidate):
            return candidate.resolve()
    for root in (path, path / "checkpoints"):
        steps = sorted((p for p in root.glob("step_*") if p.is_dir() and _complete(p)), reverse=True)
        if steps:
            return steps[0].resolve()
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; pass a run directory or a "
                              "checkpoints/step_* directory written by `rtdp train`")
    raise CheckpointError(f"{str(path)!r} holds no checkpoint (no model.safetensors + config.yaml in it, its "
                          "'last' or 'checkpoints/last'); pass a directory written by `rtdp train`")


def checkpoint_exists(path: str | Path) -> bool:
    """Whether the directory a checkpoint argument names exists (`lerobot:DIR` names DIR)."""
    return Path(str(path).removeprefix("lerobot:")).exists()


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_VERIFIED: dict[tuple[str, int], bool] = {}  # (manifest path, its mtime) -> verified once in this process


def verify_checkpoint(ckpt: str | Path) -> bool:
    """Check every file against the checkpoint's manifest (size, then SHA-256); True if there was a manifest to
    check (older checkpoints have none). A mismatch is a CheckpointError naming the file."""
    ckpt = Path(ckpt)
    manifest = ckpt / MANIFEST
    if not manifest.is_file():
        return False
    key = (str(manifest.resolve()), manifest.stat().st_mtime_ns)
    if _VERIFIED.get(key):
        return True
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{manifest} is unreadable ({err}); the checkpoint cannot be verified: use another "
                              "checkpoint (an older step_*) or retrain") from None
    for name, entry in files.items():
        f = ckpt / name
        if not f.is_file():
            raise CheckpointError(f"{f} is missing from the checkpoint its manifest lists; use another checkpoint")
        if f.stat().st_size != entry["bytes"] or file_digest(f) != entry["sha256"]:
            raise CheckpointError(f"{f} is damaged (its size or SHA-256 differs from the manifest's); use another "
                                  "checkpoint (an older step_*) or retrain")
    _VERIFIED[key] = True
    return True


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a CheckpointError naming it (truncated, empty, a bad header)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read as safetensors ({' '.join(str(err).split())}); the file is "
                              "damaged: use another checkpoint or retrain") from None


def load_config(ckpt: str | Path) -> DictConfig:
    """A checkpoint's saved config, upgraded to the current layout (a CheckpointError if it is not YAML)."""
    path = Path(ckpt) / "config.yaml"
    try:
        cfg = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a valid config ({first}); the checkpoint is damaged: use another "
                              "checkpoint or retrain") from None
    if not isinstance(cfg, DictConfig):
        raise CheckpointError(f"{path} does not hold a config mapping; the checkpoint is damaged")
    return upgrade_config(cfg)


def upgrade_config(cfg: DictConfig) -> DictConfig:
    """A saved config in the current layout: older versions kept the executed actions per plan in the policy
    (`policy.n_action_steps`); the sampler holds them now, with the same default of 8 for DDPM/DDIM."""
    policy = cfg.get("policy")
    if policy is not None and "n_action_steps" in policy:
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        del cfg.policy["n_action_steps"]
    return cfg


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
    group_dir = CONFIG_DIR
    for ov in parsed:
        key, value = ov.key_or_group, ov.value()
        if key in RENAMED:
            raise CheckpointError(f"{key} is now {RENAMED[key]}: pass {RENAMED[key]}={value}")
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
                ema: bool = True, backend: str = "auto", backend_options: Mapping[str, Any] | None = None,
                cache: str | Path | None = None):
    """The (EMA) policy saved at `path` (checkpoint or run directory, or `lerobot:DIR` for a policy saved by
    LeRobot), ready for `act`, with overrides applied
    (`sampler=ddim`, `sampler.num_steps=10`, ...) and its denoiser served by `backend` (`eager`, `onnx`,
    `cuda_graph`, or `auto`: CUDA graphs on a GPU, eager on the CPU; see rtdp/policy/backends). An ONNX graph is
    cached in `<checkpoint>/backends/`. `cache` attaches a block cache (`bac`, a schedule's path, docs/caching.md);
    it runs the transformer block by block, so it takes the eager backend (`auto` becomes eager)."""
    if str(path).startswith("lerobot:"):  # a policy saved by LeRobot (rtdp/policy/lerobot_policy.py)
        from rtdp.policy.lerobot_policy import load_lerobot_policy

        return load_lerobot_policy(path, overrides, device=device, backend=backend, backend_options=backend_options,
                                   cache=cache)
    from rtdp.policy.factory import make_policy

    ckpt = resolve_checkpoint(path)
    verify_checkpoint(ckpt)
    cfg = apply_overrides(load_config(ckpt), overrides)
    meta = cfg.get("checkpoint")
    if meta is None:
        raise CheckpointError(f"{ckpt}/config.yaml has no 'checkpoint' section: not written by `rtdp train`")
    try:
        normalizer = Normalizer.from_state_dict(read_tensors(ckpt / "normalizer.safetensors"))
    except (ValueError, KeyError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{ckpt / 'normalizer.safetensors'} does not hold normaliser stats ({err})") from None
    policy = make_policy(cfg.policy, cfg.get("sampler"), {k: tuple(v) for k, v in meta.obs_shapes.items()},
                         int(meta.action_dim), normalizer, fps=float(cfg.task.get("fps", 10)),
                         crop_shape=cfg.task.get("crop_shape"))
    weights = read_tensors(ckpt / "model.safetensors")
    prefix = "ema" if ema and any(k.startswith("ema.") for k in weights) else "model"
    load_weights(policy, _split_weights(weights, prefix), prefix, str(cfg.policy.get("name")))
    return serve_policy(policy, cfg, ckpt, device or cfg.get("device", "cpu"), backend, backend_options, cache,
                        backend_dir=ckpt / "backends")


def serve_policy(policy, cfg: DictConfig, path: Path, device: str | torch.device, backend: str,
                 backend_options: Mapping[str, Any] | None, cache: str | Path | None, backend_dir: Path):
    """A built policy made ready for `act`: its config and path recorded, on `device` (the CPU when CUDA is
    absent), in eval mode, its denoiser served by `backend` (graphs cached in `backend_dir`) and `cache` attached."""
    from rtdp.policy.backends import use_backend
    from rtdp.policy.caching.attach import check_backend, use_cache

    policy.config = cfg
    policy.checkpoint_path = path
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"
    policy = policy.to(device).eval()
    use_backend(policy, check_backend(cache, backend), cache_dir=backend_dir, **dict(backend_options or {}))
    use_cache(policy, cache)
    return policy
