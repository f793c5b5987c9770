"""End to end on the real PushT data: `rtdp train` with periodic rollouts (keypoints) and an image policy."""

from __future__ import annotations

import json

import pytest
from tiny_task import TINY_POLICY

from rtdp.cli.main import main
from rtdp.policy.loading import load_policy

pytestmark = pytest.mark.slow


def test_pusht_keypoints_training_logs_rollout_coverage(pusht_zarr, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "task=pusht_keypoints", f"task.dataset.path={pusht_zarr}", f"out_dir={out}",
                 "training.num_steps=20", "eval.every_steps=10", "eval.episodes=2", "eval.n_envs=2",
                 "eval.final_episodes=2", "task.env.max_steps=24", "sampler.num_steps=4", *TINY_POLICY])
    assert code == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    evals = [h["eval"] for h in history if "eval" in h]
    assert len(evals) == 3 and all(0.0 <= e["mean_max_coverage"] <= 1.0 for e in evals)
    assert all(e["n_episodes"] == 2 for e in evals)


def test_pusht_image_policy_trains_and_acts(pusht_zarr, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "task=pusht_image", f"task.dataset.path={pusht_zarr}", f"out_dir={out}",
                 "training.num_steps=2", "training.batch_size=4", "training.data_in_memory=false",
                 "eval.final_episodes=1", "eval.n_envs=1", "task.env.max_steps=16", "sampler.num_steps=2",
                 "policy.denoiser.down_dims=[16,32]", "policy.denoiser.level_embed_dim=16",
                 "policy.denoiser.n_groups=4", "training.val_ratio=0.02", "training.val_batches=1", "num_threads=1"])
    assert code == 0
    policy = load_policy(out)
    assert policy.encoder.image_keys == ["image"] and policy.encoder.cameras["image"].crop == (84, 84)
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert history[-1]["eval"]["n_episodes"] == 1
