"""Scripted experts behind the same `Agent` interface as policies, so evaluation and collection treat them alike.

Each expert reads only the latest frame of its observation window and is stateless (the phase of a task is
read off the observation), so batch rows never carry memory between episodes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rtdp.types import ActionChunk, PlanContext

ActionFn = Callable[[dict[str, np.ndarray]], np.ndarray]


class ScriptedExpert:
    """Wraps a per-environment `action_fn(obs_frame) -> action` as a batched `Agent` (n_obs_steps = 1)."""

    n_obs_steps = 1

    def __init__(self, action_fn: ActionFn, action_dim: int, dt: float, name: str = "expert"):
        self.action_fn, self.action_dim, self.dt, self.name = action_fn, action_dim, dt, name

    def reset(self) -> None:
        """Stateless: nothing to forget between episodes."""

    def act(self, obs: dict[str, np.ndarray], ctx: PlanContext | None = None) -> ActionChunk:
        """One action per row from the latest frame (a closed-loop expert needs nothing from `ctx`)."""
        batch = len(next(iter(obs.values())))
        actions = np.empty((batch, 1, self.action_dim), dtype=np.float32)
        for b in range(batch):
            actions[b, 0] = self.action_fn({k: np.asarray(v[b, -1]) for k, v in obs.items()})
        return ActionChunk(actions=actions, start=0, n_exec=1, dt=self.dt, nfe=0, info={"expert": self.name})


# --- arm-lift -------------------------------------------------------------------------------------------------
def arm_lift_action(state: np.ndarray, control: str = "ee_delta") -> np.ndarray:
    """Hover above the cube, turn to its yaw, descend, close, lift: each phase read off the state vector.

    Written to be learnable as well as successful: near the cube the expert corrects its position at the height
    it is at instead of rising back to the hover point (no up/down cycles a policy would have to time), and it
    turns to whichever of the cube's four equivalent yaws is nearest its own (no flip at ±45°).
    """
    from rtdp.envs.arm import CUBE_HALF, MAX_DELTA_POS, MAX_DELTA_YAW, YAW_LIMIT
    from rtdp.envs.arm import STATE_LAYOUT as L

    tcp, yaw = state[L["tcp_pos"]], float(state[L["tcp_yaw"]][0])
    finger, cube, quat = float(state[L["gripper"]][0]), state[L["cube_pos"]], state[L["cube_quat"]]
    cube_yaw = 2.0 * np.arctan2(quat[3], quat[0])  # the cube only turns about z while on the table
    # a square: any of 4 yaws grasps it; take the one nearest the hand's yaw that the wrist can reach
    cube_yaw = yaw + (cube_yaw - yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4
    if abs(cube_yaw) > YAW_LIMIT:
        cube_yaw -= np.sign(cube_yaw) * np.pi / 2
    grasp = np.array([cube[0], cube[1], cube[2] + 0.005])
    xy_err = float(np.linalg.norm(tcp[:2] - cube[:2]))
    tol = 0.02 if finger < 0.035 else 0.008  # looser once the fingers are closing around the cube
    between_fingers = xy_err < 0.025 and abs(tcp[2] - cube[2]) < 0.03
    holding = between_fingers and 0.012 < finger < 0.0215
    aligned = xy_err < tol and abs(yaw - cube_yaw) < 0.06

    if holding:
        target, grip = np.array([tcp[0], tcp[1], 0.30]), 1.0
    elif aligned and tcp[2] - grasp[2] < 0.008:
        target, grip = grasp, 1.0
    elif aligned:
        target, grip = grasp, -1.0
    elif xy_err < 0.02:  # close but not aligned: correct over the cube at this height, fingers open
        target, grip = np.array([cube[0], cube[1], max(tcp[2], grasp[2])]), -1.0
    else:
        hover = cube[2] + 0.08 + CUBE_HALF
        # rise before moving sideways, so a low hand never sweeps the cube away
        target = np.array([cube[0], cube[1], hover]) if tcp[2] > hover - 0.03 \
            else np.array([tcp[0], tcp[1], hover])
        grip = -1.0
    move = np.clip(0.6 * (target - tcp) / MAX_DELTA_POS, -1.0, 1.0)
    turn = np.clip(0.5 * (cube_yaw - yaw) / MAX_DELTA_YAW, -1.0, 1.0)
    if control == "ee_abs":  # the same motion profile, as absolute way-points a step ahead of the hand
        return np.array([*(tcp + move * MAX_DELTA_POS), yaw + turn * MAX_DELTA_YAW, grip], dtype=np.float32)
    return np.array([*move, turn, grip], dtype=np.float32)


# --- Meta-World ---------------------------------------------------------------------------------------------
def _metaworld_policy_fn(name: str) -> ActionFn:
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP[name]()
    return lambda obs: policy.get_action(np.asarray(obs["state"], dtype=np.float64))


def _metaworld_mt10_fn() -> ActionFn:
    from metaworld.policies import ENV_POLICY_MAP

    from rtdp.envs.metaworld import MT10_TASKS

    policies = [ENV_POLICY_MAP[name]() for name in MT10_TASKS]
    return lambda obs: policies[int(np.argmax(obs["task_onehot"]))].get_action(
        np.asarray(obs["state"], dtype=np.float64))


# --- registry -------------------------------------------------------------------------------------------------
def expert_tasks() -> list[str]:
    """Task ids with a scripted expert (any Meta-World `<name>-v3` too)."""
    return ["arm-lift", "metaworld/mt10", "metaworld/<name>-v3", "robosuite/lift", "robosuite/can"]


def make_expert(task_id: str, **kw) -> ScriptedExpert:
    """The scripted expert of a task, as an `Agent` (batched `[B, 1, ...]` observations in, one action out)."""
    from rtdp.envs import get_spec

    get_spec(task_id)  # unknown ids fail here with the list of known ones
    if task_id == "arm-lift":
        from rtdp.envs.arm import ArmLiftEnv

        control = kw.get("control", "ee_delta")
        return ScriptedExpert(lambda obs: arm_lift_action(obs["state"], control), 5,
                              1.0 / ArmLiftEnv.metadata["render_fps"], "arm-lift")
    if task_id == "metaworld/mt10":
        return ScriptedExpert(_metaworld_mt10_fn(), 4, 1.0 / 80, "metaworld-mt10")
    if task_id.startswith("metaworld/"):
        from rtdp.envs.metaworld import import_metaworld

        import_metaworld(task_id)
        return ScriptedExpert(_metaworld_policy_fn(task_id.split("/", 1)[1]), 4, 1.0 / 80, task_id)
    if task_id.startswith("robosuite/"):
        from rtdp.envs.robosuite import robosuite_expert_fn

        return ScriptedExpert(robosuite_expert_fn(task_id), 7, 1.0 / 20, task_id)
    raise ValueError(f"task {task_id!r} has no scripted expert; tasks with one: {', '.join(expert_tasks())}"
                     + (" (PushT is learned from the human demonstrations in ../shared/data)"
                        if task_id == "pusht" else ""))
