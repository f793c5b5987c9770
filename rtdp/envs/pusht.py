"""PushT (gym-pusht) with Diffusion Policy's observation modes and a reset-to-state that lands where it should.

gym-pusht already holds the physics, coverage and rendering; this wrapper only adds the paper's
observations (`state`, `keypoints`, `image`) and sets a recorded state in the right order.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# The 9 block keypoints of Diffusion Policy's low-dim PushT task, in the block's body frame (pixels). They
# were fitted to `data/keypoint` of the released human data (pusht_cchi_v7_replay.zarr: residual < 0.03 px
# over all 25,650 frames); `tests/envs/test_pusht.py` re-checks them against the data.
BLOCK_KEYPOINTS = np.array([
    [9.2686, 90.0228], [-60.9922, -1.1872], [60.9071, -1.3929], [-0.2705, 25.5436], [-14.0637, 122.8113],
    [39.0003, 32.8608], [-39.9546, 32.7342], [-16.8217, 62.8724], [23.5411, -1.7001],
], dtype=np.float64)

OBS_MODES = ("state", "keypoints", "image")
SUCCESS_COVERAGE = 0.95


class PushTEnv(gym.Env):
    """Push the T block onto the target at 10 Hz; actions are the commanded pusher position in pixels [0, 512]."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, obs_mode: str = "state", render_mode: str | None = None, image_size: int = 96,
                 render_size: int = 384):
        from gym_pusht.envs.pusht import PushTEnv as _GymPushT

        if obs_mode not in OBS_MODES:
            raise ValueError(f"PushT has no observation mode {obs_mode!r}; its modes are: {', '.join(OBS_MODES)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"PushT renders only 'rgb_array' (headless), not {render_mode!r}")
        self.obs_mode, self.render_mode = obs_mode, render_mode
        self.fps = self.metadata["render_fps"]
        # gym-pusht draws images only in its rgb_array mode, so the inner env always uses it.
        self._env = _GymPushT(obs_type="state", render_mode="rgb_array", observation_width=image_size,
                              observation_height=image_size, visualization_width=render_size,
                              visualization_height=render_size)
        self.action_space = spaces.Box(0.0, 512.0, shape=(2,), dtype=np.float32)
        pos = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        if obs_mode == "state":
            self.observation_space = spaces.Dict({"state": spaces.Box(-np.inf, np.inf, (5,), np.float32)})
        elif obs_mode == "keypoints":
            self.observation_space = spaces.Dict({"keypoint": spaces.Box(-np.inf, np.inf, (9, 2), np.float32),
                                                  "agent_pos": pos})
        else:
            self.observation_space = spaces.Dict({
                "image": spaces.Box(0, 255, (image_size, image_size, 3), np.uint8), "agent_pos": pos})

    # --- state -------------------------------------------------------------------------------------------
    def get_state(self) -> np.ndarray:
        """agent x, y, block x, y, block angle in [0, 2π) — the `data/state` layout of the human data."""
        e = self._env
        return np.array([*e.agent.position, *e.block.position, e.block.angle % (2 * np.pi)], np.float64)

    def set_state(self, state: np.ndarray) -> None:
        """Set a recorded state: block angle first, then its position (pymunk rotates about the centre of
        mass, so gym-pusht's position-then-angle order moves the block ~90 px), then zero velocities."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (5,):
            raise ValueError(f"reset_to_state wants [agent x, agent y, block x, block y, angle], got {state.shape}")
        e = self._env
        e._setup()
        e.agent.position = state[:2].tolist()
        e.agent.velocity = (0.0, 0.0)
        e.block.angle = float(state[4])
        e.block.position = state[2:4].tolist()
        e.block.velocity, e.block.angular_velocity = (0.0, 0.0), 0.0
        e.space.step(e.dt)  # as gym-pusht and Diffusion Policy do, so shapes and caches take effect

    def keypoints(self) -> np.ndarray:
        """The 9 block keypoints in pixels, Diffusion Policy's convention (`data/keypoint`)."""
        block = self._env.block
        c, s = np.cos(block.angle), np.sin(block.angle)
        rot = np.array([[c, -s], [s, c]])
        return BLOCK_KEYPOINTS @ rot.T + np.asarray(block.position)

    def coverage(self) -> float:
        return float(self._env._get_coverage())

    # --- gymnasium API -----------------------------------------------------------------------------------
    def _obs(self) -> dict[str, np.ndarray]:
        agent_pos = np.asarray(self._env.agent.position, dtype=np.float32)
        if self.obs_mode == "state":
            return {"state": self.get_state().astype(np.float32)}
        if self.obs_mode == "keypoints":
            return {"keypoint": self.keypoints().astype(np.float32), "agent_pos": agent_pos}
        return {"image": self._env._render(visualize=False).astype(np.uint8), "agent_pos": agent_pos}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._env.reset(seed=seed)
        self._env._last_action = None
        if options is not None and options.get("reset_to_state") is not None:
            self.set_state(options["reset_to_state"])
        self._env.n_contact_points = 0
        cov = self.coverage()
        return self._obs(), {"coverage": cov, "success": False}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(2)
        _, _, _, _, inner = self._env.step(action)
        cov = float(inner["coverage"])
        success = cov > SUCCESS_COVERAGE
        reward = float(np.clip(cov / SUCCESS_COVERAGE, 0.0, 1.0))
        info = {"coverage": cov, "success": bool(success), "n_contacts": int(inner["n_contacts"])}
        return self._obs(), reward, bool(success), False, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self._env.render()

    def close(self):
        self._env.close()


def make_pusht(task_id: str = "pusht", obs_mode: str = "state", render_mode: str | None = None,
               max_episode_steps: int = 300, **kw) -> gym.Env:
    """PushT with a 300-step limit, as Diffusion Policy evaluates it."""
    env: gym.Env = PushTEnv(obs_mode=obs_mode, render_mode=render_mode, **kw)
    env = gym.wrappers.TimeLimit(env, max_episode_steps=max_episode_steps)
    return env
