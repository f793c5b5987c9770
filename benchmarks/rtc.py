"""Real-time chunking benchmark: what each way of running a diffusion policy asynchronously does as the inference
delay grows, on PushT and the rtdp arm, on one checkpoint per task (`policy=sdp_unet`, so SDP runs on it too).

Cells: task × method × delay d ∈ {0, 1, 2, 3, 4} control steps, 50 seeded episodes each, evaluated by
`rtdp.envs.evaluate(…, delay=d, execution=…)`: every plan after the first arrives d steps after its observation
while the env keeps executing the earlier plans. Methods, on the same weights:

- `naive`: DDIM-10, s = 8 actions per plan, the new chunk replaces the old one at the delay (naive async);
- `blend`: the same plans, LeRobot's blending of overlapping actions (0.3 old + 0.7 new);
- `ensemble`: the same plans, ACT's temporal ensembling (exp(-0.01 i) over every chunk predicting the step);
- `rtc_guided`, `rtc_inpaint`: `sampler=rtc` around DDIM-10, s = 8, naive switching (RTC makes the seam agree);
  `rtc_inpaint_soft`: inpainting by the soft prefix weights instead of the frozen prefix only;
- `sdp`: streaming diffusion, the checkpoint's layout; `rti`: RTI as its authors run it (`sampler=rti`).

Per cell: success with its Wilson 95% interval (and PushT's mean max-coverage with a t interval), the seam metric
(max / mean |a_t − a_{t−1}| at chunk boundaries and inside chunks, jerk), NFE, VJPs and wall time per control step
from a batch-1 timing run under the same delay (the guided variant's backward passes count), plus the success of
synchronous DDIM-10 (`naive` at d = 0) as the reference. The JSON is rewritten after every cell and a rerun skips
the cells already there with the same settings, so a crash loses nothing. Targets (the issue's): at d = 3 RTC's
seam ≤ 1/3 of naive async, and its success ≥ 95% of synchronous DDIM-10; and where each method breaks as d grows.

    .venv/bin/python benchmarks/rtc.py                                    # everything, default checkpoints
    .venv/bin/python benchmarks/rtc.py --tasks pusht --episodes 2 --max-steps 60 --out /tmp/rtc.json   # a smoke run

Tuning: `--variant NAME=METHOD:key=value,...` adds a method NAME that runs METHOD with extra sampler overrides
(`--variant guided_b100=rtc_guided:sampler.beta=100`); tune on other seeds (`--seed`) than the ones reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtdp import metrics
from rtdp.metrics import episode_scores, paired_ratio_interval, score_summary, task_score

TASKS = {  # benchmark task -> (env id, default checkpoint, episode limit)
    "pusht": ("pusht", "runs/streaming/pusht_sdp_unet", 300),
    "arm": ("arm-lift", "runs/bench/train_arm_lift", 200),  # benchmarks/train_arm_lift.py
}
DDIM10 = ["sampler=ddim", "sampler.num_steps=10", "sampler.n_action_steps=8"]
RTC = ["sampler=rtc", "sampler.base=ddim", "sampler.num_steps=10", "sampler.n_action_steps=8"]
METHODS: dict[str, tuple[list[str], str]] = {  # method -> (checkpoint overrides, execution scheme)
    "naive": (DDIM10, "naive"),
    "blend": (DDIM10, "blend"),
    "ensemble": (DDIM10, "ensemble"),
    "rtc_guided": ([*RTC, "sampler.variant=guided"], "naive"),
    "rtc_inpaint": ([*RTC, "sampler.variant=inpaint", "sampler.inpaint_mask=frozen"], "naive"),
    "rtc_inpaint_soft": ([*RTC, "sampler.variant=inpaint", "sampler.inpaint_mask=soft"], "naive"),
    "sdp": (["sampler=sdp"], "naive"),
    "rti": (["sampler=rti"], "naive"),
}
DELAYS = (0, 1, 2, 3, 4)


def add_variant(spec: str) -> str:
    """Register `NAME=METHOD:key=value,...` as a method: METHOD's overrides plus these, same execution scheme."""
    name, sep, rest = spec.partition("=")
    method, colon, extra = rest.partition(":")
    if not sep or not colon or not name or method not in METHODS or name in METHODS:
        raise ValueError(f"--variant {spec!r}: want NAME=METHOD:key=value,... with METHOD one of "
                         f"{', '.join(METHODS)} and a NAME not taken")
    overrides, execution = METHODS[method]
    METHODS[name] = ([*overrides, *[kv for kv in extra.split(",") if kv]], execution)
    return name


