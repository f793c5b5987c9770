"""rtdp's MuJoCo arm lifts a cube (state observations, scripted demonstrations): success vs training time.

Target: success >= 90% on 50 seeds. Data first: `rtdp collect task=arm-lift episodes=100 out=runs/data/arm_lift.zarr`.

    .venv/bin/python benchmarks/train_arm_lift.py [--minutes 12] [--eval-only]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_bench import run_preset

DEFAULTS = ["--task", "arm_lift", "--policy", "unet1d", "--minutes", "12", "--ckpt-minutes", "4", "--target", "0.9",
            "--target-metric", "success rate", "--out", "runs/bench/train_arm_lift"]
HPARAMS = ["num_threads=1", "training.batch_size=64", "policy.optim.lr=2e-4", "training.warmup_steps=200",
           "training.val_every=1000", "training.val_ratio=0.05"]

if __name__ == "__main__":
    sys.exit(run_preset(DEFAULTS, HPARAMS))
