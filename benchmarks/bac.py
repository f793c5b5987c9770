"""Block-wise adaptive caching (BAC) benchmark: uncached vs BAC at a few budgets, for DDPM-100 and DDIM-10, and
BAC composed with the authors' RTI, on the same trained transformer weights, on PushT and the arm-lift task.

Per task and row: success with its Wilson 95% interval (and PushT's mean max-coverage) over seeded episodes
(`rtdp.envs.evaluate`), wall time per chunk at batch 1 (p50/p99, the episode's start-up call apart), and block
evaluations per chunk, counted by the cache's hook beside the schedule's prediction and the uncached count. Each
BAC row calibrates its schedule first (`rtdp calibrate-cache`'s code: held-out windows of the checkpoint's
dataset) or reuses the one already beside the checkpoint. `--across-calls` adds the SDP experiment: an
`sdp_transformer` checkpoint uncached vs `cache=across_calls:R` (block outputs reused across consecutive plans).

Resumable: every finished row is written to `benchmarks/results/bac.json` at once and skipped on the next run
(same episodes and seed) unless `--force`.

    .venv/bin/python benchmarks/bac.py                                   # both tasks, default checkpoints
    .venv/bin/python benchmarks/bac.py --tasks pusht --episodes 50 --across-calls --sdp-pusht-ckpt RUN

Targets (the issue's): DDPM-100 chunks >= 2.5x faster at >= 95% of the uncached success, DDIM-10 >= 1.5x at
>= 95%; `targets` in the JSON says which budget reaches them. Wall times on a shared 2-core CPU are noisy: the
JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtdp import metrics
from rtdp.metrics import episode_scores, paired_ratio_interval, score_summary, task_score
from rtdp.obs_window import ObsWindow
from rtdp.types import PlanContext

TASKS = {  # task -> (env id, default transformer checkpoint, default sdp_transformer checkpoint, max steps)
    "pusht": ("pusht", "runs/bac/pusht_transformer", "runs/bac/pusht_sdp_transformer", 300),
    "arm": ("arm-lift", "runs/bac/arm_transformer", "runs/bac/arm_sdp_transformer", 200),
}
SAMPLERS = {  # sampler row family -> (its overrides, default BAC budgets on its longest grid)
    "ddpm100": (["sampler=ddpm", "sampler.num_steps=100", "sampler.n_action_steps=8"], [5, 10, 20]),
    "ddim10": (["sampler=ddim", "sampler.num_steps=10", "sampler.n_action_steps=8"], [3, 5]),
    "rti": (["sampler=rti"], [10]),  # the authors' RTI: a DDPM-100 cold start, then 3 evaluations per step
}
TARGETS = {"ddpm100": 2.5, "ddim10": 1.5}
# what a cache hook reports per plan: blocks evaluated, the schedule's prediction (BAC), blocks without the cache,
# and blocks evaluated for the fresh tail tokens only (the across-calls experiment)
BLOCK_COUNTS = ("block_evals", "block_evals_predicted", "block_evals_uncached", "block_tail_evals")  # chunk speed-up at >= 95% of the uncached success


def rows(args: argparse.Namespace) -> list[tuple[str, str, list[str], dict[str, Any] | None]]:
    """(row name, sampler family, overrides, BAC calibration or None) of every row asked for."""
    out = []
    for family in args.samplers:
        overrides, budgets = SAMPLERS[family]
        out.append((family, family, overrides, None))
        for m in (args.budgets.get(family) or budgets):
            out.append((f"{family}_bac_m{m}", family, overrides,
                        {"budget": m, "bubbling": args.bubbling, "warm_budget": args.warm_budget}))
    return out


def ensure_schedule(ckpt: str, overrides: list[str], calib: dict[str, Any], observations: int, seed: int
                    ) -> tuple[Path, bool]:
    """The schedule file for this checkpoint, sampler and calibration: reused when it is beside the checkpoint
    already, else calibrated as `rtdp calibrate-cache` does and written there (with its plot). (path, reused)."""
    from rtdp.cli.calibrate_rti import observation_pairs
    from rtdp.policy.caching.attach import CACHE_DIR, grids_for, schedule_name, weights_sha256
    from rtdp.policy.caching.calibrate import calibrate, figure_data, plot_schedule
    from rtdp.policy.caching.schedule import schedule_key
    from rtdp.policy.loading import load_policy

    policy = load_policy(ckpt, overrides, backend="eager")
    key = schedule_key(weights_sha256(policy), grids_for(policy))
    path = Path(policy.checkpoint_path) / CACHE_DIR / schedule_name(policy.sampler.label, key, calib["budget"],
                                                                    calib["bubbling"])
    if path.is_file():
        return path, True
    now, nxt, source = observation_pairs(policy, policy.config, policy.sampler.n_action_steps, None, observations,
                                         seed)
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    schedule, stats = calibrate(policy, now, nxt, calib["budget"], calib["bubbling"], calib.get("warm_budget"),
                                generator=gen, meta={"checkpoint": str(policy.checkpoint_path),
                                                     "overrides": overrides, **source})
    schedule.save(path)
    metrics.save_figure(plot_schedule(schedule, stats), path.with_suffix(".similarity.png"),
                        metrics.record("bac_calibration", **figure_data(schedule, stats)))
    return path, False


def chunk_timing(policy: Any, env_id: str, obs_mode: str | None, n_calls: int, seed: int) -> dict[str, Any]:
    """Single env, batch 1: time `n_calls` plans after each episode's start-up call (episodes restart on their
    end), and sum the block evaluations the cache's hook reports per plan."""
    from rtdp.envs import make

    env = make(env_id, obs_mode=obs_mode)
    per_call, startup, per_call_by_warm = [], [], {"cold": [], "warm": []}
    counted = dict.fromkeys(BLOCK_COUNTS, 0)
    plans = 0
    try:
        ep_seed = seed
        while len(per_call) < n_calls:
            obs, _ = env.reset(seed=ep_seed)
            ep_seed += 1
            policy.reset()
            win = ObsWindow(policy.n_obs_steps, batched=False)
            win.start(obs)
            first, done, ctx = True, False, PlanContext()
            while not done and len(per_call) < n_calls:
                t0 = time.perf_counter()
                chunk = policy.act(win.window(), ctx)
                dt = time.perf_counter() - t0
                if first:
                    startup.append(dt)
                else:
                    per_call.append(dt)
                    per_call_by_warm["warm" if chunk.info.get("warm") else "cold"].append(dt)
                    plans += 1
                    for key in BLOCK_COUNTS:
                        counted[key] += int(chunk.info.get(key, 0))
                exe = chunk.executable[0]
                ctx = PlanContext(n_executed=exe.shape[0])
                for action in exe:
                    obs, _, term, trunc, _ = env.step(action)
                    win.push(obs)
                    done = bool(term or trunc)
                    if done:
                        break
                first = False
    finally:
        env.close()
    out = {"per_chunk": metrics.summarize_latencies(per_call), "startup_call": metrics.summarize_latencies(startup),
           "timed_chunks": len(per_call)}
    if per_call_by_warm["warm"]:
        out["per_chunk_warm"] = metrics.summarize_latencies(per_call_by_warm["warm"])
    if counted["block_evals_uncached"]:  # a cache reported its counts
        out.update({f"{key}_per_chunk": value / max(plans, 1) for key, value in counted.items()})
    return out


