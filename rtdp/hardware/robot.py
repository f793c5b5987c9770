"""The robot contract: what every driver (the sim arm, a LeRobot arm, a remote robot) offers the rest of rtdp.

Modelled on LeRobot's `Robot` ABC (features readable without connecting, connect/disconnect, observe, send an
action and get back what was actually sent), with numpy arrays instead of per-motor dicts and a timestamp on
every observation. numpy only: a robot PC runs it without torch.

A concrete subclass is checked when it is defined: it must set `name` (a lower-case id, unique among drivers;
`robot=<name>` picks it) and implement every abstract method, and `observe`/`command` must have the contract's
signatures. Mistakes fail at import time, not on the robot.
"""

from __future__ import annotations

import inspect
import os
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np

from rtdp.hardware.safety import HOLD_MODES

ROBOTS: dict[str, type[Robot]] = {}  # driver name -> class, filled when a concrete subclass is defined
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class RobotError(RuntimeError):
    """A robot that cannot do what was asked (not connected, a bad command, a driver failure)."""


class RobotNotConnected(RobotError):
    """`observe`/`command` before `connect()` (or after `disconnect()`)."""


@dataclass(frozen=True)
class ArrayFeature:
    """One array a robot produces or takes: shape, dtype, per-component names and limits."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    names: tuple[str, ...] = ()  # one name per component of a 1-D array (empty: unnamed)
    low: tuple[float, ...] | None = None  # per component (1-D arrays), None: unbounded
    high: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        np.dtype(self.dtype)  # an unknown dtype fails here
        size = int(np.prod(self.shape))
        if self.names and len(self.names) != size:
            raise ValueError(f"feature names has {len(self.names)} entries for {size} components")
        for what in ("low", "high"):
            value = getattr(self, what)
            if value is not None and len(value) != size:
                raise ValueError(f"feature {what} has {len(value)} entries for {size} components")
        if self.low is not None and self.high is not None and any(lo > hi for lo, hi in zip(self.low, self.high)):
            raise ValueError("feature low > high")

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "names": list(self.names),
                "low": None if self.low is None else list(self.low),
                "high": None if self.high is None else list(self.high)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArrayFeature:
        return cls(tuple(d["shape"]), d.get("dtype", "float32"), tuple(d.get("names") or ()),
                   None if d.get("low") is None else tuple(float(x) for x in d["low"]),
                   None if d.get("high") is None else tuple(float(x) for x in d["high"]))


@dataclass(frozen=True)
class ActionFeature(ArrayFeature):
    """The robot's action vector: an `ArrayFeature` plus what holding does per dimension ("last" keeps a position
    target, "zero" stops a velocity) and the largest safe change per second of each dimension (None: unlimited)."""

    hold: tuple[str, ...] = ()
    max_rate: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.shape) != 1:
            raise ValueError(f"an action is a 1-D vector, got shape {self.shape}")
        if self.hold and (len(self.hold) != self.shape[0] or any(h not in HOLD_MODES for h in self.hold)):
            raise ValueError(f"action hold needs one of {HOLD_MODES} per dimension")
        if self.max_rate is not None and len(self.max_rate) != self.shape[0]:
            raise ValueError("action max_rate needs one entry per dimension")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "hold": list(self.hold),
                "max_rate": None if self.max_rate is None else list(self.max_rate)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActionFeature:
        base = ArrayFeature.from_dict(d)
        return cls(base.shape, base.dtype, base.names, base.low, base.high, tuple(d.get("hold") or ()),
                   None if d.get("max_rate") is None else tuple(float(x) for x in d["max_rate"]))


@dataclass(frozen=True)
class RobotFeatures:
    """Everything a robot produces and takes, readable without connecting: named state arrays, cameras
    (HxWx3 uint8 frames), the action vector, and the rate it runs at."""

    state: dict[str, ArrayFeature]
    action: ActionFeature
    rate_hz: float
    cameras: dict[str, ArrayFeature] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"state": {k: v.to_dict() for k, v in self.state.items()},
                "cameras": {k: v.to_dict() for k, v in self.cameras.items()},
                "action": self.action.to_dict(), "rate_hz": float(self.rate_hz)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RobotFeatures:
        return cls({k: ArrayFeature.from_dict(v) for k, v in d["state"].items()},
                   ActionFeature.from_dict(d["action"]), float(d["rate_hz"]),
                   {k: ArrayFeature.from_dict(v) for k, v in (d.get("cameras") or {}).items()})


@dataclass
class RobotObservation:
    """One timestamped reading: state arrays, the newest camera frames, and extra info (e.g. a sim's success).

    `t_ns` is the capture time on this host's `perf_counter_ns` clock; `frame` counts the robot's ticks, so a gap
    between two observations is frames the robot did not deliver (dropped)."""

    t_ns: int
    frame: int
    state: dict[str, np.ndarray]
    images: dict[str, np.ndarray] = field(default_factory=dict)
    image_t_ns: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """State and camera arrays in one dict, as a policy or a replay buffer sees them."""
        return {**self.state, **self.images}


def set_realtime(priority: int) -> str:
    """Put the calling thread under SCHED_FIFO at `priority` (needs CAP_SYS_NICE); says what it got."""
    if priority <= 0:
        return "off"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as err:  # no CAP_SYS_NICE / not Linux
        return f"unavailable: {err}"
    return f"SCHED_FIFO {priority}"


def _abstract_left(cls: type) -> list[str]:
    """Abstract methods a class still lacks (ABCMeta fills `__abstractmethods__` only after `__init_subclass__`)."""
    return sorted(name for name in dir(cls) if getattr(getattr(cls, name, None), "__isabstractmethod__", False))


class Robot(ABC):
    """A robot driver. Subclasses set `name` and implement `features`, `is_connected`, `connect`, `disconnect`,
    `observe` and `command`; `reset_to_home`, `halt`, `wait_for_tick` and `stats` have defaults.

    - `features` must work before `connect()` (a server describes the robot before it connects).
    - `observe()` returns the newest `RobotObservation` (never blocks for long).
    - `command(action)` sends one action vector and returns what was actually sent (after the driver's own
      clipping, or the safety layer's in `SafeRobot`).
    """

    name: ClassVar[str]
    abstract: ClassVar[bool] = False  # set True on an intermediate base class that is not a driver itself
    registered: ClassVar[bool] = True  # False for wrappers (SafeRobot): checked, but not picked by `robot=<name>`

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.__dict__.get("abstract", False) or _abstract_left(cls):
            if not cls.__dict__.get("abstract", False) and "name" in cls.__dict__:
                raise TypeError(f"robot driver {cls.__name__} (name {cls.__dict__['name']!r}) does not implement "
                                f"{', '.join(_abstract_left(cls))}")
            return
        name = cls.__dict__.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise TypeError(f"robot driver {cls.__name__} must set name = 'lower-case-id' (got {name!r})")
        if cls.__dict__.get("registered", True) and name in ROBOTS and (
                (ROBOTS[name].__module__, ROBOTS[name].__qualname__) != (cls.__module__, cls.__qualname__)):
            raise TypeError(f"robot name {name!r} is taken by {ROBOTS[name].__module__}.{ROBOTS[name].__qualname__}")
        for method, params in (("observe", []), ("command", ["action"])):
            sig = inspect.signature(getattr(cls, method))
            required = [p.name for p in list(sig.parameters.values())[1:]
                        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            if len(required) != len(params):
                raise TypeError(f"robot driver {cls.__name__}.{method} must take {params or 'no arguments'}, "
                                f"takes {required}")
        if not isinstance(inspect.getattr_static(cls, "features"), property):
            raise TypeError(f"robot driver {cls.__name__}.features must be a property (readable without connecting)")
        if cls.__dict__.get("registered", True):
            ROBOTS[name] = cls

    @property
    @abstractmethod
    def features(self) -> RobotFeatures:
        """What the robot produces and takes; works without connecting."""

    @property
    @abstractmethod
    def is_connected(self) -> bool:
        """Whether `observe`/`command` may be called."""

    @abstractmethod
    def connect(self) -> None:
        """Open the link to the robot (and start its clock, for a simulator)."""

    @abstractmethod
    def disconnect(self) -> None:
        """Close the link; the robot is left holding."""

    @abstractmethod
    def observe(self) -> RobotObservation:
        """The newest observation."""

    @abstractmethod
    def command(self, action: np.ndarray) -> np.ndarray:
        """Send one action; returns the action actually sent."""

    def reset_to_home(self, seed: int | None = None) -> RobotObservation:
        """Bring the robot to its home pose (a simulator also re-draws its scene from `seed`); the default
        commands the hold of every dimension and returns the next observation."""
        return self.observe()

    def halt(self, hold: np.ndarray) -> None:
        """Stop now (the e-stop): drop anything queued and command `hold`."""
        self.command(hold)

    def wait_for_tick(self, timeout_s: float) -> bool:
        """Block until the robot's next control tick; True if one came. The default ticks a fixed-rate clock at
        `features.rate_hz`; a driver with its own clock (the sim arm) waits for that instead."""
        period = 1.0 / self.features.rate_hz
        now = time.perf_counter()
        nxt = getattr(self, "_rtdp_next_tick", None)
        nxt = now + period if nxt is None or nxt < now - period else nxt
        if nxt - now > timeout_s:
            return False
        time.sleep(max(nxt - now, 0.0))
        self._rtdp_next_tick = nxt + period
        return True

    def stats(self) -> dict[str, Any]:
        """Driver counters for status replies (ticks, overruns, latencies); empty by default."""
        return {}

    def require_connected(self) -> None:
        if not self.is_connected:
            raise RobotNotConnected(f"robot {self.name!r} is not connected: call connect() first")

    def check_action(self, action: Any) -> np.ndarray:
        """The action as a float vector of the robot's shape, or a RobotError naming what is wrong."""
        feat = self.features.action
        try:
            a = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            raise RobotError(f"action {type(action).__name__} is not a number vector") from None
        if a.shape != feat.shape:
            raise RobotError(f"action has shape {list(a.shape)}, robot {self.name!r} takes {list(feat.shape)} "
                             f"({', '.join(feat.names) or 'unnamed'})")
        return a

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
