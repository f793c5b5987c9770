"""Test agents with a known inference latency (sleep-based, so they release the GIL like torch kernels)."""

from __future__ import annotations

import time

import numpy as np

from rtdp.types import ActionChunk, PlanContext


class TimedAgent:
    """Heads to the LoopbackEnv goal; each `act` takes `latency_s` and returns `horizon` actions."""

    def __init__(self, latency_s: float = 0.0, n_exec: int = 4, horizon: int = 16, dt: float = 0.05,
                 n_obs_steps: int = 2, nfe: int = 10, fail_on_call: int | None = None, on_call=None):
        self.latency_s, self.n_exec, self.horizon, self.dt = latency_s, n_exec, horizon, dt
        self.n_obs_steps, self.nfe, self.fail_on_call, self.on_call = n_obs_steps, nfe, fail_on_call, on_call
        self.calls = 0
        self.n_executed: list[int | None] = []
        self.delays: list[int] = []

    def reset(self) -> None:
        pass

    def act(self, obs: dict[str, np.ndarray], ctx: PlanContext | None = None) -> ActionChunk:
        ctx = ctx or PlanContext()
        self.calls += 1
        self.n_executed.append(ctx.n_executed)
        self.delays.append(ctx.delay)
        if self.on_call is not None:
            self.on_call(self.calls)
        if self.fail_on_call == self.calls:
            raise ValueError("policy blew up")
        if self.latency_s:
            time.sleep(self.latency_s)
        state = obs["state"][:, -1]
        step = np.clip((state[:, 2:4] - state[:, :2]) / 0.1, -1, 1).astype(np.float32)
        start = self.n_obs_steps - 1
        actions = np.repeat(step[:, None] * 0.05, self.horizon, axis=1)  # slow, so episodes do not end early
        return ActionChunk(actions, start=start, n_exec=self.n_exec, dt=self.dt, nfe=self.nfe)
