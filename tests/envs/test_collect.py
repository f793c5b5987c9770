"""Collection: expert episodes round-trip through the ReplayBuffer, resume to N, stay reproducible."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtdp import envs
from rtdp.cli.main import main as rtdp_main
from rtdp.datasets.replay_buffer import ReplayBuffer
from rtdp.envs.collect import collect


def test_collected_episodes_round_trip_through_the_replay_buffer(tmp_path):
    out = tmp_path / "arm.zarr"
    summary = collect("arm-lift", 3, out, seed=10, progress=False)
    buf = ReplayBuffer.open(out)
    assert buf.n_episodes == 3 and summary["n_steps"] == buf.n_steps
    assert sorted(buf.keys()) == ["action", "state"]  # the env's observation keys + action
    # replaying the stored actions from the recorded seeds reproduces the stored observations
    env = envs.make("arm-lift")
    kept = json.loads((out / "collect.json").read_text())["kept"]
    for i, outcome in enumerate(kept):
        ep = buf.get_episode(i)
        obs, _ = env.reset(seed=outcome["seed"])
        for t in range(len(ep["action"])):
            np.testing.assert_allclose(obs["state"], ep["state"][t], atol=1e-5)
            obs, _, terminated, _, info = env.step(ep["action"][t])
        assert info["success"] and terminated


def test_rerunning_appends_up_to_n_and_matches_one_uninterrupted_run(tmp_path):
    collect("arm-lift", 2, tmp_path / "a.zarr", seed=0, progress=False)
    collect("arm-lift", 4, tmp_path / "a.zarr", seed=0, progress=False)
    collect("arm-lift", 4, tmp_path / "a.zarr", seed=0, progress=False)  # already there: nothing to do
    collect("arm-lift", 4, tmp_path / "b.zarr", seed=0, progress=False)
    a, b = ReplayBuffer.open(tmp_path / "a.zarr"), ReplayBuffer.open(tmp_path / "b.zarr")
    assert a.n_episodes == b.n_episodes == 4
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    np.testing.assert_array_equal(a["action"][:], b["action"][:])


def test_only_successful_episodes_are_kept_unless_asked(tmp_path):
    # 3 steps are too few to lift the cube: every attempt fails
    with pytest.raises(RuntimeError, match="succeeded in only 0 of"):
        collect("arm-lift", 1, tmp_path / "fail.zarr", max_steps=3, max_attempts=4, progress=False)
    assert ReplayBuffer.open(tmp_path / "fail.zarr").n_episodes == 0
    summary = collect("arm-lift", 2, tmp_path / "keep.zarr", max_steps=3, keep_failed=True, progress=False)
    assert summary["n_episodes"] == 2 and summary["expert_success_rate"] == 0.0
    assert ReplayBuffer.open(tmp_path / "keep.zarr").episode_lengths.tolist() == [3, 3]


def test_resuming_with_other_settings_is_refused(tmp_path):
    collect("arm-lift", 1, tmp_path / "a.zarr", seed=0, progress=False)
    with pytest.raises(ValueError, match="collected with seed=0"):
        collect("arm-lift", 2, tmp_path / "a.zarr", seed=5, progress=False)


def test_a_crash_between_announcing_and_adding_an_episode_is_resolved(tmp_path):
    out = tmp_path / "a.zarr"
    collect("arm-lift", 2, out, seed=0, progress=False)
    state = json.loads((out / "collect.json").read_text())
    # as if the process died after committing episode 2 but before clearing `pending`
    state["pending"] = state["kept"].pop()
    state["next_attempt"] -= 1
    (out / "collect.json").write_text(json.dumps(state))
    collect("arm-lift", 3, out, seed=0, progress=False)
    fresh = collect("arm-lift", 3, tmp_path / "b.zarr", seed=0, progress=False)
    assert ReplayBuffer.open(out).n_episodes == 3
    np.testing.assert_array_equal(ReplayBuffer.open(out).episode_ends, ReplayBuffer.open(tmp_path / "b.zarr").episode_ends)
    assert fresh["attempts"] == json.loads((out / "collect.json").read_text())["next_attempt"]


def test_cli_collect_writes_a_buffer_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    assert rtdp_main(["collect", "task=arm-lift", "episodes=2", f"out={out}", "progress=false"]) == 0
    assert ReplayBuffer.open(out).n_episodes == 2
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_episodes"] == 2
    bad = tmp_path / "bad.zarr"
    assert rtdp_main(["collect", "task=armlift", "episodes=2", f"out={bad}"]) == 2
    assert "known tasks: pusht, arm-lift" in capsys.readouterr().err
    assert rtdp_main(["collect", "task=arm-lift", "obs_mode=keypoints", "episodes=2", f"out={bad}"]) == 2
    assert "its modes are: state, image" in capsys.readouterr().err
    assert rtdp_main(["collect", "task=pusht", "episodes=2", f"out={bad}"]) == 2
    assert "no scripted expert" in capsys.readouterr().err
    assert rtdp_main(["collect", "task=arm-lift", "episodes=two", f"out={bad}"]) == 2
    assert not bad.exists()


def test_image_mode_collection_writes_uint8_frames_beside_the_state(tmp_path):
    collect("arm-lift", 1, tmp_path / "img.zarr", obs_mode="image", progress=False,
            env_kwargs={"image_size": 48})
    buf = ReplayBuffer.open(tmp_path / "img.zarr")
    assert sorted(buf.keys()) == ["action", "image", "state"]
    assert buf["image"].dtype == np.uint8 and tuple(buf["image"].shape[1:]) == (48, 48, 3)
    assert buf["image"].shape[0] == buf["state"].shape[0] == buf["action"].shape[0]


def test_action_noise_records_the_experts_clean_action_on_perturbed_states(tmp_path):
    from rtdp.envs.experts import arm_lift_action

    collect("arm-lift", 2, tmp_path / "clean.zarr", seed=3, progress=False)
    collect("arm-lift", 2, tmp_path / "dart.zarr", seed=3, progress=False, action_noise=0.3)
    clean, dart = ReplayBuffer.open(tmp_path / "clean.zarr"), ReplayBuffer.open(tmp_path / "dart.zarr")
    ep = dart.get_episode(0)
    # the arm expert is stateless: its action on every recorded state is the recorded action
    expected = np.stack([arm_lift_action(s) for s in ep["state"]])
    np.testing.assert_allclose(ep["action"], expected, atol=1e-6)
    # ...but the states are not the clean rollout's: the executed actions were perturbed
    assert not np.allclose(ep["state"][:5], clean.get_episode(0)["state"][:5])
    # a re-run reproduces the same perturbations (seeded per episode)
    collect("arm-lift", 2, tmp_path / "dart2.zarr", seed=3, progress=False, action_noise=0.3)
    np.testing.assert_array_equal(ReplayBuffer.open(tmp_path / "dart2.zarr")["state"][:], dart["state"][:])


def test_action_noise_is_part_of_the_resume_settings_and_checked(tmp_path, capsys):
    collect("arm-lift", 1, tmp_path / "a.zarr", seed=0, progress=False, action_noise=0.2)
    with pytest.raises(ValueError, match="collected with action_noise=0.2"):
        collect("arm-lift", 2, tmp_path / "a.zarr", seed=0, progress=False)
    bad = tmp_path / "bad.zarr"
    assert rtdp_main(["collect", "task=arm-lift", "episodes=1", f"out={bad}", "action_noise=2"]) == 2
    assert "action_noise takes a number in [0, 1]" in capsys.readouterr().err
    assert rtdp_main(["collect", "task=arm-lift", "episodes=1", f"out={bad}", "action_noise=lots"]) == 2
    assert "action_noise takes a number in [0, 1]" in capsys.readouterr().err
    assert not bad.exists()


def test_collect_and_eval_refuse_an_out_path_that_is_a_file(tmp_path, capsys):
    file = tmp_path / "taken"
    file.write_text("not a directory")
    assert rtdp_main(["collect", "task=arm-lift", "episodes=1", f"out={file}"]) == 2
    assert "is a file; give a directory for the replay buffer" in capsys.readouterr().err
    assert rtdp_main(["eval", "task=arm-lift", "agent=expert", "episodes=1", f"out={file}"]) == 2
    assert "is a file; give a directory for eval.json" in capsys.readouterr().err
    assert rtdp_main(["collect", "task=arm-lift", "episodes=1"]) == 2
    assert "missing out=...: the replay buffer" in capsys.readouterr().err
    assert file.read_text() == "not a directory"
