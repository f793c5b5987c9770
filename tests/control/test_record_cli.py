"""`rtdp record`, `rtdp teleop` and `rtdp serve-robot` on the real-time sim arm: recorded episodes aligned by
timestamp, atomic and resumable; operator keys; a robot server killed mid-recording; bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rtdp.cli.main import main
from rtdp.datasets import ReplayBuffer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robot_cli_helpers import REPO, RTDP, spawn_robot_server, stop

HZ = 20


@pytest.fixture(scope="module")
def robot_server():
    proc, address = spawn_robot_server()
    yield address
    stop(proc)


def _record(out: Path, address: str, episodes: int, *extra: str) -> int:
    return main(["record", f"robot={address}", "device=scripted", f"out={out}", f"episodes={episodes}",
                 "auto=true", "operator=none", "max_steps=60", *extra])


def test_record_keeps_aligned_episodes_with_their_outcomes(robot_server, tmp_path):
    out = tmp_path / "demos.zarr"
    assert _record(out, robot_server, 2, "noise=0.2") == 0
    buf = ReplayBuffer.open(out, "r")
    assert buf.n_episodes == 2
    assert {"state", "action", "timestamp", "action_timestamp", "obs_timestamp", "frame"} <= set(buf.keys())
    ep = buf.get_episode(0)
    np.testing.assert_allclose(np.diff(ep["timestamp"]), 1 / HZ)  # one row per tick of the policy's rate
    age = ep["action_timestamp"] - ep["obs_timestamp"]
    assert np.all(age >= 0) and np.median(age) < 0.05  # each action's state was captured just before it was sent
    meta = json.loads((out / "record.json").read_text())
    steps = np.diff(ep["frame"])
    assert np.all(steps >= 0)  # robot frames in order; a repeat is a tick that found no newer state ...
    assert int(np.sum(steps == 0)) <= meta["episodes"][0]["stale_ticks"]  # ... and is counted as stale
    assert [e["outcome"] for e in meta["episodes"]] == ["kept", "kept"] and meta["next_seed"] == 2
    assert all(e["success"] for e in meta["episodes"])  # the scripted expert lifts the cube on the real-time arm


def test_record_resumes_up_to_n_and_refuses_other_settings(robot_server, tmp_path, capsys):
    out = tmp_path / "demos.zarr"
    assert _record(out, robot_server, 1) == 0
    assert _record(out, robot_server, 2) == 0
    assert ReplayBuffer.open(out, "r").n_episodes == 2
    seeds = [e["seed"] for e in json.loads((out / "record.json").read_text())["episodes"]]
    assert seeds == [0, 1]
    before = sorted(p.name for p in out.rglob("*"))
    capsys.readouterr()
    assert _record(out, robot_server, 3, "hz=10") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.rglob("*")) == before


def test_the_recorded_store_exports_to_lerobot(robot_server, tmp_path):
    out = tmp_path / "demos.zarr"
    assert _record(out, robot_server, 1) == 0
    assert main(["data", "export-lerobot", str(out), str(tmp_path / "le"), "--fps", str(HZ)]) == 0
    assert (tmp_path / "le" / "meta" / "info.json").is_file()


def test_a_robot_server_killed_mid_recording_keeps_the_finished_episodes(tmp_path):
    proc, address = spawn_robot_server()
    out = tmp_path / "demos.zarr"
    rec = subprocess.Popen([*RTDP, "record", f"robot={address}", "device=scripted", f"out={out}", "episodes=50",
                            "auto=true", "operator=none", "max_steps=60", "timeout=0.5"], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            meta = out / "record.json"
            if meta.is_file() and json.loads(meta.read_text())["episodes"]:
                break
            time.sleep(0.2)
        time.sleep(0.5)  # into the next episode
        proc.send_signal(signal.SIGKILL)
        _, err = rec.communicate(timeout=60)
    finally:
        stop(proc)
        if rec.poll() is None:
            rec.kill()
    assert rec.returncode == 1, err
    kept = ReplayBuffer.open(out, "r").n_episodes
    assert kept >= 1 and f"the {kept} finished episode(s) in {out} are kept" in err
    assert "sent no state" in err or "did not answer" in err


def test_operator_keys_start_discard_rerecord_stop_and_quit(robot_server):
    from rtdp.control.teleop import TeleopSession
    from rtdp.envs.experts import make_expert
    from rtdp.hardware.keys import ScriptedKeys
    from rtdp.hardware.remote_robot import RemoteRobot
    from rtdp.hardware.teleop import ScriptedDevice

    robot = RemoteRobot(robot_server)
    robot.connect()
    keys = ScriptedKeys()
    session = TeleopSession(robot, ScriptedDevice(robot.features.action, make_expert("arm-lift")), hz=HZ,
                            keys=keys, max_steps=1000, stop_on_success=False)
    try:
        outcomes = []
        for script in ("\r" + "x", "\r" + "r", "\r" + "\r", "Q"):  # start then discard / re-record / stop; quit
            keys.push(script[0])
            if len(script) > 1:
                keys._at = [(0.3, script[1])]
                keys._t0 = None
            ep = session.episode(seed=5)
            outcomes.append((ep.outcome, ep.steps > 0))
        assert outcomes == [("discarded", True), ("rerecord", True), ("kept", True), ("quit", False)]
    finally:
        robot.disconnect()


def test_teleop_drives_for_a_while_and_resets_a_latched_e_stop(robot_server, capsys):
    from rtdp.hardware.remote_robot import RemoteRobot

    assert main(["teleop", f"robot={robot_server}", "device=scripted", "seconds=1", "operator=none"]) == 0
    assert "commands in" in capsys.readouterr().out
    operator = RemoteRobot(robot_server)
    operator.estop()
    assert operator.status()["estop"] is True
    assert main(["teleop", f"robot={robot_server}", "reset_estop=true"]) == 0
    assert operator.status()["estop"] is False
    operator.disconnect()


def test_serve_robot_refuses_a_network_address_without_keys(capsys):
    assert main(["serve-robot", "robot=sim-arm", "bind=tcp://0.0.0.0:5999"]) == 2
    err = capsys.readouterr().err
    assert "reachable from the network" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, fragment", [
    (["record", "robot=sim-arm", "device=scripted", "out=d.zarr"], "missing episodes="),
    (["record", "robot=sim-arm", "device=wand", "out=d.zarr", "episodes=1"], "device='wand'"),
    (["record", "robot=sim-arm", "device=scripted", "out=a_file.txt", "episodes=1"], "is a file"),
    (["record", "robot=sim-arm", "device=scripted", "out=d.zarr", "episodes=1", "operator=none"], "auto=true"),
    (["record", "robot=tcp://127.0.0.1:9", "device=scripted", "out=d.zarr", "episodes=1", "robot.drop_prob=0.1",
      "auto=true"], "configure a driver"),
    (["record", "robot=sim-arm", "device=scripted", "out=d.zarr", "episodes=0"], "episodes='0' is out of range"),
    (["teleop", "robot=sim-arm", "operator=none"], "seconds="),
    (["teleop", "robot=sim-arm", "hz=0"], "hz='0' is out of range"),
    (["deploy", "checkpoint=/no/such/run"], "does not exist"),
    (["deploy", "checkpoint=/no/such/run", "mode=fast"], "use one of sync, async"),
    (["deploy", "checkpoint=/no/such/run", "out=a_file.txt"], "is a file"),
    (["serve-robot"], "missing robot="),
    (["serve-robot", "robot=sim-arm", "bind=tcp://127.0.0.1:99999"], "port '99999'"),
    (["serve-robot", "robot=sim-arm", "watchdog_s=0"], "watchdog_s='0' is out of range"),
    (["serve-robot", "robot=nope"], "robot='nope'"),
    (["serve-robot", "robot=sim-arm", "robot.control_hz=20"], "100..500"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file.txt").write_text("not a directory")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file.txt"]
