"""A short timing run: how long an agent's plans take at batch 1 in one env, and what delay in control steps
that is at the task's rate (what `rtdp eval delay=auto` evaluates with, and the benchmarks' wall time per step).

The rollout is synchronous (the world waits for every plan), so a warm-starting sampler sees the contexts it
sees in use. The first call of the episode pays one-off costs (a cold start, allocations) and is reported
apart; the delay is the p95 of the later calls (the control loop's robust estimate, never a maximum) times the
rate, rounded up.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from rtdp import metrics
from rtdp.obs_window import ObsWindow
from rtdp.types import Agent, PlanContext


def time_inference(agent: Agent, task_id: str, n_calls: int = 12, seed: int = 0, obs_mode: str | None = None,
                   max_steps: int | None = None, env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time `n_calls` plans after the first one (batch 1, one env, episodes restarted as they end): per-call
    latency, the start-up call, NFE and VJPs per call, actions per plan, the rate and the delay in steps."""
    from rtdp.envs import check_obs_mode, make

    if n_calls < 1:
        raise ValueError(f"a timing run needs n_calls >= 1, got {n_calls}")
    kw = dict(env_kwargs or {})
    if max_steps is not None:
        kw["max_episode_steps"] = max_steps
    env = make(task_id, obs_mode=check_obs_mode(task_id, obs_mode), **kw)
    steady: list[float] = []
    startup: list[float] = []
    nfe, vjp, actions, dt = [], [], [], None
    try:
        episode = 0
        while len(steady) < n_calls:
            obs, _ = env.reset(seed=seed + episode)
            episode += 1
            agent.reset()
            win = ObsWindow(agent.n_obs_steps, batched=False)
            win.start(obs)
            ctx, first, done = PlanContext(), True, False
            while not done and len(steady) < n_calls:
                t0 = time.perf_counter()
                chunk = agent.act(win.window(), ctx)
                elapsed = time.perf_counter() - t0
                dt = float(chunk.dt)
                if first and episode == 1:
                    startup.append(elapsed)
                else:
                    steady.append(elapsed)
                    nfe.append(int(chunk.nfe))
                    vjp.append(int(chunk.info.get("vjp", 0)))
                    actions.append(int(chunk.n_exec))
                first = False
                exe = chunk.executable[0]
                ctx = PlanContext(n_executed=exe.shape[0])
                for a in exe:
                    obs, _, term, trunc, _ = env.step(a)
                    win.push(obs)
                    done = bool(term or trunc)
                    if done:
                        break
    finally:
        env.close()
    p95 = float(np.percentile(steady, 95, method="lower"))
    rate = 1.0 / dt if dt else 0.0
    return {"calls": len(steady), "latency": metrics.summarize_latencies(steady),
            "startup_call": metrics.summarize_latencies(startup), "p95_s": p95, "rate_hz": rate,
            "delay_steps": max(math.ceil(p95 * rate - 1e-9), 0),
            "nfe_per_call": float(np.mean(nfe)), "vjp_per_call": float(np.mean(vjp)),
            "actions_per_call": float(np.mean(actions)), "batch": 1}


def describe_timing(timing: dict[str, Any]) -> str:
    """One line: what was measured and the delay it gives."""
    lat = timing["latency"]
    d = timing["delay_steps"]
    return (f"measured inference p95 {timing['p95_s'] * 1e3:.1f} ms "
            f"(p50 {lat['p50_ms']:.1f} ms over {timing['calls']} calls at batch 1, after a "
            f"{timing['startup_call']['max_ms']:.0f} ms start-up call) at the task's {timing['rate_hz']:g} Hz "
            f"-> delay={d} control step{'s' if d != 1 else ''}")
