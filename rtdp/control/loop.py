"""The fixed-rate control loop: observe, schedule timestamped actions, execute one per tick, record timing.

Tick k is due at `t0 + k * period`. The observation an env returns from the step at tick k describes the
state at tick k+1, so the chunk computed from it targets tick k+1 onward (`ActionChunk.offsets` from there).

- synchronous: when no action is scheduled for the current tick, infer on the loop thread (the tick
  overruns by the inference time), then execute the chunk's `n_exec` actions on the following ticks.
- asynchronous: a worker thread infers while the loop keeps executing the current chunk; inference starts
  early enough (measured latency, in ticks, before the current chunk's `n_exec` actions run out) that the
  new chunk arrives in time; it is merged by tick, the newest chunk winning, and actions whose tick has
  passed are dropped, never executed late.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from rtdp.control.clock import RateClock
from rtdp.control.inference import InferenceResult, InferenceWorker, LatencyEstimate, infer
from rtdp.control.scheduler import ActionScheduler
from rtdp.obs_window import ObsWindow
from rtdp.types import Agent, PlanContext

MODES = ("sync", "async")


@dataclass
class StepRecord:
    """What happened in one control tick (times in perf_counter ns)."""

    tick: int
    due_ns: int
    wake_ns: int
    end_ns: int = 0
    executed: bool = False  # an action was executed in this tick (else the tick held: none was ready)
    chunk_id: int = -1  # the chunk the executed action came from
    obs_ns: int = 0  # capture time of the observation that chunk was computed from
    infer_start_ns: int = 0
    infer_end_ns: int = 0
    target_ns: int = 0  # the executed action's target time (= due_ns of its tick)
    step_start_ns: int = 0
    step_end_ns: int = 0
    inferred_here: bool = False  # synchronous inference ran inside this tick
    missed: bool = False  # this tick's work ran past the next tick's due time


@dataclass
class ChunkRecord:
    chunk_id: int
    obs_tick: int
    obs_ns: int
    submit_ns: int
    start_ns: int
    end_ns: int
    nfe: int
    n_exec: int
    scheduled: int  # actions still in the future when it was merged


@dataclass
class EpisodeResult:
    """One episode of the loop: per-tick and per-chunk records, outcome, and the recorded data."""

    hz: float
    mode: str
    steps: list[StepRecord] = field(default_factory=list)
    chunks: list[ChunkRecord] = field(default_factory=list)
    skipped_ticks: int = 0  # ticks that passed entirely while the loop was busy (deadline misses)
    warmup_s: float = 0.0
    success: bool = False
    total_reward: float = 0.0
    n_env_steps: int = 0
    terminated: bool = False
    scheduler_counts: dict[str, int] = field(default_factory=dict)
    realtime: str = "off"  # "SCHED_FIFO <prio>", "off", or why it could not be set
    data: dict[str, list] = field(default_factory=dict)  # per executed step: obs keys + "action"


class ControlLoop:
    """Runs `agent` on `env` at `hz` in `mode` ("sync" or "async"); `run_episode` returns its records."""

    def __init__(self, env: gym.Env, agent: Agent, hz: float = 10.0, mode: str = "async", *,
                 max_steps: int = 300, max_ticks: int | None = None, spin_s: float = 0.001,
                 record_data: bool = False, switch_interval_s: float | None = 2e-4,
                 realtime_priority: int = 0):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.env, self.agent, self.mode = env, agent, mode
        self.clock = RateClock(hz, spin_s=spin_s)
        self.max_steps, self.max_ticks, self.record_data = int(max_steps), max_ticks, record_data
        self.latency = LatencyEstimate()
        # CPython hands the GIL over only every 5 ms by default, which would delay the loop thread's wake-up
        # behind the inference thread; a shorter interval bounds that wait.
        self.switch_interval_s = switch_interval_s
        # SCHED_FIFO priority for the loop thread while an episode runs (0 = normal scheduling): on a busy
        # machine it is what keeps the wake-ups on time; it needs CAP_SYS_NICE (root or a robot PC's
        # rtprio limit), and without it the loop runs normally and `realtime` in the result says so.
        self.realtime_priority = int(realtime_priority)
        self._worker: InferenceWorker | None = None
        self._chunk_id = 0

    # -- helpers ----------------------------------------------------------------------------------------
    def _capture_ns(self) -> int:
        t = getattr(self.env.unwrapped, "last_capture_ns", None)  # RemoteEnv maps the server's capture time
        return int(t) if t is not None else time.perf_counter_ns()

    def _merge(self, res: InferenceResult, ep: EpisodeResult, sched: ActionScheduler, now_tick: int,
               warmup: bool = False) -> None:
        if res.error is not None:
            raise RuntimeError(f"the policy raised during inference: {res.error!r}") from res.error
        chunk = res.chunk
        self._chunk_id += 1
        if not warmup:  # the first chunk pays one-off costs: it must not inflate the delay estimate
            self.latency.add(res.latency_s)
        n = sched.merge(chunk, res.obs_tick, now_tick, self._chunk_id, executable_only=self.mode == "sync")
        ep.chunks.append(ChunkRecord(self._chunk_id, res.obs_tick, res.obs_ns, res.submit_ns, res.start_ns,
                                     res.end_ns, int(chunk.nfe), int(chunk.n_exec), n))
        # the tick after the chunk's last executable action: replanning aims to land a new chunk by then
        exec_ticks = math.ceil(chunk.n_exec * chunk.dt * 1e9 / self.clock.period_ns - 1e-9)
        self._exec_end_tick = res.obs_tick + exec_ticks
        self._last_chunk = (res.obs_tick, chunk.dt)

    def _context(self, obs_tick: int) -> PlanContext:
        """The plan context of an inference from the observation of `obs_tick`: how many of the previous chunk's
        actions lie between its observation and this one (how far a warm start shifts it), and, asynchronously,
        how many control steps the inference is expected to take (a robust recent estimate)."""
        prev_tick, dt = self._last_chunk
        n_executed = max(round((obs_tick - prev_tick) * self.clock.period_ns / (dt * 1e9)), 0)
        delay = self.latency.steps(self.clock.period_ns) if self.mode == "async" else 0
        return PlanContext(n_executed=n_executed, delay=delay)

    def _should_trigger(self, next_tick: int, sched: ActionScheduler) -> bool:
        """Start the next inference when the actions left to execute cover only its expected latency."""
        lat_ticks = self.latency.steps(self.clock.period_ns)
        return self._exec_end_tick - next_tick <= lat_ticks or sched.remaining(next_tick) <= lat_ticks

    # -- the loop ---------------------------------------------------------------------------------------
    def run_episode(self, seed: int | None = None) -> EpisodeResult:
        """Reset env and agent, run until termination, truncation or `max_steps` executed actions."""
        ep = EpisodeResult(hz=self.clock.hz, mode=self.mode)
        sched = ActionScheduler(self.clock.period_ns)
        history = ObsWindow(getattr(self.agent, "n_obs_steps", 1), batched=False)
        self.agent.reset()
        obs, _ = self.env.reset(seed=seed)
        obs_ns = self._capture_ns()
        history.start(obs)
        if self.record_data:
            ep.data = {k: [] for k in history.latest} | {"action": [], "timestamp": []}
        old_switch = sys.getswitchinterval()
        old_sched = _set_realtime(self.realtime_priority, ep) if self.realtime_priority else None
        if self.mode == "async":
            if self._worker is None:
                self._worker = InferenceWorker(self.agent)
            if self.switch_interval_s:
                sys.setswitchinterval(min(old_switch, self.switch_interval_s))
        try:
            # Warm-up: the first chunk is computed before the clock starts (it also pays one-off costs).
            res = infer(self.agent, history.window(), 0, obs_ns, PlanContext())
            ep.warmup_s = res.latency_s
            self.clock.start()
            self._merge(res, ep, sched, 0, warmup=True)
            self._run(ep, sched, history, obs_ns)
        finally:
            sys.setswitchinterval(old_switch)
            if old_sched is not None:
                os.sched_setscheduler(0, *old_sched)
            if self._worker is not None and self._worker.busy:
                self._worker.wait(timeout_s=30)  # never leave an inference running into the next episode
        ep.scheduler_counts = dict(sched.counts)
        return ep

    def _run(self, ep: EpisodeResult, sched: ActionScheduler, history: ObsWindow, obs_ns: int) -> None:
        clock, worker = self.clock, self._worker
        k, done = 0, False
        # Bounded in ticks too: a policy slower than its actions' slots executes nothing (every action is
        # late), and that must end the episode rather than loop forever.
        max_ticks = self.max_ticks if self.max_ticks is not None else 4 * self.max_steps + 100
        while ep.n_env_steps < self.max_steps and not done and k < max_ticks:
            due = clock.due(k)
            rec = StepRecord(tick=k, due_ns=due, wake_ns=clock.wait(k))
            if self.mode == "async":
                res = worker.poll()
                if res is not None:
                    self._merge(res, ep, sched, k)
            entry = sched.take(k, time.perf_counter_ns(), due)
            if entry is None and self.mode == "sync":
                # A gymnasium env only changes on step, so the latest observation still describes the
                # state now: the chunk is anchored at the current tick.
                res = infer(self.agent, history.window(), k, obs_ns, self._context(k))
                self._merge(res, ep, sched, k)
                rec.inferred_here = True
                entry = sched.take(k, time.perf_counter_ns(), due)
            if entry is not None:
                chunk_rec = ep.chunks[entry.chunk_id - ep.chunks[0].chunk_id]
                rec.executed, rec.chunk_id, rec.target_ns = True, entry.chunk_id, due
                rec.obs_ns, rec.infer_start_ns, rec.infer_end_ns = (chunk_rec.obs_ns, chunk_rec.start_ns,
                                                                   chunk_rec.end_ns)
                if self.record_data:
                    for key, v in history.latest.items():
                        ep.data[key].append(v)
                    ep.data["action"].append(np.array(entry.action))
                    ep.data["timestamp"].append((due - clock.t0_ns) / 1e9)
                rec.step_start_ns = time.perf_counter_ns()
                obs, reward, terminated, truncated, info = self.env.step(entry.action)
                rec.step_end_ns = time.perf_counter_ns()
                obs_ns = self._capture_ns()
                history.push(obs)
                ep.n_env_steps += 1
                ep.total_reward += float(reward)
                ep.success = ep.success or bool(info.get("success", False))
                done = bool(terminated or truncated)
                ep.terminated = bool(terminated)
            if (self.mode == "async" and not done and not worker.busy
                    and self._should_trigger(k + 1, sched)):
                # the obs describes the state at tick k+1
                worker.submit(history.window(), k + 1, obs_ns, self._context(k + 1))
            rec.end_ns = time.perf_counter_ns()
            ep.steps.append(rec)
            nxt = clock.tick_at(rec.end_ns)  # the tick whose slot we are in now
            if nxt > k:  # this tick's work overran into later slots: a deadline miss
                rec.missed = True
                ep.skipped_ticks += nxt - k - 1  # slots that passed with no tick at all
                k = nxt  # run the current slot's tick now (late within its slot), never earlier ones
            else:
                k += 1

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None


def _set_realtime(priority: int, ep: EpisodeResult) -> tuple[int, os.sched_param] | None:
    """Put the calling thread under SCHED_FIFO; returns the policy to restore, or None if not allowed."""
    try:
        old = (os.sched_getscheduler(0), os.sched_getparam(0))
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as err:  # no CAP_SYS_NICE / not Linux
        ep.realtime = f"unavailable: {err}"
        return None
    ep.realtime = f"SCHED_FIFO {priority}"
    return old


def run_episodes(env: gym.Env, agent: Agent, n_episodes: int = 1, seed: int = 0, **kw: Any) -> list[EpisodeResult]:
    """Run `n_episodes` seeded episodes with one ControlLoop (seed, seed+1, ...)."""
    loop = ControlLoop(env, agent, **kw)
    try:
        return [loop.run_episode(seed=seed + i) for i in range(n_episodes)]
    finally:
        loop.close()
