"""Simulation tasks behind gymnasium's API: PushT, Meta-World, rtdp's own MuJoCo arm and robosuite.

`make(task_id, obs_mode=...)` builds any of them; every task is also registered with gymnasium as
`rtdp/<Name>-v0`. Only numpy and gymnasium are imported here: a task's simulator is imported when the task
is made, so the robosuite environment (no torch, no LeRobot) can import this package.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import gymnasium as gym

from rtdp.envs.errors import MissingDependencyError, UnknownTaskError


@dataclass(frozen=True)
class TaskSpec:
    """What a task id builds: the factory, its observation modes, and the gymnasium id it is registered as."""

    factory: str  # "module:function", imported lazily
    obs_modes: tuple[str, ...]
    default_obs_mode: str
    gym_id: str
    extra: str | None = None  # the pip extra providing the simulator, when it is optional
    description: str = ""


# Meta-World single tasks are looked up in metaworld's own table at make time (all 50 `<name>-v3`), so
# only the ones papers report most are listed here by name.
METAWORLD_LISTED = ("pick-place-v3", "push-v3", "reach-v3", "door-open-v3", "drawer-open-v3",
                    "button-press-topdown-v3", "peg-insert-side-v3", "assembly-v3", "basketball-v3")

TASKS: dict[str, TaskSpec] = {
    "pusht": TaskSpec("rtdp.envs.pusht:make_pusht", ("state", "keypoints", "image"), "state",
                      "rtdp/PushT-v0", None, "push a T block onto a target (gym-pusht, 10 Hz)"),
    "arm-lift": TaskSpec("rtdp.envs.arm:make_arm_lift", ("state", "image"), "state",
                         "rtdp/ArmLift-v0", None, "6-DoF arm + gripper lifts a cube (MuJoCo, 20 Hz)"),
    "metaworld/mt10": TaskSpec("rtdp.envs.metaworld:make_metaworld_mt10", ("state", "image"), "state",
                               "rtdp/MetaWorld-MT10-v0", "sim",
                               "Meta-World MT10: 10 tasks, one-hot task id in the observation"),
    **{f"metaworld/{name}": TaskSpec("rtdp.envs.metaworld:make_metaworld", ("state", "image"), "state",
                                     f"rtdp/MetaWorld-{name}", "sim", f"Meta-World {name}")
       for name in METAWORLD_LISTED},
    "robosuite/lift": TaskSpec("rtdp.envs.robosuite:make_robosuite", ("state", "image"), "state",
                               "rtdp/RobosuiteLift-v0", "robosuite",
                               "robosuite Lift, Panda, OSC pose (needs `make robosuite-env`)"),
    "robosuite/can": TaskSpec("rtdp.envs.robosuite:make_robosuite", ("state", "image"), "state",
                              "rtdp/RobosuiteCan-v0", "robosuite",
                              "robosuite PickPlaceCan, Panda, OSC pose (needs `make robosuite-env`)"),
}


def task_ids() -> list[str]:
    """The task ids `make` accepts (Meta-World accepts any of its 50 `<name>-v3` tasks beyond those listed)."""
    return list(TASKS)


def get_spec(task_id: str) -> TaskSpec:
    """The spec of a task id, or an error that lists the known ones."""
    if task_id in TASKS:
        return TASKS[task_id]
    if task_id.startswith("metaworld/") and task_id.endswith("-v3"):
        return TaskSpec("rtdp.envs.metaworld:make_metaworld", ("state", "image"), "state",
                        f"rtdp/MetaWorld-{task_id.split('/', 1)[1]}", "sim", f"Meta-World {task_id}")
    raise UnknownTaskError(f"unknown task {task_id!r}; known tasks: {', '.join(TASKS)} "
                           f"(and any Meta-World task as metaworld/<name>-v3)")


def check_obs_mode(task_id: str, obs_mode: str | None) -> str:
    """The observation mode to use: the task's default for None, an error naming the modes it has otherwise."""
    spec = get_spec(task_id)
    if obs_mode is None:
        return spec.default_obs_mode
    if obs_mode not in spec.obs_modes:
        raise ValueError(f"task {task_id!r} has no observation mode {obs_mode!r}; "
                         f"its modes are: {', '.join(spec.obs_modes)}")
    return obs_mode


def make(task_id: str, obs_mode: str | None = None, render_mode: str | None = None, address: str | None = None,
         **kw) -> gym.Env:
    """Build a task's gymnasium env (observations are `spaces.Dict`; `info["success"]` on every step). With
    `address`, the task runs in an `rtdp serve-env` there (rtdp/envs/remote.py) and this is its client."""
    spec = get_spec(task_id)
    obs_mode = check_obs_mode(task_id, obs_mode)
    if address is not None:
        from rtdp.envs.remote import make_remote

        unknown = set(kw) - {"max_episode_steps"}
        if unknown:
            raise ValueError(f"env options {sorted(unknown)} go to the server with address=: pass them to "
                             f"`rtdp serve-env task={task_id} ...` instead")
        return make_remote(task_id, address, obs_mode, kw.get("max_episode_steps"), render_mode)
    module_name, func_name = spec.factory.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise MissingDependencyError(_missing_message(task_id, spec, err)) from err
    factory = getattr(module, func_name)
    try:
        env = factory(task_id=task_id, obs_mode=obs_mode, render_mode=render_mode, **kw)
    except ModuleNotFoundError as err:
        raise MissingDependencyError(_missing_message(task_id, spec, err)) from err
    # what this env is, for a client of `rtdp serve-env` to check (a fresh dict: metadata is often class-wide)
    env.metadata = {**env.metadata, "rtdp_task": task_id, "rtdp_obs_mode": obs_mode}
    return env


def _missing_message(task_id: str, spec: TaskSpec, err: ModuleNotFoundError) -> str:
    how = {"robosuite": "robosuite cannot share the main environment (it needs numpy<2): run "
                        "`make robosuite-env` and serve it from there (`.venv-robosuite/bin/rtdp serve-env task=...`), then "
                        "pass env=tcp://ADDRESS here",
           "sim": "install the simulation extra: pip install -e '.[sim]'"}.get(spec.extra or "",
                                                                              "pip install -e '.[sim]'")
    return f"task {task_id!r} needs the missing module {err.name!r}: {how}"


def _entry_point(task_id: str):
    def build(**kw) -> gym.Env:
        return make(task_id, **kw)
    return build


def register_all() -> None:
    """Register every listed task with gymnasium as `rtdp/...` (idempotent)."""
    for task_id, spec in TASKS.items():
        if spec.gym_id not in gym.registry:
            gym.register(id=spec.gym_id, entry_point=_entry_point(task_id),
                         disable_env_checker=True, order_enforce=True)


register_all()

__all__ = [
    "TASKS",
    "MissingDependencyError",
    "TaskSpec",
    "UnknownTaskError",
    "check_obs_mode",
    "get_spec",
    "make",
    "register_all",
    "task_ids",
]
