"""Robot-side safety: clamping, rate limits, the stale-command watchdog and the latched e-stop."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rtdp.hardware import EnvServer, RemoteEnv, RemoteEnvError
from rtdp.hardware import protocol as P
from rtdp.hardware.loopback_env import LoopbackEnv
from rtdp.hardware.safety import EStopLatched, SafetyWrapper


class Recording(LoopbackEnv):
    """Remembers every action that reached the 'robot'."""

    def __init__(self):
        super().__init__()
        self.executed: list[np.ndarray] = []

    def step(self, action):
        self.executed.append(np.array(action))
        return super().step(action)


def test_actions_are_clamped_and_rate_limited():
    robot = Recording()
    env = SafetyWrapper(robot, low=-0.5, high=0.5, max_delta=0.2)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([5.0, -5.0], np.float32))
    assert info["safety"] == {"clamped": True}
    np.testing.assert_allclose(robot.executed[-1], [0.5, -0.5])
    _, _, _, _, info = env.step(np.array([-0.5, 0.5], np.float32))
    assert info["safety"] == {"rate_limited": True}
    np.testing.assert_allclose(robot.executed[-1], [0.3, -0.3], atol=1e-6)
    assert env.counts["clamped"] == 1 and env.counts["rate_limited"] == 1


def test_watchdog_holds_when_commands_go_stale():
    robot = Recording()
    env = SafetyWrapper(robot, watchdog_s=0.05)
    env.reset(seed=0)
    env.step(np.array([0.1, 0.1], np.float32))
    time.sleep(0.1)  # the command stream stalls
    _, _, _, _, info = env.step(np.array([1.0, 1.0], np.float32))
    assert info["safety"] == {"watchdog_hold": True}
    np.testing.assert_allclose(robot.executed[-1], [0.1, 0.1])  # held the last safe action, not the stale one
    env.step(np.array([0.2, 0.2], np.float32))  # fresh commands run again
    np.testing.assert_allclose(robot.executed[-1], [0.2, 0.2])


def test_estop_latches_until_explicit_reset_even_across_episode_reset():
    robot = Recording()
    env = SafetyWrapper(robot)
    env.reset(seed=0)
    env.step(np.array([0.3, 0.3], np.float32))
    env.estop()
    with pytest.raises(EStopLatched):
        env.step(np.array([1.0, 1.0], np.float32))
    np.testing.assert_allclose(robot.executed[-1], [0.3, 0.3])  # the robot held
    env.reset(seed=1)
    with pytest.raises(EStopLatched):
        env.step(np.array([1.0, 1.0], np.float32))
    env.reset_estop()
    env.step(np.array([1.0, 1.0], np.float32))
    np.testing.assert_allclose(robot.executed[-1], [1.0, 1.0])


def test_estop_over_the_wire_is_an_env_error_and_server_keeps_serving():
    wrapped: list[SafetyWrapper] = []

    def make():
        wrapped.append(SafetyWrapper(LoopbackEnv()))
        return wrapped[-1]

    with EnvServer(make, "tcp://127.0.0.1:*").start() as srv:
        env = RemoteEnv(srv.endpoint)
        env.reset(seed=0)
        wrapped[0].estop()
        with pytest.raises(RemoteEnvError, match="e-stop latched") as err:
            env.step(np.zeros(2, np.float32))
        assert err.value.code == P.E_ENV
        wrapped[0].reset_estop()
        env.step(np.zeros(2, np.float32))
        env.close()
