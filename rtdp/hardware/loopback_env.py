"""A tiny numpy point-mass reaching task with a state vector and an optional image observation.

It exists to exercise the wire and the control loop with both payload kinds (a 20-dim state, a 96x96x3
image) where the real tasks would cost seconds to start: `rtdp serve-env
task=rtdp.hardware.loopback_env:LoopbackEnv` serves it like any other env.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class LoopbackEnv(gym.Env):
    """Move a point to a goal in the unit square; `state` = [pos, goal, features...], `image` a top view."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, state_dim: int = 20, image_size: int = 0, max_steps: int = 200,
                 render_mode: str | None = None, terminate_on_success: bool = True):
        if state_dim < 4:
            raise ValueError("state_dim must be at least 4 (position and goal)")
        self.state_dim, self.image_size, self.max_steps = int(state_dim), int(image_size), int(max_steps)
        self.render_mode, self.terminate_on_success = render_mode, terminate_on_success
        obs = {"state": spaces.Box(-1.0, 1.0, (self.state_dim,), np.float32)}
        if self.image_size:
            obs["image"] = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(obs)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._pos = np.zeros(2)
        self._goal = np.zeros(2)
        self._t = 0

    def _obs(self) -> dict[str, np.ndarray]:
        state = np.empty(self.state_dim, np.float32)
        state[:2], state[2:4] = self._pos, self._goal
        k = np.arange(self.state_dim - 4)
        state[4:] = np.sin((k + 1) * self._pos[k % 2])  # deterministic features, so all dims carry data
        obs = {"state": state}
        if self.image_size:
            obs["image"] = self.render()
        return obs

    def render(self) -> np.ndarray:
        n = self.image_size or 96
        img = np.zeros((n, n, 3), np.uint8)
        for (x, y), color in ((self._goal, (0, 200, 0)), (self._pos, (220, 40, 40))):
            i, j = int(np.clip(y, 0, 1) * (n - 1)), int(np.clip(x, 0, 1) * (n - 1))
            img[max(i - 2, 0) : i + 3, max(j - 2, 0) : j + 3] = color
        return img

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(0.1, 0.9, 2)
        self._goal = self.np_random.uniform(0.1, 0.9, 2)
        self._t = 0
        return self._obs(), {"success": False}

    def step(self, action: Any):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self._pos = np.clip(self._pos + 0.1 * a, 0.0, 1.0)
        self._t += 1
        dist = float(np.linalg.norm(self._pos - self._goal))
        success = dist < 0.05
        terminated = success and self.terminate_on_success
        return self._obs(), -dist, terminated, self._t >= self.max_steps, {"success": success, "step": self._t}


class LoopbackExpert:
    """The scripted expert for LoopbackEnv (an `rtdp.types.Agent`): head to the goal, as a chunk."""

    def __init__(self, n_obs_steps: int = 2, horizon: int = 8, n_exec: int = 4, dt: float = 0.1):
        self.n_obs_steps, self.horizon, self.n_exec, self.dt = n_obs_steps, horizon, n_exec, dt

    def reset(self) -> None:
        pass

    def act(self, obs: dict[str, np.ndarray], ctx=None):
        """A chunk towards the goal from the latest frame (`ctx`, a `PlanContext`, is not needed)."""
        from rtdp.types import ActionChunk  # numpy-only module

        state = obs["state"][:, -1]  # [B, D]: latest frame
        pos, goal = state[:, :2].astype(np.float64), state[:, 2:4].astype(np.float64)
        actions = np.empty((state.shape[0], self.horizon, 2), np.float32)
        for i in range(self.horizon):  # plan the chunk by rolling the point-mass model forward
            a = np.clip((goal - pos) / 0.1, -1.0, 1.0)
            actions[:, i] = a
            pos = np.clip(pos + 0.1 * a, 0.0, 1.0)
        return ActionChunk(actions, start=0, n_exec=self.n_exec, dt=self.dt, nfe=0)
