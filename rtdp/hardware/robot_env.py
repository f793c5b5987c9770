"""`RobotEnv`: a robot behind gymnasium's API, so `rtdp.control.ControlLoop` drives a robot as it drives an env.

`reset(seed)` homes the robot (a sim re-draws its scene from the seed) and returns the first observation;
`step(action)` commands the action and returns the newest state (the robot keeps moving between steps:
its clock, not the step, advances it). The capture time of each observation is `last_capture_ns`, which the
control loop reads as it reads `RemoteEnv`'s. Reward and termination come from the robot's `info["success"]`
where it reports one (the sim arm does; a real arm does not, and its episodes end on the step limit).
Operator hooks: `pause()`/`resume()` hold the robot (actions are not sent while paused); `estop()` latches
the robot's e-stop and ends the episode.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rtdp.hardware.robot import Robot, RobotFeatures, RobotObservation


def observation_space(features: RobotFeatures) -> spaces.Dict:
    """The gymnasium observation space of a robot's state arrays and camera frames."""
    items: dict[str, spaces.Space] = {}
    for key, f in features.state.items():
        items[key] = spaces.Box(-np.inf, np.inf, shape=f.shape, dtype=np.dtype(f.dtype))
    for key, f in features.cameras.items():
        items[key] = spaces.Box(0, 255, shape=f.shape, dtype=np.uint8)
    return spaces.Dict(items)


def action_space(features: RobotFeatures) -> spaces.Box:
    f = features.action
    low = np.full(f.shape, -np.inf) if f.low is None else np.asarray(f.low)
    high = np.full(f.shape, np.inf) if f.high is None else np.asarray(f.high)
    return spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)


class RobotEnv(gym.Env):
    """Drive `robot` (connected here if it is not) through reset/step. `terminate_on_success`: end an episode
    when the robot reports success (as the sim tasks do); `events`: a callable polled every step for operator
    events ("estop", "pause", "resume", "quit"), e.g. `rtdp.hardware.keys.OperatorKeys.poll`."""


    def __init__(self, robot: Robot, *, terminate_on_success: bool = True, events: Any = None):
        self.robot = robot
        if not robot.is_connected:
            robot.connect()
        self.features = robot.features
        self.observation_space = observation_space(self.features)
        self.action_space = action_space(self.features)
        self.metadata = {"render_fps": self.features.rate_hz, "render_modes": []}
        self.terminate_on_success, self.events = terminate_on_success, events
        self.last_capture_ns: int | None = None
        self.last_observation: RobotObservation | None = None
        self.paused = False
        self.estopped = False
        self.quit = False
        self.counts = {"paused_steps": 0, "estops": 0}

    def _obs(self, obs: RobotObservation) -> dict[str, np.ndarray]:
        self.last_capture_ns, self.last_observation = obs.t_ns, obs
        return obs.arrays()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.paused = False
        obs = self.robot.reset_to_home(seed)
        return self._obs(obs), dict(obs.info)

    def _handle_events(self) -> None:
        for event in self.events() if self.events is not None else ():
            if event == "estop" and not self.estopped:
                self.estop()
            elif event == "pause":
                self.paused = not self.paused
            elif event == "resume":
                self.paused = False
            elif event == "quit":
                self.quit = True

    def estop(self) -> None:
        """Latch the robot's e-stop (it holds until an explicit reset) and end the episode."""
        estop = getattr(self.robot, "estop", None)
        if estop is not None:
            estop()
        else:
            self.robot.halt(np.zeros(self.features.action.shape, np.float32))
        self.estopped = True
        self.counts["estops"] += 1

    def step(self, action: Any):
        self._handle_events()
        if self.estopped or self.quit:
            obs = self.robot.observe()
            info = {**obs.info, "estop": self.estopped, "quit": self.quit}
            return self._obs(obs), 0.0, False, True, info
        if self.paused:
            self.counts["paused_steps"] += 1
            hold = getattr(self.robot, "hold", None)
            if hold is not None:
                hold()
        else:
            self.robot.command(np.asarray(action, np.float32))
        obs = self.robot.observe()
        info = dict(obs.info)
        if info.get("estop"):  # latched on the robot's side (another client's e-stop button): the episode ends
            self.estopped = True
            return self._obs(obs), 0.0, False, True, {**info, "quit": self.quit}
        success = bool(info.get("success", False))
        info["success"], info["paused"] = success, self.paused
        return self._obs(obs), float(success), bool(success and self.terminate_on_success), False, info

    def close(self) -> None:
        if self.robot.is_connected:
            self.robot.disconnect()
