"""Training noise levels: one per sample (plain Diffusion Policy) or one per action position (streaming).

Streaming Diffusion Policy trains on a mixture of per-position level patterns so that the denoiser has seen
every staircase its sampler visits (ALGORITHMS.md §1): `constant` (one level for the chunk: plain DP),
`linear` (rising along the chunk), `independent` (a level per position) and `chunkwise` (the sampler's
staircase shifted down by an offset o ~ U{0 … N/h - 1}). The patterns are drawn as inference indices
{0 … N-1} and mapped to the schedule with the streaming sampler's own table, so training and sampling agree;
`constant` draws from the schedule's full training distribution instead, so that the same weights remain a
plain DDPM/DDIM policy (the baselines and RTI run on the very weights SDP runs on).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rtdp.policy.samplers.streaming import StreamingSampler, chunk_index, staircase
from rtdp.policy.schedules import NoiseSchedule

REGIMES = ("constant", "linear", "independent", "chunkwise")


class UniformLevels:
    """One training level per sample, `[B]` (the denoiser broadcasts it over positions)."""

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule

    def __call__(self, batch: int, horizon: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        return self.schedule.sample_training_levels((batch,), generator=generator, device=device)


class StreamingLevels:
    """Per-position levels `[B, T]` from SDP's regime mixture; `last_regimes` records each sample's regime."""

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
        self.table = StreamingSampler._level_table(schedule, self.num_levels)
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


def make_level_sampler(cfg: dict | None, schedule: NoiseSchedule, *, horizon: int = 16, n_obs_steps: int = 2,
                       n_action_steps: int = 8):
    """`{name: uniform}` (default) or `{name: streaming, n_action_steps, num_levels, weights}`."""
    cfg = dict(cfg or {})
    name = cfg.pop("name", "uniform")
    if name == "uniform":
        return UniformLevels(schedule)
    if name == "streaming":
        cfg.setdefault("horizon", horizon)
        cfg.setdefault("n_obs_steps", n_obs_steps)
        cfg.setdefault("n_action_steps", 1)
        return StreamingLevels(schedule, **cfg)
    raise ValueError(f"unknown training level sampler {name!r}: use 'uniform' or 'streaming'")
