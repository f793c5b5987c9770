"""Latency-faithful evaluation: while a plan is computed the env keeps executing the previous one for d steps;
the naive / blending / ensembling baselines on plans with known answers; the seam metric and its plot; RTC
against naive switching under the same delay; `rtdp eval delay=… execution=…` and its bad input."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from rtdp.cli.main import main as rtdp_main
from rtdp.envs.evaluate import evaluate
from rtdp.envs.execution import DelayedExecutor, check_delay, max_delay
from rtdp.envs.seams import seam_summary, step_changes
from rtdp.policy.call import DenoiserCall
from rtdp.policy.plan import Plan
from rtdp.policy.samplers import DDIMSampler
from rtdp.policy.samplers.rtc import RTCSampler
from rtdp.policy.schedules import DDPMSchedule
from rtdp.types import ActionChunk, PlanContext

T, START = 16, 1


class Scripted:
    """Plan k (from 0) is `value(k, i)` at chunk index i; executes `n_exec` per plan; records every context."""

    n_obs_steps = 2

    def __init__(self, value, n_exec: int = 4, action_dim: int = 2):
        self.value, self.n_exec, self.action_dim = value, n_exec, action_dim
        self.contexts: list[PlanContext] = []
        self.k = 0

    def reset(self) -> None:
        self.k = 0

    def act(self, obs, ctx=None):
        batch = next(iter(obs.values())).shape[0]
        self.contexts.append(ctx)
        chunk = np.array([self.value(self.k, i) for i in range(T)], dtype=np.float32).reshape(T, -1)
        self.k += 1
        actions = np.repeat(np.broadcast_to(chunk, (T, self.action_dim))[None], batch, axis=0)
        return ActionChunk(actions.copy(), start=START, n_exec=self.n_exec, dt=0.1, nfe=3)


def _run(agent, delay: int, execution: str, steps: int, batch: int = 1) -> tuple[np.ndarray, list[int]]:
    ex = DelayedExecutor(agent, delay, execution)
    window = {"obs": np.zeros((batch, 2, 1), np.float32)}
    acts = np.stack([ex.action(t, lambda: window) for t in range(steps)], axis=1)
    return acts, ex.boundaries


# ------------------------------------------------------------------------------ the delayed world, on PushT
def test_during_the_delay_the_env_executes_exactly_the_previous_plans_actions():
    agent = Scripted(lambda k, i: (100 + 20 * k + i, 300 - 10 * k + i))
    rec = evaluate(agent, "pusht", n_episodes=1, seed=0, n_envs=1, obs_mode="keypoints", max_steps=20,
                   progress=False, delay=2, execution="naive")
    executed = np.asarray(rec["seam_trace"]["actions"])
    # plan k is observed at step 4k and arrives 2 steps later (the first one at once: the world waits for it)
    arrivals = [0] + [4 * k + 2 for k in range(1, 5)]
    for t in range(20):
        k = max(j for j, a in enumerate(arrivals) if a <= t)
        i = START + t - 4 * k
        np.testing.assert_array_equal(executed[t], [100 + 20 * k + i, 300 - 10 * k + i])
    assert rec["seam_trace"]["seams"] == [6, 10, 14, 18]
    assert agent.contexts[0] == PlanContext()  # the first plan: an ordinary call
    assert all(c.n_executed == 4 and c.delay == 2 for c in agent.contexts[1:])  # told the truth
    s = rec["summary"]
    assert (s["delay"], s["execution"], s["actions_per_plan"]) == (2, "naive", 4)


def test_delay_zero_with_naive_switching_is_synchronous_evaluation():
    agent = Scripted(lambda k, i: (100 + 20 * k + i, 300))
    acts, seams = _run(agent, 0, "naive", 12)
    expected = [100 + 20 * (t // 4) + START + t % 4 for t in range(12)]
    np.testing.assert_array_equal(acts[0, :, 0], expected)
    assert seams == [4, 8]


def test_a_plan_slower_than_its_execution_horizon_is_observed_again_only_once_it_arrives():
    agent = Scripted(lambda k, i: (float(k), float(i)), n_exec=1)
    acts, seams = _run(agent, 3, "naive", 13)
    assert [c.n_executed for c in agent.contexts[1:]] == [3, 3, 3, 3]  # observed every max(n_exec, d) steps
    assert seams == [6, 9, 12, 15]  # the plan observed at 12 would arrive at 15
    np.testing.assert_array_equal(acts[0, :6, 1], START + np.arange(6))  # plan 0 runs through plan 1's delay


# ------------------------------------------------------------------------- baselines with known answers
def _alternating(k, i):
    return (1.0 if k % 2 == 0 else -1.0,)  # plan k holds +1 or -1 at every index


def test_naive_switching_jumps_by_the_whole_difference_at_every_seam():
    acts, seams = _run(Scripted(_alternating, action_dim=1), 2, "naive", 19)
    seam, inside, _ = step_changes(acts[0], seams)
    np.testing.assert_allclose(seam, [2.0] * 4)  # at steps 6, 10, 14, 18
    assert inside.max() == 0.0


def test_blending_averages_queued_actions_three_to_seven():
    acts, seams = _run(Scripted(_alternating, action_dim=1), 2, "blend", 19)
    a = acts[0, :, 0]
    assert a[5] == 1.0 and a[6] == pytest.approx(0.3 - 0.7)  # plan 1 arrives at 6: 0.3 old + 0.7 new
    assert a[10] == pytest.approx(0.3 * -0.4 + 0.7)  # plan 2 into the blended queue
    assert a[14] == pytest.approx(0.3 * (0.3 * -0.4 + 0.7) - 0.7)  # plan 3 arrives at 14
    # step 15 lay past plan 0: plan 1 alone had queued -1 there, plan 2 made it 0.4, plan 3 -0.58
    assert a[15] == pytest.approx(0.3 * (0.3 * -1.0 + 0.7) - 0.7)
    seam, _, _ = step_changes(acts[0], seams)
    np.testing.assert_allclose(seam[:2], [1.4, 0.98], rtol=1e-6)


def test_temporal_ensembling_weights_every_plan_covering_the_step_oldest_first():
    acts, _ = _run(Scripted(_alternating, action_dim=1), 2, "ensemble", 19)
    a, w = acts[0, :, 0], math.exp(-0.01)
    assert a[5] == 1.0
    assert a[6] == pytest.approx((1 - w) / (1 + w), abs=1e-6)  # plans 0 (+1, i = 0) and 1 (-1, i = 1)
    assert a[10] == pytest.approx((1 - w + w * w) / (1 + w + w * w), abs=1e-6)  # plans 0, 1 and 2


def test_the_seam_metric_drops_against_naive_switching_on_the_alternating_plans():
    def summary(execution):
        acts, seams = _run(Scripted(_alternating, action_dim=1), 2, execution, 40)
        return seam_summary([(acts[0], seams)])

    naive, blend, ensemble = summary("naive"), summary("blend"), summary("ensemble")
    assert naive["seam_max"] == naive["seam_mean"] == 2.0 and naive["inside_max"] == 0.0
    assert blend["seam_max"] < naive["seam_max"] and ensemble["seam_max"] < naive["seam_max"]
    assert naive["jerk_max"] == 4.0  # the third difference of a step of 2 is -2, 4, -2


# ------------------------------------------------------------------- RTC under a delay, on a known prior
SCHEDULE = DDPMSchedule()
_t = torch.arange(T, dtype=torch.float64)
COV = 0.25 * torch.exp(-(((_t[:, None] - _t[None]) / 4.0) ** 2)) + 1e-3 * torch.eye(T, dtype=torch.float64)


def gaussian_eps(x, level):
    """The exact ε-denoiser of smooth Gaussian trajectories: independent draws every plan, so naive switching
    jumps at every seam by the distance between two samples."""
    ab = SCHEDULE.abar(level, x)[:, 0, 0].double()
    out = []
    for b in range(x.shape[0]):
        a, s = ab[b].sqrt(), (1 - ab[b]).sqrt()
        x0 = a * COV @ torch.linalg.solve(a**2 * COV + s**2 * torch.eye(T, dtype=torch.float64), x[b].double())
        out.append((x[b].double() - a * x0) / s)
    return torch.stack(out).to(x.dtype)


class SamplerAgent:
    """A sampler on the Gaussian denoiser, driven like `DiffusionPolicy.plan_chunk` (the plan is kept)."""

    n_obs_steps = 2

    def __init__(self, sampler, seed: int = 0):
        self.sampler, self.seed = sampler, seed
        self.plan: Plan | None = None
        self.delays: list[int] = []

    def reset(self) -> None:
        self.plan, self.g = None, torch.Generator().manual_seed(self.seed)

    def act(self, obs, ctx=None):
        ctx = ctx or PlanContext()
        n = ctx.n_executed if ctx.n_executed is not None else (self.plan.n_exec if self.plan else 0)
        call = DenoiserCall(lambda x, level, cond: gaussian_eps(x, level), SCHEDULE, grad=self.sampler.needs_grad)
        with torch.no_grad():
            self.plan = self.sampler.sample(call, (3, T, 2), PlanContext(n, ctx.delay, self.g), self.plan)
        self.delays.append(self.plan.info.get("delay", 0))
        return ActionChunk(self.plan.actions.numpy(), start=self.plan.start, n_exec=self.plan.n_exec, dt=0.1,
                           nfe=self.plan.nfe, info=dict(self.plan.info))


def _seams(sampler, delay: int = 3) -> dict:
    agent = SamplerAgent(sampler)
    agent.reset()
    acts, seams = _run(agent, delay, "naive", 41, batch=3)
    return seam_summary([(acts[b], seams) for b in range(3)])


@pytest.mark.parametrize("variant", ["guided", "inpaint"])
def test_rtc_cuts_the_seam_to_under_a_third_of_naive_switching_at_a_delay_of_three(variant):
    naive = _seams(DDIMSampler(SCHEDULE, 10))
    rtc = _seams(RTCSampler(SCHEDULE, num_steps=10, variant=variant, n_action_steps=8))
    assert rtc["n_seams"] == naive["n_seams"] == 3 * 4
    assert rtc["seam_mean"] < naive["seam_mean"] / 3 and rtc["seam_max"] < naive["seam_max"] / 2


# --------------------------------------------------------------------------------------- bad input, CLI
def test_max_delay_keeps_the_previous_plan_long_enough():
    assert max_delay(15, 8) == 7 and max_delay(15, 1) == 7 and max_delay(15, 12) == 3 and max_delay(15, 15) == 0


class _PolicyLike:
    n_obs_steps, horizon = 2, 16

    class sampler:  # stands for a sampler's attributes
        start, n_action_steps = 1, 8


def test_a_delay_the_plans_cannot_cover_is_refused_with_the_valid_range():
    check_delay(_PolicyLike(), 7)
    with pytest.raises(ValueError, match=r"not below the horizon.*\[0, 7\]"):
        check_delay(_PolicyLike(), 16)
    with pytest.raises(ValueError, match=r"longer than .*\[0, 7\]"):
        check_delay(_PolicyLike(), 8)
    with pytest.raises(ValueError, match="time the policy first"):  # the library's delay=auto: measure first
        evaluate(Scripted(_alternating), "pusht", n_episodes=1, delay="auto", progress=False)
    with pytest.raises(ValueError, match="execution='smooth' is not a scheme"):
        evaluate(Scripted(_alternating), "pusht", n_episodes=1, execution="smooth", progress=False)


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory):
    """An untrained tiny PushT U-Net saved as an `rtdp train` checkpoint (its actions are noise, its shapes real)."""
    from hydra import compose, initialize_config_module

    from rtdp.normalizer import Normalizer
    from rtdp.policy.factory import make_policy
    from rtdp.train.checkpoint import save_checkpoint

    with initialize_config_module("rtdp.configs", version_base=None):
        cfg = compose("train", overrides=["policy=unet1d", "task=pusht_keypoints", "policy.denoiser.down_dims=[16,32]",
                                          "policy.denoiser.level_embed_dim=16", "sampler=ddim"])
    rng = np.random.default_rng(0)
    norm = Normalizer.fit({"keypoint": rng.uniform(0, 512, (64, 9, 2)), "agent_pos": rng.uniform(0, 512, (64, 2)),
                           "action": rng.uniform(0, 512, (64, 2))})
    torch.manual_seed(0)
    policy = make_policy(cfg.policy, cfg.sampler, {"keypoint": (9, 2), "agent_pos": (2,)}, 2, norm)
    run = tmp_path_factory.mktemp("untrained")
    save_checkpoint(run, 1, model=policy, ema_model=None, normalizer=norm, config=cfg,
                    data_meta={"obs_shapes": {"keypoint": [9, 2], "agent_pos": [2]}, "action_dim": 2})
    return run / "checkpoints" / "last"


@pytest.mark.parametrize("args,fragment", [
    (["delay=15"], r"delay=15 is not below the horizon.*use delay in \[0, 7\]"),
    (["delay=-1"], "delay takes a number of control steps >= 0 or auto"),
    (["delay=soon"], "delay takes a number of control steps >= 0 or auto"),
    (["execution=smooth"], "use one of naive, blend, ensemble"),
    (["sampler=rtc", "delay=3", "sampler.n_action_steps=2"], r"d <= s <= H - d.*must be in \[3, 12\], got 2"),
    (["sampler=rtc", "sampler.base=sdp"], "streaming sampler"),
    (["sampler=rtc", "sampler.base=rti"], "warm-start sampler"),
    # a policy that leaves no room for a delay, timed at a rate where any inference takes steps
    (["delay=auto", "task.fps=100000", "sampler.n_action_steps=15"],
     r"delay=auto: measured inference p95 .* ms .*-> delay=\d+ control steps?, which this policy cannot run.*\[0, 0\]"),
])
def test_bad_delay_input_is_one_line_exit_2_and_writes_nothing(untrained_checkpoint, tmp_path, capsys, args,
                                                               fragment):
    out = tmp_path / "ev"
    code = rtdp_main(["eval", f"checkpoint={untrained_checkpoint}", f"out={out}", "episodes=1", "n_envs=1",
                      "max_steps=4", "progress=false", "num_threads=1", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.search(fragment, err), err
    assert not out.exists()


def test_cli_eval_with_a_delay_writes_the_seams_and_auto_reports_what_it_measured(untrained_checkpoint, tmp_path,
                                                                                    capsys):
    out = tmp_path / "ev"
    assert rtdp_main(["eval", f"checkpoint={untrained_checkpoint}", f"out={out}", "episodes=2", "n_envs=2",
                      "max_steps=12", "progress=false", "num_threads=1", "sampler=rtc", "sampler.num_steps=3",
                      "delay=auto", "execution=blend"]) == 0
    err = capsys.readouterr().err
    assert "delay=auto: measured inference p95" in err
    rec = json.loads((out / "eval.json").read_text())
    s = rec["summary"]
    assert s["execution"] == "blend" and s["delay"] == s["delay_timing"]["delay_steps"]
    assert s["delay_timing"]["calls"] == 12 and s["delay_timing"]["rate_hz"] == 10
    assert {"seam_max", "seam_mean", "inside_max", "inside_mean", "jerk_max", "jerk_mean"} <= set(s["seams"])
    assert (out / "seams.png").stat().st_size > 0 and json.loads((out / "seams.json").read_text())["kind"] == "seams"


def test_the_timing_run_counts_cost_per_control_step_under_the_delay_and_keeps_start_ups_apart():
    from rtdp.envs.timing import time_inference

    sync = time_inference(Scripted(_alternating), "pusht", n_calls=5, obs_mode="keypoints")
    assert sync["calls"] == 5 and sync["startup_call"]["n"] == 1 and sync["rate_hz"] == 10
    assert sync["nfe_per_step"] == pytest.approx(3 / 4) and sync["actions_per_call"] == 4
    late = time_inference(Scripted(_alternating), "pusht", n_calls=5, obs_mode="keypoints", delay=6)
    assert late["nfe_per_step"] == pytest.approx(3 / 6)  # observed every max(n_exec, d) = 6 steps


def test_a_timing_run_whose_episodes_end_before_a_replan_says_so_instead_of_running_forever():
    from rtdp.envs.timing import time_inference

    with pytest.raises(ValueError, match="saw no plan after an episode's first"):
        time_inference(Scripted(_alternating, n_exec=8), "pusht", n_calls=2, obs_mode="keypoints", max_steps=3)
