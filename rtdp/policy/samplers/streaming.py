"""Streaming Diffusion Policy (Høeg, Du, Egeland 2024): a rolling buffer whose noise level rises along it.

Positions from `To-1` on form `h = ⌊(T-(To-1))/Ta⌋` chunks of `Ta` actions (a trailing partial chunk joins the
last; positions before `To-1` share chunk 0); chunk j sits at inference level `k_j = N(j+1)/h - 1` of N levels
(-1 = clean, N-1 = pure noise). Each call steps every position once per evaluation, using its own level,
until chunk 0 is clean (N/h evaluations), returns the buffer (its still-noisy tail as the x̂0 estimate), then
shifts it by Ta and refills it to the staircase: the new tail with fresh noise, positions below their
staircase level forward-noised up to it.
With h = 1 every call is the plain N-step sampler, which the tests check bit-for-bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from rtdp.policy.call import DenoiserCall
from rtdp.policy.plan import Plan, carry_forward
from rtdp.policy.samplers.base import Sampler
from rtdp.policy.schedules import DDPMSchedule, NoiseSchedule, raise_level
from rtdp.policy.spec import PolicySpec
from rtdp.types import PlanContext


def chunk_index(horizon: int, n_obs_steps: int, n_action_steps: int) -> tuple[Tensor, int]:
    """Chunk of every buffer position `[T]` and the number of chunks h."""
    first = n_obs_steps - 1
    h = (horizon - first) // n_action_steps
    if h < 1:
        raise ValueError(f"streaming needs room for one chunk: horizon {horizon} - (n_obs_steps-1) "
                         f"= {horizon - first} < n_action_steps {n_action_steps}")
    pos = torch.arange(horizon)
    return ((pos - first).clamp_min(0) // n_action_steps).clamp_max(h - 1), h


def staircase(horizon: int, n_obs_steps: int, n_action_steps: int, num_levels: int) -> Tensor:
    """Inference level of every buffer position at the start of a call, `[T]`: ⌊N(c+1)/h⌋ - 1."""
    chunk, h = chunk_index(horizon, n_obs_steps, n_action_steps)
    return torch.div(num_levels * (chunk + 1), h, rounding_mode="floor") - 1


def level_table(schedule: NoiseSchedule, n: int) -> Tensor:
    """Schedule level of inference level i ∈ {-1 … N-1} at index i+1. Trailing spacing, so that the top level
    is pure noise (it is what the fresh tail holds). Training (`StreamingLevels`) and sampling share it."""
    if isinstance(schedule, DDPMSchedule):
        K = schedule.num_train_steps
        if n > K:
            raise ValueError(f"sdp: num_levels {n} exceeds the {K} training levels")
        top = torch.round(torch.arange(1, n + 1) * K / n).long() - 1
        return torch.cat([torch.tensor([-1]), top])
    return schedule.inference_levels(n).flip(0)


class StreamingSampler(Sampler):
    """SDP's rolling variable-noise buffer: `steps_per_call = N/h` evaluations per call, Ta actions out."""

    name = "sdp"

    def __init__(self, schedule: NoiseSchedule, horizon: int = 16, n_obs_steps: int = 2, n_action_steps: int = 1,
                 steps_per_call: int = 1, num_levels: int | None = None, stochastic: bool | None = None,
                 buffer_init: str = "noise"):
        super().__init__(schedule, n_action_steps, n_obs_steps)
        _, h = chunk_index(horizon, n_obs_steps, n_action_steps)
        self.num_levels = num_levels or h * steps_per_call
        if self.num_levels % h:
            raise ValueError(f"sdp: num_levels ({self.num_levels}) must be a multiple of the number of chunks "
                             f"h = {h} (horizon {horizon}, n_obs_steps {n_obs_steps}, n_action_steps "
                             f"{n_action_steps}); set sampler.steps_per_call instead")
        if buffer_init not in ("noise", "zero"):
            raise ValueError(f"sdp: buffer_init must be 'noise' (a full first sample) or 'zero', got {buffer_init!r}")
        self.stochastic = isinstance(schedule, DDPMSchedule) if stochastic is None else stochastic
        if self.stochastic and not isinstance(schedule, DDPMSchedule):
            raise ValueError("sdp: stochastic (DDPM) steps need a DDPM schedule; set sampler.stochastic=false")
        self.horizon, self.first, self.n_chunks = horizon, n_obs_steps - 1, h
        self.buffer_init = buffer_init
        self.staircase = staircase(horizon, n_obs_steps, n_action_steps, self.num_levels)
        self._table = level_table(schedule, self.num_levels)
        self.x: Tensor | None = None
        self.levels: Tensor | None = None  # [B, T] inference levels, -1 … N-1

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], spec: PolicySpec) -> StreamingSampler:
        """The layout defaults to the one the weights were trained for (`policy.levels`); weights trained with
        one noise level per sample have never seen a streaming buffer and are refused."""
        cfg = dict(cfg)
        trained = spec.levels
        if getattr(trained, "n_chunks", None) is None:
            raise ValueError("sampler=sdp needs weights trained with per-position noise levels (policy=sdp_unet or "
                             "sdp_transformer: a `levels: {name: streaming}` node); these were trained with one "
                             "level per sample: use sampler=ddim, ddpm or rti, or retrain with policy=sdp_unet")
        layout = {"n_action_steps": trained.n_action_steps, "steps_per_call": trained.num_levels // trained.n_chunks}
        for key, value in layout.items():
            if cfg.get(key) is None:
                cfg[key] = value
            elif int(cfg[key]) != value:
                warnings.warn(f"sampler=sdp: {key}={cfg[key]} differs from the layout the weights were trained "
                              f"with ({key}={value} in policy.levels); the buffer will hold staircases they never "
                              "saw", UserWarning, stacklevel=2)
        return cls(spec.schedule, horizon=spec.horizon, n_obs_steps=spec.n_obs_steps, **cfg)

    def reset(self) -> None:
        self.x, self.levels = None, None

    def schedule_levels(self, levels: Tensor) -> Tensor:
        return self._table.to(levels.device)[levels + 1]

    def sample(self, call: DenoiserCall, shape, ctx: PlanContext, previous: Plan | None) -> Plan:
        if shape[1] != self.horizon:
            raise ValueError(f"sdp: buffer horizon is {self.horizon}, asked for chunks of {shape[1]}")
        generator = ctx.generator
        if self.x is None or self.x.shape != torch.Size(shape):
            self._start(shape, generator, call.device, torch.float32)
        elif int(ctx.n_executed) > self.n_action_steps:
            # The loop ran past the head (inference was late) into the previous plan: drop those actions too.
            # The new head then sits above level 0's stair and the loop below spends the extra evaluations.
            self._shift(int(ctx.n_executed) - self.n_action_steps, generator)
        call.begin(self._grid())
        x0 = self.x
        while int(self.levels[:, self.first].max()) > -1:
            k = self.schedule_levels(self.levels)
            nxt = (self.levels - 1).clamp_min(-1)
            k_next = self.schedule_levels(nxt)
            x0, eps = call.predict(self.x, k)
            if self.stochastic:
                noise = (torch.randn(shape, generator=generator, device=self.x.device, dtype=self.x.dtype)
                         if bool((k_next >= 0).any()) else None)
                self.x = self.schedule.ddpm_step(self.x, k, k_next, x0, noise)
            else:
                stepped = self.schedule.ddim_step(x0, eps, k_next)
                self.x = torch.where((nxt < self.levels).unsqueeze(-1), stepped, self.x)
            self.levels = nxt
        call.end()
        # Clean positions as they are; still-noisy ones (the later chunks) as the last x̂0 estimate, so that the
        # whole chunk is a usable plan (an asynchronous loop may execute past the head when inference is late).
        out = torch.where((self.levels >= 0).unsqueeze(-1), x0, self.x)
        self._shift(self.n_action_steps, generator)
        return self.plan(out, call)

    def _grid(self) -> list[Tensor]:
        """The schedule levels `[B, T]` of the evaluations this call will make, in order."""
        grid, levels = [], self.levels
        while int(levels[:, self.first].max()) > -1:
            grid.append(self.schedule_levels(levels))
            levels = (levels - 1).clamp_min(-1)
        return grid

    def _start(self, shape, generator, device, dtype) -> None:
        """'noise': pure noise everywhere at the top level (the first call is a full N-step sample, a one-off
        cost); 'zero': a zero chunk noised to the staircase."""
        B = shape[0]
        if self.buffer_init == "noise":
            self.x = self.schedule.prior(shape, generator=generator, device=device, dtype=dtype)
            self.levels = torch.full((B, self.horizon), self.num_levels - 1, dtype=torch.long, device=self.x.device)
        else:
            self.x = torch.zeros(shape, device=device, dtype=dtype)
            self.levels = torch.full((B, self.horizon), -1, dtype=torch.long, device=self.x.device)
            self._refill(generator)

    def _shift(self, m: int, generator) -> None:
        """Drop the first `m` positions, append `m` fresh ones, refill to the staircase."""
        B, T, Da = self.x.shape
        m = min(m, T)
        # appended positions are marked one above the top level: `_refill` fills them with pure noise
        self.x = carry_forward(self.x, m, pad=self.x.new_zeros(B, m, Da))
        self.levels = torch.cat([self.levels[:, m:], self.levels.new_full((B, m), self.num_levels)], dim=1)
        self._refill(generator)

    def _refill(self, generator) -> None:
        target = self.staircase.to(self.levels.device).expand_as(self.levels)
        top = self.num_levels - 1
        fresh = (self.levels > top) | ((target == top) & (self.levels != top))  # appended, or raised to the top
        if bool(fresh.any()):
            noise = self.schedule.prior(self.x.shape, generator=generator, device=self.x.device, dtype=self.x.dtype)
            self.x = torch.where(fresh.unsqueeze(-1), noise, self.x)
        up = (self.levels < target) & ~fresh
        if bool(up.any()):
            noise = torch.randn(self.x.shape, generator=generator, device=self.x.device, dtype=self.x.dtype)
            raised = raise_level(self.schedule, self.x, self.schedule_levels(self.levels.clamp_max(top)),
                                 self.schedule_levels(target), noise)
            self.x = torch.where(up.unsqueeze(-1), raised, self.x)
        self.levels = torch.maximum(self.levels, target).clamp_max(top)

    @property
    def nfe_per_call(self) -> int:
        return self.num_levels // self.n_chunks

    def describe(self) -> dict:
        return {**super().describe(), "num_levels": self.num_levels, "chunks": self.n_chunks,
                "steps_per_call": self.nfe_per_call, "stochastic": self.stochastic, "buffer_init": self.buffer_init}
