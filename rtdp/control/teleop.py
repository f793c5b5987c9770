"""Teleoperation and demonstration recording on a robot: a fixed-rate loop that reads a teleop device, commands
the robot and, when recording, keeps every tick's observation and action, aligned by timestamp.

Tick k is due at `t0 + k / hz` (the policy's rate). At each tick the newest robot state is taken (its capture
time is at most one robot period old), the device turns it into an action, the action is sent, and the pair is
kept: `obs[k]` is the observation `action[k]` was made from, as `rtdp collect` records env episodes. Stored per
tick: the robot's state arrays and camera frames, `action` (the device's label: a scripted device with DART
noise records its clean action), `timestamp` (the tick's due time, s from the episode start: the policy-rate
grid), `action_timestamp` (when the action was sent: the tick as it happened), `obs_timestamp` (the
observation's capture, same clock; always before `action_timestamp`) and `frame` (the robot's frame number).

Operator events (`rtdp.hardware.keys.OPERATOR_KEYS`, or a device's buttons) start and stop an episode, discard
or re-record it, pause, latch or reset the e-stop, and quit. A lost robot server raises `ServerGone` out of
`episode()`: nothing of that episode is kept, every committed one stays.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from rtdp.control.clock import wait_until
from rtdp.hardware.keys import OPERATOR_HELP, KeySource, NoKeys, operator_events
from rtdp.hardware.robot import Robot, RobotObservation
from rtdp.hardware.teleop import TeleopDevice

OUTCOMES = ("kept", "discarded", "rerecord", "quit", "estop")
TIMING_KEYS = ("action", "timestamp", "action_timestamp", "obs_timestamp", "frame")


class StatusLine:
    """One live line on a terminal (rewritten in place, at most every `every_s`); on a pipe, only final lines."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 0.25):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every_s, self._last, self._width = every_s, 0.0, 0

    def show(self, text: str, final: bool = False) -> None:
        now = time.monotonic()
        if not final and (not self.tty or now - self._last < self.every_s):
            return
        self._last = now
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width) + ("\n" if final else ""))
            self._width = 0 if final else max(self._width, len(text))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


@dataclass
class Episode:
    """One teleoperated episode: what ended it, its data (when recorded) and its figures."""

    seed: int | None
    outcome: str = "kept"
    data: dict[str, list] = field(default_factory=dict)
    steps: int = 0
    success: bool = False
    dropped_frames: int = 0  # frames the robot (or its server) did not deliver during the episode
    stale_ticks: int = 0  # ticks that found no state newer than the previous tick's
    rate_hz: float = 0.0
    max_obs_age_ms: float = 0.0  # the oldest observation a tick used (capture -> tick)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.stack(v) for k, v in self.data.items()}


