"""Why RTI-DP scales a gripper down: the fraction of gripper flips a warm start follows in one call, per
discrete scale (the gripper's normalised value ±s) and τ, on the exact denoiser of a binary dimension.

No training and no simulator: `rtdp.policy.calibration.binary_denoiser` is the posterior mean of x0 ∈ {−s, +s}
given the noisy input and an observation that is `--confidence` sure. The warm start carries the old sign
as evidence worth ~2·ᾱ_τ·s²/(1 − ᾱ_τ) in log-odds, so at ±1 no realistic observation overturns it at a small τ,
while at ±0.1 the observation decides. Prints JSON and writes a plot.

    .venv/bin/python benchmarks/rti_discrete_scale.py [--confidence 0.98] [--n 2048]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtdp import metrics
from rtdp.policy.calibration import flip_rate
from rtdp.policy.schedules import DDPMSchedule

SCALES = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
WARM_STEPS = (1, 2, 3, 4)  # DDIM-10 grid: τ = 0, 10, 20, 30


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--confidence", type=float, default=0.98, help="how sure the observation is of each sign")
    ap.add_argument("--n", type=int, default=2048, help="samples per point")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/rti_discrete_scale.json"))
    args = ap.parse_args(argv)
    if not 0.5 < args.confidence < 1.0:
        ap.error(f"--confidence must be in (0.5, 1), got {args.confidence}")
    schedule = DDPMSchedule(clip_sample=False)  # DP's squaredcos_cap_v2, 100 training levels
    rows = [{"scale": s, **flip_rate(schedule, s, w, confidence=args.confidence, n=args.n)}
            for s in SCALES for w in WARM_STEPS]
    res = metrics.record("rti_discrete_scale", confidence=args.confidence, n=args.n, rows=rows,
                         notes=[("followed: fraction of samples whose executed gripper takes the new sign on the "
                                "first call after the observation flips (RTI keep mode, Ta=1)"),
                                "held_before: fraction holding the old sign after 3 calls on the old observation"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for w in WARM_STEPS:
        pts = [r for r in rows if r["warm_steps"] == w]
        ax.plot([r["scale"] for r in pts], [r["followed"] for r in pts], "o-",
                label=f"τ = {pts[0]['tau']:g} ({w} evaluation{'s' * (w > 1)})")
    ax.set_xscale("log")
    ax.set_xlabel("gripper's normalised value ±s (task.action.discrete_scale)")
    ax.set_ylabel("flips followed in one call")
    ax.set_title(f"RTI warm start, exact binary denoiser, observation {args.confidence:.0%} sure")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    metrics.save_figure(fig, Path(args.out).with_suffix(".png"), res)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
