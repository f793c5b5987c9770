"""Task ids, gymnasium registration and the messages for bad input."""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import pytest

from rtdp import envs
from rtdp.envs.errors import MissingDependencyError, UnknownTaskError


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(UnknownTaskError) as err:
        envs.make("push-t")
    for known in ("pusht", "arm-lift", "metaworld/mt10", "robosuite/lift"):
        assert known in str(err.value)


def test_an_observation_mode_the_task_lacks_is_refused_with_the_modes_it_has():
    with pytest.raises(ValueError, match="its modes are: state, keypoints, image"):
        envs.make("pusht", obs_mode="pixels")
    with pytest.raises(ValueError, match="arm-lift.*its modes are: state, image"):
        envs.make("arm-lift", obs_mode="keypoints")


@pytest.mark.skipif(importlib.util.find_spec("robosuite") is not None, reason="robosuite is installed here")
def test_missing_robosuite_says_how_to_get_it():
    with pytest.raises(MissingDependencyError, match="make robosuite-env"):
        envs.make("robosuite/lift")


def test_tasks_are_registered_with_gymnasium():
    env = gym.make("rtdp/ArmLift-v0")
    obs, info = env.reset(seed=0)
    assert "state" in obs and info["success"] is False
    assert env.metadata["render_fps"] == 20
    env = gym.make("rtdp/PushT-v0", obs_mode="keypoints")
    assert set(env.reset(seed=0)[0]) == {"keypoint", "agent_pos"}
    assert env.metadata["render_fps"] == 10


def test_any_metaworld_v3_task_id_resolves_and_unknown_ones_are_named():
    assert envs.get_spec("metaworld/hammer-v3").extra == "sim"
    with pytest.raises(UnknownTaskError, match="unknown Meta-World task 'hamer-v3'"):
        envs.make("metaworld/hamer-v3")


def test_missing_metaworld_names_the_extra_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "metaworld", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install -e '\.\[sim\]'"):
        envs.make("metaworld/reach-v3")
