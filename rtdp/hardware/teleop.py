"""Teleoperation devices: what a person (or a script) uses to drive a robot, behind one small contract.

`TeleopDevice.read(obs, keys)` returns the next action for the robot (its action vector) from the newest
observation and the keys typed since the last call; `events()` returns operator events the device itself
raises (a gamepad's start button). Devices:
- `ScriptedDevice`: replays a scripted expert (any `rtdp.types.Agent`), what tests and the demo use;
- `KeyboardDevice`: terminal keys (no display; key repeat keeps a motion going);
- `GamepadDevice` (pygame) and `SpaceMouseDevice` (pyspacemouse): optional extras, imported on connect;
- LeRobot teleoperators through `rtdp.hardware.lerobot_bridge.LeRobotTeleop`.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from rtdp.hardware.robot import ActionFeature, RobotObservation
from rtdp.obs_window import ObsWindow
from rtdp.types import Agent

TELEOP_EXTRA = "pip install -e '.[teleop]'"


class TeleopError(RuntimeError):
    """A device that cannot be used (missing library, no device attached)."""


class TeleopDevice(ABC):
    """Makes actions for a robot whose action is `action` (an `ActionFeature`)."""

    name = "device"

    def __init__(self, action: ActionFeature):
        self.action = action
        self.last_label: np.ndarray | None = None  # the action to record when it differs from the one sent

    def connect(self) -> None:
        """Open the device (a no-op for devices without hardware)."""

    def disconnect(self) -> None:
        """Close the device."""

    def reset(self) -> None:
        """A new episode starts."""

    @abstractmethod
    def read(self, obs: RobotObservation | None, keys: str = "") -> np.ndarray:
        """The next action."""

    def events(self) -> list[str]:
        """Operator events raised by the device itself since the last call (none by default)."""
        return []

    def _clip(self, a: np.ndarray) -> np.ndarray:
        lo = -np.inf if self.action.low is None else np.asarray(self.action.low)
        hi = np.inf if self.action.high is None else np.asarray(self.action.high)
        return np.clip(a, lo, hi).astype(np.float32)


class ScriptedDevice(TeleopDevice):
    """Replays `agent` (a scripted expert) on the robot's observations, one action per read.

    `noise` > 0 adds Gaussian noise of `noise` x the action's half range to what is sent (DART: the data then
    shows how the expert corrects off-path states) while `last_label` keeps the expert's clean action, which
    is what a recorder stores. `seed` seeds the noise.
    """

    name = "scripted"

    def __init__(self, action: ActionFeature, agent: Agent, noise: float = 0.0, seed: int = 0):
        super().__init__(action)
        self.agent, self.noise = agent, float(noise)
        self._rng = np.random.default_rng(seed)
        self._window = ObsWindow(getattr(agent, "n_obs_steps", 1), batched=False)
        self._started = False

    def reset(self) -> None:
        self.agent.reset()
        self._started = False

    def read(self, obs: RobotObservation | None, keys: str = "") -> np.ndarray:
        if obs is None:
            raise TeleopError("the scripted device needs an observation to act on")
        frame = obs.arrays()
        if self._started:
            self._window.push(frame)
        else:
            self._window.start(frame)
            self._started = True
        chunk = self.agent.act(self._window.window())
        clean = np.asarray(chunk.actions[0, chunk.start], np.float32)
        self.last_label = clean
        if self.noise <= 0:
            return clean
        lo, hi = np.asarray(self.action.low), np.asarray(self.action.high)
        return self._clip(clean + self._rng.normal(0.0, self.noise, clean.shape) * (hi - lo) / 2)


def _bindings(action: ActionFeature) -> tuple[list[tuple[str, str]], int | None]:
    """Key pairs (+, -) for each motion dimension and the dimension a toggle key drives (a gripper)."""
    pairs = [("w", "s"), ("a", "d"), ("i", "k"), ("l", "j"), ("o", "y"), ("m", "n")]
    names = action.names or tuple(f"a{i}" for i in range(action.shape[0]))
    grip = next((i for i, n in enumerate(names) if "grip" in n), None)
    motion = [i for i in range(len(names)) if i != grip]
    return [pairs[k] if k < len(pairs) else ("", "") for k in range(len(motion))], grip


class KeyboardDevice(TeleopDevice):
    """Terminal keys: w/s a/d i/k l/j o/y m/n move the robot's motion dimensions in order (+/-), g toggles a
    gripper, [ and ] change the speed. A terminal reports no key releases, only repeats: a key keeps its
    dimension moving for `pulse_s` after each press or repeat. Velocity dimensions ("zero" hold) get
    ±speed while moving; position dimensions ("last") step by speed x `step` per press."""

    name = "keyboard"

    def __init__(self, action: ActionFeature, speed: float = 0.5, pulse_s: float = 0.25, step: float = 0.05):
        super().__init__(action)
        self.speed, self.pulse_s, self.step = float(speed), float(pulse_s), float(step)
        self.pairs, self.grip = _bindings(action)
        self.motion = [i for i in range(action.shape[0]) if i != self.grip]
        self._until = np.zeros(action.shape[0])  # until when each dimension keeps moving
        self._sign = np.zeros(action.shape[0])
        lo = np.zeros(action.shape[0]) if action.low is None else np.asarray(action.low, np.float64)
        self._pos = np.clip(np.zeros(action.shape[0]), lo, np.inf if action.high is None else action.high)
        self._gripper = -1.0
        self.reset()

    def reset(self) -> None:
        self._until[:] = 0.0
        self._gripper = -1.0

    def read(self, obs: RobotObservation | None, keys: str = "") -> np.ndarray:
        now = time.monotonic()
        hold = self.action.hold or ("zero",) * self.action.shape[0]
        for c in keys:
            if c == "g" and self.grip is not None:
                self._gripper = -self._gripper
            elif c == "]":
                self.speed = min(self.speed * 1.25, 1.0)
            elif c == "[":
                self.speed = max(self.speed / 1.25, 0.05)
            for dim, (plus, minus) in zip(self.motion, self.pairs):
                if c in (plus, minus) and c:
                    sign = 1.0 if c == plus else -1.0
                    if hold[dim] == "zero":
                        self._sign[dim], self._until[dim] = sign, now + self.pulse_s
                    else:
                        self._pos[dim] += sign * self.speed * self.step
        a = np.zeros(self.action.shape[0])
        for dim in self.motion:
            a[dim] = (self._sign[dim] * self.speed if now < self._until[dim] else 0.0) if hold[dim] == "zero" \
                else self._pos[dim]
        if self.grip is not None:
            a[self.grip] = self._gripper
        return self._clip(a)


def _need(module: str, device: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise TeleopError(f"device={device} needs {module} ({err}): {TELEOP_EXTRA}") from None


class _AxisDevice(TeleopDevice):
    """Shared by the gamepad and the SpaceMouse: axes in [-1, 1] drive the motion dimensions in order, a
    button toggles the gripper, with a dead zone and a speed."""

    def __init__(self, action: ActionFeature, speed: float = 1.0, deadzone: float = 0.1):
        super().__init__(action)
        self.speed, self.deadzone = float(speed), float(deadzone)
        _, self.grip = _bindings(action)
        self.motion = [i for i in range(action.shape[0]) if i != self.grip]
        self._gripper, self._pressed = -1.0, False
        self._events: list[str] = []

    def reset(self) -> None:
        self._gripper = -1.0

    def _compose(self, axes: list[float], grip_button: bool) -> np.ndarray:
        a = np.zeros(self.action.shape[0])
        for dim, v in zip(self.motion, axes):
            a[dim] = 0.0 if abs(v) < self.deadzone else float(v) * self.speed
        if grip_button and not self._pressed and self.grip is not None:
            self._gripper = -self._gripper
        self._pressed = grip_button
        if self.grip is not None:
            a[self.grip] = self._gripper
        return self._clip(a)

    def events(self) -> list[str]:
        out, self._events = self._events, []
        return out


class GamepadDevice(_AxisDevice):
    """A gamepad through pygame (SDL): left stick x/y, right stick y, right stick x drive the motion
    dimensions; A toggles the gripper; B e-stop, Back discard, Start start/stop (Xbox layout)."""

    name = "gamepad"
    BUTTON_EVENTS: ClassVar[dict[int, str]] = {1: "estop", 6: "discard", 7: "start_stop"}

    def connect(self) -> None:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # no display needed
        self._pg = _need("pygame", "gamepad")
        self._pg.init()
        self._pg.joystick.init()
        if self._pg.joystick.get_count() == 0:
            raise TeleopError("device=gamepad: no gamepad found (plug one in; check `ls /dev/input/js*`)")
        self._js = self._pg.joystick.Joystick(0)
        self._js.init()
        self._buttons = [False] * self._js.get_numbuttons()

    def read(self, obs: RobotObservation | None, keys: str = "") -> np.ndarray:
        self._pg.event.pump()
        js = self._js
        axes = [js.get_axis(0), -js.get_axis(1), -js.get_axis(4 if js.get_numaxes() > 4 else 3),
                js.get_axis(3 if js.get_numaxes() > 4 else 2)]
        buttons = [bool(js.get_button(i)) for i in range(js.get_numbuttons())]
        for i, event in self.BUTTON_EVENTS.items():
            if i < len(buttons) and buttons[i] and not self._buttons[i]:
                self._events.append(event)
        self._buttons = buttons
        return self._compose(axes, bool(buttons and buttons[0]))

    def disconnect(self) -> None:
        if getattr(self, "_pg", None) is not None:
            self._pg.joystick.quit()


class SpaceMouseDevice(_AxisDevice):
    """A 3Dconnexion SpaceMouse through pyspacemouse (hidapi): x, y, z and yaw drive the first four motion
    dimensions; the left button toggles the gripper, the right one starts/stops an episode."""

    name = "spacemouse"

    def connect(self) -> None:
        self._sm = _need("pyspacemouse", "spacemouse")
        self._dev = self._sm.open()  # the device (True in older releases), None/False when none is found
        if not self._dev:
            raise TeleopError("device=spacemouse: no SpaceMouse found (plugged in? a udev rule for hidraw?)")
        self._right = False

    def read(self, obs: RobotObservation | None, keys: str = "") -> np.ndarray:
        s = self._dev.read() if hasattr(self._dev, "read") else self._sm.read()
        buttons = list(getattr(s, "buttons", None) or getattr(s, "button", None) or [])
        right = len(buttons) > 1 and bool(buttons[1])
        if right and not self._right:
            self._events.append("start_stop")
        self._right = right
        return self._compose([s.x, s.y, s.z, s.yaw], bool(buttons and buttons[0]))

    def disconnect(self) -> None:
        dev = getattr(self, "_dev", None)
        if dev is not None and hasattr(dev, "close"):
            dev.close()
        elif getattr(self, "_sm", None) is not None and hasattr(self._sm, "close"):
            self._sm.close()
