"""Build a DiffusionPolicy from config nodes (the `policy` and `sampler` groups) and the data's shapes.

Every component comes from a registry by name and sets itself up from its own class (`from_config`), so this
file names no specific denoiser, schedule, sampler or training-level sampler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from rtdp.policy.denoiser import DenoiserSpec, make_denoiser
from rtdp.policy.encoders import ObservationEncoder
from rtdp.policy.levels import make_level_sampler
from rtdp.policy.policy import DiffusionPolicy
from rtdp.policy.samplers import make_sampler
from rtdp.policy.schedules import make_schedule
from rtdp.policy.spec import PolicySpec

MOVED_KEYS = {"n_action_steps": "sampler.n_action_steps"}  # policy keys of older configs, and where they live now


def plain(node: Any) -> Any:
    """An OmegaConf node or a mapping as plain Python containers."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def make_policy(policy_cfg: Mapping[str, Any], sampler_cfg: Mapping[str, Any] | None,
                obs_shapes: Mapping[str, Sequence[int]], action_dim: int, normalizer: Any = None, fps: float = 10.0,
                crop_shape: Sequence[int] | None = None, action_key: str = "action") -> DiffusionPolicy:
    """The policy a config describes, for observations of `obs_shapes` (per frame) and `action_dim` actions."""
    pcfg = dict(plain(policy_cfg))
    for key, home in MOVED_KEYS.items():
        if key in pcfg:
            raise ValueError(f"policy.{key} is no longer a policy setting: set {home} instead")
    enc_cfg = dict(pcfg.get("encoder") or {})
    enc_cfg["crop_shape"] = enc_cfg.get("crop_shape") or crop_shape
    encoder = ObservationEncoder(obs_shapes, **enc_cfg)
    horizon, n_obs = int(pcfg["horizon"]), int(pcfg["n_obs_steps"])
    denoiser = make_denoiser(pcfg["denoiser"], DenoiserSpec(action_dim, encoder.out_dim, n_obs, horizon))
    schedule = make_schedule(pcfg.get("schedule"))
    spec = PolicySpec(schedule, horizon=horizon, n_obs_steps=n_obs, action_dim=action_dim, normalizer=normalizer,
                      action_key=action_key)
    levels = make_level_sampler(pcfg.get("levels"), spec) if pcfg.get("levels") else None
    sampler = make_sampler(plain(sampler_cfg), dataclasses.replace(spec, levels=levels))
    policy = DiffusionPolicy(encoder, denoiser, schedule, sampler, normalizer, action_dim=action_dim,
                             horizon=horizon, n_obs_steps=n_obs, fps=fps, action_key=action_key, level_sampler=levels)
    policy.call_hooks.extend(denoiser.call_hooks())  # e.g. MoDE's expert caching
    return policy
