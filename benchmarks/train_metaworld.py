"""Meta-World pick-place-v3 from 50 scripted demonstrations (state observations): success vs training time.

Target: success >= 90% on 50 seeds. Data first: `rtdp collect task=metaworld/pick-place-v3 episodes=50 out=runs/data/metaworld_pick_place.zarr`.

    .venv/bin/python benchmarks/train_metaworld.py [--minutes 45] [--eval-only]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_bench import SCRIPTED_DEMO_HPARAMS, run_preset

DEFAULTS = ["--task", "metaworld_pick_place", "--policy", "unet1d", "--minutes", "45", "--ckpt-minutes", "15", "--target", "0.9",
            "--target-metric", "success rate", "--out", "runs/bench/train_metaworld"]

if __name__ == "__main__":
    sys.exit(run_preset(DEFAULTS, SCRIPTED_DEMO_HPARAMS))
