"""Env speed (steps/s, state and image observations) and scripted-expert success over seeded episodes.

Speed: one env in this process, random actions, episodes reset as they end; image mode includes rendering
(96×96, shadows and reflections off). Success: `rtdp.envs.evaluate` with the task's scripted expert on
seeds 0…N-1 over 2 async envs. Prints one JSON record (rtdp.metrics schema); `--out DIR` also writes it with
a bar chart beside it. robosuite tasks run only in .venv-robosuite (`make robosuite-env`):

    .venv/bin/python benchmarks/envs.py [--seeds 50] [--seconds 5] [--out DIR] [--tasks pusht arm-lift ...]
    .venv-robosuite/bin/python benchmarks/envs.py --tasks robosuite/lift robosuite/can
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np

from rtdp import envs
from rtdp.metrics import record, save_figure, write_json

DEFAULT_TASKS = ["pusht", "arm-lift", "metaworld/pick-place-v3", "metaworld/mt10"]
EXPERT_TASKS = {"arm-lift", "metaworld/pick-place-v3", "metaworld/mt10", "robosuite/lift", "robosuite/can"}


def steps_per_second(task: str, obs_mode: str, seconds: float) -> float:
    """Random-action env steps per second (resets included), after a short warm-up."""
    env = envs.make(task, obs_mode=obs_mode)
    env.action_space.seed(0)
    env.reset(seed=0)
    for _ in range(5):
        env.step(env.action_space.sample())
    n, t0, ep = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        n += 1
        if terminated or truncated:
            ep += 1
            env.reset(seed=ep)
    rate = n / (time.perf_counter() - t0)
    env.close()
    return rate


def expert_success(task: str, seeds: int, n_envs: int) -> dict:
    from rtdp.envs.evaluate import evaluate
    from rtdp.envs.experts import make_expert

    rec = evaluate(make_expert(task), task, n_episodes=seeds, seed=0, n_envs=n_envs, progress=False)
    s = rec["summary"]
    return {"success_rate": s["success_rate"], "mean_length": s["mean_length"], "n_episodes": seeds,
            "failed_seeds": [e["seed"] for e in rec["episodes"] if not e["success"]],
            **({"success_per_task": s["success_per_task"]} if "success_per_task" in s else {})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--n-envs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    results = {}
    for task in args.tasks:
        spec = envs.get_spec(task)
        row: dict = {"steps_per_s": {m: steps_per_second(task, m, args.seconds) for m in ("state", "image")
                                     if m in spec.obs_modes}}
        if task in EXPERT_TASKS and args.seeds > 0:
            row["expert"] = expert_success(task, args.seeds, args.n_envs)
        results[task] = row
        print(f"{task}: {json.dumps(row)}", file=sys.stderr)
    rec = record("envs", results=results, seeds=args.seeds, seconds=args.seconds, n_envs=args.n_envs,
                 note="speeds measured on a shared 2-core machine while other jobs run: noisy")
    print(json.dumps(rec, indent=2))
    if args.out is not None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:  # the robosuite environment has no matplotlib: JSON only
            write_json(args.out / "envs.json", rec)
            return 0
        fig, ax = plt.subplots(figsize=(8, 3.2))
        names = list(results)
        x = np.arange(len(names))
        for k, mode in enumerate(("state", "image")):
            ax.bar(x + (k - 0.5) * 0.38, [results[t]["steps_per_s"].get(mode, 0.0) for t in names], 0.38,
                   label=mode)
        ax.set_xticks(x, names, rotation=15)
        ax.set_yscale("log")
        ax.set_ylabel("env steps / s (1 env, 1 process)")
        ax.axhline(500, ls="--", lw=0.8, color="k")
        ax.legend()
        save_figure(fig, args.out / "envs.png", rec)
        plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
