"""Robot-side safety for a served env: refuse non-finite actions, clamp actions to limits, limit their rate of
change, hold when commands go stale (watchdog), and an e-stop latch that only an explicit reset clears.

It wraps the env on the robot side of the wire (`EnvServer(lambda: SafetyWrapper(make_robot(), ...))`),
so no policy bug or network fault can bypass it.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np

from rtdp.hardware.finite import find_non_finite


class EStopLatched(RuntimeError):
    """The e-stop is latched: the robot holds until `reset_estop()`."""


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
        self.low = np.broadcast_to(np.asarray(space.low if low is None else low, np.float64), space.shape)
        self.high = np.broadcast_to(np.asarray(space.high if high is None else high, np.float64), space.shape)
        if np.any(np.isnan(self.low)) or np.any(np.isnan(self.high)) or np.any(self.low > self.high):
            raise ValueError("safety limits: low > high (or NaN)")
        self.max_delta = None if max_delta is None else np.broadcast_to(np.asarray(max_delta, np.float64),
                                                                        space.shape)
        if self.max_delta is not None and not (np.all(np.isfinite(self.max_delta)) and np.all(self.max_delta >= 0)):
            raise ValueError("safety max_delta must be finite and >= 0")
        self.watchdog_s = watchdog_s
        self.hold_action = None if hold_action is None else np.asarray(hold_action, space.dtype)
        if self.hold_action is not None and find_non_finite(self.hold_action) is not None:
            raise ValueError("safety hold_action must be finite")
        self._last: np.ndarray | None = None
        self._last_step_t: float | None = None
        self._estopped = False
        self.counts = {"clamped": 0, "rate_limited": 0, "watchdog_holds": 0, "estop_holds": 0,
                       "non_finite_holds": 0}

    @property
    def estopped(self) -> bool:
        return self._estopped

    def estop(self) -> None:
        """Latch the e-stop: the robot holds and every step is refused until `reset_estop()`."""
        self._estopped = True

    def reset_estop(self) -> None:
        """The only way to clear a latched e-stop."""
        self._estopped = False
        self._last_step_t = None

    def reset(self, **kw: Any):
        obs, info = self.env.reset(**kw)
        self._last, self._last_step_t = None, None
        return obs, info

    def _hold(self) -> np.ndarray:
        if self.hold_action is not None:
            return self.hold_action
        if self._last is not None:
            return self._last.astype(self.action_space.dtype)
        return np.clip(np.zeros(self.action_space.shape), self.low, self.high).astype(self.action_space.dtype)

    def _safe(self, action: Any, report: dict[str, Any]) -> np.ndarray:
        """The action as it may reach the robot: finite, clamped, rate-limited (or the hold)."""
        a = np.asarray(action, np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            cast = a.astype(self.action_space.dtype)  # what the robot would receive
        if find_non_finite(cast) is not None:
            self.counts["non_finite_holds"] += 1
            report["non_finite_hold"] = True
            return self._hold()
        safe = np.clip(a, self.low, self.high)
        if not np.array_equal(safe, a):
            self.counts["clamped"] += 1
            report["clamped"] = True
        if self.max_delta is not None and self._last is not None:
            limited = np.clip(safe, self._last - self.max_delta, self._last + self.max_delta)
            if not np.array_equal(limited, safe):
                self.counts["rate_limited"] += 1
                report["rate_limited"] = True
            safe = limited
        self._last = safe
        return safe.astype(self.action_space.dtype)

    def step(self, action: Any):
        now = time.monotonic()
        if self._estopped:
            self.counts["estop_holds"] += 1
            self.env.step(self._hold())
            raise EStopLatched("e-stop latched: the robot is holding; call reset_estop() to clear it")
        report: dict[str, Any] = {}
        if (self.watchdog_s is not None and self._last_step_t is not None
                and now - self._last_step_t > self.watchdog_s):
            self.counts["watchdog_holds"] += 1
            report["watchdog_hold"] = True
            safe = self._hold()
        else:
            safe = self._safe(action, report)
        self._last_step_t = now
        obs, reward, terminated, truncated, info = self.env.step(safe)
        info = dict(info)
        info["safety"] = report
        return obs, reward, terminated, truncated, info
