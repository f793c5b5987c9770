"""The re-noising RTI variant (`sampler=rti_renoise`) and a gripper: success vs how the warm start carries the
binary dimension, on one checkpoint.

Runs, on the same weights and seeds (n_envs 10): DDIM-10 with Ta=8 and SDP (the references), then RTI (τ=10,
Ta=2: 2 evaluations per 2 actions) with the gripper re-decided from noise (`reinit`), warm-started with noise
(`keep`), and warm-started without noise (`noiseless`) at each `--hysteresis` (log-odds the carried-over sign
counts; `none` = as carried). Prints JSON and writes a plot (success vs hysteresis, references as lines).

    .venv/bin/python benchmarks/rti_gripper.py --checkpoint runs/bench/train_arm_lift
    .venv/bin/python benchmarks/rti_gripper.py --checkpoint runs/bench/train_arm_s10 --label s1.0

The arm's checkpoints: `benchmarks/train_arm_lift.py` (gripper trained at ±0.5, `task.action.discrete_scale`).
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

RTI = ["sampler=rti_renoise", "sampler.tau=10", "sampler.n_action_steps=2"]


def variants(dims: list[int], hysteresis: list[float | None]) -> dict[str, list[str]]:
    """Method label -> checkpoint overrides."""
    gripper = [*RTI, f"sampler.discrete_dims={dims}"]
    out = {"ddim10": ["sampler=ddim", "sampler.num_steps=10", "sampler.n_action_steps=8"], "sdp": ["sampler=sdp"],
           "rti reinit": [*gripper, "sampler.discrete_mode=reinit"],
           "rti keep": [*gripper, "sampler.discrete_mode=keep"]}
    for h in hysteresis:
        out[f"rti noiseless h={'none' if h is None else f'{h:g}'}"] = [
            *gripper, "sampler.discrete_mode=noiseless", f"sampler.discrete_hysteresis={'null' if h is None else h}"]
    return out


def plot(rec: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = rec["methods"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    sweep = [(v["hysteresis"], v["success_rate"]) for v in m.values() if v.get("hysteresis") is not None]
    if sweep:
        xs, ys = zip(*sorted(sweep))
        ax.plot(xs, ys, "o-", color="tab:green", label="RTI noiseless (τ=10, Ta=2)")
    styles = {"ddim10": ("k", "-"), "sdp": ("tab:blue", "-"), "rti reinit": ("tab:red", ":"),
              "rti keep": ("tab:orange", ":"), "rti noiseless h=none": ("tab:green", ":")}
    for name, (color, ls) in styles.items():
        if name in m:
            ax.axhline(m[name]["success_rate"], color=color, ls=ls,
                       label=f"{name} ({m[name]['nfe_per_action']:.2f} NFE/action)")
    ax.set_xlabel("gripper hysteresis: log-odds the carried-over sign counts")
    ax.set_ylabel(f"success ({rec['episodes']} seeds)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{rec['label']}: RTI and a gripper trained at ±{rec['discrete_scale']:g}")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    metrics.save_figure(fig, png, rec)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="runs/bench/train_arm_lift")
    ap.add_argument("--label", default=None, help="name of this run in the output file (default: the checkpoint's)")
    ap.add_argument("--discrete-dims", type=int, nargs="+", default=[4])
    ap.add_argument("--hysteresis", nargs="+", default=["0", "0.5", "1", "1.6", "2.5", "4", "none"],
                    help="log-odds values for the noiseless sweep; 'none' = the sign as carried")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=100000)
    ap.add_argument("--n-envs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="default benchmarks/results/rti_gripper_<label>.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        print(f"[rti_gripper] no checkpoint at {ckpt}: train one with benchmarks/train_arm_lift.py", file=sys.stderr)
        return 2
    try:
        hyst = [None if h.lower() in ("none", "null") else float(h) for h in args.hysteresis]
    except ValueError:
        print(f"[rti_gripper] --hysteresis takes numbers or 'none', got {args.hysteresis}", file=sys.stderr)
        return 2
    from rtdp.envs.evaluate import evaluate
    from rtdp.policy.loading import load_policy

    torch.set_num_threads(args.threads)
    label = args.label or ckpt.resolve().name
    out = Path(args.out or REPO / "benchmarks" / "results" / f"rti_gripper_{label}.json")
    methods: dict[str, Any] = {}
    scale = None
    for name, overrides in variants(args.discrete_dims, hyst).items():
        policy = load_policy(ckpt, overrides)
        scale = float(policy.config.task.action.get("discrete_scale", 1.0))
        env = policy.config.task.env
        t0 = time.perf_counter()
        s = evaluate(policy, env.id, n_episodes=args.episodes, seed=args.seed, n_envs=args.n_envs,
                     obs_mode=env.get("obs_mode"), max_steps=int(env.max_steps), progress=False)["summary"]
        h = policy.sampler.describe().get("discrete_hysteresis") if "noiseless" in name else None
        methods[name] = {"overrides": overrides, "success_rate": s["success_rate"], "nfe_per_action": s["nfe_per_action"],
                         "mean_length": s.get("mean_length"), "hysteresis": h, "wall_s": time.perf_counter() - t0}
        print(f"[rti_gripper] {label} {name}: success {s['success_rate']:.2f}, NFE/action {s['nfe_per_action']:.3f}",
              file=sys.stderr, flush=True)
    rec = metrics.record("rti_gripper", label=label, checkpoint=str(ckpt.resolve()), discrete_scale=scale,
                         episodes=args.episodes, seed=args.seed, methods=methods, loadavg_after=list(os.getloadavg()))
    metrics.write_json(out, rec)  # first: a plotting error must not lose the measurements
    plot(rec, out.with_suffix(".png"))
    print(json.dumps(rec, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
