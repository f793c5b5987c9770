"""A MoDE run resumes bit for bit (its routes are sampled in training, so the RNG state must come back too),
and its checkpoint loads with expert caching on, or off by override."""

from __future__ import annotations

import numpy as np
import torch
from tiny_task import TINY_ARM, compose

from rtdp.policy.loading import load_policy
from rtdp.train.trainer import Trainer
from rtdp.types import PlanContext

TINY_MODE = ["policy=mode", "policy.denoiser.n_layers=2", "policy.denoiser.dim=16", "policy.denoiser.n_heads=2",
             "policy.denoiser.router_z_weight=0.001", "training.batch_size=8", "training.warmup_steps=2",
             "training.val_every=0", "training.log_every=2", "training.checkpoint_every=0", "training.val_batches=1",
             "training.val_ratio=0.25", "num_threads=1"]


def overrides(data, out, *extra):
    return [*TINY_ARM, f"task.dataset.path={data}", f"out_dir={out}", *TINY_MODE, *extra]


def test_a_mode_run_resumes_bit_for_bit(tiny_data, tmp_path):
    straight = Trainer(compose(overrides(tiny_data, tmp_path / "a", "training.num_steps=4")))
    losses_a = [straight.train_step() for _ in range(4)]
    first = Trainer(compose(overrides(tiny_data, tmp_path / "b", "training.num_steps=4")))
    losses_b = [first.train_step() for _ in range(2)]
    first.save()
    del first
    torch.manual_seed(999)  # the resumed run must not depend on the process's RNG state
    resumed = Trainer(compose(overrides(tiny_data, tmp_path / "b", "training.num_steps=4", "resume=true")))
    losses_b += [resumed.train_step() for _ in range(2)]
    assert losses_b == losses_a
    for (name, a), (_, b) in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().items()):
        assert torch.equal(a, b), name

    resumed.save()
    obs = {"state": np.random.default_rng(0).normal(size=(2, 2, 4)).astype(np.float32)}
    ctx = lambda: PlanContext(generator=torch.Generator().manual_seed(0))
    cached = load_policy(tmp_path / "b")
    routed = load_policy(tmp_path / "b", ["policy.denoiser.expert_cache=false"])
    a, b = cached.act(obs, ctx()), routed.act(obs, ctx())
    assert cached.call_hooks[0].cached_evaluations == a.nfe and routed.call_hooks[0].cached_evaluations == 0
    np.testing.assert_allclose(a.actions, b.actions, rtol=1e-5, atol=1e-4)  # unnormalised: action units
