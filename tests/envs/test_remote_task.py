"""A task served by `rtdp serve-env` (how robosuite is reached from the main environment) evaluates and
collects exactly as the same task made in this process, and a wrong or absent server is named in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtdp.cli.main import main as rtdp_main
from rtdp.datasets import ReplayBuffer
from rtdp.envs import make
from rtdp.envs.collect import collect
from rtdp.envs.evaluate import evaluate
from rtdp.envs.experts import make_expert
from rtdp.hardware import EnvServer


@pytest.fixture
def arm_server():
    """arm-lift made by task id and served from a thread on a free port, up to 4 sessions."""
    srv = EnvServer(lambda: make("arm-lift"), "tcp://127.0.0.1:*", max_sessions=4).start()
    yield srv
    srv.close()


def _episodes(rec: dict) -> list[tuple]:
    return [(e["seed"], e["success"], e["length"]) for e in rec["episodes"]]


def test_a_served_task_evaluates_as_the_same_task_made_here(arm_server):
    expert = make_expert("arm-lift")
    here = evaluate(expert, "arm-lift", n_episodes=3, seed=11, n_envs=1, max_steps=80, progress=False)
    served = evaluate(make_expert("arm-lift"), "arm-lift", n_episodes=3, seed=11, n_envs=2, max_steps=80,
                      progress=False, env_kwargs={"address": arm_server.endpoint})
    assert _episodes(served) == _episodes(here)
    assert any(length < 80 for _, _, length in _episodes(here)) or all(s for _, s, _ in _episodes(here))


def test_a_served_task_collects_the_same_demonstrations(arm_server, tmp_path):
    collect("arm-lift", 2, tmp_path / "here.zarr", seed=3, progress=False)
    collect("arm-lift", 2, tmp_path / "served.zarr", seed=3, progress=False,
            env_kwargs={"address": arm_server.endpoint})
    here, served = (ReplayBuffer.open(tmp_path / f"{n}.zarr", "r") for n in ("here", "served"))
    assert here.n_steps == served.n_steps > 0
    for key in ("state", "action"):
        np.testing.assert_allclose(served.get_episode(1, keys=[key])[key], here.get_episode(1, keys=[key])[key],
                                   atol=1e-6)


def test_rtdp_eval_with_env_address_runs_the_served_task(arm_server, tmp_path, capsys):
    code = rtdp_main(["eval", "task=arm-lift", "agent=expert", f"env={arm_server.endpoint}", "episodes=2",
                      "max_steps=60", f"out={tmp_path / 'eval'}", "progress=false"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_episodes"] == 2 and summary["task"] == "arm-lift"


def test_a_server_of_another_task_is_named_and_what_to_start_is_said(arm_server, tmp_path, capsys):
    with pytest.raises(ValueError, match="serves task=arm-lift obs_mode=state, not task=pusht"):
        make("pusht", address=arm_server.endpoint)
    code = rtdp_main(["collect", "task=arm-lift", "obs_mode=image", "episodes=1", f"out={tmp_path / 'x.zarr'}",
                      f"env={arm_server.endpoint}", "progress=false"])
    err = capsys.readouterr().err
    assert code == 2 and "start the server with task=arm-lift obs_mode=image" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.zarr").exists()


def test_no_server_or_a_bad_address_is_one_line_saying_what_to_start(tmp_path, capsys):
    with pytest.raises(ConnectionError, match="rtdp serve-env task=arm-lift obs_mode=state bind=tcp://127.0.0.1:9"):
        make("arm-lift", address="tcp://127.0.0.1:9")
    assert rtdp_main(["eval", "task=arm-lift", "agent=expert", "env=localhost:5555", f"out={tmp_path}"]) == 2
    assert "is not the address of an env server" in capsys.readouterr().err
    with pytest.raises(ValueError, match="go to the server"):
        make("arm-lift", address="tcp://127.0.0.1:9", control="ee_abs")
