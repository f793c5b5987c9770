"""`rtdp deploy` end to end on the real-time sim arm: record demonstrations with the scripted device, train a tiny
policy on them, deploy it through the robot server (every rollout recorded, metrics and timing plot written),
and an operator's e-stop from another client during a rollout."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from rtdp.cli.main import main
from rtdp.datasets import ReplayBuffer

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from robot_cli_helpers import spawn_robot_server, stop
from tiny_task import TINY_POLICY


@pytest.fixture(scope="module")
def served_arm():
    proc, address = spawn_robot_server()
    yield address
    stop(proc)


@pytest.fixture(scope="module")
def tiny_checkpoint(served_arm, tmp_path_factory):
    """A few training steps of a tiny policy on two episodes recorded on the robot (teleop -> record -> train)."""
    root = tmp_path_factory.mktemp("robot_path")
    data, run = root / "demos.zarr", root / "train"
    assert main(["record", f"robot={served_arm}", "device=scripted", f"out={data}", "episodes=2", "auto=true",
                 "operator=none", "max_steps=60"]) == 0
    assert main(["train", "task=arm_lift", f"task.dataset.path={data}", f"out_dir={run}", *TINY_POLICY,
                 "training.num_steps=4"]) == 0
    return run


def test_deploy_drives_the_robot_records_every_rollout_and_writes_metrics(served_arm, tiny_checkpoint, tmp_path):
    out = tmp_path / "deploy"
    assert main(["deploy", f"checkpoint={tiny_checkpoint}", f"robot={served_arm}", "episodes=2", "max_steps=15",
                 f"out={out}", "operator=none", "sampler=ddim", "sampler.num_steps=2"]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["kind"] == "deploy_run" and record["summary"]["episodes"] == 2
    assert [e["index"] for e in record["episodes"]] == [0, 1]
    assert record["robot_server"]["stats"]["commands"] > 0
    assert (out / "timing.png").is_file() and (out / "timing.json").is_file()
    buf = ReplayBuffer.open(out / "rollouts.zarr", "r")
    assert buf.n_episodes == 2 and {"state", "action", "timestamp"} <= set(buf.keys())


def test_an_e_stop_during_a_rollout_latches_stops_the_run_and_keeps_the_rollout(served_arm, tiny_checkpoint,
                                                                                tmp_path, capsys):
    from rtdp.hardware.remote_robot import RemoteRobot

    operator = RemoteRobot(served_arm)
    pressed = threading.Event()

    def press_when_moving():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not pressed.is_set():
            status = operator.status()
            if status.get("owned") and status.get("holding") is None:  # the policy is commanding the arm
                operator.estop()
                pressed.set()
                return
            time.sleep(0.05)

    presser = threading.Thread(target=press_when_moving, daemon=True)
    presser.start()
    out = tmp_path / "deploy"
    try:
        code = main(["deploy", f"checkpoint={tiny_checkpoint}", f"robot={served_arm}", "episodes=3",
                     "max_steps=400", f"out={out}", "operator=none", "sampler=ddim", "sampler.num_steps=2"])
    finally:
        presser.join(timeout=10)
    assert pressed.is_set() and code == 1
    assert "e-stop latched during rollout 0" in capsys.readouterr().err
    record = json.loads((out / "metrics.json").read_text())
    assert record["episodes"][0]["estop"] is True and len(record["episodes"]) == 1
    assert operator.status()["estop"] is True  # still latched on the server: only an explicit reset clears it
    assert main(["teleop", f"robot={served_arm}", "reset_estop=true"]) == 0
    assert operator.status()["estop"] is False
    operator.disconnect()