def run_row(task: str, ckpt: str, name: str, overrides: list[str], cache: str | None, calib: dict[str, Any] | None,
            args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate one row: success over seeded episodes, batch-1 chunk timing, block evaluations."""
    from rtdp.envs.evaluate import evaluate
    from rtdp.policy.loading import load_policy

    env_id, _, _, max_steps = TASKS[task]
    max_steps = args.max_steps or max_steps
    t0 = time.perf_counter()
    entry: dict[str, Any] = {"overrides": overrides, "cache": cache}
    if calib is not None:
        path, reused = ensure_schedule(ckpt, overrides, calib, args.observations, args.seed)
        cache = str(path)
        entry.update(cache=cache, calibration={**calib, "observations": args.observations, "reused": reused})
    policy = load_policy(ckpt, overrides, backend="eager", cache=cache)
    obs_mode = policy.config.task.env.get("obs_mode")
    print(f"[bac] {task}/{name}: {args.episodes} episodes ...", file=sys.stderr, flush=True)
    torch.manual_seed(args.seed)  # every row draws its noise from the same seed
    rec = evaluate(policy, env_id, n_episodes=args.episodes, seed=args.seed, n_envs=args.n_envs, obs_mode=obs_mode,
                   max_steps=max_steps, progress=False)
    ev = rec["summary"]
    entry.update({"sampler": policy.sampler.describe(), "episodes": args.episodes, "seed": args.seed,
                  "max_steps": max_steps, **score_summary(rec["episodes"]), "nfe_per_action": ev["nfe_per_action"],
                  "episode_scores": episode_scores(rec["episodes"]),
                  "eval_wall_s": ev["wall_s"]})
    for key in ("block_evals_per_plan", "block_evals_uncached_per_plan"):
        if key in ev:
            entry[f"eval_{key}"] = ev[key]
    entry.update(chunk_timing(policy, env_id, obs_mode, args.timing_calls, args.seed))
    entry["wall_s"] = time.perf_counter() - t0
    print(f"[bac] {task}/{name}: score {task_score(entry):.3f}, success {entry['success_rate']:.2f}, chunk p50 "
          f"{entry['per_chunk']['p50_ms']:.1f} ms, blocks/chunk {entry.get('block_evals_per_chunk')}",
          file=sys.stderr, flush=True)
    return entry


def check_targets(res: dict[str, Any]) -> dict[str, Any]:
    """Per sampler family: each BAC budget's chunk speed-up (p50) and score relative to uncached (with the paired
    bootstrap interval where both rows kept their per-episode scores on the same seeds), and the budgets that
    reach the issue's targets."""
    out: dict[str, Any] = {}
    for family, speed in TARGETS.items():
        base = res.get(family)
        if base is None:
            continue
        rows_ = {k: v for k, v in res.items() if k.startswith(f"{family}_bac_")}
        cmp = {}
        for k, v in rows_.items():
            ratio = base["per_chunk"]["p50_ms"] / max(v["per_chunk"]["p50_ms"], 1e-9)
            rel = task_score(v) / task_score(base) if task_score(base) > 0 else None
            cmp[k] = {"speedup_p50": ratio, "score": "mean_max_coverage" if "mean_max_coverage" in v else
                      "success_rate", "success_vs_uncached": rel,
                      "meets": bool(ratio >= speed and rel is not None and rel >= 0.95)}
            a, b = v.get("episode_scores"), base.get("episode_scores")
            if rel is not None and a and b and len(a) == len(b) and v.get("seed") == base.get("seed"):
                _, lo, hi = paired_ratio_interval(a, b)
                cmp[k].update(score_ratio_ci95_paired=[lo, hi], meets_beyond_noise=bool(ratio >= speed and lo >= 0.95))
        out[family] = {"target_speedup": speed, "rows": cmp, "reached_by": [k for k, c in cmp.items() if c["meets"]]}
    return out


