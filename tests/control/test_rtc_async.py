"""`rtdp run mode=async` with `sampler=rtc`: the delay the loop measures reaches the RTC sampler with every plan."""

from __future__ import annotations

import time

import torch

from rtdp.control import run_episodes
from rtdp.hardware.loopback_env import LoopbackEnv
from rtdp.policy.call import CallHook
from rtdp.policy.factory import make_policy

HZ = 50.0


class SlowEvaluations(CallHook):
    """Each denoiser evaluation takes at least 15 ms more, so a 4-step plan outlasts three 20 ms control periods."""

    def before_step(self, call, x, level) -> None:
        time.sleep(0.015)


class Spy:
    """The policy as the loop's agent, remembering what each call was told and what its plan says it used."""

    def __init__(self, policy):
        self.policy, self.n_obs_steps = policy, policy.n_obs_steps
        self.calls: list[tuple] = []

    def reset(self) -> None:
        self.policy.reset()

    def act(self, obs, ctx=None):
        chunk = self.policy.act(obs, ctx)
        self.calls.append((ctx, chunk.info))
        return chunk


def test_the_async_loops_measured_delay_reaches_rtc_with_every_plan():
    torch.set_num_threads(1)
    pcfg = {"name": "t", "horizon": 16, "n_obs_steps": 2,
            "denoiser": {"type": "unet1d", "down_dims": [16, 32], "level_embed_dim": 16, "n_groups": 4},
            "schedule": {"name": "ddpm", "num_train_steps": 100}}
    policy = make_policy(pcfg, {"name": "rtc", "num_steps": 4, "n_action_steps": 8}, {"state": (20,)}, 2,
                         fps=HZ).eval()
    policy.call_hooks.append(SlowEvaluations())
    agent = Spy(policy)
    run_episodes(LoopbackEnv(max_steps=10_000), agent, hz=HZ, mode="async", max_steps=40)
    (first_ctx, first_info), *later = agent.calls
    assert first_ctx.delay == 0 and first_info["warm"] is False  # the warm-up: an ordinary sample
    assert later
    for ctx, info in later:
        assert info["delay_requested"] == ctx.delay  # what the loop said is what the sampler saw
        left = 16 - 1 - ctx.n_executed
        assert info["delay"] == max(0, min(ctx.delay, left))  # clamped to the previous plan's actions left
        # guided while the previous plan reaches any position of the new one (the window's past counts)
        assert info["vjp"] == (4 if ctx.n_executed < 16 else 0)
    assert min(ctx.delay for ctx, _ in later[1:]) >= 3  # >= 60 ms of sleeps at a 20 ms period
