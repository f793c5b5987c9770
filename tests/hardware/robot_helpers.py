"""Robots for the robot-server tests: the real-time sim arm with a log of every command that reached it."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np

from rtdp.envs.sim_arm import SimArm
from rtdp.hardware.robot_server import RobotServer


class LoggedSimArm(SimArm):
    """The sim arm, remembering every action the driver was handed (what the safety layer let through)."""

    name = "test-logged-sim-arm"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.sent: list[tuple[float, np.ndarray]] = []
        self._log_lock = threading.Lock()

    def command(self, action):
        with self._log_lock:
            self.sent.append((time.monotonic(), np.array(action, np.float64)))
        return super().command(action)

    def halt(self, hold):
        with self._log_lock:
            self.sent.append((time.monotonic(), np.array(hold, np.float64)))
        super().halt(hold)

    def actions(self) -> np.ndarray:
        with self._log_lock:
            return np.array([a for _, a in self.sent]).reshape(-1, 5)


def assert_nothing_unsafe_reached(arm: LoggedSimArm, max_rate: float | None = None) -> None:
    """Every action the driver got is finite, of its shape, inside its limits, and (but for holds, which stop at
    once) within `max_rate` per second of the one before."""
    with arm._log_lock:
        sent = list(arm.sent)
    for _, a in sent:
        assert a.shape == (5,) and np.all(np.isfinite(a)), a
        assert np.all(a >= -1.0) and np.all(a <= 1.0), a
    if max_rate is not None:
        for (t0, a0), (t1, a1) in itertools.pairwise(sent):
            if not np.any(a1[:4]):
                continue  # a hold (zero motion, the gripper kept): stopping is never slewed
            allowed = max_rate * min(t1 - t0 + 0.01, 0.1) + 1e-6  # +10 ms: the log is stamped after the core
            assert np.all(np.abs(a1 - a0) <= allowed), (a0, a1, t1 - t0)


def served(arm: SimArm | None = None, **kw) -> RobotServer:
    """A robot server for `arm` on free loopback ports, started."""
    return RobotServer(arm or LoggedSimArm(control_hz=100), "tcp://127.0.0.1:*", **kw).start()


def wait_for(predicate, timeout_s: float = 3.0, every_s: float = 0.01) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return bool(predicate())
