"""Block-wise adaptive caching (BAC) as a denoiser-call hook: no sampler knows about it.

In `begin(grid)` the hook empties its cache, finds the schedule of the announced grid (a grid it has none for is
refused) and replaces `call.forward` with a block-wise forward through the transformer's `embed`, `blocks[i]` and
`output`. At step k of the grid a block the schedule updates at k is evaluated and its residual stored; every
other block adds its stored residual instead: `h = h + cache[block]`. The uncached forward is
`output(h + residual_0 + residual_1 + …)` evaluated the same way, so a schedule that updates every block at every
step reproduces it bit for bit. Every evaluated block is counted; `end` reports the count beside the schedule's
prediction in the plan's info (`block_evals`, `block_evals_predicted`, `block_evals_uncached`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from rtdp.policy.caching.grids import CacheError, describe_grid, grid_levels
from rtdp.policy.caching.schedule import CacheSchedule, GridSchedule
from rtdp.policy.call import CallHook, DenoiserCall
from rtdp.policy.transformer import TransformerDenoiser


def require_transformer(denoiser: Any, what: str = "cache=bac") -> TransformerDenoiser:
    """The denoiser, if it is a transformer; else the one-line refusal (BAC caches transformer blocks)."""
    reason = getattr(denoiser, "block_cache_refusal", "")
    if reason:  # a denoiser that says why block caching cannot serve it
        raise CacheError(reason)
    if not isinstance(denoiser, TransformerDenoiser):
        kind = getattr(denoiser, "name", None) or type(denoiser).__name__
        raise CacheError(f"{what} caches the residual blocks of a transformer denoiser and this policy's is "
                         f"{kind!r}; train one with policy=transformer or policy=sdp_transformer")
    return denoiser


class BlockCacheHook(CallHook):
    """Serves every plan's evaluations block by block, recomputing only the blocks `schedule` updates at each step."""

    name = "bac"

    def __init__(self, denoiser: TransformerDenoiser, schedule: CacheSchedule):
        self.denoiser = require_transformer(denoiser)
        self.schedule = schedule
        self.blocks = tuple(denoiser.block_names())
        if tuple(schedule.blocks) != self.blocks:
            raise CacheError(f"{schedule.label()} names {len(schedule.blocks)} blocks, this denoiser has "
                             f"{len(self.blocks)}; recalibrate it for this checkpoint")
        self._tables = {g.levels: g.table(self.blocks) for g in schedule.grids}
        self._cache: list[Tensor | None] = []
        self._grid: GridSchedule | None = None
        self._table: list[list[bool]] = []
        self._offset = 0
        self._evals = 0
        self.totals = {"plans": 0, "block_evals": 0, "block_evals_predicted": 0, "block_evals_uncached": 0}

    def begin(self, call: DenoiserCall) -> None:
        levels = grid_levels(call.grid or [])
        grid = self.schedule.for_grid(levels)
        if grid is None:
            seen = describe_grid(levels) if levels is not None else "per-position levels"
            made = "; ".join(describe_grid(g.levels) for g in self.schedule.grids)
            raise CacheError(f"{self.schedule.label()} was made for the step grid {made}; this plan announced "
                             f"{seen}: calibrate the schedule for the sampler in use (rtdp calibrate-cache)")
        self._grid, self._table = grid, self._tables[grid.levels]
        self._cache = [None] * len(self.blocks)  # emptied at every plan
        self._offset = call.step + 1  # index of the grid's first evaluation in the call's count
        self._evals = 0
        call.forward = self._forward_for(call)

    def _forward_for(self, call: DenoiserCall):
        denoiser, blocks, cache = self.denoiser, self.denoiser.blocks, self._cache

        def forward(x: Tensor, level: Tensor) -> Tensor:
            k = call.step - self._offset
            if not 0 <= k < len(self._table):
                raise CacheError(f"the sampler evaluated step {k} of a grid of {len(self._table)} steps; a block "
                                 "cache needs the grid the sampler announces in begin() to list every evaluation")
            update = self._table[k]
            h, ctx = denoiser.embed(x, level, call.cond)
            for i, block in enumerate(blocks):
                r = cache[i]
                if update[i] or r is None or r.shape != h.shape:
                    r = block.residual(h, ctx)
                    cache[i] = r.detach()
                    self._evals += 1
                h = h + r
            return denoiser.output(h)

        return forward

    def end(self, call: DenoiserCall) -> None:
        grid = self._grid
        if grid is None:
            return
        report = {"block_evals": self._evals, "block_evals_predicted": grid.predicted_block_evals,
                  "block_evals_uncached": len(self.blocks) * grid.n_steps}
        call.info.update(cache=self.name, **report)
        self.totals["plans"] += 1
        for key, value in report.items():
            self.totals[key] += value
        self._cache = []  # nothing outlives the plan
        self._grid = None

    def describe(self) -> dict[str, Any]:
        """What the cache is, for metrics JSON."""
        return {"name": self.name, "schedule": self.schedule.label(), "key": self.schedule.key[:12],
                "budget": self.schedule.meta.get("budget"), "bubbling": self.schedule.meta.get("bubbling"),
                "grids": [{"steps": g.n_steps, "predicted_block_evals": g.predicted_block_evals,
                           "uncached_block_evals": len(self.blocks) * g.n_steps} for g in self.schedule.grids]}
