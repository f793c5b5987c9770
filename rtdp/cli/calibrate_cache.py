"""`rtdp calibrate-cache checkpoint=PATH budget=M [bubbling=3] [observations=256] [warm_budget=N] [episodes=N]
[seed=0] [batch=16] [sampler=ddpm|ddim|rti|rti_renoise sampler.KEY=VALUE ...]`: calibrate a block-wise adaptive
cache (BAC, Ji et al. 2025) for a transformer policy and the sampler it will run with.

Runs the uncached sampler on `observations` recorded windows of the checkpoint's task (its held-out episodes),
recording every block's residual at every step; per block it builds the cosine step-similarity matrix, picks the
`budget` update steps by dynamic programming and applies Bubbling Union to the `bubbling` blocks of largest
caching error. Writes the versioned schedule `<checkpoint>/cache/bac-<sampler>-<key>-m<M>-bu<N>.json` (keyed by
the weights' hash and the sampler's step grids), a plot beside it (`….similarity.png` + `.json`), and prints the
override that uses it (`cache=bac` or `cache=PATH`, with the same sampler overrides). docs/caching.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from rtdp.cli.args import Key, parse_keys
from rtdp.cli.main import CLIError

USAGE = ("rtdp calibrate-cache checkpoint=PATH budget=M [bubbling=3] [observations=256] [warm_budget=N] "
         "[episodes=N] [seed=0] [batch=16] [threads=N] [progress=true] [sampler=ddpm|ddim ...] [sampler.KEY=VALUE ...]")
KEYS = {
    "checkpoint": Key("str", required=True, help="a run or checkpoint directory of a transformer policy"),
    "budget": Key("int", required=True, min=1, help="update steps per block on the sampler's (longest) grid"),
    "bubbling": Key("int", 3, min=0, help="blocks of largest caching error that Bubbling Union refreshes"),
    "observations": Key("int", 256, min=1, help="recorded observation windows to calibrate on"),
    "warm_budget": Key("int", None, min=1, help="update steps per block on a warm-start grid (RTI; default: "
                       "the budget's fraction of the longest grid)"),
    "episodes": Key("int", None, min=1, help="held-out episodes to take windows from (default: all of them)"),
    "seed": Key("int", 0, min=0, help="window choice and sampler noise"),
    "batch": Key("int", 16, min=1, help="observations per sampler call"),
    "threads": Key("int", None, min=1, help="torch intra-op threads"),
    "progress": Key("bool", True, help="show a progress bar"),
}


def _is_override(key: str) -> bool:
    return "." in key or key.lstrip("+") in ("sampler", "task")


def main(argv: list[str]) -> int:
    opts, overrides = parse_keys(argv, KEYS, USAGE, __doc__, rest=_is_override,
                                 tail="sampler=NAME and sampler.KEY=VALUE (and task.KEY=VALUE) override the "
                                      "checkpoint's config; pass the same ones with cache= later.")
    ckpt_arg = Path(opts["checkpoint"])
    if not ckpt_arg.exists():
        raise CLIError(f"checkpoint={ckpt_arg} does not exist; pass a run directory or checkpoints/step_* "
                       "written by `rtdp train` with policy=transformer or policy=sdp_transformer")

    import torch

    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    from rtdp import metrics
    from rtdp.cli.calibrate_rti import observation_pairs
    from rtdp.policy.caching.attach import CACHE_DIR, grids_for, schedule_name
    from rtdp.policy.caching.calibrate import calibrate, figure_data, grid_budgets, plot_schedule
    from rtdp.policy.caching.grids import CacheError
    from rtdp.policy.caching.hook import require_transformer
    from rtdp.policy.loading import load_policy

    try:
        policy = load_policy(ckpt_arg, overrides, backend="eager")
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise CLIError(f"cannot load {ckpt_arg}: {err}") from None
    try:  # every check that needs the policy, before any observation is read or file written
        require_transformer(policy.denoiser, "calibrate-cache (BAC)")
        grids = grids_for(policy)
        grid_budgets(grids, opts["budget"], opts["warm_budget"])
        n_blocks = len(policy.denoiser.block_names())
        if opts["bubbling"] > n_blocks:
            raise CacheError(f"bubbling={opts['bubbling']} is more than this transformer's {n_blocks} blocks")
    except CacheError as err:
        raise CLIError(str(err)) from None
    now, nxt, source = observation_pairs(policy, policy.config, policy.sampler.n_action_steps, opts["episodes"],
                                         opts["observations"], opts["seed"])
    n = next(iter(now.values())).shape[0]
    gen = torch.Generator(device=policy.device).manual_seed(opts["seed"])
    meta = {"checkpoint": str(policy.checkpoint_path), "overrides": list(overrides), **source}
    from rich.progress import Progress

    with Progress(transient=True, disable=not opts["progress"]) as bar:
        task = bar.add_task(f"recording {n_blocks} blocks on {n} observations", total=-(-n // opts["batch"]))
        try:
            schedule, stats = calibrate(policy, now, nxt, opts["budget"], opts["bubbling"], opts["warm_budget"],
                                        batch=opts["batch"], generator=gen, on_batch=lambda: bar.advance(task),
                                        meta=meta)
        except CacheError as err:
            raise CLIError(str(err)) from None
    directory = Path(policy.checkpoint_path) / CACHE_DIR
    path = schedule.save(directory / schedule_name(policy.sampler.label, schedule.key, opts["budget"],
                                                   opts["bubbling"]))
    rec = metrics.record("bac_calibration", **figure_data(schedule, stats))
    png, _js = metrics.save_figure(plot_schedule(schedule, stats), path.with_suffix(".similarity.png"), rec)
    print(json.dumps({"schedule": str(path), "plot": str(png), "observations": n, "grids": [
        {"steps": g.n_steps, "budget": g.budget, "bubbled": list(g.bubbled),
         "block_evals_per_plan": g.predicted_block_evals, "uncached_block_evals_per_plan": n_blocks * g.n_steps}
        for g in schedule.grids]}))
    same = " ".join(overrides)
    print(f"use: cache={path}{' ' + same if same else ''} (or cache=bac with the same sampler overrides)")
    return 0
