"""The fixed-rate loop in both inference modes: timing invariants, replanning, latency-aware triggering."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from rtdp.control import ControlLoop, run_episodes
from rtdp.control.inference import LatencyEstimate
from rtdp.control.report import plot_timing, summarize
from rtdp.hardware import EnvServer, RemoteEnv
from rtdp.hardware.loopback_env import LoopbackEnv, LoopbackExpert

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from control_agents import TimedAgent

HZ = 20.0
PERIOD_NS = int(1e9 / HZ)


def _env():
    return LoopbackEnv(max_steps=10_000)


def _assert_never_late(ep):
    for s in ep.steps:
        if s.executed:
            assert s.due_ns <= s.step_start_ns < s.due_ns + PERIOD_NS, "action executed outside its slot"
            assert s.target_ns == s.due_ns
            assert s.obs_ns <= s.step_start_ns


def test_sync_mode_executes_n_exec_actions_per_inference():
    (ep,) = run_episodes(_env(), TimedAgent(0.005, n_exec=4, dt=1 / HZ), hz=HZ, mode="sync", max_steps=16)
    _assert_never_late(ep)
    assert ep.n_env_steps == 16
    per_chunk = np.bincount([s.chunk_id for s in ep.steps if s.executed])
    assert per_chunk.max() <= 4  # never more than n_exec actions from one chunk
    assert sum(s.inferred_here for s in ep.steps) == len(ep.chunks) - 1
    s = summarize([ep])
    assert s["inference_latency"]["n"] == len(ep.chunks) - 1 and s["inference_latency"]["p50_ms"] >= 5.0
    if not ep.scheduler_counts.get("dropped_late"):  # unless a busy machine made a tick overrun
        assert len(ep.chunks) == 4  # warm-up + one inference per 4 executed actions
        assert s["nfe_per_executed_action"] == pytest.approx(10 / 4)


def test_async_streaming_merges_a_chunk_every_step_and_never_executes_late():
    (ep,) = run_episodes(_env(), TimedAgent(0.01, n_exec=1, dt=1 / HZ), hz=HZ, mode="async", max_steps=20)
    _assert_never_late(ep)
    executed = [s.chunk_id for s in ep.steps if s.executed]
    assert executed == sorted(executed)  # always the newest chunk available
    assert len(ep.chunks) >= 10 and ep.n_env_steps == 20
    assert not any(s.inferred_here for s in ep.steps)  # inference never ran on the loop thread


def test_async_starts_inference_early_by_the_measured_latency():
    agent = TimedAgent(0.06, n_exec=8, dt=1 / HZ)  # 60 ms = more than one 50 ms tick
    (ep,) = run_episodes(_env(), agent, hz=HZ, mode="async", max_steps=30)
    _assert_never_late(ep)
    for prev, cur in zip(ep.chunks[1:], ep.chunks[2:]):
        # latency >= 2 ticks, so the next chunk is requested at least 2 ticks before the 8 run out
        assert cur.obs_tick <= prev.obs_tick + 8 - 2
    s = summarize([ep])
    assert s["nfe_per_executed_action"] < 10  # chunks are reused across steps, not recomputed every tick


def test_async_actions_for_passed_ticks_are_dropped_not_executed_late():
    # 120 ms inference at 20 Hz: a chunk is 3 ticks old when it arrives
    (ep,) = run_episodes(_env(), TimedAgent(0.12, n_exec=1, dt=1 / HZ), hz=HZ, mode="async", max_steps=12)
    _assert_never_late(ep)
    assert ep.scheduler_counts.get("dropped_on_arrival", 0) >= 2 * (len(ep.chunks) - 1)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_policy_error_is_raised_by_the_loop(mode):
    with pytest.raises((RuntimeError, ValueError), match="blew up"):
        run_episodes(_env(), TimedAgent(0.0, n_exec=1, fail_on_call=3, dt=1 / HZ), hz=HZ, mode=mode,
                     max_steps=10)


def test_a_policy_slower_than_every_slot_ends_by_the_tick_bound():
    loop = ControlLoop(_env(), TimedAgent(0.08, n_exec=1, dt=1 / HZ), hz=HZ, mode="sync", max_steps=5,
                       max_ticks=8)
    ep = loop.run_episode(seed=0)
    assert ep.steps[-1].tick < 8 + 2 and summarize([ep])["deadline_misses"] > 0


def test_expert_solves_the_loopback_task_over_the_wire_and_metrics_plot(tmp_path):
    srv = EnvServer(lambda: LoopbackEnv(image_size=96), "tcp://127.0.0.1:*").start()
    env = RemoteEnv(srv.endpoint)
    try:
        eps = run_episodes(env, LoopbackExpert(dt=1 / HZ, n_exec=4), n_episodes=2, hz=HZ, mode="async",
                           max_steps=100, record_data=True)
    finally:
        env.close(), srv.close()
    s = summarize(eps)
    assert s["success_rate"] == 1.0 and s["executed_actions"] == sum(e.n_env_steps for e in eps)
    assert eps[0].data["image"][0].shape == (96, 96, 3) and len(eps[0].data["action"]) == eps[0].n_env_steps
    png, js = plot_timing(eps[0], tmp_path / "timing.png", s)
    assert png.stat().st_size > 0 and js.exists()
    for key in ("period_error", "deadline_misses", "inference_latency", "obs_to_action_latency",
                "nfe_per_executed_action", "success_rate"):
        assert key in s


def test_control_loop_imports_without_torch():
    import subprocess

    code = "import sys, rtdp.control, rtdp.control.report, rtdp.control.recorder; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120, check=False).returncode == 0


def test_realtime_priority_is_applied_for_the_episode_and_restored():
    import os

    before = os.sched_getscheduler(0)
    loop = ControlLoop(_env(), TimedAgent(0.0, n_exec=4, dt=1 / HZ), hz=HZ, mode="sync", max_steps=5,
                       realtime_priority=10)
    ep = loop.run_episode(seed=0)
    loop.close()
    assert ep.realtime == "SCHED_FIFO 10" or ep.realtime.startswith("unavailable")
    assert os.sched_getscheduler(0) == before and ep.n_env_steps == 5


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_warm_starting_policies_are_told_how_far_their_previous_chunk_moved(mode):
    agent = TimedAgent(0.01, n_exec=4, dt=1 / HZ)
    (ep,) = run_episodes(_env(), agent, hz=HZ, mode=mode, max_steps=12)
    assert agent.n_executed[0] is None  # the warm-up has no previous chunk (an empty context)
    shifts = [c.obs_tick - p.obs_tick for p, c in zip(ep.chunks, ep.chunks[1:])]
    assert agent.n_executed[1 : 1 + len(shifts)] == shifts  # chunk dt == period: ticks == actions
    if mode == "sync" and not ep.scheduler_counts.get("dropped_late"):
        assert set(shifts) == {4}


def test_the_latency_estimate_ignores_a_single_spike_and_follows_the_recent_calls():
    est = LatencyEstimate()
    est.add(1.0)  # a start-up spike
    for _ in range(10):
        est.add(0.010)
    assert est.seconds == pytest.approx(0.010) and est.steps(PERIOD_NS) == 1
    for _ in range(20):  # inference got slower for good: the estimate follows within a window
        est.add(0.120)
    assert est.seconds == pytest.approx(0.120) and est.steps(PERIOD_NS) == 3


def test_async_plans_are_told_the_expected_delay_and_the_warm_up_spike_does_not_inflate_it():
    # the first inference (before the clock starts) takes 400 ms, the others 60 ms: 2 ticks at 20 Hz
    agent = TimedAgent(0.06, n_exec=4, dt=1 / HZ, on_call=lambda n: time.sleep(0.34) if n == 1 else None)
    run_episodes(_env(), agent, hz=HZ, mode="async", max_steps=24)
    assert agent.delays[0] == 0  # the warm-up: nothing measured yet
    later = agent.delays[2:]  # from the second measured latency on
    assert later and max(later) <= 3 and min(later) >= 1  # never the 8 ticks of the spike
    sync = TimedAgent(0.01, n_exec=4, dt=1 / HZ)
    run_episodes(_env(), sync, hz=HZ, mode="sync", max_steps=8)
    assert set(sync.delays) == {0}  # synchronously the world waits for the plan