class TeleopSession:
    """Drive `robot` with `device` at `hz`; `episode(seed)` runs one episode and returns it.

    - `keys`: where operator keys come from (`NoKeys` for none); `auto`: start each episode at once instead
      of waiting for Enter; `stop_on_success`: end an episode when the robot reports success (a sim does).
    - `max_steps`: ticks per episode at most; `home`: home the robot (a sim: re-draw the scene from the
      seed) before each episode.
    """

    def __init__(self, robot: Robot, device: TeleopDevice, *, hz: float = 20.0, keys: KeySource | None = None,
                 max_steps: int = 200, auto: bool = False, stop_on_success: bool = True, home: bool = True,
                 status: StatusLine | None = None, label: str = ""):
        self.robot, self.device, self.hz = robot, device, float(hz)
        self.keys = keys or NoKeys()
        self.max_steps, self.auto, self.stop_on_success, self.home = int(max_steps), auto, stop_on_success, home
        self.status, self.label = status, label
        self.period_ns = round(1e9 / self.hz)
        self.estopped = False
        self.paused = False

    def _events(self) -> tuple[str, list[str]]:
        chars = self.keys.poll()
        return chars, operator_events(chars) + self.device.events()

    def _show(self, text: str, final: bool = False) -> None:
        if self.status is not None:
            self.status.show(f"{self.label}{text}", final)

    def _wait_for_start(self) -> str | None:
        """Hold until the operator starts an episode; 'quit' when they quit instead. The device keeps driving
        the robot meanwhile (an operator positions it), except while the e-stop is latched."""
        if self.estopped and isinstance(self.keys, NoKeys) and not hasattr(self.device, "_events"):
            return "quit"  # a latched e-stop and no operator to reset it: stop here
        t_next = time.perf_counter_ns()
        while True:
            t_next += self.period_ns
            wait_until(t_next)
            chars, events = self._events()
            for event in events:
                if event == "quit":
                    return "quit"
                if event == "estop":
                    self._estop()
                elif event == "reset_estop" and self.estopped:
                    self.robot.reset_estop()  # type: ignore[attr-defined]
                    self.estopped = False
                elif event == "start_stop" and not self.estopped:
                    return None
            obs = self.robot.observe()
            if not self.estopped and not self.home:
                self.robot.command(self.device.read(obs, chars))
            state = "E-STOP latched: u to reset" if self.estopped else "waiting: Enter to start"
            self._show(f"{state}   ({OPERATOR_HELP})")

    def _estop(self) -> None:
        estop = getattr(self.robot, "estop", None)
        if estop is not None:
            estop()
        else:
            self.robot.halt(np.zeros(self.robot.features.action.shape, np.float32))
        self.estopped = True

    def episode(self, seed: int | None, record: bool = True) -> Episode:
        """One episode, started by the operator (or at once with `auto`), ended by stop, discard, re-record,
        quit, e-stop, success or `max_steps`."""
        ep = Episode(seed)
        if (not self.auto or self.estopped) and self._wait_for_start() == "quit":
            ep.outcome = "quit"
            return ep
        obs = self.robot.reset_to_home(seed) if self.home else self.robot.observe()
        obs = self._with_cameras(obs)
        self.device.reset()
        dropped0 = int(obs.info.get("dropped") or 0)
        last_frame = obs.frame
        t0 = time.perf_counter_ns()
        rate_t0 = time.perf_counter()
        k = tick = 0  # steps kept; ticks of the clock (a paused tick keeps nothing)
        while k < self.max_steps:
            due = t0 + tick * self.period_ns
            tick += 1
            wait_until(due)
            chars, events = self._events()
            stop = None
            for event in events:
                if event == "estop":
                    self._estop()
                    stop = "estop"
                elif event == "pause":
                    self.paused = not self.paused
                elif event in ("discard", "rerecord", "quit") or (event == "start_stop" and k > 0):
                    stop = {"start_stop": "kept", "discard": "discarded"}.get(event, event)
                if stop:
                    break
            if stop is not None:
                ep.outcome = stop
                break
            obs = self.robot.observe()
            if obs.info.get("estop"):  # latched by another client (an operator's e-stop button)
                self.estopped, ep.outcome = True, "estop"
                break
            if obs.frame == last_frame:
                ep.stale_ticks += 1
            last_frame = obs.frame
            if self.paused:
                hold = getattr(self.robot, "hold", None)
                if hold is not None:
                    hold()
                self._show(f"paused at step {k} (p to resume)")
                continue
            action = self.device.read(obs, chars)
            t_send = time.perf_counter_ns()
            sent = self.robot.command(action)
            if record:
                self._keep(ep, obs, self.device.last_label if self.device.last_label is not None else sent,
                           due, t_send, t0)
            k += 1
            ep.steps = k
            ep.dropped_frames = int(obs.info.get("dropped") or 0) - dropped0
            ep.rate_hz = k / max(time.perf_counter() - rate_t0, 1e-9)
            ep.success = ep.success or bool(obs.info.get("success", False))
            self._show(f"episode seed {seed}  step {k}/{self.max_steps}  {ep.rate_hz:5.1f} Hz  dropped "
                       f"{ep.dropped_frames}  stale {ep.stale_ticks}{'  success' if ep.success else ''}")
            if ep.success and self.stop_on_success:
                break
        return ep

    def _with_cameras(self, obs: RobotObservation, timeout_s: float = 5.0) -> RobotObservation:
        """`obs`, or a later one, holding a frame of every camera (a camera may start after the state)."""
        deadline = time.monotonic() + timeout_s
        while set(self.robot.features.cameras) - set(obs.images):
            if time.monotonic() > deadline:
                missing = sorted(set(self.robot.features.cameras) - set(obs.images))
                raise RuntimeError(f"camera {missing[0]!r} delivered no frame in {timeout_s:g}s")
            time.sleep(1.0 / self.hz)
            obs = self.robot.observe()
        return obs

    def _keep(self, ep: Episode, obs: RobotObservation, action: np.ndarray, due_ns: int, sent_ns: int,
              t0_ns: int) -> None:
        if not ep.data:
            ep.data = {k: [] for k in obs.arrays()} | {k: [] for k in TIMING_KEYS}
        arrays = obs.arrays()
        for key in ep.data:
            if key in arrays:
                ep.data[key].append(np.array(arrays[key]))
            elif key not in TIMING_KEYS:
                ep.data[key].append(ep.data[key][-1])  # a camera frame missing here: repeat the previous one
        ep.data["action"].append(np.asarray(action, np.float32))
        ep.data["timestamp"].append(np.float64((due_ns - t0_ns) / 1e9))
        ep.data["action_timestamp"].append(np.float64((sent_ns - t0_ns) / 1e9))
        ep.data["obs_timestamp"].append(np.float64((obs.t_ns - t0_ns) / 1e9))
        ep.data["frame"].append(np.int64(obs.frame))
        ep.max_obs_age_ms = max(ep.max_obs_age_ms, (sent_ns - obs.t_ns) / 1e6)


def record_meta(settings: dict[str, Any]) -> dict[str, Any]:
    """A fresh `record.json` body for a store: the settings a resume must match, and the episode log."""
    return {"settings": settings, "next_seed": int(settings.get("seed", 0)), "episodes": []}