def plot(rec: dict[str, Any], png: Path) -> None:
    """Per task: success (with its interval) against p50 chunk time, one point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = rec["tasks"]
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(5.5 * max(len(tasks), 1), 4), squeeze=False)
    for ax, (task, res) in zip(axes[0], tasks.items()):
        for name, row in res["rows"].items():
            lo, hi = row.get("coverage_ci95", row["success_ci95"])
            x, y = row["per_chunk"]["p50_ms"], task_score(row)
            ax.errorbar(x, y, yerr=[[y - lo], [hi - y]], fmt="o" if "_bac_" not in name else "s", capsize=3)
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("chunk wall time p50, ms (batch 1, log)")
        by_coverage = any("mean_max_coverage" in row for row in res["rows"].values())
        ax.set_ylabel("mean max coverage (t 95%)" if by_coverage else "success (Wilson 95%)")
        ax.set_title(f"{task}: uncached (o) vs BAC (s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--pusht-ckpt", default=TASKS["pusht"][1])
    ap.add_argument("--arm-ckpt", default=TASKS["arm"][1])
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    ap.add_argument("--budget", nargs=2, action="append", default=[], metavar=("SAMPLER", "M"),
                    help="a BAC budget row for a sampler family (repeatable; replaces its defaults)")
    ap.add_argument("--bubbling", type=int, default=3, help="Bubbling Union blocks (the authors' 3)")
    ap.add_argument("--warm-budget", type=int, default=None, help="BAC budget on RTI's warm step list")
    ap.add_argument("--observations", type=int, default=256, help="calibration windows per schedule")
    ap.add_argument("--episodes", type=int, default=50, help="seeds per row and task")
    ap.add_argument("--max-steps", type=int, default=None, help="episode step limit (default: the task's)")
    ap.add_argument("--n-envs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=100000)
    ap.add_argument("--timing-calls", type=int, default=40, help="chunks timed per row (batch 1)")
    ap.add_argument("--across-calls", action="store_true", help="also the SDP experiment (cache=across_calls:R)")
    ap.add_argument("--refresh", type=int, nargs="+", default=[2, 4], help="R of across_calls:R")
    ap.add_argument("--sdp-pusht-ckpt", default=TASKS["pusht"][2])
    ap.add_argument("--sdp-arm-ckpt", default=TASKS["arm"][2])
    ap.add_argument("--force", action="store_true", help="rerun rows already in the results")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bac.json"))
    args = ap.parse_args(argv)
    budgets: dict[str, list[int]] = {}
    for family, m in args.budget:
        if family not in SAMPLERS:
            ap.error(f"--budget {family} {m}: the sampler is one of {', '.join(SAMPLERS)}")
        budgets.setdefault(family, []).append(int(m))
    args.budgets = budgets
    os.environ.setdefault("MUJOCO_GL", "egl")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rec = json.loads(out.read_text()) if out.is_file() else {}
    tasks: dict[str, Any] = dict(rec.get("tasks", {}))

    def save() -> dict[str, Any]:
        for res in tasks.values():  # every row's targets, those kept from an earlier run included
            res["targets"] = check_targets(res["rows"])
        new = metrics.record("bac_benchmark", tasks=tasks, notes=[
            "same weights for every row of a task (policy=transformer; the SDP experiment: policy=sdp_transformer)",
            "per_chunk: batch-1 wall time of a plan after the episode's start-up call",
            "block evaluations per chunk: counted by the cache hook; predicted by the schedule; uncached = blocks x NFE",
            "wall times measured on a shared 2-core CPU while other jobs ran: noisy"])
        metrics.write_json(out, new)
        return new

    for task in args.tasks:
        ckpt = args.pusht_ckpt if task == "pusht" else args.arm_ckpt
        if not Path(ckpt).exists():
            print(f"[bac] no checkpoint at {ckpt} for {task}: train a transformer first (policy=transformer; "
                  "docs/caching.md)", file=sys.stderr)
            return 2
        res = tasks.setdefault(task, {"checkpoint": str(Path(ckpt).resolve()), "rows": {}})
        plan = [(name, ckpt, ov, None, calib) for name, _, ov, calib in rows(args)]
        if args.across_calls:
            sdp = args.sdp_pusht_ckpt if task == "pusht" else args.sdp_arm_ckpt
            if not Path(sdp).exists():
                print(f"[bac] no sdp_transformer checkpoint at {sdp} for {task}: --across-calls needs one",
                      file=sys.stderr)
                return 2
            plan.append(("sdp", sdp, ["sampler=sdp"], None, None))
            plan += [(f"sdp_across_calls_r{r}", sdp, ["sampler=sdp"], f"across_calls:{r}", None) for r in args.refresh]
        for name, path, overrides, cache, calib in plan:
            done = res["rows"].get(name)
            if (done and not args.force and done.get("episodes") == args.episodes and done.get("seed") == args.seed
                    and done.get("max_steps") == (args.max_steps or TASKS[task][3])):
                print(f"[bac] {task}/{name}: in {out} already (--force reruns it)", file=sys.stderr)
                continue
            res["rows"][name] = {**run_row(task, path, name, overrides, cache, calib, args),
                                 "loadavg_after": list(os.getloadavg())}
            save()
    new = save()
    plot(new, out.with_suffix(".png"))
    print(json.dumps({t: r.get("targets") for t, r in tasks.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
