"""A tiny generated task (replay buffer + config) so training tests run in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtdp.datasets import ReplayBuffer

TINY_POLICY = ["policy.denoiser.down_dims=[16,32]", "policy.denoiser.level_embed_dim=16", "policy.denoiser.n_groups=4",
               "training.batch_size=16", "training.warmup_steps=2", "training.val_every=0", "training.log_every=2",
               "training.checkpoint_every=0", "training.val_batches=1", "training.val_ratio=0.25", "num_threads=1"]


# arm_lift's observation spec on the tiny buffer, whose 2-d action has no gripper to declare or scale
TINY_ARM = ["task=arm_lift", "task.action.discrete_dims=[]", "task.action.discrete_scale=1.0"]


def make_tiny_buffer(path: Path, n_episodes: int = 4, length: int = 30) -> Path:
    """Episodes of a smooth 4-d state whose 2-d action is a deterministic function of it."""
    buf = ReplayBuffer.create(path)
    for e in range(n_episodes):
        t = np.arange(length, dtype=np.float32) / 10 + e
        state = np.stack([np.sin(t), np.cos(t), np.sin(2 * t), t / 10], axis=1).astype(np.float32)
        action = np.stack([100 + 50 * np.sin(t + 0.3), 200 + 20 * np.cos(t)], axis=1).astype(np.float32)
        buf.add_episode({"state": state, "action": action})
    return path


def tiny_overrides(data: Path, out_dir: Path, *extra: str) -> list[str]:
    """Overrides composing `train.yaml` into a seconds-long run on the tiny buffer (arm_lift's obs spec)."""
    return [*TINY_ARM, f"task.dataset.path={data}", f"out_dir={out_dir}", *TINY_POLICY, *extra]


def compose(overrides: list[str]):
    from rtdp.cli.train import compose_config

    return compose_config(overrides)
