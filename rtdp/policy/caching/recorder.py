"""What calibration measures: every block's output at every step of the uncached sampler, reduced plan by plan to
the sums a schedule is built from (the full outputs of a few hundred observations × K' steps × every block would
not fit in memory).

`BlockRecorder` is a call hook that runs the denoiser block by block (the same sums as its own forward), keeps each
block's residual at every step of the plan, and at `end` adds to its grid's `GridStats`: the per-observation
cosine similarity between every pair of steps (summed) and the mean L1 distance between every pair of steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from rtdp.policy.caching.grids import CacheError, Grid, grid_levels
from rtdp.policy.caching.hook import require_transformer
from rtdp.policy.call import CallHook, DenoiserCall
from rtdp.policy.transformer import TransformerDenoiser


@dataclass
class GridStats:
    """Sums over observations for one grid: `similarity_sum[block, a, b]` (cosine of the block's output at steps
    a and b, per observation) and `l1_sum[block]` (mean L1 distance over all pairs of steps, per observation)."""

    levels: Grid
    n_blocks: int
    observations: int = 0
    similarity_sum: np.ndarray = field(init=False)
    l1_sum: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        k = len(self.levels)
        self.similarity_sum = np.zeros((self.n_blocks, k, k))
        self.l1_sum = np.zeros(self.n_blocks)

    def add(self, block: int, outputs: Tensor) -> None:
        """One plan's outputs of `block` at every step, `[K', B, ...]`."""
        k, b = outputs.shape[:2]
        x = outputs.reshape(k, b, -1).float()
        unit = x / x.norm(dim=2, keepdim=True).clamp_min(1e-12)
        self.similarity_sum[block] += torch.einsum("kbn,jbn->kj", unit, unit).double().cpu().numpy()
        if k > 1:  # Σ_{i<j} |v_i - v_j| = Σ_r (2r - k - 1) v_(r) over each element's sorted values
            weights = (2 * torch.arange(1, k + 1, dtype=x.dtype, device=x.device) - k - 1).view(k, 1, 1)
            pairs = (weights * x.sort(dim=0).values).sum(dim=0).double()  # [B, N]
            self.l1_sum[block] += float((pairs.mean(dim=1) / (k * (k - 1) / 2)).sum())

    @property
    def similarity(self) -> np.ndarray:
        """`[blocks, K', K']` mean step-similarity matrices."""
        return self.similarity_sum / max(self.observations, 1)

    @property
    def caching_error(self) -> np.ndarray:
        """`[blocks]` mean pairwise L1 distance of each block's output across steps."""
        return self.l1_sum / max(self.observations, 1)


class BlockRecorder(CallHook):
    """Runs every plan block by block, uncached, and accumulates each block's step statistics per grid."""

    def __init__(self, denoiser: TransformerDenoiser):
        self.denoiser = require_transformer(denoiser, "calibrate-cache")
        self.blocks = tuple(denoiser.block_names())
        self.stats: dict[Grid, GridStats] = {}
        self._outputs: list[list[Tensor]] = []
        self._levels: Grid | None = None

    def begin(self, call: DenoiserCall) -> None:
        levels = grid_levels(call.grid or [])
        if levels is None:
            raise CacheError("block caching needs one noise level per step; this sampler evaluates per-position "
                             "levels (sampler=sdp): calibrate with sampler=ddpm, ddim, rti or rti_renoise")
        self._levels = levels
        self._outputs = [[] for _ in self.blocks]
        call.forward = self._forward_for(call)

    def _forward_for(self, call: DenoiserCall):
        denoiser, outputs = self.denoiser, self._outputs

        def forward(x: Tensor, level: Tensor) -> Tensor:
            h, ctx = denoiser.embed(x, level, call.cond)
            for i, block in enumerate(denoiser.blocks):
                r = block.residual(h, ctx)
                outputs[i].append(r.detach())
                h = h + r
            return denoiser.output(h)

        return forward

    def end(self, call: DenoiserCall) -> None:
        levels, outputs = self._levels, self._outputs
        self._outputs, self._levels = [], None
        if levels is None or not outputs or not outputs[0]:
            return
        if len(outputs[0]) != len(levels):
            raise CacheError(f"the sampler announced {len(levels)} steps and evaluated {len(outputs[0])}; a block "
                             "cache needs the announced grid to list every evaluation")
        stats = self.stats.get(levels)
        if stats is None:
            stats = self.stats[levels] = GridStats(levels, len(self.blocks))
        for i, steps in enumerate(outputs):
            stats.add(i, torch.stack(steps))
        stats.observations += int(outputs[0][0].shape[0])
