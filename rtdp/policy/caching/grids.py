"""The step grids a sampler announces to its denoiser call (`call.begin(levels)`), as the keys of a cache schedule.

A block-cache schedule says, for every step of one grid, which blocks to recompute. Within-plan caching needs one
level per step (DDPM, DDIM, both RTI samplers); a step whose level differs over the batch or the positions
(SDP's rising levels) has no such key. `probe_grids` finds the grids a sampler visits without running the
network: it drives the sampler with a denoiser that returns zeros, for a cold plan and the warm plan after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rtdp.policy.call import CallHook, DenoiserCall
from rtdp.types import PlanContext

Grid = tuple[float, ...]  # one schedule level per step, in the order the sampler evaluates them


class CacheError(ValueError):
    """A block cache that cannot be used as asked (stale or corrupt schedule, wrong denoiser, backend, sampler);
    its message is one line saying what was wrong and what to do."""


def grid_levels(grid: Sequence[Tensor | float | int]) -> Grid | None:
    """The grid as one level per step, or None when some step's level varies over the batch or the positions."""
    out = []
    for level in grid:
        t = torch.as_tensor(level).detach().flatten()
        if t.numel() == 0:
            return None
        first = t[0]
        if t.numel() > 1 and not bool((t == first).all()):
            return None
        out.append(float(first))
    return tuple(out)


def describe_grid(levels: Sequence[float]) -> str:
    """`10 steps [90, 80, …, 0]`: a grid short enough for a one-line message."""
    vals = [f"{v:g}" for v in levels]
    shown = vals if len(vals) <= 4 else [vals[0], vals[1], "…", vals[-1]]
    return f"{len(vals)} step{'s' if len(vals) != 1 else ''} [{', '.join(shown)}]"


class _GridRecorder(CallHook):
    def __init__(self) -> None:
        self.grids: list[list[Tensor]] = []

    def begin(self, call: DenoiserCall) -> None:
        self.grids.append(list(call.grid or []))


def probe_grids(policy: Any) -> list[Grid | None]:
    """The distinct grids `policy.sampler` announces on a cold plan and on the warm plan that follows it (RTI's
    cold sample, then its short step list), in that order; None for a grid without one level per step. The
    network is not run (a zero denoiser stands in) and the sampler is reset before and after."""
    sampler = policy.sampler
    recorder = _GridRecorder()
    zero = lambda x, level, cond: torch.zeros_like(x)
    shape = (1, int(policy.horizon), int(policy.action_dim))
    gen = torch.Generator().manual_seed(0)
    previous = None
    sampler.reset()
    try:
        for _ in range(2):
            call = DenoiserCall(zero, policy.schedule, None, hooks=[recorder])
            n_exec = 0 if previous is None else int(previous.n_exec)
            previous = sampler.sample(call, shape, PlanContext(n_executed=n_exec, generator=gen), previous)
    finally:
        sampler.reset()
    out: list[Grid | None] = []
    for grid in recorder.grids:
        levels = grid_levels(grid)
        if levels not in out:
            out.append(levels)
    return out
