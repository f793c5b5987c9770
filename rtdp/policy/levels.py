"""Training noise levels: one per sample (plain Diffusion Policy) or one per action position (streaming).

Streaming Diffusion Policy trains on a mixture of per-position level patterns so that the denoiser has seen
every staircase its sampler visits (Høeg, Du, Egeland 2024): `constant` (one level for the chunk: plain DP),
`linear` (rising along the chunk), `independent` (a level per position) and `chunkwise` (the sampler's
staircase shifted down by an offset o ~ U{0 … N/h - 1}). The patterns are drawn as inference indices
{0 … N-1} and mapped to the schedule with the streaming sampler's own table, so training and sampling agree;
`constant` draws from the schedule's full training distribution instead, so that the same weights remain a
plain DDPM/DDIM policy (the baselines and RTI run on the very weights SDP runs on).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from rtdp.policy.registry import Registry, register_subclass
from rtdp.policy.samplers.streaming import chunk_index, level_table, staircase
from rtdp.policy.schedules import NoiseSchedule
from rtdp.policy.spec import PolicySpec

REGIMES = ("constant", "linear", "independent", "chunkwise")
LEVEL_SAMPLERS: Registry[LevelSampler] = Registry("training level sampler")


class LevelSampler:
    """Draws the training noise levels of a batch: `(batch, horizon, device, generator) -> [B] or [B, T]`. A
    subclass sets `name` to register itself (`policy.levels.name`)."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_subclass(LEVEL_SAMPLERS, cls)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], spec: PolicySpec) -> LevelSampler:
        return cls(spec.schedule, **cfg)

    def __call__(self, batch: int, horizon: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError


class UniformLevels(LevelSampler):
    """One training level per sample, `[B]` (the denoiser broadcasts it over positions)."""

    name = "uniform"

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule

    def __call__(self, batch: int, horizon: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        return self.schedule.sample_training_levels((batch,), generator=generator, device=device)


class StreamingLevels(LevelSampler):
    """Per-position levels `[B, T]` from SDP's regime mixture; `last_regimes` records each sample's regime."""

    name = "streaming"

    def __init__(self, schedule: NoiseSchedule, horizon: int = 16, n_obs_steps: int = 2, n_action_steps: int = 1,
                 num_levels: int | None = None, weights: dict[str, float] | None = None,
                 steps_per_call: int | None = None):
        weights = dict(weights or {"constant": 0.25, "chunkwise": 0.75})
        unknown = set(weights) - set(REGIMES)
        if unknown:
            raise ValueError(f"unknown level regimes {sorted(unknown)}; known: {', '.join(REGIMES)}")
        w = torch.tensor([float(weights.get(r, 0.0)) for r in REGIMES])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"level regime weights must be ≥ 0 with a positive sum, got {weights}")
        _, h = chunk_index(horizon, n_obs_steps, n_action_steps)
        if num_levels and steps_per_call and num_levels != h * steps_per_call:
            raise ValueError(f"streaming levels: num_levels {num_levels} != h * steps_per_call = {h} * {steps_per_call}; "
                             "set only one of them")
        # `steps_per_call` is the sampler's knob (sampler=sdp reads it from here): N = h * steps_per_call levels.
        self.num_levels = num_levels or (h * steps_per_call if steps_per_call else
                                         getattr(schedule, "num_train_steps", h * 10))
        if self.num_levels % h:
            raise ValueError(f"num_levels ({self.num_levels}) must be a multiple of the number of chunks h = {h}")
        self.n_action_steps = n_action_steps
        self.probs = w / w.sum()
        self.schedule = schedule
        self.horizon, self.n_chunks = horizon, h
        self.staircase = staircase(horizon, n_obs_steps, n_action_steps, self.num_levels)
        self.table = level_table(schedule, self.num_levels)
        self.last_regimes: Tensor | None = None
        self.last_index: Tensor | None = None

    def __call__(self, batch: int, horizon: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        if horizon != self.horizon:
            raise ValueError(f"streaming levels were built for horizon {self.horizon}, got {horizon}")
        N, T = self.num_levels, horizon
        regime = torch.multinomial(self.probs, batch, replacement=True, generator=generator)
        pos = torch.arange(T)
        ends = torch.randint(0, N, (batch, 2), generator=generator).sort(dim=1).values
        linear = torch.round(ends[:, :1] + (ends[:, 1:] - ends[:, :1]) * pos / max(T - 1, 1)).long()
        independent = torch.randint(0, N, (batch, T), generator=generator)
        offset = torch.randint(0, N // self.n_chunks, (batch, 1), generator=generator)
        chunkwise = self.staircase.unsqueeze(0) - offset
        index = torch.stack([chunkwise, linear, independent, chunkwise])[regime, torch.arange(batch)]
        levels = self.table[index + 1]
        constant = self.schedule.sample_training_levels((batch, 1), generator=generator).to(levels.dtype)
        levels = torch.where((regime == 0).unsqueeze(1), constant.expand(batch, T), levels)
        self.last_regimes, self.last_index = regime, index
        return levels.to(device)


    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], spec: PolicySpec) -> StreamingLevels:
        return cls(spec.schedule, horizon=spec.horizon, n_obs_steps=spec.n_obs_steps, **cfg)


def make_level_sampler(cfg: Mapping[str, Any] | None, spec: PolicySpec) -> LevelSampler:
    """`{name: uniform}` (default: one level per sample) or `{name: streaming, n_action_steps, steps_per_call,
    weights}`, or any other registered training-level sampler."""
    cfg = dict(cfg or {})
    cls = LEVEL_SAMPLERS.get(cfg.pop("name", "uniform"))
    try:
        return cls.from_config(cfg, spec)
    except TypeError as err:
        raise ValueError(f"training levels {cls.name!r}: {err}") from None
