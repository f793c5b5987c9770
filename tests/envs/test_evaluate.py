"""Vectorised evaluation: seeded per episode, independent of n_envs, windows per row, reports and videos."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtdp.cli.main import main as rtdp_main
from rtdp.envs.evaluate import evaluate
from rtdp.envs.experts import make_expert
from rtdp.types import ActionChunk


def test_scripted_expert_through_the_policy_interface_on_async_envs(tmp_path):
    rec = evaluate(make_expert("arm-lift"), "arm-lift", n_episodes=6, seed=0, n_envs=2, progress=False,
                   out_dir=tmp_path, n_videos=1)
    s = rec["summary"]
    assert rec["schema"] == "rtdp.metrics/1" and rec["kind"] == "eval"
    assert s["success_rate"] == 1.0 and s["n_episodes"] == 6 and 0 < s["mean_length"] < 200
    assert [e["seed"] for e in rec["episodes"]] == list(range(6))
    assert json.loads((tmp_path / "eval.json").read_text())["summary"]["success_rate"] == 1.0
    assert (tmp_path / "eval.png").stat().st_size > 0
    videos = list((tmp_path / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["episode_000.mp4"] and videos[0].stat().st_size > 1000


def test_results_do_not_depend_on_n_envs():
    one = evaluate(make_expert("arm-lift"), "arm-lift", n_episodes=5, seed=3, n_envs=1, progress=False)
    two = evaluate(make_expert("arm-lift"), "arm-lift", n_episodes=5, seed=3, n_envs=2, progress=False)
    assert one["episodes"] == two["episodes"]


class _WindowProbe:
    """Records the windows it is given; pushes PushT's pusher to a fixed point, 3 actions per chunk."""

    n_obs_steps = 2

    def __init__(self):
        self.windows, self.resets = [], 0

    def reset(self):
        self.resets += 1

    def act(self, obs, ctx=None):
        self.windows.append({k: v.copy() for k, v in obs.items()})
        batch = obs["agent_pos"].shape[0]
        actions = np.tile(np.array([256.0, 256.0], np.float32), (batch, 5, 1))
        return ActionChunk(actions=actions, start=1, n_exec=3, dt=0.1, nfe=2)


def test_windows_repeat_the_first_frame_and_chunks_run_step_by_step():
    probe = _WindowProbe()
    rec = evaluate(probe, "pusht", n_episodes=3, seed=0, n_envs=2, obs_mode="keypoints", max_steps=7,
                   progress=False)
    first = probe.windows[0]
    assert first["keypoint"].shape == (2, 2, 9, 2)
    np.testing.assert_array_equal(first["agent_pos"][:, 0], first["agent_pos"][:, 1])
    second = probe.windows[1]
    # 3 steps later the window holds two consecutive frames of a moving pusher, not the repeated first one
    assert not np.array_equal(second["agent_pos"][:, 0], second["agent_pos"][:, 1])
    assert not np.array_equal(second["agent_pos"][:, 0], first["agent_pos"][:, 1])
    assert probe.resets == 2  # one per wave of n_envs episodes
    s = rec["summary"]
    assert [e["length"] for e in rec["episodes"]] == [7, 7, 7]
    assert "mean_max_coverage" in s and all(0 <= e["max_coverage"] <= 1 for e in rec["episodes"])
    assert s["nfe_per_action"] == pytest.approx(2 / 3)


class _RowEcho:
    """A stateful agent: remembers the first observation of each row and checks rows never get swapped."""

    n_obs_steps = 1

    def __init__(self):
        self.first = None

    def reset(self):
        self.first = None

    def act(self, obs, ctx=None):
        state = obs["state"][:, -1]
        if self.first is None:
            self.first = state.copy()
        # the cube of each row stays where it was at the start of the episode (until that row is masked)
        from rtdp.envs.arm import STATE_LAYOUT as L
        np.testing.assert_allclose(state[:, L["cube_pos"]][:, :2], self.first[:, L["cube_pos"]][:, :2], atol=1e-3)
        return ActionChunk(actions=np.zeros((len(state), 1, 5), np.float32), n_exec=1)


def test_batch_rows_stay_with_their_env_for_the_whole_episode():
    evaluate(_RowEcho(), "arm-lift", n_episodes=3, seed=0, n_envs=2, max_steps=5, progress=False)


def test_cli_eval_writes_json_and_plot_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "ev"
    assert rtdp_main(["eval", "task=arm-lift", "agent=expert", "episodes=2", "n_envs=2", f"out={out}",
                      "progress=false"]) == 0
    assert json.loads((out / "eval.json").read_text())["summary"]["success_rate"] == 1.0
    bad = tmp_path / "bad"
    assert rtdp_main(["eval", "task=nope", f"out={bad}"]) == 2
    assert "known tasks" in capsys.readouterr().err
    assert rtdp_main(["eval", "task=arm-lift", "agent=random", f"out={bad}"]) == 2
    assert rtdp_main(["eval", "task=arm-lift", f"checkpoint={tmp_path / 'missing.safetensors'}", f"out={bad}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not bad.exists()


@pytest.mark.slow
def test_collect_train_eval_checkpoint_end_to_end(tmp_path):
    """`rtdp collect` → `rtdp train` (a few steps) → `rtdp eval checkpoint=…` with a sampler override; the
    task, observation mode and episode limit come from the checkpoint's config."""
    data, run, out = tmp_path / "arm.zarr", tmp_path / "run", tmp_path / "eval"
    assert rtdp_main(["collect", "task=arm-lift", "episodes=3", f"out={data}", "progress=false"]) == 0
    assert rtdp_main(["train", "task=arm_lift", f"task.dataset.path={data}", f"out_dir={run}",
                      "training.num_steps=4", "training.batch_size=8", "training.val_every=0"]) == 0
    assert rtdp_main(["eval", f"checkpoint={run / 'checkpoints' / 'last'}", "episodes=2", "n_envs=2",
                      f"out={out}", "progress=false", "sampler.num_steps=2", "max_steps=20"]) == 0
    rec = json.loads((out / "eval.json").read_text())
    assert rec["summary"]["task"] == "arm-lift" and rec["summary"]["n_episodes"] == 2
    assert rec["summary"]["nfe_per_action"] > 0 and [e["length"] for e in rec["episodes"]] == [20, 20]
