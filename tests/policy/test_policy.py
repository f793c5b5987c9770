"""DiffusionPolicy: the Agent contract (ActionChunk timing, NFE, reset, n_executed), and learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtdp.normalizer import Normalizer
from rtdp.policy.call import CallHook
from rtdp.policy.encoders import ObservationEncoder
from rtdp.policy.policy import DiffusionPolicy
from rtdp.policy.samplers import DDIMSampler, Sampler
from rtdp.policy.schedules import DDPMSchedule
from rtdp.policy.unet1d import ConditionalUnet1D
from rtdp.types import ActionChunk, Agent, PlanContext

T, TO, TA, DA = 16, 2, 8, 2


def make_policy(prediction_type: str = "epsilon", sampler=None, down_dims=(32, 64)) -> DiffusionPolicy:
    torch.manual_seed(0)
    norm = Normalizer.fit({"state": np.array([[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]], np.float32),
                           "action": np.array([[0.0, 100.0], [512.0, 300.0]], np.float32)})
    enc = ObservationEncoder({"state": (3,)})
    den = ConditionalUnet1D(DA, enc.out_dim, TO, down_dims=down_dims, level_embed_dim=32, n_groups=8)
    schedule = DDPMSchedule(prediction_type=prediction_type)
    return DiffusionPolicy(enc, den, schedule, sampler or DDIMSampler(schedule, 4, n_action_steps=TA), norm,
                           action_dim=DA, horizon=T, n_obs_steps=TO, fps=10.0)


class RecordingSampler(Sampler):
    """A test-only sampler that records what the policy tells it and executes 2 actions from index 3."""

    def __init__(self, schedule):
        super().__init__(schedule, n_action_steps=2, n_obs_steps=4)
        self.calls: list[tuple[int, bool, int]] = []
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def sample(self, call, shape, ctx, previous):
        self.calls.append((ctx.n_executed, previous is not None, ctx.delay))
        call.begin([0])
        call.predict(torch.zeros(shape), torch.zeros(shape[0]))
        call.end()
        return self.plan(torch.zeros(shape), call)


class StepCounter(CallHook):
    """A test-only hook: counts the evaluations at each step index and records the grids it was told."""

    def __init__(self):
        self.per_step: dict[int, int] = {}
        self.grids: list[int] = []
        self.ended = 0

    def begin(self, call) -> None:
        self.grids.append(len(call.grid))

    def before_step(self, call, x, level) -> None:
        self.per_step[call.step] = self.per_step.get(call.step, 0) + 1

    def end(self, call) -> None:
        self.ended += 1


def test_act_returns_an_unnormalised_chunk_with_its_timing():
    policy = make_policy()
    assert isinstance(policy, Agent)
    chunk = policy.act({"state": np.random.default_rng(0).normal(size=(5, TO, 3)).astype(np.float32)})
    assert isinstance(chunk, ActionChunk)
    assert chunk.actions.shape == (5, T, DA)
    assert chunk.start == TO - 1 and chunk.n_exec == TA and chunk.dt == pytest.approx(0.1) and chunk.nfe == 4
    assert chunk.executable.shape == (5, TA, DA)
    assert chunk.offsets[TO - 1] == 0.0 and chunk.offsets[TO] == pytest.approx(0.1)
    # clipped normalised samples in [-1, 1] unnormalise into the action range seen in the data
    assert chunk.actions[..., 0].min() >= -1e-3 and chunk.actions[..., 0].max() <= 512 + 1e-3
    assert chunk.actions[..., 1].min() >= 100 - 1e-3 and chunk.actions[..., 1].max() <= 300 + 1e-3


def test_act_is_reproducible_with_a_generator_and_leaves_training_mode_alone():
    policy = make_policy()
    policy.train()
    obs = {"state": np.zeros((2, TO, 3), np.float32)}
    a = policy.act(obs, PlanContext(generator=torch.Generator().manual_seed(7))).actions
    b = policy.act(obs, PlanContext(generator=torch.Generator().manual_seed(7))).actions
    np.testing.assert_array_equal(a, b)
    assert policy.training


def test_the_plan_context_and_the_previous_plan_reach_the_sampler_and_its_plan_sets_the_layout():
    schedule = DDPMSchedule()
    sampler = RecordingSampler(schedule)
    policy = make_policy(sampler=sampler)
    obs = {"state": np.zeros((1, TO, 3), np.float32)}
    policy.reset()
    first = policy.act(obs)
    policy.act(obs)
    policy.act(obs, PlanContext(n_executed=1, delay=3))
    policy.reset()
    policy.act(obs)
    assert sampler.resets == 2
    assert sampler.calls == [(0, False, 0), (2, True, 0), (1, True, 3), (0, False, 0)]
    assert first.start == 3 and first.n_exec == 2 and first.nfe == 1


def test_a_hook_on_the_denoiser_call_sees_every_evaluation_with_its_step_index():
    policy = make_policy()  # DDIM-4
    counter = StepCounter()
    policy.call_hooks.append(counter)
    obs = {"state": np.zeros((2, TO, 3), np.float32)}
    for _ in range(3):
        chunk = policy.act(obs)
    assert counter.per_step == {0: 3, 1: 3, 2: 3, 3: 3} and counter.grids == [4, 4, 4] and counter.ended == 3
    assert chunk.nfe == 4


def test_a_sampler_whose_executed_actions_overrun_the_horizon_is_refused():
    with pytest.raises(ValueError, match="beyond the horizon 16"):
        make_policy(sampler=DDIMSampler(DDPMSchedule(), 4, n_action_steps=16))


def test_observation_errors_name_the_key_and_shape():
    policy = make_policy()
    with pytest.raises(KeyError, match="'state'"):
        policy.act({"pos": np.zeros((1, TO, 3), np.float32)})
    with pytest.raises(ValueError, match=r"\[B, 2, ...\]"):
        policy.act({"state": np.zeros((1, 3, 3), np.float32)})


def test_images_arrive_hwc_uint8_from_envs_and_reach_the_encoder_chw_in_unit_range():
    policy = make_policy()
    policy.encoder = ObservationEncoder({"image": (3, 8, 8), "state": (3,)})
    policy.normalizer.add("image", np.zeros(1), "identity")
    img = np.full((1, TO, 8, 8, 3), 255, np.uint8)
    nobs = policy.prepare_obs({"image": img, "state": np.zeros((1, TO, 3), np.float32)})
    assert nobs["image"].shape == (1, TO, 3, 8, 8) and float(nobs["image"].max()) == 1.0


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_the_policy_overfits_a_tiny_dataset(prediction_type):
    """Two observation windows, each with its own action chunk: the loss falls far below its start (both
    targets) and, with sample prediction, DDIM sampling returns each window's chunk."""
    policy = make_policy(prediction_type, down_dims=(32, 64))
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    obs = torch.tensor([[[-1.0, 0.5, 0.0]] * TO, [[1.0, -0.5, 0.3]] * TO])
    t = torch.linspace(0, 1, T)
    actions = torch.stack([torch.stack([t * 0.8 - 0.4, 0.5 * torch.sin(3 * t)], -1),
                           torch.stack([-t * 0.6 + 0.2, -0.5 * torch.cos(3 * t)], -1)])
    batch = {"obs": {"state": obs.repeat(8, 1, 1)}, "action": actions.repeat(8, 1, 1)}
    opt = torch.optim.AdamW(policy.parameters(), lr=2e-3)
    losses = []
    for _ in range(300):
        loss, logs = policy.compute_loss(batch, generator=g)
        assert set(logs) == {"denoise_loss"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    start, end = np.mean(losses[:10]), np.mean(losses[-20:])
    assert end < 0.1 * start and end < 0.05, (start, end)
    if prediction_type == "epsilon":
        return
    policy.eval()
    pred = policy.plan_chunk({"state": obs}, PlanContext(generator=torch.Generator().manual_seed(1))).actions
    assert (pred - actions).abs().mean() < 0.1
