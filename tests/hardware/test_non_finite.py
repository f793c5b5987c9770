"""NaN, inf and float32 overflow never reach the env: refused by the server, held by SafetyWrapper."""

from __future__ import annotations

import numpy as np
import pytest

from rtdp.hardware import EnvServer, RemoteEnv, RemoteEnvError
from rtdp.hardware import protocol as P
from rtdp.hardware.loopback_env import LoopbackEnv
from rtdp.hardware.safety import SafetyWrapper


class Recording(LoopbackEnv):
    """Remembers every action and reset option that reached the 'robot'."""

    def __init__(self):
        super().__init__()
        self.executed: list[np.ndarray] = []
        self.options: list = []

    def reset(self, *, seed=None, options=None):
        self.options.append(options)
        return super().reset(seed=seed)

    def step(self, action):
        self.executed.append(np.array(action))
        return super().step(action)


@pytest.fixture
def recorded():
    envs: list[Recording] = []

    def make():
        envs.append(Recording())
        return envs[-1]

    with EnvServer(make, "tcp://127.0.0.1:*").start() as srv:
        yield srv, envs


@pytest.mark.parametrize("action", [
    np.array([np.nan, 0.5], np.float32),
    np.array([0.1, np.inf], np.float32),
    np.array([-np.inf, 0.0], np.float64),
    np.array([1e300, 0.0], np.float64),  # finite in float64, inf in the env's float32
])
def test_server_refuses_non_finite_actions_and_the_env_never_steps(recorded, action):
    srv, envs = recorded
    env = RemoteEnv(srv.endpoint)
    env.reset(seed=0)
    with pytest.raises(RemoteEnvError, match="not finite") as err:
        env.step(action)
    assert err.value.code == P.E_BAD_ACTION
    assert envs[-1].executed == []
    assert srv.stats[f"error.{P.E_BAD_ACTION}"] == 1 and srv.stats["non_finite_actions"] == 1
    _, _, _, _, info = env.step(np.zeros(2, np.float32))  # the episode goes on, unpoisoned
    assert info["step"] == 1 and np.isfinite(envs[-1].executed[-1]).all()
    env.close()


@pytest.mark.parametrize("options, where", [
    ({"reset_to_state": [np.nan, 1.0, 2.0, 3.0, 0.0]}, "options['reset_to_state'][0]"),
    ({"reset_to_state": np.array([1.0, np.inf, 2.0], np.float32)}, "options['reset_to_state'][1]"),
    ({"reset_to_state": np.array([1.0, 2.0, 1e300])}, "options['reset_to_state'][2]"),
    ({"nested": {"deep": [1.0, [float("-inf")]]}}, "options['nested']['deep'][1][0]"),
])
def test_server_refuses_non_finite_reset_options_naming_the_value(recorded, options, where):
    srv, envs = recorded
    env = RemoteEnv(srv.endpoint)
    with pytest.raises(RemoteEnvError, match=r"not finite") as err:
        env.reset(seed=0, options=options)
    assert err.value.code == P.E_BAD_OPTIONS and where in str(err.value)
    assert [e.options for e in envs] == [[]]  # the env was never reset with them
    assert srv.stats[f"error.{P.E_BAD_OPTIONS}"] == 1
    env.reset(seed=0, options={"reset_to_state": [1.0, 2.0]})  # finite options still work
    assert [e.options for e in envs] == [[{"reset_to_state": [1.0, 2.0]}]]
    env.close()


@pytest.mark.parametrize("seed", [-1, 1.5, "7", True])
def test_server_refuses_a_seed_that_is_not_a_non_negative_integer(recorded, seed):
    srv, _ = recorded
    env = RemoteEnv(srv.endpoint)
    with pytest.raises(RemoteEnvError, match="seed") as err:
        env.request(P.RESET, {"seed": seed})
    assert err.value.code == P.E_BAD_OPTIONS
    env.close()


@pytest.mark.parametrize("bad", [
    [np.nan, 0.2], [0.2, np.inf], [-np.inf, -np.inf], np.array([1e300, 0.0], np.float64),
])
def test_safety_wrapper_holds_the_last_safe_command_on_non_finite_input(bad):
    robot = Recording()
    env = SafetyWrapper(robot, low=-0.5, high=0.5)
    env.reset(seed=0)
    env.step(np.array([0.3, -0.2], np.float32))
    _, _, _, _, info = env.step(np.asarray(bad))
    assert info["safety"] == {"non_finite_hold": True}  # never reported as "clamped"
    np.testing.assert_allclose(robot.executed[-1], [0.3, -0.2], rtol=1e-6)
    assert np.isfinite(robot.executed[-1]).all()
    assert env.counts["non_finite_holds"] == 1 and env.counts["clamped"] == 0


def test_with_max_delta_one_nan_never_poisons_later_actions():
    robot = Recording()
    env = SafetyWrapper(robot, max_delta=0.1)
    env.reset(seed=0)
    env.step(np.array([0.0, 0.0], np.float32))
    env.step(np.array([np.nan, 0.05], np.float32))  # held
    for target in ([0.05, 0.05], [0.5, 0.5], [0.5, 0.5]):
        _, _, _, _, info = env.step(np.array(target, np.float32))
        assert np.isfinite(robot.executed[-1]).all() and "non_finite_hold" not in info["safety"]
    np.testing.assert_allclose(robot.executed[-1], [0.25, 0.25], atol=1e-6)  # 0.05, then +0.1 twice


def test_first_action_non_finite_holds_the_safe_default():
    robot = Recording()
    env = SafetyWrapper(robot, low=-1.0, high=1.0)
    env.reset(seed=0)
    env.step(np.array([np.nan, np.nan], np.float32))
    np.testing.assert_array_equal(robot.executed[-1], [0.0, 0.0])


def test_serve_env_safety_option_clamps_to_the_action_space(spawn):
    _, endpoint = spawn("tcp://127.0.0.1:*", "safety=true", "max_delta=0.5")
    env = RemoteEnv(endpoint, timeout_s=5.0)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([5.0, -5.0], np.float32))  # LoopbackEnv's space is [-1, 1]
    assert info["safety"] == {"clamped": True}
    _, _, _, _, info = env.step(np.array([-1.0, 1.0], np.float32))
    assert info["safety"] == {"rate_limited": True}
    env.close()
