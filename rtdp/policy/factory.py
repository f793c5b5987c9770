"""Build a DiffusionPolicy from config nodes (the `policy` and `sampler` groups) and the data's shapes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from rtdp.policy.encoders import ObservationEncoder
from rtdp.policy.policy import DiffusionPolicy
from rtdp.policy.schedules import make_schedule
from rtdp.policy.transformer import TransformerDenoiser
from rtdp.policy.unet1d import ConditionalUnet1D

DENOISERS = ("unet1d", "transformer")


def _plain(node: Any) -> Any:
    """An OmegaConf node or a mapping as plain Python containers."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(node, (DictConfig, ListConfig)):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra, a dependency
        pass
    return node


def make_denoiser(cfg: Mapping[str, Any], action_dim: int, cond_dim: int, n_obs_steps: int, horizon: int) -> nn.Module:
    """A denoiser from `{type: unet1d|transformer, ...its keyword arguments}`."""
    cfg = dict(_plain(cfg))
    kind = cfg.pop("type", "unet1d")
    if kind == "unet1d":
        cfg["down_dims"] = tuple(cfg.get("down_dims", (256, 512, 1024)))
        return ConditionalUnet1D(action_dim, cond_dim, n_obs_steps, **cfg)
    if kind == "transformer":
        return TransformerDenoiser(action_dim, cond_dim, n_obs_steps, horizon, **cfg)
    raise ValueError(f"unknown denoiser type {kind!r}: use one of {', '.join(DENOISERS)}")


def make_policy(policy_cfg: Mapping[str, Any], sampler_cfg: Mapping[str, Any], obs_shapes: Mapping[str, Sequence[int]],
                action_dim: int, normalizer: Any = None, fps: float = 10.0,
                crop_shape: Sequence[int] | None = None) -> DiffusionPolicy:
    """The policy a config describes, for observations of `obs_shapes` (per frame) and `action_dim` actions."""
    from rtdp.policy.samplers import make_sampler

    pcfg = _plain(policy_cfg)
    enc_cfg = dict(pcfg.get("encoder") or {})
    enc_cfg["crop_shape"] = enc_cfg.get("crop_shape") or crop_shape
    encoder = ObservationEncoder(obs_shapes, **enc_cfg)
    horizon, n_obs = int(pcfg["horizon"]), int(pcfg["n_obs_steps"])
    denoiser = make_denoiser(pcfg["denoiser"], action_dim, encoder.out_dim, n_obs, horizon)
    schedule = make_schedule(pcfg.get("schedule"))
    sampler = make_sampler(_plain(sampler_cfg), schedule, horizon=horizon, n_obs_steps=n_obs,
                           n_action_steps=int(pcfg["n_action_steps"]))
    if getattr(sampler, "discrete_dims", None):  # snap them to the data's two values (scaled or not)
        from rtdp.policy.samplers.rti import discrete_levels, warn_if_unscaled

        bad = [d for d in sampler.discrete_dims if not 0 <= int(d) < action_dim]
        if bad:
            raise ValueError(f"sampler.discrete_dims {bad} out of range for {action_dim} action dimensions")
        sampler.discrete_levels = discrete_levels(normalizer, sampler.discrete_dims)
        warn_if_unscaled(sampler)
    policy = DiffusionPolicy(encoder, denoiser, schedule, sampler, normalizer, action_dim=action_dim, horizon=horizon,
                             n_obs_steps=n_obs, n_action_steps=int(pcfg["n_action_steps"]), fps=fps)
    if pcfg.get("levels"):  # per-position training levels (streaming diffusion); default: one level per sample
        from rtdp.policy.levels import make_level_sampler

        policy.level_sampler = make_level_sampler(pcfg["levels"], schedule, horizon=horizon, n_obs_steps=n_obs,
                                                  n_action_steps=int(pcfg["n_action_steps"]))
    return policy
