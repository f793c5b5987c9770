"""PushT: observation modes, a reset-to-state that lands on the recorded state, replay of the human data."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from gymnasium.utils.env_checker import check_env

from rtdp import envs


@pytest.fixture(scope="module")
def human(pusht_zarr):
    z = zarr.open(str(pusht_zarr), mode="r")
    return {k: z[f"data/{k}"][:] for k in ("state", "keypoint", "action")} | {"ends": z["meta/episode_ends"][:]}


def _episode(human, i):
    start = 0 if i == 0 else int(human["ends"][i - 1])
    return start, int(human["ends"][i])


@pytest.mark.parametrize("mode", ["state", "keypoints", "image"])
def test_each_observation_mode_passes_check_env(mode):
    env = envs.make("pusht", obs_mode=mode)
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert set(obs) == set(env.observation_space.spaces)
    assert "coverage" in info and info["success"] is False


def test_observation_shapes_follow_the_contract():
    shapes = {m: {k: (v.shape, v.dtype) for k, v in envs.make("pusht", obs_mode=m).reset(seed=1)[0].items()}
              for m in ("state", "keypoints", "image")}
    assert shapes["state"] == {"state": ((5,), np.float32)}
    assert shapes["keypoints"] == {"keypoint": ((9, 2), np.float32), "agent_pos": ((2,), np.float32)}
    assert shapes["image"] == {"image": ((96, 96, 3), np.uint8), "agent_pos": ((2,), np.float32)}


def test_reset_to_state_lands_on_the_recorded_state_and_gym_pushts_order_does_not(human):
    env = envs.make("pusht", obs_mode="keypoints")
    own_err, gym_err = [], []
    for i in range(0, 25000, 2500):
        state = human["state"][i]
        obs, _ = env.reset(seed=0, options={"reset_to_state": state})
        own_err.append(np.abs(obs["keypoint"] - human["keypoint"][i]).max())
        env.unwrapped._env.reset(options={"reset_to_state": state})  # gym-pusht's order: position, angle
        gym_err.append(np.abs(env.unwrapped.keypoints() - human["keypoint"][i]).max())
    # keypoint convention and state order both match the data (one physics step after setting the state can
    # nudge a block the pusher touches, hence the looser bound on the worst frame)
    assert np.median(own_err) < 0.05 and max(own_err) < 2.0, own_err
    assert np.median(gym_err) > 10, gym_err  # the reason for setting the angle first


def test_replaying_recorded_actions_reproduces_recorded_states_within_1px(human):
    env = envs.make("pusht", obs_mode="keypoints", max_episode_steps=1000)
    worst = 0.0
    for ep in range(0, 206, 10):  # 21 episodes spread over the data set (all 206: `pytest -m slow`)
        worst = max(worst, _replay(env, human, ep))
    assert worst < 1.0, f"max drift {worst:.3f} px"


@pytest.mark.slow
def test_replaying_every_human_episode_stays_within_1px(human):
    env = envs.make("pusht", obs_mode="state", max_episode_steps=1000)
    drift = [_replay(env, human, ep) for ep in range(len(human["ends"]))]
    assert max(drift) < 1.0, f"episodes over 1 px: {[i for i, d in enumerate(drift) if d >= 1.0]}"


def _replay(env, human, ep) -> float:
    start, end = _episode(human, ep)
    env.reset(seed=0, options={"reset_to_state": human["state"][start]})
    worst = 0.0
    for t in range(start, end - 1):
        env.step(human["action"][t])
        got = env.unwrapped.get_state()
        want = human["state"][t + 1]
        worst = max(worst, np.linalg.norm(got[:2] - want[:2]), np.linalg.norm(got[2:4] - want[2:4]))
    return worst


def test_coverage_and_success_follow_the_paper_metric():
    env = envs.make("pusht")
    goal = np.array([256.0, 256.0, np.pi / 4])
    _, info = env.reset(options={"reset_to_state": [100.0, 100.0, *goal]})
    assert info["coverage"] > 0.95
    _, _, terminated, _, info = env.step(np.array([100.0, 100.0]))
    assert info["success"] and terminated and info["coverage"] > 0.95
    _, info = env.reset(options={"reset_to_state": [100.0, 100.0, 150.0, 380.0, 0.0]})
    _, _, terminated, _, info = env.step(np.array([100.0, 100.0]))
    assert not info["success"] and not terminated and info["coverage"] < 0.95


def test_image_mode_renders_the_scene():
    env = envs.make("pusht", obs_mode="image")
    a, _ = env.reset(options={"reset_to_state": [100.0, 100.0, 150.0, 380.0, 0.0]})
    b, _ = env.reset(options={"reset_to_state": [400.0, 400.0, 300.0, 200.0, 1.0]})
    assert a["image"].std() > 10 and np.abs(a["image"].astype(int) - b["image"]).mean() > 1
    np.testing.assert_allclose(b["agent_pos"], [400.0, 400.0], atol=1e-3)


def test_seeded_resets_are_reproducible():
    env = envs.make("pusht")
    a = env.reset(seed=7)[0]["state"]
    b = env.reset(seed=8)[0]["state"]
    c = env.reset(seed=7)[0]["state"]
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b)
