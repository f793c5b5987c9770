"""`rtdp run`: metrics JSON + timing plot, recording, bad input, and a server lost mid-run."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from rtdp.cli.main import CLIError
from rtdp.cli.run import main as run_main
from rtdp.control import ControlLoop
from rtdp.control.recorder import EpisodeRecorder
from rtdp.datasets import ReplayBuffer
from rtdp.hardware import RemoteEnv, ServerGone

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hardware"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_agents import TimedAgent
from wire_helpers import spawn_server

LOOPBACK = "rtdp.hardware.loopback_env:LoopbackEnv"
EXPERT = "rtdp.hardware.loopback_env:LoopbackExpert"


def test_run_writes_metrics_plot_and_recording(tmp_path):
    out, rec = tmp_path / "run", tmp_path / "rec.zarr"
    assert run_main([f"agent={EXPERT}", f"env={LOOPBACK}", "hz=50", "episodes=2", "mode=sync",
                     f"out={out}", f"record={rec}"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["schema"] == "rtdp.metrics/1" and m["kind"] == "control_run" and m["failure"] is None
    s = m["summary"]
    assert s["episodes"] == 2 and s["success_rate"] == 1.0 and s["mode"] == "sync"
    assert {"p50_ms", "p99_ms", "max_ms"} <= set(s["period_error"]) and "deadline_misses" in s
    assert (out / "timing.png").stat().st_size > 0 and (out / "timing.json").exists()
    buf = ReplayBuffer.open(rec)
    assert buf.n_episodes == 2 and set(buf.keys()) == {"state", "action", "timestamp"}
    assert buf.n_steps == sum(s["env_steps"])


@pytest.mark.parametrize("argv, fragment", [
    ([f"env={LOOPBACK}"], "checkpoint=PATH or agent=expert"),
    ([f"agent={EXPERT}"], "no env given"),
    ([f"agent={EXPERT}", f"env={LOOPBACK}", "mode=fast"], "use one of sync, async"),
    ([f"agent={EXPERT}", f"env={LOOPBACK}", "hz=abc"], "hz takes a number in [1, 500"),
    ([f"agent={EXPERT}", f"env={LOOPBACK}", "hz=5000"], "out of range"),
    (["checkpoint=/nonexistent/ckpt", f"env={LOOPBACK}"], "does not exist"),
    ([f"agent={EXPERT}", f"env={LOOPBACK}", "sampler.num_steps=4"], "need checkpoint"),
    ([f"agent={EXPERT}", "env=tcp://127.0.0.1:1", "timeout=0.05", "retries=0"], "did not answer"),
    (["agent=expert", "env=tcp://127.0.0.1:1"], "task=<rtdp id>"),
    (["positional"], "expected key=value"),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, argv, fragment):
    with pytest.raises(CLIError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        run_main([*argv, f"out={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_server_killed_mid_run_keeps_every_completed_episode(tmp_path):
    proc, endpoint = spawn_server()
    try:
        env = RemoteEnv(endpoint, timeout_s=0.3, retries=1)
        kill_at = {"episode": 0}

        def maybe_kill(calls: int) -> None:  # in the second episode, the server dies mid-episode
            if kill_at["episode"] == 1 and calls == agent_calls_at_ep2[0] + 3:
                proc.send_signal(signal.SIGKILL)

        agent = TimedAgent(0.0, n_exec=2, dt=0.02, on_call=maybe_kill)
        agent_calls_at_ep2 = [0]
        recorder = EpisodeRecorder(tmp_path / "rec.zarr")
        loop = ControlLoop(env, agent, hz=50, mode="sync", max_steps=15, record_data=True)
        recorder.add(loop.run_episode(seed=0))
        kill_at["episode"], agent_calls_at_ep2[0] = 1, agent.calls
        with pytest.raises(ServerGone):
            loop.run_episode(seed=1)
        loop.close()
        buf = ReplayBuffer.open(tmp_path / "rec.zarr")
        assert buf.n_episodes == 1 and buf.n_steps == 15
        ep = buf.get_episode(0)
        assert ep["image"].shape == (15, 96, 96, 3) and np.isfinite(ep["action"]).all()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close(), proc.stderr.close()


def test_run_against_a_served_env_over_tcp(tmp_path):
    from rtdp.hardware import EnvServer
    from rtdp.hardware.loopback_env import LoopbackEnv

    with EnvServer(lambda: LoopbackEnv(image_size=96), "tcp://127.0.0.1:*").start() as srv:
        assert run_main([f"agent={EXPERT}", f"env={srv.endpoint}", "hz=50", "mode=async",
                         f"out={tmp_path}"]) == 0
        assert srv.stats["steps"] > 0
    s = json.loads((tmp_path / "metrics.json").read_text())["summary"]
    assert s["success_rate"] == 1.0 and s["executed_actions"] == srv.stats["steps"]
