"""A short timing run: how long an agent's plans take at batch 1 in one env, and what delay in control steps
that is at the task's rate (what `rtdp eval delay=auto` evaluates with, and the benchmarks' wall time and NFE per
control step).

The rollout runs the plans the way `rtdp.envs.evaluate` does (`DelayedExecutor`, synchronous by default), so a
warm-starting sampler sees the contexts it sees in use and a guided one pays for its backward passes. The first
call of the run pays one-off costs (a cold start, allocations) and is reported apart; the delay is the p95 of
the later calls (the control loop's robust estimate, never a maximum) times the rate, rounded up.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from rtdp import metrics
from rtdp.envs.execution import DelayedExecutor
from rtdp.obs_window import ObsWindow
from rtdp.types import ActionChunk, Agent, PlanContext


class _Stopwatch:
    """An agent whose every `act` is timed, with what its chunk cost and how many actions it executes."""

    def __init__(self, agent: Agent):
        self.inner, self.n_obs_steps = agent, agent.n_obs_steps
        self.calls: list[tuple[float, ActionChunk]] = []  # the calls after an episode's first
        self.startup: list[float] = []  # each episode's first call (a cold start)

    def reset(self) -> None:
        self.inner.reset()

    def act(self, obs, ctx: PlanContext | None = None) -> ActionChunk:
        t0 = time.perf_counter()
        chunk = self.inner.act(obs, ctx)
        elapsed = time.perf_counter() - t0
        if ctx is None or ctx.n_executed is None:  # the executor's first plan of an episode
            self.startup.append(elapsed)
        else:
            self.calls.append((elapsed, chunk))
        return chunk


def time_inference(agent: Agent, task_id: str, n_calls: int = 12, seed: int = 0, obs_mode: str | None = None,
                   max_steps: int | None = None, env_kwargs: dict[str, Any] | None = None, delay: int = 0,
                   execution: str = "naive") -> dict[str, Any]:
    """Time `n_calls` plans that are not an episode's first (batch 1, one env, episodes restarted as they end,
    `delay` and `execution` as in `rtdp.envs.evaluate`): per-call latency, the start-up calls, NFE, VJPs and wall
    time per control step, the rate and the delay in steps."""
    from rtdp.envs import check_obs_mode, make

    if n_calls < 1:
        raise ValueError(f"a timing run needs n_calls >= 1, got {n_calls}")
    kw = dict(env_kwargs or {})
    if max_steps is not None:
        kw["max_episode_steps"] = max_steps
    env = make(task_id, obs_mode=check_obs_mode(task_id, obs_mode), **kw)
    watch = _Stopwatch(agent)
    executor = DelayedExecutor(watch, delay, execution)
    try:
        episode = 0
        while len(watch.calls) < n_calls:
            if episode >= n_calls + 10:  # every episode ended before its second plan: nothing steady to time
                raise ValueError(f"the timing run on {task_id} saw no plan after an episode's first in {episode} "
                                 f"episodes: they end before the first plan's {max(delay, 1)}+ actions run out; "
                                 "allow longer episodes (max_steps)")
            obs, _ = env.reset(seed=seed + episode)
            episode += 1
            watch.reset()
            executor.reset()
            win = ObsWindow(agent.n_obs_steps, batched=False)
            win.start(obs)
            t, done = 0, False
            while not done and len(watch.calls) < n_calls:
                action = executor.action(t, win.window)
                obs, _, term, trunc, _ = env.step(action[0])
                win.push(obs)
                done = bool(term or trunc)
                t += 1
    finally:
        env.close()
    steady = watch.calls
    first = steady[0][1]
    latency = [s for s, _ in steady]
    spacing = [max(int(c.n_exec), int(delay), 1) for _, c in steady]
    p95 = float(np.percentile(latency, 95, method="lower"))
    rate = 1.0 / float(first.dt) if first.dt else 0.0
    per_step = float(np.sum(latency) / max(np.sum(spacing), 1))
    return {"calls": len(latency), "latency": metrics.summarize_latencies(latency),
            "startup_call": metrics.summarize_latencies(watch.startup), "p95_s": p95, "rate_hz": rate,
            "delay_steps": max(math.ceil(p95 * rate - 1e-9), 0), "delay": int(delay), "execution": execution,
            "nfe_per_call": float(np.mean([c.nfe for _, c in steady])),
            "vjp_per_call": float(np.mean([c.info.get("vjp", 0) for _, c in steady])),
            "actions_per_call": float(np.mean(spacing)),
            "nfe_per_step": float(np.sum([c.nfe for _, c in steady]) / max(np.sum(spacing), 1)),
            "vjp_per_step": float(np.sum([c.info.get("vjp", 0) for _, c in steady]) / max(np.sum(spacing), 1)),
            "wall_ms_per_step": per_step * 1e3, "batch": 1}


def describe_timing(timing: dict[str, Any]) -> str:
    """One line: what was measured and the delay it gives."""
    lat = timing["latency"]
    d = timing["delay_steps"]
    return (f"measured inference p95 {timing['p95_s'] * 1e3:.1f} ms "
            f"(p50 {lat['p50_ms']:.1f} ms over {timing['calls']} calls at batch 1, start-up call "
            f"{timing['startup_call']['max_ms']:.0f} ms apart) at the task's {timing['rate_hz']:g} Hz "
            f"-> delay={d} control step{'s' if d != 1 else ''}")
