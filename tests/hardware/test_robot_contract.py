"""The robot contract: drivers are checked when they are defined, features work without connecting, and
`command` returns what was actually sent after safety."""

from __future__ import annotations

import numpy as np
import pytest

from rtdp.hardware.robot import (
    ROBOTS,
    ActionFeature,
    ArrayFeature,
    Robot,
    RobotError,
    RobotFeatures,
    RobotNotConnected,
    RobotObservation,
)
from rtdp.hardware.robot_safety import SafeRobot
from rtdp.hardware.safety import EStopLatched


class Minimal(Robot):
    """The smallest complete driver: a 2-D position robot on a fixed-rate clock that logs what it gets."""

    name = "test-minimal"

    def __init__(self):
        self.connected, self.sent = False, []

    @property
    def features(self):
        return RobotFeatures(state={"q": ArrayFeature((2,), names=("a", "b"))},
                             action=ActionFeature((2,), names=("a", "b"), low=(-1, -1), high=(1, 1),
                                                  hold=("last", "zero"), max_rate=(10.0, 10.0)),
                             rate_hz=100.0)

    @property
    def is_connected(self):
        return self.connected

    def connect(self):
        self.connected = True

    def disconnect(self):
        self.connected = False

    def observe(self):
        self.require_connected()
        return RobotObservation(0, 0, {"q": np.zeros(2, np.float32)})

    def command(self, action):
        self.require_connected()
        self.sent.append(np.array(action))
        return np.asarray(action)


def test_a_complete_driver_registers_under_its_name():
    assert ROBOTS["test-minimal"] is Minimal


def test_a_driver_without_a_name_is_refused_when_defined():
    with pytest.raises(TypeError, match="must set name"):
        class NoName(Minimal):
            name = "Not A Name"


def test_a_driver_missing_a_method_is_refused_when_defined():
    with pytest.raises(TypeError, match="does not implement command"):
        class Half(Robot):
            name = "test-half"
            features = property(lambda self: None)
            is_connected = property(lambda self: False)

            def connect(self): ...
            def disconnect(self): ...
            def observe(self): ...


def test_a_driver_with_the_wrong_command_signature_is_refused():
    with pytest.raises(TypeError, match="command must take"):
        class Wrong(Minimal):
            name = "test-wrong"

            def command(self, action, speed):
                return action


def test_two_drivers_cannot_share_a_name():
    with pytest.raises(TypeError, match="is taken by"):
        class Again(Minimal):
            name = "test-minimal"


def test_features_are_readable_without_connecting_and_survive_the_wire_form():
    from rtdp.envs.sim_arm import SimArm

    for robot in (Minimal(), SimArm()):
        assert not robot.is_connected
        f = robot.features
        assert RobotFeatures.from_dict(f.to_dict()) == f


def test_observe_and_command_before_connect_say_so():
    from rtdp.envs.sim_arm import SimArm

    robot = SimArm()
    with pytest.raises(RobotNotConnected, match="connect"):
        robot.observe()
    with pytest.raises(RobotNotConnected):
        robot.command(np.zeros(5))


def test_features_refuse_inconsistent_descriptions():
    with pytest.raises(ValueError, match="3 entries for 2"):
        ArrayFeature((2,), low=(0, 0, 0))
    with pytest.raises(ValueError, match="low > high"):
        ArrayFeature((1,), low=(1,), high=(0,))
    with pytest.raises(ValueError, match="hold"):
        ActionFeature((2,), hold=("last", "sideways"))


def test_safe_robot_returns_what_it_actually_sent():
    driver = Minimal()
    robot = SafeRobot(driver)
    robot.connect()
    sent = robot.command(np.array([5.0, -0.5]))
    np.testing.assert_allclose(sent, [1.0, -0.5])  # clamped to the driver's limits
    np.testing.assert_allclose(driver.sent[-1], sent)
    assert robot.last_report == {"clamped": True}


def test_safe_robot_narrows_limits_but_never_widens_them():
    robot = SafeRobot(Minimal(), low=-5.0, high=0.25)
    np.testing.assert_allclose(robot.core.low, [-1, -1])
    np.testing.assert_allclose(robot.core.high, [0.25, 0.25])


def test_safe_robot_rate_limits_per_second_and_holds_per_dimension():
    driver = Minimal()
    robot = SafeRobot(driver)
    robot.connect()
    robot.command(np.array([0.0, 0.0]), now=10.0)
    sent = robot.command(np.array([1.0, 1.0]), now=10.01)  # 10/s for 10 ms: at most 0.1 per dimension
    np.testing.assert_allclose(sent, [0.1, 0.1], atol=1e-6)
    held = robot.hold("operator")
    np.testing.assert_allclose(held, [0.1, 0.0], atol=1e-6)  # "last" keeps its position, "zero" stops


def test_safe_robot_refuses_wrong_shapes_and_holds_on_nan_without_sending_them():
    driver = Minimal()
    robot = SafeRobot(driver)
    robot.connect()
    robot.command(np.array([0.5, 0.5]))
    with pytest.raises(RobotError, match="shape"):
        robot.command(np.zeros(3))
    sent = robot.command(np.array([np.nan, 0.0]))
    assert np.all(np.isfinite(sent)) and robot.last_report == {"non_finite_hold": True}
    assert len(driver.sent) == 2 and all(np.all(np.isfinite(a)) for a in driver.sent)


def test_the_e_stop_latches_across_homing_until_reset():
    driver = Minimal()
    robot = SafeRobot(driver)
    robot.connect()
    robot.estop()
    with pytest.raises(EStopLatched):
        robot.command(np.zeros(2))
    with pytest.raises(EStopLatched):
        robot.reset_to_home()
    robot.reset_estop()
    robot.command(np.zeros(2))
    assert robot.refused["estop"] == 1
