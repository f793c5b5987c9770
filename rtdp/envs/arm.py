"""rtdp's own MuJoCo arm task: a 6-DoF arm with a parallel gripper lifts a cube (`arm-lift`).

It is small on purpose (one MJCF, no meshes) so it steps at well over 500 Hz state-only, and it is the
simulated robot behind the control loop and hardware work. Actions are end-effector targets, resolved to
joint position targets by damped-least-squares IK every control step; the units and limits are in
`docs/envs.md`.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

CONTROL_MODES = ("ee_delta", "ee_abs")
OBS_MODES = ("state", "image")

# Workspace the end-effector target is clipped to (metres, base frame) and the yaw range (rad).
WORKSPACE_LOW = np.array([0.20, -0.35, 0.0])
WORKSPACE_HIGH = np.array([0.75, 0.35, 0.45])
YAW_LIMIT = np.pi / 2
MAX_DELTA_POS = 0.02  # metres per control step at |action| = 1 (0.4 m/s at 20 Hz)
MAX_DELTA_YAW = 0.1  # radians per control step at |action| = 1
FINGER_OPEN = 0.04  # finger travel (m); the gap between the pads is twice it
CUBE_HALF = 0.02
LIFT_HEIGHT = 0.10  # success: cube centre above this height (m), i.e. lifted 8 cm
HOME_TCP = np.array([0.40, 0.0, 0.25])

# state vector layout: what each column holds (also used by the expert and documented in docs/envs.md)
STATE_LAYOUT = {"qpos": slice(0, 6), "tcp_pos": slice(6, 9), "tcp_yaw": slice(9, 10),
                "gripper": slice(10, 11), "cube_pos": slice(11, 14), "cube_quat": slice(14, 18)}
STATE_DIM = 18


def _model_path() -> str:
    return str(resources.files("rtdp.envs") / "assets" / "arm_lift.xml")


def _down_rotation(yaw: float) -> np.ndarray:
    """Rotation of a gripper pointing straight down (tool z = world −z), turned by `yaw` about world z.

    Yaw 0 is the arm's natural pose (the tool frame of the upright arm pitched by π about y), so tool
    x = (−cos, −sin, 0) and the fingers close along tool y = (−sin, cos, 0).
    """
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[-c, -s, 0.0], [-s, c, 0.0], [0.0, 0.0, -1.0]])


class ArmLiftEnv(gym.Env):
    """Lift the cube 8 cm off the table. Action: end-effector target (delta or absolute) + gripper command."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, obs_mode: str = "state", render_mode: str | None = None, control: str = "ee_delta",
                 image_size: int = 96, camera: str = "front", render_size: int = 256,
                 cube_range: float = 0.12, ik_iters: int = 3):
        if obs_mode not in OBS_MODES:
            raise ValueError(f"arm-lift has no observation mode {obs_mode!r}; its modes are: {', '.join(OBS_MODES)}")
        if control not in CONTROL_MODES:
            raise ValueError(f"arm-lift has no control mode {control!r}; use one of {', '.join(CONTROL_MODES)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"arm-lift renders only 'rgb_array' (headless), not {render_mode!r}")
        self.obs_mode, self.render_mode, self.control = obs_mode, render_mode, control
        self.image_size, self.camera, self.render_size = image_size, camera, render_size
        self.cube_range, self.ik_iters = cube_range, ik_iters
        self.fps = self.metadata["render_fps"]

        self.model = mujoco.MjModel.from_xml_path(_model_path())
        self.data = mujoco.MjData(self.model)
        self._ik = mujoco.MjData(self.model)  # scratch data for IK, so the simulation state is never touched
        self.n_substeps = round(1.0 / (self.fps * self.model.opt.timestep))
        m = self.model
        self._arm_qadr = np.array([m.joint(f"j{i}").qposadr[0] for i in range(1, 7)])
        self._arm_dadr = np.array([m.joint(f"j{i}").dofadr[0] for i in range(1, 7)])
        self._finger_qadr = m.joint("finger_left").qposadr[0]
        self._finger_r_qadr = m.joint("finger_right").qposadr[0]
        self._cube_qadr = m.joint("cube").qposadr[0]
        self._cube_dadr = m.joint("cube").dofadr[0]
        self._tcp = m.site("tcp").id
        self._cube_body = m.body("cube").id
        self._jlow, self._jhigh = m.jnt_range[[m.joint(f"j{i}").id for i in range(1, 7)]].T.copy()
        self._jac = np.zeros((6, m.nv))
        self.home_qpos = self._solve_home()
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}

        if control == "ee_delta":
            self.action_space = spaces.Box(-1.0, 1.0, shape=(5,), dtype=np.float32)
        else:
            low = np.r_[WORKSPACE_LOW, -YAW_LIMIT, -1.0].astype(np.float32)
            high = np.r_[WORKSPACE_HIGH, YAW_LIMIT, 1.0].astype(np.float32)
            self.action_space = spaces.Box(low, high, dtype=np.float32)
        obs = {"state": spaces.Box(-np.inf, np.inf, shape=(STATE_DIM,), dtype=np.float32)}
        if obs_mode == "image":
            obs["image"] = spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs)
        self._target_pos = HOME_TCP.copy()
        self._target_yaw = 0.0
        self._grip = -1.0

    # --- kinematics ----------------------------------------------------------------------------------------
    def _solve_home(self) -> np.ndarray:
        q = np.zeros(self.model.nq)
        q[self._arm_qadr] = [0.0, 0.6, 1.4, 0.0, 1.14, 0.0]  # elbow up, roughly pointing down
        q[self._cube_qadr:self._cube_qadr + 7] = [0.45, 0.0, CUBE_HALF, 1, 0, 0, 0]
        for _ in range(200):
            q[self._arm_qadr] = self._ik_step(q, HOME_TCP, 0.0)
        return q

    def _ik_step(self, qpos: np.ndarray, pos: np.ndarray, yaw: float) -> np.ndarray:
        """One damped-least-squares step towards a tcp pose; returns the new arm joint angles (clipped)."""
        d = self._ik
        d.qpos[:] = qpos
        mujoco.mj_kinematics(self.model, d)
        mujoco.mj_comPos(self.model, d)
        mujoco.mj_jacSite(self.model, d, self._jac[:3], self._jac[3:], self._tcp)
        rot = d.site_xmat[self._tcp].reshape(3, 3)
        target = _down_rotation(yaw)
        err = np.empty(6)
        err[:3] = pos - d.site_xpos[self._tcp]
        # orientation error ½ Σ_i r_i × t_i over the frame axes, written with one matrix product
        # (np.cross on 3-vectors costs more than the whole physics step)
        m = rot @ target.T
        err[3:] = 0.5 * np.array([m[1, 2] - m[2, 1], m[2, 0] - m[0, 2], m[0, 1] - m[1, 0]])
        jac = self._jac[:, self._arm_dadr]
        dq = jac.T @ np.linalg.solve(jac @ jac.T + 1e-4 * np.eye(6), err)
        return np.clip(qpos[self._arm_qadr] + dq, self._jlow, self._jhigh)

    def _solve_ik(self, pos: np.ndarray, yaw: float) -> np.ndarray:
        q = self.data.qpos.copy()
        for _ in range(self.ik_iters):
            q[self._arm_qadr] = self._ik_step(q, pos, yaw)
        return q[self._arm_qadr]

    # --- observations --------------------------------------------------------------------------------------
    def tcp_pos(self) -> np.ndarray:
        return self.data.site_xpos[self._tcp].copy()

    def tcp_yaw(self) -> float:
        rot = self.data.site_xmat[self._tcp].reshape(3, 3)
        return float(np.arctan2(-rot[0, 1], rot[1, 1]))  # the direction of tool y, see _down_rotation

    def cube_pos(self) -> np.ndarray:
        return self.data.qpos[self._cube_qadr:self._cube_qadr + 3].copy()

    def get_state(self) -> np.ndarray:
        q = self.data.qpos
        return np.concatenate([q[self._arm_qadr], self.tcp_pos(), [self.tcp_yaw()], [q[self._finger_qadr]],
                               q[self._cube_qadr:self._cube_qadr + 7]]).astype(np.float32)

    def _renderer(self, width: int, height: int) -> mujoco.Renderer:
        key = (width, height)
        if key not in self._renderers:
            r = mujoco.Renderer(self.model, height=height, width=width)
            # shadows and reflections off: 5× faster software (EGL/Mesa) rendering, same information
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            self._renderers[key] = r
        return self._renderers[key]

    def render_camera(self, size: int, camera: str | None = None) -> np.ndarray:
        r = self._renderer(size, size)
        r.update_scene(self.data, camera=camera or self.camera)
        return r.render()

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {"state": self.get_state()}
        if self.obs_mode == "image":
            obs["image"] = self.render_camera(self.image_size)
        return obs

    def _info(self) -> dict[str, Any]:
        height = float(self.data.xpos[self._cube_body][2])
        return {"success": bool(height > LIFT_HEIGHT), "cube_height": height}

    # --- gymnasium API -------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        q = self.home_qpos.copy()
        xy = np.array([0.45, 0.0]) + self.np_random.uniform(-self.cube_range, self.cube_range, size=2)
        yaw = self.np_random.uniform(-np.pi / 4, np.pi / 4)
        if options and options.get("cube_pose") is not None:  # [x, y, yaw], e.g. to replay a recorded start
            xy, yaw = np.asarray(options["cube_pose"][:2], float), float(options["cube_pose"][2])
        q[self._cube_qadr:self._cube_qadr + 7] = [xy[0], xy[1], CUBE_HALF, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
        q[self._finger_qadr] = q[self._finger_r_qadr] = FINGER_OPEN
        self.data.qpos[:] = q
        self.data.ctrl[:6] = q[self._arm_qadr]
        self.data.ctrl[6] = FINGER_OPEN
        mujoco.mj_forward(self.model, self.data)
        self._target_pos, self._target_yaw, self._grip = self.tcp_pos(), 0.0, -1.0
        return self._obs(), self._info()

    def apply_action(self, action, scale: float = 1.0) -> None:
        """Turn one action into joint and gripper targets (`data.ctrl`) without stepping the physics.

        `scale` is the fraction of a 20 Hz control step the action covers: `rtdp.envs.sim_arm.SimArm` calls it
        every tick of a faster clock with `scale = 20 / control_hz`, so an `ee_delta` action is a velocity.
        """
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(5), self.action_space.low,
                    self.action_space.high)
        if self.control == "ee_delta":
            # integrate on the previous target, but never more than 10 cm ahead of the hand (no wind-up
            # when the arm is blocked, e.g. pressing on the table)
            tcp = self.tcp_pos()
            target = np.clip(self._target_pos + a[:3] * MAX_DELTA_POS * scale, tcp - 0.1, tcp + 0.1)
            self._target_pos = np.clip(target, WORKSPACE_LOW, WORKSPACE_HIGH)
            self._target_yaw = float(np.clip(self._target_yaw + a[3] * MAX_DELTA_YAW * scale, -YAW_LIMIT,
                                             YAW_LIMIT))
        else:
            self._target_pos = np.clip(a[:3], WORKSPACE_LOW, WORKSPACE_HIGH)
            self._target_yaw = float(np.clip(a[3], -YAW_LIMIT, YAW_LIMIT))
        self._grip = float(a[4])
        self.data.ctrl[:6] = self._solve_ik(self._target_pos, self._target_yaw)
        self.data.ctrl[6] = FINGER_OPEN * (1.0 - self._grip) / 2.0  # -1 open ... +1 closed

    def hold_here(self) -> None:
        """Re-anchor the end-effector target at the hand, so the arm stops where it is (a hold, an e-stop)."""
        self._target_pos, self._target_yaw = self.tcp_pos(), self.tcp_yaw()

    def task_info(self) -> dict[str, Any]:
        """`success` (cube centre above LIFT_HEIGHT) and the cube's height, as `step` reports them."""
        return self._info()

    def step(self, action):
        self.apply_action(action)
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        info = self._info()
        return self._obs(), float(info["success"]), info["success"], False, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self.render_camera(self.render_size)

    def close(self):
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()


def make_arm_lift(task_id: str = "arm-lift", obs_mode: str = "state", render_mode: str | None = None,
                  max_episode_steps: int = 200, **kw) -> gym.Env:
    """The arm-lift task with a 200-step (10 s) limit."""
    env: gym.Env = ArmLiftEnv(obs_mode=obs_mode, render_mode=render_mode, **kw)
    return gym.wrappers.TimeLimit(env, max_episode_steps=max_episode_steps)
