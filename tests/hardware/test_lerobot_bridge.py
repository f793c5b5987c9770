"""The LeRobot bridge on LeRobot's own classes: a `lerobot.robots.Robot` subclass over the sim arm (written
here, as an SO-101 would be, with per-motor float features) served by the robot server and commanded by a
`RemoteRobot`; a `lerobot.teleoperators.Teleoperator` subclass as a teleop device; and the `lerobot:<type>`
route through LeRobot's config registry."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest

lerobot_robots = pytest.importorskip("lerobot.robots")
from lerobot.robots import Robot as LeRobot
from lerobot.robots import RobotConfig
from lerobot.teleoperators import Teleoperator, TeleoperatorConfig

from rtdp.envs.sim_arm import ACTION_NAMES, STATE_NAMES, SimArm
from rtdp.hardware.lerobot_bridge import LeRobotRobot, LeRobotTeleop
from rtdp.hardware.remote_robot import RemoteRobot
from rtdp.hardware.robot_server import RobotServer


@RobotConfig.register_subclass("rtdp_test_sim_arm")
@dataclass
class RtdpSimArmConfig(RobotConfig):
    control_hz: int = 100


class RtdpSimArm(LeRobot):
    """The sim arm speaking LeRobot: a float feature per state column and per action (`<name>.pos`/`.vel`)."""

    config_class = RtdpSimArmConfig
    name = "rtdp_test_sim_arm"

    def __init__(self, config: RtdpSimArmConfig):
        super().__init__(config)
        self.arm = SimArm(control_hz=config.control_hz)
        self.sent: list[dict] = []

    @property
    def observation_features(self) -> dict:
        return {f"{n}.pos": float for n in STATE_NAMES}

    @property
    def action_features(self) -> dict:
        return {f"{n}.vel": float for n in ACTION_NAMES}

    @property
    def is_connected(self) -> bool:
        return self.arm.is_connected

    def connect(self, calibrate: bool = True) -> None:
        self.arm.connect()

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def get_observation(self) -> dict:
        state = self.arm.observe().state["state"]
        return {f"{n}.pos": float(v) for n, v in zip(STATE_NAMES, state)}

    def send_action(self, action: dict) -> dict:
        self.sent.append(dict(action))
        sent = self.arm.command(np.array([action[f"{n}.vel"] for n in ACTION_NAMES], np.float32))
        return {f"{n}.vel": float(v) for n, v in zip(ACTION_NAMES, sent)}

    def disconnect(self) -> None:
        self.arm.disconnect()


@pytest.fixture
def le_arm(tmp_path):
    return RtdpSimArm(RtdpSimArmConfig(id="test", calibration_dir=tmp_path))


def test_a_lerobot_robot_has_rtdp_features_before_connecting(le_arm):
    robot = LeRobotRobot(le_arm, rate_hz=50, max_rate=20.0)
    f = robot.features
    assert f.state["state"].names == tuple(f"{n}.pos" for n in STATE_NAMES)
    assert f.action.names == tuple(f"{n}.vel" for n in ACTION_NAMES) and f.action.max_rate == (20.0,) * 5
    assert not robot.is_connected and f.rate_hz == 50


def test_a_lerobot_robot_is_served_and_commanded_through_the_bridge(le_arm):
    bridge = LeRobotRobot(le_arm, rate_hz=50, low=-0.5, high=0.5)
    with RobotServer(bridge, "tcp://127.0.0.1:*", watchdog_s=1.0).start() as srv:
        client = RemoteRobot(srv.endpoint)
        client.connect()
        obs = client.observe(newer=True)
        assert obs.state["state"].shape == (len(STATE_NAMES),)
        for _ in range(20):
            client.command(np.array([0, 0, 1.0, 0, -1], np.float32))  # beyond the bridge's 0.5: clamped
            time.sleep(0.02)
        deadline = time.monotonic() + 3
        while not le_arm.sent and time.monotonic() < deadline:
            time.sleep(0.02)
        client.disconnect()
    assert le_arm.sent, "no action reached LeRobot's send_action"
    assert all(abs(a["dz.vel"]) <= 0.5 for a in le_arm.sent)  # LeRobot got dicts, inside the limits


class RtdpFakeLeader(Teleoperator):
    """A LeRobot teleoperator that always gives the same velocities (a leader arm held still)."""

    config_class = TeleoperatorConfig
    name = "rtdp_fake_leader"

    def __init__(self):
        self.id, self.calibration, self.connected = "leader", {}, False

    action_features = property(lambda self: {f"{n}.vel": float for n in ACTION_NAMES})
    feedback_features = property(lambda self: {})
    is_connected = property(lambda self: self.connected)
    is_calibrated = property(lambda self: True)

    def connect(self, calibrate: bool = True) -> None:
        self.connected = True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def get_action(self) -> dict:
        return {f"{n}.vel": 0.1 * (i + 1) for i, n in enumerate(ACTION_NAMES)}

    def send_feedback(self, feedback) -> None:
        pass

    def disconnect(self) -> None:
        self.connected = False


def test_a_lerobot_teleoperator_is_an_rtdp_device_in_the_robots_action_order(le_arm):
    features = LeRobotRobot(le_arm).features
    device = LeRobotTeleop(features.action, RtdpFakeLeader())
    device.connect()
    np.testing.assert_allclose(device.read(None), [0.1, 0.2, 0.3, 0.4, 0.5])
    device.disconnect()


def test_the_lerobot_type_route_builds_through_lerobots_config_registry(tmp_path):
    from rtdp.cli.main import CLIError
    from rtdp.cli.robots import make_driver

    robot = make_driver("lerobot:rtdp_test_sim_arm", {"control_hz": 100, "id": "x",
                                                      "calibration_dir": str(tmp_path), "rate_hz": 40})
    assert isinstance(robot, LeRobotRobot) and isinstance(robot.robot, RtdpSimArm) and robot.rate_hz == 40
    with pytest.raises(CLIError, match="no robot type 'so99_follower'.*so101_follower"):
        make_driver("lerobot:so99_follower", {})
