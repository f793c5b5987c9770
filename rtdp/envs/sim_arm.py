"""`robot=sim-arm`: rtdp's MuJoCo arm (`arm-lift`) as a robot that runs in real time on its own clock.

A real arm does not wait for commands: this one steps its physics in a thread, `physics_hz` steps per second
(≥ 500), and applies the newest command every control tick (`control_hz`, 100–500), whether or not a new one
came. An `ee_delta` action is the env's step displacement spread over one 20 Hz period (`step_s`, the ticks of
that period move the target at 0.4 m/s x |a|); with no newer command the motion then stops, as the env does
between steps, so policies trained on `arm-lift` transfer and a late command pauses the arm instead of letting
it run on. A command of exactly zero motion is a hold: the arm stops where the hand is.
For tests and benchmarks it can misbehave like hardware: `command_delay_s` (a slow bus), `drop_prob`
(observations that never come: their frame numbers are skipped), `obs_noise` (Gaussian noise on the state).

It lives beside the env it reuses (`rtdp.envs.arm.ArmLiftEnv`); `rtdp.hardware` holds the contract.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import mujoco
import numpy as np

from rtdp.envs.arm import STATE_DIM, STATE_LAYOUT, ArmLiftEnv
from rtdp.hardware.robot import (
    ActionFeature,
    ArrayFeature,
    Robot,
    RobotError,
    RobotFeatures,
    RobotObservation,
    set_realtime,
)

ENV_FPS = 20  # the rate arm-lift's actions are defined at
SPIN_S = 0.0003  # busy-wait before each tick (time.sleep alone overshoots by the timer slack)
ACTION_NAMES = ("dx", "dy", "dz", "dyaw", "gripper")
STATE_NAMES = tuple(f"{key}{i}" if sl.stop - sl.start > 1 else key
                    for key, sl in STATE_LAYOUT.items() for i in range(sl.stop - sl.start))
assert len(STATE_NAMES) == STATE_DIM


def _sleep_until(t: float) -> None:
    """Sleep until just before `t` (perf_counter s), then spin to it."""
    dt = t - time.perf_counter() - SPIN_S
    if dt > 0:
        time.sleep(dt)
    while time.perf_counter() < t:
        pass


class SimArm(Robot):
    """The arm-lift arm, stepping in real time. State `state` (18, the env's layout); camera `image` (`camera=`,
    96x96 by default, at `camera_hz`) when `cameras=1`; action: `ee_delta` (velocity) or `ee_abs` (pose)."""

    name = "sim-arm"

    def __init__(self, control_hz: float = 100.0, physics_hz: float = 500.0, control: str = "ee_delta",
                 cameras: int = 0, camera: str = "front", image_size: int = 96, camera_hz: float = 10.0,
                 command_delay_s: float = 0.0, drop_prob: float = 0.0, obs_noise: float = 0.0, seed: int = 0,
                 cube_range: float = 0.12, rt: int = 0, step_s: float = 1.0 / ENV_FPS):
        if not 100 <= control_hz <= 500:
            raise ValueError(f"sim-arm control_hz={control_hz:g}: the arm's control rate is 100..500 Hz")
        if physics_hz < 500 or physics_hz < control_hz:
            raise ValueError(f"sim-arm physics_hz={physics_hz:g}: physics runs at >= 500 Hz and >= control_hz")
        sub = physics_hz / control_hz
        if abs(sub - round(sub)) > 1e-9:
            raise ValueError(f"sim-arm physics_hz={physics_hz:g} must be a multiple of control_hz={control_hz:g}")
        if not 0 <= drop_prob < 1 or command_delay_s < 0 or obs_noise < 0 or camera_hz <= 0:
            raise ValueError("sim-arm: drop_prob in [0, 1), command_delay_s >= 0, obs_noise >= 0, camera_hz > 0")
        if control not in ("ee_delta", "ee_abs"):
            raise ValueError(f"sim-arm control={control!r}: use ee_delta or ee_abs")
        self.control_hz, self.physics_hz, self.n_sub = float(control_hz), float(physics_hz), round(sub)
        self.control, self.cameras, self.camera = control, int(cameras), camera
        self.image_size, self.camera_hz = int(image_size), float(camera_hz)
        self.command_delay_s, self.drop_prob, self.obs_noise = float(command_delay_s), float(drop_prob), float(obs_noise)
        self.seed, self.cube_range = int(seed), float(cube_range)
        self.rt = int(rt)  # SCHED_FIFO priority of the physics thread (0 = off; needs CAP_SYS_NICE)
        # an ee_delta command moves the arm for this long (0: until the next command), in control ticks
        self.step_ticks = max(round(step_s * self.control_hz), 1) if step_s > 0 else None
        self._left = 0
        self.realtime = "off"
        self._env: ArmLiftEnv | None = None
        self._lock = threading.Lock()  # guards the MuJoCo data, the command and the delay line
        self._tick = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._snapshot: RobotObservation | None = None
        self._image: tuple[np.ndarray, int] | None = None
        self._cmd = self._hold_action()
        self._cmd_t: float | None = None  # when the command in force was handed to `command` (perf_counter s)
        self._queue: collections.deque[tuple[float, np.ndarray, float]] = collections.deque()
        self._seen = -1  # the newest frame `wait_for_tick` has returned
        self._frame = 0  # frames made so far (ticks and homings; a dropped frame's number is never delivered)
        self._rng = np.random.default_rng(seed)
        self.counts = {"ticks": 0, "late_ticks": 0, "slipped_ticks": 0, "dropped_frames": 0, "commands": 0,
                       "images": 0}
        self.actuation_s: collections.deque[float] = collections.deque(maxlen=4096)  # command() -> applied

    # -- the contract -----------------------------------------------------------------------------------
    @property
    def features(self) -> RobotFeatures:
        if self.control == "ee_delta":
            low, high = (-1.0,) * 5, (1.0,) * 5
            hold = ("zero", "zero", "zero", "zero", "last")
            names = ACTION_NAMES
        else:
            from rtdp.envs.arm import WORKSPACE_HIGH, WORKSPACE_LOW, YAW_LIMIT

            low = (*map(float, WORKSPACE_LOW), -float(YAW_LIMIT), -1.0)
            high = (*map(float, WORKSPACE_HIGH), float(YAW_LIMIT), 1.0)
            hold, names = ("last",) * 5, ("x", "y", "z", "yaw", "gripper")
        cams = ({"image": ArrayFeature((self.image_size, self.image_size, 3), "uint8")} if self.cameras else {})
        return RobotFeatures(state={"state": ArrayFeature((STATE_DIM,), "float32", STATE_NAMES)},
                             action=ActionFeature((5,), "float32", names, low, high, hold),
                             rate_hz=self.control_hz, cameras=cams)

    @property
    def is_connected(self) -> bool:
        return self._env is not None and not self._stop.is_set()

    def connect(self) -> None:
        if self.is_connected:
            return
        env = ArmLiftEnv(control=self.control, cube_range=self.cube_range, ik_iters=1)
        env.model.opt.timestep = 1.0 / self.physics_hz
        self._stop.clear()
        with self._lock:
            self._env = env
            env.reset(seed=self.seed)
            self._cmd, self._cmd_t = self._hold_action(), None
        self._snap(self._frame, time.perf_counter_ns())
        self._threads = [threading.Thread(target=self._physics, name="sim-arm-physics", daemon=True)]
        if self.cameras:
            self._threads.append(threading.Thread(target=self._camera, name="sim-arm-camera", daemon=True))
        for t in self._threads:
            t.start()

    def disconnect(self) -> None:
        self._stop.set()
        with self._tick:
            self._tick.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []
        if self._env is not None:
            self._env.close()
        self._env = None

    def observe(self) -> RobotObservation:
        self.require_connected()
        snap = self._snapshot
        assert snap is not None
        image = self._image
        if image is not None:
            snap = RobotObservation(snap.t_ns, snap.frame, snap.state, {"image": image[0]}, {"image": image[1]},
                                    snap.info)
        return snap

    def command(self, action: np.ndarray) -> np.ndarray:
        self.require_connected()
        a = np.asarray(action, np.float64)
        if a.shape != (5,) or not np.all(np.isfinite(a)):
            raise RobotError(f"sim-arm takes 5 finite numbers, got {a.shape} {a}")
        feat = self.features.action
        sent = np.clip(a, feat.low, feat.high).astype(np.float32)
        now = time.perf_counter()
        with self._lock:
            self.counts["commands"] += 1
            if self.command_delay_s > 0:
                self._queue.append((now + self.command_delay_s, sent, now))
            else:
                self._cmd, self._cmd_t = sent, now
        return sent

    def halt(self, hold: np.ndarray) -> None:
        with self._lock:
            self._queue.clear()
            self._cmd, self._cmd_t = np.asarray(hold, np.float32), time.perf_counter()
            if self._env is not None:
                self._env.hold_here()

    def reset_to_home(self, seed: int | None = None) -> RobotObservation:
        """Arm to its home pose, the cube re-drawn from `seed` (the sim's scene reset); commands cleared."""
        self.require_connected()
        assert self._env is not None
        with self._lock:
            self._queue.clear()
            self._env.reset(seed=seed)
            self._cmd, self._cmd_t = self._hold_action(), None
            self._frame += 1
            self._snap(self._frame, time.perf_counter_ns())
        return self.observe()

    def wait_for_tick(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._tick:
            while not self._stop.is_set():
                snap = self._snapshot
                if snap is not None and snap.frame > self._seen:
                    self._seen = snap.frame
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or not self._tick.wait(left):
                    return False
        return False

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts) | {"realtime": self.realtime}
        if self.actuation_s:
            lat = np.array(self.actuation_s) * 1e3
            out["command_to_physics_ms"] = {"p50": float(np.percentile(lat, 50)),
                                            "p99": float(np.percentile(lat, 99)), "n": int(lat.size)}
        return out

    # -- the simulation ---------------------------------------------------------------------------------
    def _hold_action(self) -> np.ndarray:
        if self.control == "ee_delta":
            return np.array([0, 0, 0, 0, -1], np.float32)
        return np.array([0.4, 0.0, 0.25, 0.0, -1.0], np.float32)  # HOME_TCP, yaw 0, open

    def _snap(self, frame: int, t_ns: int) -> None:
        """Publish the state after a tick as the newest observation (called with the data lock held)."""
        env = self._env
        assert env is not None
        state = env.get_state()
        if self.obs_noise > 0:
            state = (state + self._rng.normal(0.0, self.obs_noise, state.shape)).astype(np.float32)
        info = env.task_info()
        info["applied"] = self._cmd.copy()
        self._snapshot = RobotObservation(t_ns, frame, {"state": state}, info=info)
        with self._tick:
            self._tick.notify_all()

    def _physics(self) -> None:
        self.realtime = set_realtime(self.rt)
        period = 1.0 / self.control_hz
        scale = ENV_FPS / self.control_hz if self.control == "ee_delta" else 1.0
        t0 = time.perf_counter()
        k = 0
        while not self._stop.is_set():
            k += 1
            due = t0 + k * period
            _sleep_until(due)
            with self._lock:
                env = self._env
                if env is None:
                    return
                now = time.perf_counter()
                while self._queue and self._queue[0][0] <= now:  # the delay line: commands due by now
                    _, self._cmd, self._cmd_t = self._queue.popleft()
                if self._cmd_t is not None:  # first tick that uses this command: it reached the actuators
                    self.actuation_s.append(now - self._cmd_t)
                    self._cmd_t = None
                    self._left = self.step_ticks or 0
                    if self.control == "ee_delta" and not np.any(self._cmd[:4]):
                        env.hold_here()  # zero motion is a hold: stop where the hand is, not at the target
                if self.control == "ee_delta" and self.step_ticks is not None and self._left <= 0:
                    env.apply_action(np.r_[0.0, 0.0, 0.0, 0.0, self._cmd[4]], scale)  # its step is done
                else:
                    env.apply_action(self._cmd, scale)
                self._left -= 1
                mujoco.mj_step(env.model, env.data, nstep=self.n_sub)
                self.counts["ticks"] += 1
                self._frame += 1
                if self.drop_prob and self._rng.random() < self.drop_prob:
                    self.counts["dropped_frames"] += 1  # this frame is never delivered
                else:
                    self._snap(self._frame, time.perf_counter_ns())
            late = time.perf_counter() - due
            if late > period:
                self.counts["late_ticks"] += 1
                if late > 5 * period:  # far behind (the machine stalled): re-anchor instead of racing to catch up
                    skipped = int(late / period)
                    self.counts["slipped_ticks"] += skipped
                    t0 += skipped * period

    def _camera(self) -> None:
        env = self._env
        assert env is not None
        data = mujoco.MjData(env.model)
        renderer = mujoco.Renderer(env.model, height=self.image_size, width=self.image_size)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        period = 1.0 / self.camera_hz
        t0 = time.perf_counter()
        k = 0
        try:
            while not self._stop.is_set():
                k += 1
                _sleep_until(t0 + k * period)
                with self._lock:
                    if self._env is None:
                        return
                    data.qpos[:] = self._env.data.qpos
                t_ns = time.perf_counter_ns()
                mujoco.mj_forward(env.model, data)
                renderer.update_scene(data, camera=self.camera)
                self._image = (renderer.render().copy(), t_ns)
                self.counts["images"] += 1
                late = time.perf_counter() - (t0 + k * period)
                if late > period:
                    t0 += int(late / period) * period
        finally:
            renderer.close()
