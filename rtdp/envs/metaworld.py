"""Meta-World 3 tasks (single tasks and MT10) with a Dict observation, seeded goals and `info["success"]`.

Meta-World's own constructors (`gym.make("Meta-World/MT1", ...)`) pick a goal from a fixed list of 50 per
task and keep one global seed; here every `reset(seed=s)` draws the object and goal positions from the
env's generator seeded with `s` (Meta-World's "seeded_rand_vec" mode), so episode i of an evaluation is the
same scene whatever process runs it. The goal is observable (39-d state), as the shipped experts need.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

OBS_MODES = ("state", "image")
MT10_TASKS = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
              "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3")
FPS = 80  # frame_skip 5 × timestep 2.5 ms


def import_metaworld(task_id: str = "metaworld"):
    """Import metaworld, or say which extra installs it."""
    try:
        import metaworld
    except ModuleNotFoundError as err:
        from rtdp.envs.errors import MissingDependencyError

        raise MissingDependencyError(f"task {task_id!r} needs Meta-World: pip install -e '.[sim]' "
                                     "(metaworld==3.1.1)") from err
    return metaworld


def _make_sawyer(name: str, render_mode: str | None, width: int, height: int, camera_name: str):
    metaworld = import_metaworld(f"metaworld/{name}")
    classes = metaworld.ALL_V3_ENVIRONMENTS
    if name not in classes:
        from rtdp.envs.errors import UnknownTaskError

        raise UnknownTaskError(f"unknown Meta-World task {name!r}; known: {', '.join(classes)}")
    env = classes[name](render_mode=render_mode, width=width, height=height, camera_name=camera_name)
    # goal observable and a fresh, seeded goal at every reset (what Meta-World's goal-observable classes do)
    env._partially_observable = False
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    env._set_task_called = True
    del env.sawyer_observation_space  # a cached property that depends on `_partially_observable`
    env.observation_space = env.sawyer_observation_space
    return env


class MetaWorldEnv(gym.Env):
    """One Meta-World task, or several with one chosen per episode (MT10) and a one-hot task id observed;
    `only_task` keeps several tasks' one-hot layout but runs that one task in every episode (a multitask
    policy evaluated per task)."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(self, tasks: tuple[str, ...], obs_mode: str = "state", render_mode: str | None = None,
                 image_size: int = 96, render_size: int = 256, camera_name: str = "corner2",
                 only_task: str | None = None):
        if obs_mode not in OBS_MODES:
            raise ValueError(f"Meta-World has no observation mode {obs_mode!r}; its modes are: {', '.join(OBS_MODES)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"Meta-World renders only 'rgb_array' (headless), not {render_mode!r}")
        self.tasks, self.obs_mode, self.render_mode = tuple(tasks), obs_mode, render_mode
        if only_task is not None and only_task not in self.tasks:
            raise ValueError(f"only_task={only_task!r} is not one of this env's tasks: {', '.join(self.tasks)}")
        self.only_task = only_task
        self.fps, self.image_size, self.render_size = FPS, image_size, render_size
        size = image_size if obs_mode == "image" else render_size
        needs_pixels = obs_mode == "image" or render_mode == "rgb_array"
        self._envs = [_make_sawyer(t, "rgb_array" if needs_pixels else None, size, size, camera_name)
                      for t in self.tasks]
        self._task = 0
        self.max_path_length = self._envs[0].max_path_length
        self.action_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        obs = {"state": spaces.Box(-np.inf, np.inf, shape=(39,), dtype=np.float32)}
        if len(self.tasks) > 1:
            obs["task_onehot"] = spaces.Box(0.0, 1.0, shape=(len(self.tasks),), dtype=np.float32)
        if obs_mode == "image":
            obs["image"] = spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs)

    @property
    def sawyer(self):
        """The Meta-World env of the current episode's task."""
        return self._envs[self._task]

    @property
    def task_name(self) -> str:
        return self.tasks[self._task]

    def _obs(self, state: np.ndarray) -> dict[str, np.ndarray]:
        obs = {"state": np.asarray(state, dtype=np.float32)}
        if len(self.tasks) > 1:
            obs["task_onehot"] = np.eye(len(self.tasks), dtype=np.float32)[self._task]
        if self.obs_mode == "image":
            obs["image"] = self._pixels()
        return obs

    def _pixels(self) -> np.ndarray:
        import mujoco

        viewer = self.sawyer.mujoco_renderer._get_viewer("rgb_array")
        # shadows and reflections off: several times faster on a software (EGL/Mesa) renderer
        viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        # Meta-World's cameras look at the scene upside down (MuJoCo's image origin is bottom-left)
        return np.ascontiguousarray(self.sawyer.render()[::-1]).astype(np.uint8)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # MT10: the task of an episode is drawn from the same seeded generator as its scene
        self._task = int(self.np_random.integers(len(self.tasks))) if len(self.tasks) > 1 else 0
        task = (options or {}).get("task") or self.only_task
        if task is not None:
            self._task = self.tasks.index(task)
        self.sawyer.seed(int(self.np_random.integers(2**31 - 1)))
        state, _ = self.sawyer.reset()
        return self._obs(state), {"success": False, "task": self.task_name}

    def step(self, action):
        state, reward, _, truncated, info = self.sawyer.step(np.asarray(action, dtype=np.float32))
        success = bool(info.get("success", 0.0) > 0.5)
        out = {"success": success, "task": self.task_name}
        return self._obs(state), float(reward), success, bool(truncated), out

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self._pixels()

    def close(self):
        for env in self._envs:
            env.close()


def make_metaworld(task_id: str, obs_mode: str = "state", render_mode: str | None = None,
                   max_episode_steps: int = 500, **kw) -> gym.Env:
    """A single Meta-World task, `metaworld/<name>-v3` (500-step episodes, ending on success)."""
    env: gym.Env = MetaWorldEnv((task_id.split("/", 1)[1],), obs_mode=obs_mode, render_mode=render_mode, **kw)
    return gym.wrappers.TimeLimit(env, max_episode_steps=max_episode_steps)


def make_metaworld_mt10(task_id: str = "metaworld/mt10", obs_mode: str = "state", render_mode: str | None = None,
                        max_episode_steps: int = 500, **kw) -> gym.Env:
    """MT10: one of 10 tasks per episode (seeded), its one-hot id in `obs["task_onehot"]`; `only_task=<name>-v3`
    runs that task in every episode, with the same one-hot id."""
    env: gym.Env = MetaWorldEnv(MT10_TASKS, obs_mode=obs_mode, render_mode=render_mode, **kw)
    return gym.wrappers.TimeLimit(env, max_episode_steps=max_episode_steps)
