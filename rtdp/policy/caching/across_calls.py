"""An experiment for Streaming Diffusion Policy (`cache=across_calls[:R]`, off by default): reuse block outputs
across consecutive plans instead of across the steps of one plan.

SDP evaluates the denoiser once per plan, so caching within a plan cannot help it. Between two plans its buffer
only shifts: the actions at positions s… of the previous plan sit at positions 0… now, one denoising step
further, at the same staircase of levels. So on a "reuse" plan every block's residual for the shifted tokens is
the previous plan's residual shifted by s (the actions executed in between), and only the s fresh tokens at the
tail are computed (`block.residual_tail`, attending to every token). Every R-th plan (`refresh`, default 2)
recomputes everything; so does a plan whose grid differs from the previous one (the episode's start-up sample, a
late loop that shifted further) or whose batch differs. The cache is forgotten at `reset` (a new episode).

This is approximate by design (a reused residual saw the previous observation and the noisier iterate); the
benchmark reports whether it pays (benchmarks/bac.py, docs/caching.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rtdp.policy.caching.hook import require_transformer
from rtdp.policy.call import CallHook, DenoiserCall
from rtdp.policy.transformer import TransformerDenoiser


class AcrossCallsHook(CallHook):
    """Reuses the previous plan's block residuals, shifted by `shift` tokens, on all but every `refresh`-th plan."""

    name = "across_calls"

    def __init__(self, denoiser: TransformerDenoiser, shift: int, refresh: int = 2):
        self.denoiser = require_transformer(denoiser, "cache=across_calls")
        if int(refresh) < 2:
            raise ValueError(f"cache=across_calls:R needs R >= 2 (every R-th plan recomputes everything), got {refresh}")
        if int(shift) < 1:
            raise ValueError(f"cache=across_calls needs a shift of >= 1 executed action per plan, got {shift}")
        self.shift, self.refresh = int(shift), int(refresh)
        self.n_blocks = len(denoiser.blocks)
        self.totals = {"plans": 0, "reuse_plans": 0, "block_evals": 0, "block_tail_evals": 0,
                       "block_evals_uncached": 0}
        self.reset()

    def reset(self) -> None:
        self._cache: list[Tensor] | None = None  # the first evaluation's residuals of the previous plan
        self._previous_grid: list[Tensor] | None = None
        self._since_refresh = 0

    def begin(self, call: DenoiserCall) -> None:
        grid = [torch.as_tensor(level).detach().cpu() for level in (call.grid or [])]
        same = (self._previous_grid is not None and len(grid) == len(self._previous_grid)
                and all(a.shape == b.shape and bool(torch.equal(a, b)) for a, b in zip(grid, self._previous_grid)))
        self._reuse = self._cache is not None and same and self._since_refresh + 1 < self.refresh
        self._since_refresh = self._since_refresh + 1 if self._reuse else 0
        self._previous_grid = grid
        self._offset = call.step + 1
        self._evals = self._tail_evals = 0
        self._steps = len(grid)
        call.forward = self._forward_for(call)

    def _forward_for(self, call: DenoiserCall):
        denoiser, n = self.denoiser, self.shift

        def forward(x: Tensor, level: Tensor) -> Tensor:
            first = call.step == self._offset
            reuse = first and self._reuse and self._cache is not None and self._cache[0].shape[0] == x.shape[0]
            h, ctx = denoiser.embed(x, level, call.cond)
            fresh: list[Tensor] = []
            for i, block in enumerate(denoiser.blocks):
                if reuse and n < h.shape[1]:
                    tail = block.residual_tail(h, ctx, n)
                    r = torch.cat([self._cache[i][:, n:], tail], dim=1)
                    self._tail_evals += 1
                else:
                    r = block.residual(h, ctx)
                    self._evals += 1
                fresh.append(r.detach())
                h = h + r
            if first:
                self._cache = fresh
            return denoiser.output(h)

        return forward

    def end(self, call: DenoiserCall) -> None:
        report = {"block_evals": self._evals, "block_tail_evals": self._tail_evals,
                  "block_evals_uncached": self.n_blocks * self._steps}
        call.info.update(cache=self.name, reused=bool(self._reuse), **report)
        self.totals["plans"] += 1
        self.totals["reuse_plans"] += int(self._reuse)
        for key, value in report.items():
            self.totals[key] += value

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "shift": self.shift, "refresh": self.refresh}
