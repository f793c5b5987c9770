"""Tune the authors' RTI (`sampler=rti`) on tuning seeds, apart from the seeds the streaming benchmark reports on.

For each task, every candidate (a step list of at most 3 evaluations per step, and for the arm how the gripper
is carried) runs on the same seeded episodes (default 300000…, n_envs 10); the best candidate by success (PushT:
mean max-coverage) is the one `benchmarks/streaming.py --authors-set …` then reports on seeds 200000….
Writes `benchmarks/results/rti_tuning.json` (one entry per task, updated per run) and prints it.

    .venv/bin/python benchmarks/rti_tuning.py --tasks pusht arm [--episodes 50] [--seed 300000] [--arm-ckpt RUN]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtdp import metrics

CKPT = {"pusht": "runs/streaming/pusht_sdp_unet", "arm": "runs/bench/train_arm_lift"}
ENV = {"pusht": ("pusht", 300), "arm": ("arm-lift", 200)}
GRIPPER = {"scale": [], "clip/5": ["sampler.discrete=clip", "sampler.clip_factor=5"],
           "clip/10": ["sampler.discrete=clip", "sampler.clip_factor=10"]}


def candidates(task: str, steps: list[str], grippers: list[str]) -> dict[str, list[str]]:
    """Label -> overrides of every candidate for a task (the gripper handling only where there is a gripper)."""
    lists = {k: [f"sampler.steps={k}"] for k in steps}
    if task == "pusht":
        return {f"steps {k}": ["sampler=rti", *v] for k, v in lists.items()}
    return {f"steps {k}, gripper {g}": ["sampler=rti", *v, *GRIPPER[g]] for k, v in lists.items() for g in grippers}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(CKPT), choices=list(CKPT))
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=300000)
    ap.add_argument("--n-envs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", nargs="+", default=["[2,1,0]", "[4,2,0]"],
                    help="step lists to try (training levels, at most 3 each for <= 3 NFE per step)")
    ap.add_argument("--gripper", nargs="+", default=["scale", "clip/5"], choices=list(GRIPPER))
    ap.add_argument("--pusht-ckpt", default=CKPT["pusht"])
    ap.add_argument("--arm-ckpt", default=CKPT["arm"])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "rti_tuning.json"))
    args = ap.parse_args(argv)
    ckpts = {"pusht": args.pusht_ckpt, "arm": args.arm_ckpt}
    os.environ.setdefault("MUJOCO_GL", "egl")
    from rtdp.envs.evaluate import evaluate
    from rtdp.policy.loading import load_policy

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    tasks = dict(json.loads(out.read_text()).get("tasks", {})) if out.is_file() else {}
    for task in args.tasks:
        env_id, max_steps = ENV[task]
        rows = dict(tasks.get(task, {}).get("candidates", {}))  # earlier candidates on the same seeds stay
        for label, overrides in candidates(task, args.steps, args.gripper).items():
            t0 = time.perf_counter()
            policy = load_policy(ckpts[task], overrides)
            torch.manual_seed(args.seed)
            rec = evaluate(policy, env_id, n_episodes=args.episodes, seed=args.seed, n_envs=args.n_envs,
                           obs_mode=policy.config.task.env.get("obs_mode"), max_steps=max_steps, progress=False)
            rows[label] = {"overrides": overrides, "sampler": policy.sampler.describe(),
                           **metrics.score_summary(rec["episodes"]), "nfe_per_action": rec["summary"]["nfe_per_action"],
                           "wall_s": time.perf_counter() - t0}
            shown = {k: rows[label].get(k) for k in ("success_rate", "mean_max_coverage")}
            print(f"[rti_tuning] {task} {label}: {json.dumps(shown)}",
                  file=sys.stderr, flush=True)
        score = "mean_max_coverage" if task == "pusht" else "success_rate"
        best = max(rows, key=lambda k: rows[k][score])
        tasks[task] = {"checkpoint": str(Path(ckpts[task]).resolve()), "seeds": [args.seed, args.seed + args.episodes - 1],
                       "score": score, "candidates": rows, "best": best, "best_overrides": rows[best]["overrides"],
                       "loadavg_after": list(os.getloadavg()),
                       "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if out.is_file():  # another run may have finished another task meanwhile: keep its entry
        tasks = {**json.loads(out.read_text()).get("tasks", {}), **{t: tasks[t] for t in args.tasks}}
    rec = metrics.record("rti_tuning", tasks=tasks, note="tuning seeds only; reported on other seeds by "
                         "benchmarks/streaming.py")
    metrics.write_json(out, rec)
    print(json.dumps(rec, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
