"""Golden behaviour: fixed weights and seeds give the same actions, NFE and executed indices as the code had
before the inference-contract refactor (the files in `golden/` were written by that code, commit 05027fc).

Each sampler case runs six consecutive plans on one tiny U-Net policy with a seeded generator (SDP's fifth
call is late: the loop executed 3 of its actions); the evaluator cases run three seeded PushT episodes and
compare every executed action.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rtdp.normalizer import Normalizer
from rtdp.policy.factory import make_policy
from rtdp.types import PlanContext

# The golden plans were written with one torch thread; a second thread changes how convolutions sum, and so
# the last bits of every action. Other torch releases sum them in another order too (2.11 moves DDPM-100's
# actions by ~2e-6), so plans are compared to float32 rounding: a changed step, level or noise draw moves
# them by orders of magnitude more.
ROUNDING = {"rtol": 1e-5, "atol": 1e-5}
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/policy/conftest.py
GOLDEN = Path(__file__).parent / "golden"
PCFG = {"name": "g", "horizon": 16, "n_obs_steps": 2,
        "denoiser": {"type": "unet1d", "down_dims": [16, 32], "level_embed_dim": 16, "n_groups": 4},
        "schedule": {"name": "ddpm", "num_train_steps": 100}}
# SDP needs weights trained on streaming levels; the golden weights are the same for every case (the level
# sampler only shapes training), so its case declares the layout they stand for.
STREAMING = {"levels": {"name": "streaming", "n_action_steps": 1, "steps_per_call": 1}}
SAMPLERS = {
    "ddpm": {"name": "ddpm", "num_steps": 100},
    "ddim": {"name": "ddim", "num_steps": 10},
    "sdp": {"name": "sdp", "n_action_steps": 1, "steps_per_call": 1},
    "rti_renoise": {"name": "rti_renoise", "num_steps": 10, "tau": 10, "n_action_steps": 2, "discrete_dims": [2],
                    "discrete_mode": "noiseless", "discrete_hysteresis": 1.6},
}


@pytest.fixture(scope="module")
def golden():
    return json.loads((GOLDEN / "golden.json").read_text()), np.load(GOLDEN / "samplers.npz")


def _policy(name: str, weights: str, normalizer: str, obs_shapes: dict, action_dim: int):
    norm = Normalizer.from_state_dict(load_file(str(GOLDEN / normalizer)))
    policy = make_policy({**PCFG, **(STREAMING if name == "sdp" else {})}, SAMPLERS[name], obs_shapes, action_dim, norm)
    policy.load_state_dict(load_file(str(GOLDEN / weights)))
    return policy.eval()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_plans_exactly_as_before_the_refactor(golden, name):
    meta, arrays = golden
    policy = _policy(name, "policy.safetensors", "normalizer.safetensors", {"state": (4,)}, 3)
    g = torch.Generator().manual_seed(1)
    for i, expected in enumerate(meta[name]):
        n_exec = 3 if (name == "sdp" and i == 4) else None
        chunk = policy.act({"state": arrays["obs"][i]}, PlanContext(n_executed=n_exec, generator=g))
        assert (chunk.start, chunk.n_exec, chunk.nfe) == (expected["start"], expected["n_exec"], expected["nfe"])
        np.testing.assert_allclose(chunk.actions, arrays[f"{name}.{i}"], **ROUNDING)


class _Recorder:
    """Passes every plan through and keeps the executed actions."""

    def __init__(self, policy):
        self.policy, self.n_obs_steps, self.log = policy, policy.n_obs_steps, []

    def reset(self) -> None:
        self.policy.reset()

    def act(self, obs, *args, **kwargs):
        chunk = self.policy.act(obs, *args, **kwargs)
        self.log.append(chunk.executable.copy())
        return chunk


@pytest.mark.parametrize("name", ["ddim", "sdp"])
def test_the_evaluator_executes_exactly_the_actions_it_did_before_the_refactor(golden, name):
    pytest.importorskip("gym_pusht")
    from rtdp.envs.evaluate import evaluate

    meta, arrays = golden
    policy = _policy(name, "pusht_policy.safetensors", "pusht_normalizer.safetensors",
                     {"keypoint": (9, 2), "agent_pos": (2,)}, 2)
    agent = _Recorder(policy)
    torch.manual_seed(3)
    rec = evaluate(agent, "pusht", n_episodes=3, seed=7, n_envs=2, obs_mode="keypoints", max_steps=20, progress=False)
    expected = meta["evaluate"][name]
    assert rec["episodes"] == expected["episodes"]
    assert rec["summary"]["nfe_per_action"] == expected["nfe_per_action"]
    # executed actions in PushT pixels, after the simulator has fed each rounding back for up to 300 steps
    np.testing.assert_allclose(np.concatenate(agent.log, axis=1), arrays[f"evaluate.{name}"], rtol=1e-5, atol=1e-3)
