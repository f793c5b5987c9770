"""LeRobot's robots and teleoperators as rtdp robots and teleop devices (SO-100/101, Koch, ... as LeRobot
drives them). Nothing here imports LeRobot: the bridge takes any object with LeRobot's `Robot` API
(`observation_features`, `action_features`, `connect`, `get_observation`, `send_action`, `disconnect`) or
`Teleoperator` API (`action_features`, `connect`, `get_action`, `disconnect`). Building one from its LeRobot
config type (`robot=lerobot:so101_follower`) is `rtdp.cli.robots.make_lerobot_robot`, which does import
LeRobot (and with it torch): a robot PC serving a LeRobot arm needs LeRobot's dependencies anyway.

LeRobot's observations are flat dicts: a `float` feature per motor (`"shoulder_pan.pos"`) and an `(H, W, 3)`
feature per camera. Here the floats become one state vector `state` (names in LeRobot's order) and each
camera a frame; the action is the vector of LeRobot's action features, in order.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from rtdp.hardware.robot import (
    ActionFeature,
    ArrayFeature,
    Robot,
    RobotError,
    RobotFeatures,
    RobotObservation,
)
from rtdp.hardware.teleop import TeleopDevice


def _split(features: dict[str, Any]) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    """LeRobot features -> (names of the float features, in order; camera name -> shape)."""
    floats, cameras = [], {}
    for key, kind in features.items():
        if isinstance(kind, tuple) and len(kind) == 3:
            cameras[key] = tuple(int(d) for d in kind)
        elif kind is float or kind in ("float", "float32"):
            floats.append(key)
        else:
            raise RobotError(f"LeRobot feature {key!r} of type {kind!r} is neither a float nor an (H, W, C) image")
    return floats, cameras


class LeRobotRobot(Robot):
    """A LeRobot robot behind the rtdp contract.

    - `rate_hz`: the control rate to serve it at (LeRobot arms have no clock of their own; 30 Hz is LeRobot's).
    - `low`/`high`/`max_rate`: action limits and the largest change per second of each action (e.g. degrees
      of the SO-101's joints), used by the server's safety layer; LeRobot's own `max_relative_target`, when
      configured, also still applies inside `send_action`.
    - `home`: the action vector of the home pose; `reset_to_home` moves there over `home_s` seconds.
    Observe and command share one lock: LeRobot drives the motor bus from one thread at a time.
    """

    name = "lerobot"

    def __init__(self, robot: Any, *, rate_hz: float = 30.0, low: Any = None, high: Any = None,
                 max_rate: Any = None, home: Any = None, home_s: float = 3.0, calibrate: bool = True):
        self.robot, self.rate_hz, self.home_s, self.calibrate = robot, float(rate_hz), float(home_s), calibrate
        self.state_names, self.camera_shapes = _split(robot.observation_features)
        self.action_names, _ = _split(robot.action_features)
        n = len(self.action_names)
        self._low = None if low is None else tuple(np.broadcast_to(np.asarray(low, float), n).tolist())
        self._high = None if high is None else tuple(np.broadcast_to(np.asarray(high, float), n).tolist())
        self._rate = None if max_rate is None else tuple(np.broadcast_to(np.asarray(max_rate, float), n).tolist())
        self.home = None if home is None else np.broadcast_to(np.asarray(home, np.float64), n).copy()
        self._lock = threading.Lock()
        self._frame = 0
        self._applied: np.ndarray | None = None

    @property
    def features(self) -> RobotFeatures:
        return RobotFeatures(
            state={"state": ArrayFeature((len(self.state_names),), "float32", tuple(self.state_names))},
            action=ActionFeature((len(self.action_names),), "float32", tuple(self.action_names), self._low,
                                 self._high, ("last",) * len(self.action_names), self._rate),
            rate_hz=self.rate_hz,
            cameras={k: ArrayFeature(s, "uint8") for k, s in self.camera_shapes.items()})

    @property
    def is_connected(self) -> bool:
        return bool(self.robot.is_connected)

    def connect(self) -> None:
        if not self.robot.is_connected:
            self.robot.connect(calibrate=self.calibrate)
        raw = self._read()
        # the command in force is where the arm is: position-controlled joints hold their present position
        self._applied = np.array([float(raw.get(k, np.nan)) for k in self.action_names])
        if not np.all(np.isfinite(self._applied)):
            self._applied = None

    def disconnect(self) -> None:
        if self.robot.is_connected:
            self.robot.disconnect()

    def _read(self) -> dict[str, Any]:
        with self._lock:
            return self.robot.get_observation()

    def observe(self) -> RobotObservation:
        self.require_connected()
        t_ns = time.perf_counter_ns()
        raw = self._read()
        self._frame += 1
        state = np.array([float(raw[k]) for k in self.state_names], np.float32)
        images = {k: np.asarray(raw[k]) for k in self.camera_shapes if k in raw}
        info: dict[str, Any] = {}
        if self._applied is not None:
            info["applied"] = self._applied.astype(np.float32)
        return RobotObservation(t_ns, self._frame, {"state": state}, images, {k: t_ns for k in images}, info)

    def command(self, action: np.ndarray) -> np.ndarray:
        self.require_connected()
        a = self.check_action(action)
        with self._lock:
            sent = self.robot.send_action({k: float(v) for k, v in zip(self.action_names, a)})
        out = np.array([float(sent.get(k, v)) if isinstance(sent, dict) else float(v)
                        for k, v in zip(self.action_names, a)], np.float32)
        self._applied = out.astype(np.float64)
        return out

    def reset_to_home(self, seed: int | None = None) -> RobotObservation:
        """Move to `home` in a straight line in action space over `home_s` s (no `home`: stay where it is)."""
        self.require_connected()
        if self.home is not None:
            start = self._applied if self._applied is not None else self.home
            steps = max(int(self.home_s * self.rate_hz), 1)
            for i in range(1, steps + 1):
                self.command(start + (self.home - start) * i / steps)
                time.sleep(1.0 / self.rate_hz)
        return self.observe()


class LeRobotTeleop(TeleopDevice):
    """A LeRobot teleoperator (e.g. an SO-101 leader arm) as an rtdp device: its `get_action()` dict, put in
    the order of the robot's action names (LeRobot's leader and follower share them)."""

    name = "lerobot"

    def __init__(self, action: ActionFeature, teleop: Any, calibrate: bool = True):
        super().__init__(action)
        self.teleop, self.calibrate = teleop, calibrate
        names, _ = _split(teleop.action_features)
        missing = [n for n in action.names if n not in names]
        if missing:
            raise RobotError(f"the teleoperator has no action {missing[0]!r}; it gives {', '.join(names)}")

    def connect(self) -> None:
        if not self.teleop.is_connected:
            self.teleop.connect(calibrate=self.calibrate)

    def disconnect(self) -> None:
        if self.teleop.is_connected:
            self.teleop.disconnect()

    def read(self, obs: RobotObservation | None, keys: str = "") -> np.ndarray:
        raw = self.teleop.get_action()
        return np.array([float(raw[n]) for n in self.action.names], np.float32)