def cell_settings(task: str, method: str, delay: int, ckpt: str, args: argparse.Namespace) -> dict[str, Any]:
    """What a cell's figures depend on: a stored cell is reused only when these match."""
    overrides, execution = METHODS[method]
    return {"task": task, "method": method, "delay": delay, "checkpoint": str(Path(ckpt).resolve()),
            "overrides": overrides, "execution": execution, "episodes": args.episodes, "seed": args.seed,
            "max_steps": args.max_steps or TASKS[task][2], "timing_calls": args.timing_calls,
            "threads": args.threads}


def run_cell(policy: Any, env_id: str, settings: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One (task, method, delay): the seeded evaluation and a batch-1 timing run under the same delay."""
    from rtdp.envs.evaluate import evaluate
    from rtdp.envs.execution import check_delay
    from rtdp.envs.timing import time_inference

    d, execution = settings["delay"], settings["execution"]
    try:
        check_delay(policy, d)
    except ValueError as err:  # past this method's reach: recorded, so the table says where it stops
        return {"settings": settings, "error": str(err)}
    obs_mode = policy.config.task.env.get("obs_mode")
    t0 = time.perf_counter()
    torch.manual_seed(settings["seed"])
    rec = evaluate(policy, env_id, n_episodes=settings["episodes"], seed=settings["seed"], n_envs=args.n_envs,
                   obs_mode=obs_mode, max_steps=settings["max_steps"], progress=False, delay=d, execution=execution)
    s = rec["summary"]
    timing = time_inference(policy, env_id, n_calls=settings["timing_calls"], seed=settings["seed"],
                            obs_mode=obs_mode, delay=d, execution=execution)  # episodes at the task's length
    return {"settings": settings, "sampler": policy.sampler.describe(), **score_summary(rec["episodes"]),
            "episode_scores": episode_scores(rec["episodes"]),
            "seams": s["seams"], "nfe_per_action": s["nfe_per_action"], "vjp_per_action": s.get("vjp_per_action", 0.0),
            "actions_per_plan": s["actions_per_plan"], "timing": timing,
            "wall_ms_per_step": timing["wall_ms_per_step"], "nfe_per_step": timing["nfe_per_step"],
            "vjp_per_step": timing["vjp_per_step"], "eval_wall_s": s["wall_s"], "wall_s": time.perf_counter() - t0,
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg": list(os.getloadavg())}


def score_of(cell: dict[str, Any]) -> float | None:
    """The task score a cell is judged by: PushT's mean max-coverage, else the success rate."""
    if "error" in cell:
        return None
    return task_score(cell)


def paired_scores(cell: dict[str, Any], ref: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """Per-episode scores of two cells that ran the same seeds (episode i on seed + i), else None."""
    a, b = cell.get("episode_scores"), ref.get("episode_scores")
    same = all(cell["settings"][k] == ref["settings"][k] for k in ("seed", "episodes", "max_steps"))
    return (a, b) if a and b and same and len(a) == len(b) else None


def check_targets(cells: dict[str, dict[str, Any]], task: str, delays: list[int]) -> dict[str, Any]:
    """The issue's targets for one task: RTC's seam at d = 3 against naive async, its score against synchronous
    DDIM-10 (naive at d = 0), and per method the first delay whose score falls below 95% of that."""
    def cell(method: str, d: int) -> dict[str, Any] | None:
        return cells.get(f"{task}/{method}/d{d}")

    ref = cell("naive", 0)
    out: dict[str, Any] = {"reference": "naive DDIM-10 at d = 0 (synchronous)"}
    ref_score = score_of(ref) if ref else None
    out["reference_score"] = ref_score
    naive3 = cell("naive", 3)
    for m in [m for m in METHODS if any(o == "sampler=rtc" for o in METHODS[m][0])]:
        c = cell(m, 3)
        if c is None or "error" in c or naive3 is None or "error" in naive3:
            continue
        entry: dict[str, Any] = {
            "seam_mean": c["seams"]["seam_mean"], "naive_seam_mean": naive3["seams"]["seam_mean"],
            "seam_max": c["seams"]["seam_max"], "naive_seam_max": naive3["seams"]["seam_max"]}
        entry["seam_le_third_of_naive"] = entry["seam_mean"] <= entry["naive_seam_mean"] / 3
        if ref_score:
            entry["score_ratio_vs_sync_ddim"] = score_of(c) / ref_score
            entry["score_ge_95pct"] = entry["score_ratio_vs_sync_ddim"] >= 0.95
            paired = paired_scores(c, ref)
            if paired is not None:  # the same seeds: a paired interval of the ratio
                _, lo, hi = paired_ratio_interval(*paired)
                entry["score_ratio_ci95_paired"] = [lo, hi]
                entry["score_ge_95pct_beyond_noise"] = lo >= 0.95
        out[m] = entry
    if ref_score:
        out["breaks_at"] = {}
        for m in METHODS:
            scored = [(d, score_of(cell(m, d))) for d in delays if cell(m, d) is not None]
            if not scored:
                continue  # not run
            below = [d for d, sc in scored if sc is None or sc < 0.95 * ref_score]
            out["breaks_at"][m] = min(below) if below else None  # None: holds over every delay run
    return out


def plot(rec: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = rec["tasks"]
    fig, axes = plt.subplots(len(tasks), 4, figsize=(20, 3.8 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        cells = rec["cells"]
        for m in METHODS:
            pts = [(d, cells[k]) for d in rec["delays"] if (k := f"{task}/{m}/d{d}") in cells
                   and "error" not in cells[k]]
            if not pts:
                continue
            ds = [d for d, _ in pts]
            score = np.array([score_of(c) for _, c in pts])
            ci_key = "coverage_ci95" if "mean_max_coverage" in pts[0][1] else "success_ci95"
            ci = np.array([c[ci_key] for _, c in pts]).T
            row[0].errorbar(ds, score, yerr=np.abs(ci - score), marker="o", capsize=3, label=m)
            row[1].plot(ds, [c["seams"]["seam_mean"] for _, c in pts], marker="o", label=m)
            row[2].plot(ds, [c["wall_ms_per_step"] for _, c in pts], marker="o", label=m)
            at3 = [c for d, c in pts if d == 3]
            if at3:  # the trade-off at the delay: agreement with the old plan against task score
                sc = score_of(at3[0])
                row[3].errorbar([at3[0]["seams"]["seam_mean"]], [sc], yerr=np.abs(np.array(at3[0][ci_key]) - sc)[:, None],
                                marker="o", capsize=3, label=m)
        ref = rec["targets"].get(task, {}).get("reference_score")
        if ref:
            row[0].axhline(0.95 * ref, color="k", ls=":", lw=0.8, label="95% of sync DDIM-10")
        naive3 = cells.get(f"{task}/naive/d3")
        if naive3 and "error" not in naive3:
            row[3].axvline(naive3["seams"]["seam_mean"] / 3, color="k", ls=":", lw=0.8, label="1/3 of naive's seam")
        if ref:
            row[3].axhline(0.95 * ref, color="k", ls="--", lw=0.8, label="95% of sync DDIM-10")
        row[3].set_xlabel("seam: mean |a_t - a_t-1| at chunk boundaries, d = 3")
        row[3].set_ylabel("task score at d = 3")
        row[3].legend(fontsize=7)
        row[0].set_ylim(-0.02, 1.05)
        row[0].set_ylabel("mean max coverage" if task == "pusht" else "success rate")
        row[0].set_title(f"{task}: task score ({rec['episodes']} episodes per cell)")
        row[1].set_ylabel("seam: mean |a_t - a_t-1| at chunk boundaries")
        row[1].set_yscale("log")
        row[2].set_ylabel("inference wall ms per control step (batch 1)")
        row[2].set_yscale("log")
        for ax in row[:3]:
            ax.set_xlabel("delay d (control steps)")
            ax.set_xticks(rec["delays"])
        row[0].legend(fontsize=7)
    fig.suptitle("Asynchronous execution under an inference delay: RTC against naive switching, blending, "
                 "ensembling, SDP and RTI (same weights)")
    fig.tight_layout()
    metrics.save_figure(fig, png, rec)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--pusht-ckpt", default=TASKS["pusht"][1])
    ap.add_argument("--arm-ckpt", default=TASKS["arm"][1])
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=METHOD:k=v,...",
                    help="a tuned method: METHOD's overrides plus these (repeatable)")
    ap.add_argument("--methods", nargs="+", default=None, help=f"methods to run (default: {' '.join(METHODS)})")
    ap.add_argument("--delays", nargs="+", type=int, default=list(DELAYS))
    ap.add_argument("--episodes", type=int, default=50, help="seeded episodes per cell")
    ap.add_argument("--seed", type=int, default=100000)
    ap.add_argument("--n-envs", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=None, help="episode limit (default: the task's)")
    ap.add_argument("--timing-calls", type=int, default=20, help="plans timed per cell at batch 1")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--fresh", action="store_true", help="rerun cells already in --out")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "rtc.json"))
    args = ap.parse_args(argv)
    try:
        variants = [add_variant(v) for v in args.variant]
    except ValueError as err:
        print(f"[rtc] {err}", file=sys.stderr)
        return 2
    args.methods = args.methods or [m for m in METHODS if m not in variants] + variants
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        print(f"[rtc] unknown method(s) {unknown}: choose from {', '.join(METHODS)} or add one with --variant",
              file=sys.stderr)
        return 2
    os.environ.setdefault("MUJOCO_GL", "egl")
    torch.set_num_threads(args.threads)
    from rtdp.policy.loading import load_policy

    out = Path(args.out)
    old = json.loads(out.read_text()) if out.is_file() and not args.fresh else {}
    cells: dict[str, dict[str, Any]] = dict(old.get("cells", {}))
    ckpts = {"pusht": args.pusht_ckpt, "arm": args.arm_ckpt}
    for task in args.tasks:
        if not Path(ckpts[task]).exists():
            print(f"[rtc] no checkpoint at {ckpts[task]} for {task}: train it first (docs/streaming.md), or pass "
                  f"--{task}-ckpt", file=sys.stderr)
            return 2

    mine: dict[str, dict[str, Any]] = {}  # the cells this run measured

    def save() -> dict[str, Any]:
        if out.is_file():  # another run (another task) may have written cells meanwhile: keep them
            cells.update(json.loads(out.read_text()).get("cells", {}))
            cells.update(mine)
        tasks = sorted({k.split("/")[0] for k in cells})
        delays = sorted({c["settings"]["delay"] for c in cells.values()})  # every delay stored, not only this run's
        rec = metrics.record("rtc_benchmark", cells=cells, tasks=tasks, delays=delays, episodes=args.episodes,
            targets={t: check_targets(cells, t, delays) for t in tasks},
            notes=["same weights for every method of a task (policy=sdp_unet)",
                   "naive/blend/ensemble/rtc_*: DDIM-10 plans executing s = 8 actions; sdp/rti: their own layout",
                   "wall times: batch-1 timing runs on a shared CPU, noisy; the guided variant's backward counts",
                   "seams in env action units (L2 over action dims); a seam is where a new chunk starts to act"])
        metrics.write_json(out, rec)  # after every cell: a crash loses nothing
        return rec

    for task in args.tasks:
        env_id = TASKS[task][0]
        for method in args.methods:
            todo = [d for d in args.delays
                    if cells.get(f"{task}/{method}/d{d}", {}).get("settings")
                    != cell_settings(task, method, d, ckpts[task], args)]
            if not todo:
                continue
            policy = load_policy(ckpts[task], METHODS[method][0])
            for d in todo:
                settings = cell_settings(task, method, d, ckpts[task], args)
                print(f"[rtc] {task}/{method}/d{d}: {args.episodes} episodes ...", file=sys.stderr, flush=True)
                cell = run_cell(policy, env_id, settings, args)
                cells[f"{task}/{method}/d{d}"] = mine[f"{task}/{method}/d{d}"] = cell
                save()
                if "error" in cell:
                    print(f"[rtc] {task}/{method}/d{d}: {cell['error']}", file=sys.stderr, flush=True)
                else:
                    print(f"[rtc] {task}/{method}/d{d}: score {score_of(cell):.3f}, seam mean/max "
                          f"{cell['seams']['seam_mean']:.3g}/{cell['seams']['seam_max']:.3g}, "
                          f"{cell['nfe_per_step']:.2f} NFE and {cell['wall_ms_per_step']:.1f} ms per step",
                          file=sys.stderr, flush=True)
    rec = save()
    plot(rec, out.with_suffix(".png"))
    print(json.dumps(rec["targets"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
