"""Bad input and faults against the robot server, each from a misbehaving client on loopback: every one is a
clear error, a counted refusal or a hold, and nothing reaches the driver outside its limits."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
from robot_helpers import LoggedSimArm, assert_nothing_unsafe_reached, served, wait_for

from rtdp.hardware import protocol as P
from rtdp.hardware.pubsub import CommandSender
from rtdp.hardware.remote_robot import RemoteRobot, RobotServerError

UP = np.array([0, 0, 1, 0, -1], np.float32)


@pytest.fixture
def rig():
    """A served, logged sim arm at 100 Hz (watchdog 0.2 s, rate limit 20/s) and an owning client."""
    arm = LoggedSimArm(control_hz=100)
    srv = served(arm, watchdog_s=0.2, max_rate=20.0)
    client = RemoteRobot(srv.endpoint, timeout_s=2.0)
    client.connect()
    client.reset_to_home(seed=0)
    yield arm, srv, client
    client.disconnect()
    srv.close()


def _stat(srv, key):
    return srv.stats.get(key, 0)


def test_out_of_limit_commands_are_clamped_and_counted(rig):
    arm, srv, client = rig
    for _ in range(5):
        client.command(np.array([9, -9, 3, 0, 1e6], np.float32))
        time.sleep(0.02)
    assert wait_for(lambda: srv.robot.core.counts["clamped"] >= 3)
    assert arm.actions().size and np.abs(arm.actions()).max() <= 1.0
    assert_nothing_unsafe_reached(arm, max_rate=20.0)


def test_nan_and_inf_commands_are_refused_and_the_robot_holds(rig):
    arm, srv, client = rig
    client.command(UP * 0.5)
    time.sleep(0.05)
    for bad in (np.nan, np.inf, -np.inf):
        client.command(np.array([0, 0, bad, 0, -1], np.float32))
        time.sleep(0.03)
    assert wait_for(lambda: _stat(srv, "refused.non_finite") == 3)
    assert wait_for(lambda: client.observe().info["holding"] == "non_finite")
    assert_nothing_unsafe_reached(arm, max_rate=20.0)


def test_wrong_shape_commands_are_refused_and_never_sent(rig):
    arm, srv, client = rig
    n_before = len(arm.sent)
    for shape in ((4,), (6,), (5, 1), ()):
        client.command(np.zeros(shape, np.float32))
        time.sleep(0.03)
    assert wait_for(lambda: _stat(srv, "refused.bad_shape") == 4)
    assert len(arm.sent) == n_before
    assert "refused" in client.status()["stats"]


def test_commands_faster_than_the_robot_are_coalesced_and_the_rate_limit_holds(rig):
    arm, srv, client = rig
    n_before, t0 = len(arm.sent), time.monotonic()
    for i in range(3000):  # as fast as Python sends: far above the 100 Hz the robot takes
        client.command(np.array([(-1) ** i, 0, 0, 0, -1], np.float32))
    time.sleep(0.1)
    elapsed = time.monotonic() - t0
    applied = len(arm.sent) - n_before
    assert applied <= elapsed * 100 + 3  # at most one command per 1/max_command_hz reached the driver

    def another_burst_was_refused() -> bool:
        # CONFLATE keeps only the newest command: a server thread starved by a loaded CPU may find one command per
        # wake-up and rightly refuse none, so keep sending until two land within one 1/max_command_hz period
        for i in range(200):
            client.command(np.array([(-1) ** i, 0, 0, 0, -1], np.float32))
        return _stat(srv, "too_fast") > 0

    assert wait_for(another_burst_was_refused, timeout_s=10.0)
    assert_nothing_unsafe_reached(arm, max_rate=20.0)  # ±1 flips were slewed at 20/s, never jumped


def test_malformed_messages_on_the_command_stream_are_counted_and_serving_goes_on(rig):
    _, srv, client = rig
    raw = zmq.Context.instance().socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(srv.command_endpoint)
    try:
        raw.send(b"\x00\x01 not a packed message")
        time.sleep(0.1)  # the stream keeps each sender's newest only: let the first be read
        raw.send(P.pack(P.encode(P.STEP, 1, {"action": np.zeros(5, np.float32)})))
        assert wait_for(lambda: _stat(srv, "refused.malformed") >= 2)
    finally:
        raw.close()
    client.command(UP)
    assert wait_for(lambda: np.allclose(client.observe().info["applied"], UP))


def test_a_client_that_vanishes_mid_episode_is_held_by_the_watchdog(rig, tmp_path):
    arm, srv, client = rig
    client.disconnect()  # the vanishing client below owns the robot
    script = (
        "import sys, time, numpy as np\n"
        "from rtdp.hardware.remote_robot import RemoteRobot\n"
        f"r = RemoteRobot({srv.endpoint!r}); r.connect(); r.reset_to_home(seed=1)\n"
        "for _ in range(30):\n"
        "    r.command(np.array([0, 0, 1, 0, -1], np.float32)); time.sleep(0.01)\n"
        "print('vanishing', flush=True)\n"
        "import os; os._exit(0)  # no release, no goodbye: a crash mid-episode\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert "vanishing" in proc.stdout, proc.stderr
    gone_at = time.monotonic()
    assert wait_for(lambda: _stat(srv, "watchdog_holds") == 1, timeout_s=2.0)
    held_after = time.monotonic() - gone_at
    assert held_after <= srv.watchdog_s + 0.5  # within the configured timeout (+ the poll and process exit)
    np.testing.assert_allclose(arm.actions()[-1], [0, 0, 0, 0, -1])  # zero motion, gripper as it was
    z0 = client_z(srv)
    time.sleep(0.2)
    assert abs(client_z(srv) - z0) < 0.005  # it stays put
    assert_nothing_unsafe_reached(arm, max_rate=20.0)


def client_z(srv) -> float:
    return float(srv.robot.observe().state["state"][8])


def test_a_second_client_is_refused_and_its_commands_never_reach_the_driver(rig):
    arm, srv, _ = rig
    intruder = RemoteRobot(srv.endpoint, timeout_s=1.0, retries=0)
    with pytest.raises(RobotServerError, match="owned by") as err:
        intruder.connect()
    assert err.value.code == P.E_BUSY
    forged = CommandSender(srv.command_endpoint)
    try:
        for token in (None, "0" * 32, "guess"):
            forged.send(np.array([1, 1, 1, 1, 1], np.float32), token=token)
            time.sleep(0.03)
        assert wait_for(lambda: _stat(srv, "refused.not_owner") == 3)
    finally:
        forged.close()
    assert not any(np.allclose(a, 1.0) for a in arm.actions())
    with pytest.raises(RobotServerError, match="owner"):
        intruder._request(P.HOME)  # homing needs the owner too
    intruder.disconnect()


def test_e_stop_during_motion_latches_until_an_explicit_reset(rig):
    arm, srv, client = rig
    operator = RemoteRobot(srv.endpoint)  # any client may press the e-stop
    for _ in range(10):  # moving up
        client.command(UP)
        time.sleep(0.02)
    operator.estop()
    assert wait_for(lambda: client.observe().info["estop"] is True)
    z0 = client_z(srv)
    for _ in range(10):
        client.command(UP)
        time.sleep(0.02)
    assert wait_for(lambda: _stat(srv, "refused.estop") >= 5)
    assert abs(client_z(srv) - z0) < 0.005  # held, not moving up
    with pytest.raises(RobotServerError, match="e-stop"):
        client.reset_to_home(seed=0)
    with pytest.raises(RobotServerError, match="owner"):
        operator.reset_estop()  # only the owner clears it while the robot is owned
    assert client.status()["estop"] is True
    client.reset_estop()
    assert wait_for(lambda: client.command(UP) is not None and client_z(srv) > z0 + 0.01)
    assert_nothing_unsafe_reached(arm, max_rate=20.0)
    operator.disconnect()


def test_an_owner_silent_past_owner_idle_can_be_replaced():
    srv = served(owner_idle_s=0.2)
    try:
        first, second = RemoteRobot(srv.endpoint), RemoteRobot(srv.endpoint)
        first.connect()
        time.sleep(0.3)
        second.connect()
        assert srv.stats["owner_takeovers"] == 1
        first.command(UP)  # the old token no longer commands
        assert wait_for(lambda: srv.stats.get("refused.not_owner", 0) == 1)
        first.disconnect()
        second.disconnect()
    finally:
        srv.close()


def test_robot_requests_are_refused_by_the_env_server_and_env_requests_by_the_robot_server(server):
    srv = served()
    try:
        robot = RemoteRobot(srv.endpoint)
        with pytest.raises(RobotServerError, match="not a robot request"):
            robot._req.request(P.STEP, {"action": np.zeros(5, np.float32)})
        robot.disconnect()
    finally:
        srv.close()
