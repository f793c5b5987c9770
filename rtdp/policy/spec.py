"""What samplers and training-level samplers are built for: the policy's schedule, shapes and data mapping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rtdp.policy.schedules import NoiseSchedule


@dataclass(frozen=True)
class PolicySpec:
    """The parts of a policy a sampler's `from_config` may read: its noise schedule, chunk horizon T,
    observation window To, action size, the data normaliser (binary action dims read their two values off
    it) and the training-level sampler the weights were trained with (streaming samplers check its layout)."""

    schedule: NoiseSchedule
    horizon: int = 16
    n_obs_steps: int = 2
    action_dim: int = 2
    normalizer: Any = None
    action_key: str = "action"
    levels: Any = None
