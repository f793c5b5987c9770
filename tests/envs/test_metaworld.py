"""Meta-World 3: seeded single tasks and MT10 with the task id observed, driven by the shipped experts."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from rtdp import envs
from rtdp.envs.experts import make_expert
from rtdp.envs.metaworld import MT10_TASKS


def _run(env, expert, seed):
    obs, info = env.reset(seed=seed)
    for _ in range(500):
        obs, _, terminated, truncated, info = env.step(expert.act({k: v[None, None] for k, v in obs.items()})
                                                       .executable[0, 0])
        if terminated or truncated:
            break
    return info


@pytest.mark.parametrize("task", ["metaworld/pick-place-v3", "metaworld/mt10"])
def test_passes_check_env(task):
    env = envs.make(task)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_pick_place_expert_succeeds():
    env = envs.make("metaworld/pick-place-v3")
    expert = make_expert("metaworld/pick-place-v3")
    assert all(_run(env, expert, seed)["success"] for seed in range(3))
    env.close()


def test_mt10_draws_the_task_from_the_seed_and_observes_its_one_hot_id():
    env = envs.make("metaworld/mt10")
    seen = {}
    for seed in range(12):
        obs, info = env.reset(seed=seed)
        assert obs["task_onehot"].sum() == 1
        assert MT10_TASKS[int(np.argmax(obs["task_onehot"]))] == info["task"]
        seen[seed] = (info["task"], obs["state"].copy())
    assert len({t for t, _ in seen.values()}) > 3
    obs, info = env.reset(seed=5)
    assert info["task"] == seen[5][0]
    np.testing.assert_array_equal(obs["state"], seen[5][1])
    env.close()


def test_mt10_expert_follows_the_observed_task():
    env = envs.make("metaworld/mt10")
    expert = make_expert("metaworld/mt10")
    infos = [_run(env, expert, seed) for seed in range(3)]
    assert all(i["success"] for i in infos), infos
    env.close()


def test_image_mode_adds_a_rendered_frame():
    env = envs.make("metaworld/reach-v3", obs_mode="image", image_size=64)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (64, 64, 3) and obs["image"].std() > 5
    assert obs["state"].shape == (39,)
    env.close()
