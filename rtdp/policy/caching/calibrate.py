"""Calibrating a block-cache schedule (BAC's Adaptive Caching Scheduler + Bubbling Union) on recorded observations.

The uncached sampler runs on the observations (a cold plan on each window and, for a warm-starting sampler such as
RTI, the warm plan on the window `n_action_steps` later), recording every block's output at every step
(`BlockRecorder`). Per grid and block: the mean cosine step-similarity matrix, the DP's `budget` update steps, the
caching error; then Bubbling Union on the `bubbling` blocks of largest error. The grid with the most steps takes
`budget`; a shorter grid (RTI's warm step list) takes `warm_budget`, by default the same fraction of its steps
(rounded up).
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from rtdp.policy.caching.attach import grids_for, weights_sha256
from rtdp.policy.caching.grids import CacheError, Grid, describe_grid
from rtdp.policy.caching.hook import require_transformer
from rtdp.policy.caching.recorder import BlockRecorder, GridStats
from rtdp.policy.caching.schedule import CacheSchedule, GridSchedule
from rtdp.policy.caching.scheduler import bubbling_union, optimal_updates, rank_blocks
from rtdp.types import PlanContext

Observations = Mapping[str, torch.Tensor]  # normalised windows {key: [N, To, ...]}


def grid_budgets(grids: list[Grid], budget: int, warm_budget: int | None = None) -> dict[Grid, int]:
    """Update steps per block for each grid: `budget` for the longest, `warm_budget` (default: the same fraction,
    rounded up) for shorter ones; a CacheError when a budget is outside [1, the grid's steps]."""
    longest = max(len(g) for g in grids)
    if not 1 <= int(budget) <= longest:
        raise CacheError(f"budget={budget} is outside [1, {longest}]: the sampler's grid has {longest} steps "
                         f"({describe_grid(max(grids, key=len))}) and each block updates at most once per step")
    out = {}
    for g in grids:
        if len(g) == longest:
            out[g] = int(budget)
        elif warm_budget is not None:
            if not 1 <= int(warm_budget) <= len(g):
                raise CacheError(f"warm_budget={warm_budget} is outside [1, {len(g)}]: the warm grid has {len(g)} "
                                 f"steps ({describe_grid(g)})")
            out[g] = int(warm_budget)
        else:
            out[g] = max(1, min(len(g), math.ceil(int(budget) * len(g) / longest)))
    return out


def _rows(obs: Observations, start: int, stop: int) -> dict[str, torch.Tensor]:
    return {k: v[start:stop] for k, v in obs.items()}


def record_statistics(policy: Any, now: Observations, nxt: Observations | None, batch: int = 16,
                      generator: torch.Generator | None = None,
                      on_batch: Callable[[], None] | None = None) -> dict[Grid, GridStats]:
    """Run the policy's uncached sampler on the windows `now` (and, when `nxt` is given, the warm plan on `nxt`
    after each), batch by batch, and return every block's step statistics per grid visited."""
    recorder = BlockRecorder(require_transformer(policy.denoiser, "calibrate-cache"))
    n = next(iter(now.values())).shape[0]
    hooks = list(policy.call_hooks)
    policy.call_hooks[:] = [recorder]  # the uncached sampler, whatever was attached
    was_training = policy.training
    policy.eval()
    try:
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            policy.reset()
            policy.plan_chunk(_rows(now, start, stop), PlanContext(generator=generator))
            if nxt is not None:
                executed = policy.plan.n_exec
                policy.plan_chunk(_rows(nxt, start, stop), PlanContext(n_executed=executed, generator=generator))
            if on_batch is not None:
                on_batch()
    finally:
        policy.call_hooks[:] = hooks
        policy.reset()
        policy.train(was_training)
    return recorder.stats


def build_schedule(stats: Mapping[Grid, GridStats], blocks: list[str], budgets: Mapping[Grid, int],
                   bubbling: int, weights: str, meta: Mapping[str, Any] | None = None) -> CacheSchedule:
    """The schedule from recorded statistics: per grid and block the DP's update steps, then Bubbling Union."""
    grids = []
    for levels, budget in budgets.items():
        if levels not in stats:
            raise CacheError(f"the calibration never visited the grid {describe_grid(levels)}; use more observations")
        st = stats[levels]
        sim, err = st.similarity, st.caching_error
        chosen = {b: tuple(optimal_updates(sim[i], budget)) for i, b in enumerate(blocks)}
        errors = {b: float(err[i]) for i, b in enumerate(blocks)}
        updates, bubbled = bubbling_union(chosen, errors, min(int(bubbling), len(blocks)))
        grids.append(GridSchedule(levels, updates, budget, tuple(bubbled), errors))
    grids.sort(key=lambda g: -g.n_steps)
    return CacheSchedule(weights, tuple(blocks), tuple(grids), dict(meta or {}))


def calibrate(policy: Any, now: Observations, nxt: Observations | None, budget: int, bubbling: int = 3,
              warm_budget: int | None = None, batch: int = 16, generator: torch.Generator | None = None,
              on_batch: Callable[[], None] | None = None, meta: Mapping[str, Any] | None = None
              ) -> tuple[CacheSchedule, dict[Grid, GridStats]]:
    """Calibrate a schedule for `policy` (its weights and its sampler's grids) on normalised observation windows;
    returns it (not yet written) and the statistics it was built from. `nxt` (the windows `n_action_steps`
    later) is used only when the sampler visits a second, warm grid."""
    require_transformer(policy.denoiser, "calibrate-cache")
    grids = grids_for(policy)
    budgets = grid_budgets(grids, budget, warm_budget)
    n = next(iter(now.values())).shape[0]
    if n < 1:
        raise CacheError("calibrate-cache needs at least one observation (observations >= 1)")
    stats = record_statistics(policy, now, nxt if len(grids) > 1 else None, batch, generator, on_batch)
    blocks = policy.denoiser.block_names()
    info = {"created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "metric": "cosine",
            "budget": int(budget), "warm_budget": warm_budget, "bubbling": int(bubbling), "observations": int(n),
            "sampler": policy.sampler.describe(), **dict(meta or {})}
    return build_schedule(stats, blocks, budgets, bubbling, weights_sha256(policy), info), stats


def plot_schedule(schedule: CacheSchedule, stats: Mapping[Grid, GridStats]):
    """A figure: each block's step-similarity matrix on the longest grid with its update steps marked (DP's in
    white, those Bubbling Union added in red), and the update steps of every block on every grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = list(schedule.blocks)
    kinds = ["self_attn", "cross_attn", "ffn"]
    layers = sorted({int(b.split(".")[0][5:]) for b in blocks})
    main = schedule.grids[0]
    sim = stats[main.levels].similarity
    n_grids = len(schedule.grids)
    fig = plt.figure(figsize=(3 * 3 + 1, 2.4 * len(layers) + 2.6 * n_grids))
    gs = fig.add_gridspec(n_grids + len(layers), 3, height_ratios=[2.6] * n_grids + [2.4] * len(layers))
    for gi, grid in enumerate(schedule.grids):
        ax = fig.add_subplot(gs[gi, :])
        table = np.array(grid.table(blocks), dtype=float).T  # [blocks, steps]
        ax.imshow(table, aspect="auto", cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
        ax.set_yticks(range(len(blocks)), [f"{b} (BU)" if b in grid.bubbled else b for b in blocks], fontsize=5)
        for label, b in zip(ax.get_yticklabels(), blocks):
            if b in grid.bubbled:  # the blocks Bubbling Union refreshed, in red
                label.set_color("tab:red")
        ax.set_xlabel(f"step of the grid ({describe_grid(grid.levels)})")
        ax.set_title(f"update steps per block (black; BU = Bubbling Union, red), budget {grid.budget}: "
                     f"{grid.predicted_block_evals} of "
                     f"{len(blocks) * grid.n_steps} block evaluations per plan", fontsize=9)
    for bi, b in enumerate(blocks):
        layer, kind = int(b.split(".")[0][5:]), b.split(".")[1]
        ax = fig.add_subplot(gs[n_grids + layers.index(layer), kinds.index(kind)])
        ax.imshow(sim[bi], cmap="viridis", vmin=min(0.0, float(sim[bi].min())), vmax=1.0, interpolation="nearest")
        updates = set(main.updates[b])
        bubbled_extra = updates - set(optimal_updates(sim[bi], main.budget))
        for k in sorted(updates):
            ax.plot(k, k, "o", ms=2.5, color="tab:red" if k in bubbled_extra else "white")
        ax.set_title(f"{b} (err {main.caching_error.get(b, 0):.3g})", fontsize=7)
        ax.tick_params(labelsize=5)
    fig.suptitle(f"BAC schedule: cosine step similarity per block ({schedule.meta.get('observations')} observations; "
                 f"Bubbling Union on {', '.join(main.bubbled) or 'no blocks'})", fontsize=9)
    fig.tight_layout()
    return fig


def figure_data(schedule: CacheSchedule, stats: Mapping[Grid, GridStats]) -> dict[str, Any]:
    """What the plot shows, for the JSON beside it: per grid the similarity matrices (4 decimals), errors, ranks."""
    blocks = list(schedule.blocks)
    out = []
    for grid in schedule.grids:
        st = stats[grid.levels]
        out.append({"levels": list(grid.levels), "updates": {b: list(u) for b, u in grid.updates.items()},
                    "bubbled": list(grid.bubbled),
                    "ranked_by_caching_error": rank_blocks(grid.caching_error, blocks),
                    "similarity": {b: np.round(st.similarity[i], 4).tolist() for i, b in enumerate(blocks)},
                    "caching_error": dict(grid.caching_error)})
    return {"schedule": str(schedule.path) if schedule.path else None, "key": schedule.key, "grids": out}
