"""Shared fixtures: where the PushT human data lives (read-only, never copied into the repo)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PUSHT_ZARR = SHARED / "data" / "pusht_cchi_v7_replay.zarr"


@pytest.fixture(scope="session")
def pusht_zarr() -> Path:
    if not PUSHT_ZARR.exists():
        pytest.fail(f"PushT human data not found at {PUSHT_ZARR}: CI expects ../shared beside the repo")
    return PUSHT_ZARR


@pytest.fixture
def unwritable_dir(tmp_path) -> Path | None:
    """A directory nobody can create files in: mode 0500, or sysfs where root ignores modes (None: no such)."""
    if os.geteuid() != 0:
        d = tmp_path / "read-only"
        d.mkdir()
        d.chmod(0o500)
        return d
    probe = Path("/sys") / f"rtdp-probe-{uuid.uuid4().hex}"
    try:
        probe.mkdir()
    except OSError:
        return Path("/sys")
    probe.rmdir()
    return None


@pytest.fixture(scope="session")
def train_tiny_sdp(pusht_zarr):
    """`train(run, buf, steps, n_episodes, batch)`: a tiny sdp_unet trained for `steps` on the first `n_episodes`
    PushT episodes of `buf` (in memory), saved in `run` as an `rtdp train` checkpoint; returns `run`."""

    def train(run: Path, buf, steps: int, n_episodes: int, batch: int) -> Path:
        import numpy as np
        import torch
        from hydra import compose, initialize_config_module

        from rtdp.datasets.dataset import SequenceDataset
        from rtdp.policy.factory import make_policy
        from rtdp.train.checkpoint import save_checkpoint
        from rtdp.train.trainer import data_meta

        torch.manual_seed(0)
        with initialize_config_module("rtdp.configs", version_base=None):
            cfg = compose("train", overrides=["policy=sdp_unet", "task=pusht_keypoints",
                                              "policy.denoiser.down_dims=[16,32]", "policy.denoiser.level_embed_dim=32",
                                              f"task.dataset.path={pusht_zarr}"])
        obs = {"keypoint": {"source": "keypoint"}, "agent_pos": {"source": "state", "columns": [0, 2]}}
        mask = np.zeros(buf.n_episodes, dtype=bool)
        mask[:n_episodes] = True
        ds = SequenceDataset(buf, obs, {"source": "action"}, horizon=16, n_obs_steps=2, n_action_steps=8,
                             episode_mask=mask)
        ds.normalizer = normalizer = ds.get_normalizer()
        meta = data_meta(ds)
        policy = make_policy(cfg.policy, cfg.sampler, meta["obs_shapes"], 2, normalizer)
        opt = torch.optim.AdamW(policy.parameters(), lr=2e-3)
        gen = torch.Generator().manual_seed(0)
        rng = np.random.default_rng(0)
        for _ in range(steps):
            loss, _ = policy.compute_loss(ds.sample_batch(rng.integers(0, len(ds), batch)), generator=gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
        save_checkpoint(run, steps, model=policy, ema_model=None, normalizer=normalizer, config=cfg, data_meta=meta)
        return run

    return train
