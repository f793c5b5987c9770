"""Robot-side safety: refuse non-finite actions, clamp actions to limits, limit their rate of change, hold when
commands go stale (watchdog), and an e-stop latch that only an explicit reset clears.

`SafetyCore` is the numpy core; two front ends use it, so there is one safety layer:
- `SafetyWrapper` wraps a served gymnasium env (`EnvServer(lambda: SafetyWrapper(make_env(), ...))`);
- `rtdp.hardware.robot_safety.SafeRobot` wraps a robot driver inside `rtdp serve-robot`.
Both run on the robot side of the wire, so no policy bug or network fault can bypass them.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np

from rtdp.hardware.finite import find_non_finite

HOLD_MODES = ("last", "zero")  # what a held dimension does: repeat the last safe value, or command 0 (a velocity)


class EStopLatched(RuntimeError):
    """The e-stop is latched: the robot holds until `reset_estop()`."""


class SafetyCore:
    """Limits, rate limit, hold, watchdog and e-stop for one action vector; counts what it did.

    - `low`/`high`: limits each action dimension is clipped into (joint, workspace or velocity limits,
      whatever the dimensions command).
    - `max_delta`: largest change of each dimension per `filter` call; `max_rate`: largest change per second
      (the elapsed time since the previous safe action, at most `rate_dt_max_s`, sets the allowance). For a
      position command either one is a velocity limit; for a velocity command, an acceleration limit.
    - `hold_action` (a fixed hold) or `hold_modes` (per dimension, "last" or "zero"): what holding commands.
    - `watchdog_s`: `stale(now)` is true once the last safe action is older than this.
    - `estop()` latches until `reset_estop()`; `reset()` (a new episode) does not clear it.
    """

    def __init__(self, shape: tuple[int, ...], dtype: Any = np.float32, *, low: Any = None, high: Any = None,
                 max_delta: Any = None, max_rate: Any = None, watchdog_s: float | None = None,
                 hold_action: Any = None, hold_modes: tuple[str, ...] | None = None, rate_dt_max_s: float = 0.1):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.low = np.broadcast_to(np.asarray(-np.inf if low is None else low, np.float64), self.shape)
        self.high = np.broadcast_to(np.asarray(np.inf if high is None else high, np.float64), self.shape)
        if np.any(np.isnan(self.low)) or np.any(np.isnan(self.high)) or np.any(self.low > self.high):
            raise ValueError("safety limits: low > high (or NaN)")
        self.max_delta = self._nonneg(max_delta, "max_delta")
        self.max_rate = self._nonneg(max_rate, "max_rate")
        self.rate_dt_max_s = float(rate_dt_max_s)
        self.watchdog_s = watchdog_s
        self.hold_action = None if hold_action is None else np.asarray(hold_action, self.dtype)
        if self.hold_action is not None and find_non_finite(self.hold_action) is not None:
            raise ValueError("safety hold_action must be finite")
        if hold_modes is not None and (len(hold_modes) != int(np.prod(self.shape))
                                       or any(m not in HOLD_MODES for m in hold_modes)):
            raise ValueError(f"safety hold_modes must give one of {HOLD_MODES} per action dimension")
        self.hold_modes = hold_modes
        self.last: np.ndarray | None = None  # the last safe action (float64)
        self.last_t: float | None = None  # when it was made (monotonic s)
        self._estopped = False
        self.counts = {"clamped": 0, "rate_limited": 0, "watchdog_holds": 0, "estop_holds": 0,
                       "non_finite_holds": 0}

    def _nonneg(self, value: Any, name: str) -> np.ndarray | None:
        if value is None:
            return None
        arr = np.broadcast_to(np.asarray(value, np.float64), self.shape)
        if not (np.all(np.isfinite(arr)) and np.all(arr >= 0)):
            raise ValueError(f"safety {name} must be finite and >= 0")
        return arr

    @property
    def estopped(self) -> bool:
        return self._estopped

    def estop(self) -> None:
        """Latch the e-stop: every action is replaced by the hold until `reset_estop()`."""
        self._estopped = True

    def reset_estop(self) -> None:
        """The only way to clear a latched e-stop."""
        self._estopped = False
        self.last_t = None

    def reset(self) -> None:
        """Forget the last action (a new episode starts from the hold); a latched e-stop stays latched."""
        self.last, self.last_t = None, None

    def stale(self, now: float) -> bool:
        """Whether the last safe action is older than `watchdog_s` (commands stopped coming)."""
        return self.watchdog_s is not None and self.last_t is not None and now - self.last_t > self.watchdog_s

    def hold(self) -> np.ndarray:
        """What the robot does while holding: the fixed hold, else the last safe action with its "zero" dims
        zeroed, else zeros clipped into the limits."""
        if self.hold_action is not None:
            return self.hold_action
        base = self.last if self.last is not None else np.clip(np.zeros(self.shape), self.low, self.high)
        if self.hold_modes is not None:
            base = base.copy()
            flat = base.reshape(-1)
            for i, mode in enumerate(self.hold_modes):
                if mode == "zero":
                    flat[i] = min(max(0.0, self.low.reshape(-1)[i]), self.high.reshape(-1)[i])
        return base.astype(self.dtype)

    def filter(self, action: Any, report: dict[str, Any], now: float | None = None) -> np.ndarray:
        """The action as it may reach the robot: finite, clamped, rate-limited; or the hold (non-finite)."""
        now = time.monotonic() if now is None else now
        a = np.asarray(action, np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            cast = a.astype(self.dtype)  # what the robot would receive
        if find_non_finite(cast) is not None:
            self.counts["non_finite_holds"] += 1
            report["non_finite_hold"] = True
            return self.hold()
        safe = np.clip(a, self.low, self.high)
        if not np.array_equal(safe, a):
            self.counts["clamped"] += 1
            report["clamped"] = True
        if self.last is not None and (self.max_delta is not None or self.max_rate is not None):
            allow = np.full(self.shape, np.inf)
            if self.max_delta is not None:
                allow = np.minimum(allow, self.max_delta)
            if self.max_rate is not None:
                dt = self.rate_dt_max_s if self.last_t is None else min(now - self.last_t, self.rate_dt_max_s)
                allow = np.minimum(allow, self.max_rate * max(dt, 0.0))
            limited = np.clip(safe, self.last - allow, self.last + allow)
            if not np.array_equal(limited, safe):
                self.counts["rate_limited"] += 1
                report["rate_limited"] = True
            safe = limited
        self.last, self.last_t = safe, now
        return safe.astype(self.dtype)

    def note_hold(self, now: float | None = None) -> np.ndarray:
        """The hold, remembered as the last safe action (a hold is what the robot now does)."""
        held = self.hold()
        self.last = held.astype(np.float64)
        self.last_t = time.monotonic() if now is None else now
        return held


class SafetyWrapper(gym.Wrapper):
    """Clamp, rate-limit and watchdog a Box-action env; `info["safety"]` says what was done to each action.

    - An action holding NaN or inf (or a number beyond float32, which becomes inf on the way to the robot)
      is refused: the robot holds the last safe command, `info["safety"]` says `non_finite_hold`, and it
      counts. It never reaches the clamp or the rate limiter, so it cannot poison later actions.
    - `low`/`high`: action limits (default: the action space's bounds); actions are clipped into them.
    - `max_delta`: largest change per step of each action dimension (velocity limit for position commands).
    - `hold_action`: what the robot does while holding (default: repeat the last safe action).
    - `watchdog_s`: if more than this passes between steps, the next step is held instead of executed
      (the command that finally arrives is stale), and it counts.
    - `estop()` latches an e-stop (every step raises `EStopLatched` and the robot holds) until `reset_estop()`;
      `reset()` does not clear it.
    """

    def __init__(self, env: gym.Env, *, low: Any = None, high: Any = None, max_delta: Any = None,
                 watchdog_s: float | None = None, hold_action: Any = None):
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, gym.spaces.Box):
            raise TypeError("SafetyWrapper needs a Box action space")
        self.core = SafetyCore(space.shape, space.dtype, low=space.low if low is None else low,
                               high=space.high if high is None else high, max_delta=max_delta,
                               hold_action=hold_action)
        self.low, self.high, self.max_delta = self.core.low, self.core.high, self.core.max_delta
        self.watchdog_s = watchdog_s
        self.counts = self.core.counts
        self._last_step_t: float | None = None

    @property
    def estopped(self) -> bool:
        return self.core.estopped

    def estop(self) -> None:
        """Latch the e-stop: the robot holds and every step is refused until `reset_estop()`."""
        self.core.estop()

    def reset_estop(self) -> None:
        """The only way to clear a latched e-stop."""
        self.core.reset_estop()
        self._last_step_t = None

    def reset(self, **kw: Any):
        obs, info = self.env.reset(**kw)
        self.core.reset()
        self._last_step_t = None
        return obs, info

    def step(self, action: Any):
        now = time.monotonic()
        if self.core.estopped:
            self.counts["estop_holds"] += 1
            self.env.step(self.core.hold())
            raise EStopLatched("e-stop latched: the robot is holding; call reset_estop() to clear it")
        report: dict[str, Any] = {}
        if (self.watchdog_s is not None and self._last_step_t is not None
                and now - self._last_step_t > self.watchdog_s):
            self.counts["watchdog_holds"] += 1
            report["watchdog_hold"] = True
            safe = self.core.hold()
        else:
            safe = self.core.filter(action, report, now)
        self._last_step_t = now
        obs, reward, terminated, truncated, info = self.env.step(safe)
        info = dict(info)
        info["safety"] = report
        return obs, reward, terminated, truncated, info
