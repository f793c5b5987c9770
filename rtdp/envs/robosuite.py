"""robosuite Lift and PickPlaceCan (Panda, OSC pose deltas at 20 Hz) as gymnasium envs, with scripted experts.

robosuite 1.5 needs numpy<2 and mujoco<3.4, so it lives in its own environment (`make robosuite-env`,
`.venv-robosuite`) and is reached from the main one over ZeroMQ (`rtdp serve-env task=robosuite/lift`).
This module imports only numpy, gymnasium and robosuite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

OBS_MODES = ("state", "image")
# robosuite environment name and the object whose pose is observed, per rtdp task id
ROBOSUITE_TASKS = {"robosuite/lift": ("Lift", "cube"), "robosuite/can": ("PickPlaceCan", "Can")}
STATE_LAYOUT = {"eef_pos": slice(0, 3), "eef_quat": slice(3, 7), "gripper_qpos": slice(7, 9),
                "obj_pos": slice(9, 12), "obj_quat": slice(12, 16), "goal_pos": slice(16, 19)}
STATE_DIM = 19
OSC_MAX_DELTA = 0.05  # metres per step at |action| = 1 (robosuite's default OSC_POSE output_max)


def import_robosuite():
    """Import robosuite quietly, or say how to get it."""
    try:
        import robosuite
    except ModuleNotFoundError as err:
        from rtdp.envs.errors import MissingDependencyError

        raise MissingDependencyError(
            "robosuite is not installed here: it needs numpy<2, so it cannot share the main environment; "
            "run `make robosuite-env` and use .venv-robosuite/bin/python (or `rtdp serve-env` from it)") from err
    return robosuite


class RobosuiteEnv(gym.Env):
    """A robosuite manipulation task with Dict observations, per-reset seeds and `info["success"]`."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, task_id: str = "robosuite/lift", obs_mode: str = "state", render_mode: str | None = None,
                 image_size: int = 84, camera: str = "agentview", render_size: int = 256, horizon: int = 500):
        if task_id not in ROBOSUITE_TASKS:
            raise ValueError(f"unknown robosuite task {task_id!r}; known: {', '.join(ROBOSUITE_TASKS)}")
        if obs_mode not in OBS_MODES:
            raise ValueError(f"{task_id} has no observation mode {obs_mode!r}; its modes are: {', '.join(OBS_MODES)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"{task_id} renders only 'rgb_array' (headless), not {render_mode!r}")
        suite = import_robosuite()
        from robosuite.controllers import load_composite_controller_config

        self.task_id, self.obs_mode, self.render_mode = task_id, obs_mode, render_mode
        self.fps, self.camera, self.image_size, self.render_size = 20, camera, image_size, render_size
        env_name, self.obj = ROBOSUITE_TASKS[task_id]
        pixels = obs_mode == "image" or render_mode == "rgb_array"
        self._env = suite.make(
            env_name, robots="Panda", controller_configs=load_composite_controller_config(controller="BASIC"),
            has_renderer=False, has_offscreen_renderer=pixels, use_camera_obs=obs_mode == "image",
            camera_names=camera, camera_heights=image_size, camera_widths=image_size, control_freq=self.fps,
            horizon=horizon, ignore_done=True, hard_reset=False, reward_shaping=False)
        low, high = self._env.action_spec
        self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        obs = {"state": spaces.Box(-np.inf, np.inf, shape=(STATE_DIM,), dtype=np.float32)}
        if obs_mode == "image":
            obs["image"] = spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs)

    def _goal(self) -> np.ndarray:
        env = self._env
        if hasattr(env, "target_bin_placements"):  # PickPlace: the centre of the object's target bin
            return np.asarray(env.target_bin_placements[env.object_to_id[self.obj.lower()]], dtype=np.float64)
        # Lift: the height the cube must pass (table top + 4 cm), above the table centre
        return np.asarray(env.model.mujoco_arena.table_offset, dtype=np.float64) + [0.0, 0.0, 0.04]

    def _obs(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        state = np.concatenate([raw["robot0_eef_pos"], raw["robot0_eef_quat"], raw["robot0_gripper_qpos"],
                                raw[f"{self.obj}_pos"], raw[f"{self.obj}_quat"], self._goal()]).astype(np.float32)
        obs = {"state": state}
        if self.obs_mode == "image":
            # robosuite images come out bottom-up (OpenGL's origin); flip to the usual top-down
            obs["image"] = np.ascontiguousarray(raw[f"{self.camera}_image"][::-1]).astype(np.uint8)
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # robosuite draws object placement and joint noise from `env.rng`; give each episode its own
        rng = np.random.default_rng(int(self.np_random.integers(2**63 - 1)))
        self._env.rng = rng
        sampler = getattr(self._env, "placement_initializer", None)
        for s in [sampler, *getattr(sampler, "samplers", {}).values()] if sampler is not None else []:
            s.rng = rng
        ready = self._fast_render()
        raw = self._env.reset()
        if not ready and self._fast_render() and self.obs_mode == "image":
            raw = self._env._get_observations(force_update=True)  # re-render the first frame without shadows
        return self._obs(raw), {"success": False}

    def _fast_render(self) -> bool:
        """Shadows and reflections off (2-3× faster software rendering); False until robosuite has made its
        offscreen context (during the first reset)."""
        ctx = getattr(self._env.sim, "_render_context_offscreen", None)
        if ctx is None:
            return False
        import mujoco

        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return True

    def step(self, action):
        raw, reward, _, _ = self._env.step(np.asarray(action, dtype=np.float64))
        success = bool(self._env._check_success())
        return self._obs(raw), float(reward), success, False, {"success": success}

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        img = self._env.sim.render(width=self.render_size, height=self.render_size, camera_name=self.camera)
        return np.ascontiguousarray(img[::-1])

    def close(self):
        self._env.close()


def make_robosuite(task_id: str = "robosuite/lift", obs_mode: str = "state", render_mode: str | None = None,
                   max_episode_steps: int = 300, **kw) -> gym.Env:
    """robosuite Lift (`robosuite/lift`) or PickPlaceCan (`robosuite/can`), ending on success."""
    env: gym.Env = RobosuiteEnv(task_id, obs_mode=obs_mode, render_mode=render_mode,
                                horizon=max_episode_steps + 1, **kw)
    return gym.wrappers.TimeLimit(env, max_episode_steps=max_episode_steps)


# --- scripted experts ----------------------------------------------------------------------------------------
def _toward(eef: np.ndarray, target: np.ndarray, gain: float = 1.0) -> np.ndarray:
    return np.clip(gain * (target - eef) / OSC_MAX_DELTA, -1.0, 1.0)


def pick_and_place_action(state: np.ndarray, place: bool) -> np.ndarray:
    """Above the object, down, close, up (and, with `place`, over the goal bin, down, open), from the state."""
    L = STATE_LAYOUT
    eef, obj, goal = state[L["eef_pos"]], state[L["obj_pos"]], state[L["goal_pos"]]
    fingers = float(state[L["gripper_qpos"]][0] - state[L["gripper_qpos"]][1])  # opening (m)
    action = np.zeros(7)
    xy_err = float(np.linalg.norm(eef[:2] - obj[:2]))
    near = xy_err < 0.02 and abs(eef[2] - obj[2]) < 0.02
    holding = near and fingers < 0.06 and obj[2] > 0.0
    lifted = holding and obj[2] > 0.86
    in_goal = float(np.linalg.norm(obj[:2] - goal[:2])) < 0.05 and obj[2] < goal[2] + 0.1
    if place and lifted:
        # carry above the target bin, then let go (the bin is a few centimetres deep: dropping is placing)
        carry = np.array([goal[0], goal[1], max(goal[2] + 0.15, 0.95)])
        at_goal = float(np.linalg.norm(eef[:2] - goal[:2])) < 0.02
        action[:3], action[6] = _toward(eef, carry), -1.0 if at_goal else 1.0
    elif place and in_goal and not holding:
        action[:3], action[6] = _toward(eef, np.array([eef[0], eef[1], goal[2] + 0.2])), -1.0
    elif holding:
        action[:3], action[6] = _toward(eef, np.array([eef[0], eef[1], obj[2] + 0.25])), 1.0
    elif near:
        action[:3], action[6] = _toward(eef, obj), 1.0  # close on the object
    elif xy_err < 0.01:
        action[:3], action[6] = _toward(eef, obj), -1.0  # descend, open
    else:
        hover = np.array([obj[0], obj[1], obj[2] + 0.1])
        target = hover if eef[2] > obj[2] + 0.05 or xy_err < 0.02 else np.array([eef[0], eef[1], hover[2]])
        action[:3], action[6] = _toward(eef, target), -1.0
    return action.astype(np.float32)


def robosuite_expert_fn(task_id: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The per-env action function of a robosuite task's scripted expert."""
    if task_id not in ROBOSUITE_TASKS:
        raise ValueError(f"no robosuite expert for {task_id!r}; known: {', '.join(ROBOSUITE_TASKS)}")
    place = task_id == "robosuite/can"
    return lambda obs: pick_and_place_action(np.asarray(obs["state"], dtype=np.float64), place)
