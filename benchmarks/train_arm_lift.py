"""rtdp's MuJoCo arm lifts a cube (state observations, scripted demonstrations): success vs training time.

Target: success >= 90% on 50 seeds. Data first (noise-injected expert demonstrations, see docs/envs.md):
`rtdp collect task=arm-lift episodes=300 out=runs/data/arm_lift_dart.zarr action_noise=0.3`.

    .venv/bin/python benchmarks/train_arm_lift.py [--minutes 45] [--eval-only] [--sampler sdp]

The policy is `sdp_unet`, so the same weights serve DDIM-10 and the streaming samplers (benchmarks/streaming.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_bench import SCRIPTED_DEMO_HPARAMS, run_preset

DEFAULTS = ["--task", "arm_lift", "--policy", "sdp_unet", "--minutes", "45", "--ckpt-minutes", "15", "--target", "0.9",
            "--target-metric", "success rate", "--out", "runs/bench/train_arm_lift"]

if __name__ == "__main__":
    sys.exit(run_preset(DEFAULTS, SCRIPTED_DEMO_HPARAMS))
