"""Samplers: how a chunk of actions is produced from noise (DDPM, DDIM, streaming SDP, RTI warm start)."""

from __future__ import annotations

from typing import Any

from rtdp.policy.samplers.base import Sampler
from rtdp.policy.samplers.diffusion import DDIMSampler, DDPMSampler
from rtdp.policy.samplers.rti import RTISampler, shift_and_pad
from rtdp.policy.samplers.streaming import StreamingSampler, staircase
from rtdp.policy.schedules import NoiseSchedule

SAMPLERS: dict[str, type[Sampler]] = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "sdp": StreamingSampler,
                                      "rti": RTISampler}


def make_sampler(cfg: dict[str, Any] | None, schedule: NoiseSchedule, *, horizon: int = 16, n_obs_steps: int = 2,
                 n_action_steps: int = 8) -> Sampler:
    """A sampler from a config node `{name: ddpm|ddim|sdp|rti, ...}`; the policy's horizons fill in what the
    streaming and warm-start samplers need unless the node sets them."""
    cfg = dict(cfg or {"name": "ddpm"})
    name = cfg.pop("name", "ddpm")
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    if name == "sdp":
        cfg.setdefault("horizon", horizon)
        cfg.setdefault("n_obs_steps", n_obs_steps)
        cfg.setdefault("n_action_steps", 1)
    if name == "rti":
        cfg.setdefault("n_action_steps", n_action_steps)
    try:
        return SAMPLERS[name](schedule, **cfg)
    except TypeError as err:  # an unknown option: say which sampler and what it takes
        raise ValueError(f"sampler {name!r}: {err}") from None


__all__ = [
    "SAMPLERS",
    "DDIMSampler",
    "DDPMSampler",
    "RTISampler",
    "Sampler",
    "StreamingSampler",
    "make_sampler",
    "shift_and_pad",
    "staircase",
]
