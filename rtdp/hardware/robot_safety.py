"""`SafeRobot`: the safety layer between a command stream and a robot driver (one `SafetyCore`, as the env
server's `SafetyWrapper` uses), so nothing reaches the driver outside its limits."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rtdp.hardware.robot import Robot, RobotError, RobotFeatures, RobotObservation
from rtdp.hardware.safety import EStopLatched, SafetyCore


class SafeRobot(Robot):
    """A driver behind limits, rate limit, hold, watchdog and a latched e-stop.

    Limits default to the driver's action feature (`low`/`high`, `max_rate`, `hold`); `low`, `high` and
    `max_rate` narrow them (never widen: the tighter of the two wins). `command` refuses a wrong shape
    (RobotError, nothing sent), holds on NaN/inf, clamps and rate-limits; `last_report` says what it did.
    While the e-stop is latched every command raises `EStopLatched` and the driver is not commanded.
    After connecting and homing, the rate limiter starts from the command the driver reports in force
    (`observe().info["applied"]`); a driver that reports none gets its first command clamped only.
    """

    name = "safe"
    registered = False

    def __init__(self, driver: Robot, *, low: Any = None, high: Any = None, max_rate: Any = None,
                 watchdog_s: float | None = None):
        self.driver = driver
        feat = driver.features.action
        n = feat.shape[0]
        d_low = np.full(n, -np.inf) if feat.low is None else np.asarray(feat.low, np.float64)
        d_high = np.full(n, np.inf) if feat.high is None else np.asarray(feat.high, np.float64)
        lo = d_low if low is None else np.maximum(d_low, np.broadcast_to(np.asarray(low, np.float64), n))
        hi = d_high if high is None else np.minimum(d_high, np.broadcast_to(np.asarray(high, np.float64), n))
        rate = None if feat.max_rate is None else np.asarray(feat.max_rate, np.float64)
        if max_rate is not None:
            user = np.broadcast_to(np.asarray(max_rate, np.float64), n)
            rate = user if rate is None else np.minimum(rate, user)
        self.core = SafetyCore((n,), feat.dtype, low=lo, high=hi, max_rate=rate, watchdog_s=watchdog_s,
                               hold_modes=tuple(feat.hold) or None)
        self.last_report: dict[str, Any] = {}
        self.last_sent: np.ndarray | None = None
        self.refused = {"bad_shape": 0, "estop": 0}

    # -- the contract, delegated ------------------------------------------------------------------------
    @property
    def features(self) -> RobotFeatures:
        return self.driver.features

    @property
    def is_connected(self) -> bool:
        return self.driver.is_connected

    def connect(self) -> None:
        self.driver.connect()
        self._seed(self.driver.observe())

    def _seed(self, obs: RobotObservation) -> None:
        """Start the rate limiter from the command in force (`info["applied"]`, when the driver reports it), so
        the first command after connecting or homing is slewed from there too, not only clamped."""
        self.core.reset()
        applied = obs.info.get("applied")
        if applied is not None and np.shape(applied) == self.core.shape and np.all(np.isfinite(applied)):
            self.core.last = np.asarray(applied, np.float64)
            self.core.last_t = time.monotonic()

    def disconnect(self) -> None:
        self.driver.disconnect()

    def observe(self) -> RobotObservation:
        return self.driver.observe()

    def wait_for_tick(self, timeout_s: float) -> bool:
        return self.driver.wait_for_tick(timeout_s)

    def stats(self) -> dict[str, Any]:
        return self.driver.stats()

    # -- safety -----------------------------------------------------------------------------------------
    @property
    def estopped(self) -> bool:
        return self.core.estopped

    def command(self, action: np.ndarray, now: float | None = None) -> np.ndarray:
        """Check, filter and send one action; returns what the driver sent."""
        if self.core.estopped:
            self.refused["estop"] += 1
            self.core.counts["estop_holds"] += 1
            raise EStopLatched("e-stop latched: the robot is holding; reset the e-stop to command it again")
        try:
            a = self.driver.check_action(action)
        except RobotError:
            self.refused["bad_shape"] += 1
            raise
        report: dict[str, Any] = {}
        safe = self.core.filter(a, report, time.monotonic() if now is None else now)
        self.last_report = report
        self.last_sent = np.asarray(self.driver.command(safe))
        return self.last_sent

    def hold(self, reason: str = "operator", now: float | None = None) -> np.ndarray:
        """Command the hold (watchdog, operator pause, owner gone); `reason` goes into `last_report`."""
        held = self.core.note_hold(now)
        self.last_report = {f"{reason}_hold": True}
        self.last_sent = np.asarray(self.driver.command(held))
        return self.last_sent

    def stale(self, now: float) -> bool:
        return self.core.stale(now)

    def estop(self) -> None:
        """Latch the e-stop and halt the driver (anything queued is dropped, the hold is commanded)."""
        self.core.estop()
        held = self.core.note_hold()
        self.last_report = {"estop_hold": True}
        self.driver.halt(held)
        self.last_sent = held

    def reset_estop(self) -> None:
        self.core.reset_estop()

    def reset_to_home(self, seed: int | None = None) -> RobotObservation:
        """Home the driver from a clean slate (the rate limiter forgets the last action); refused under e-stop."""
        if self.core.estopped:
            raise EStopLatched("e-stop latched: reset the e-stop before homing the robot")
        obs = self.driver.reset_to_home(seed)
        self._seed(obs)
        self.last_sent = None
        return obs
