"""SDP and RTI on a real (tiny, briefly trained) PushT policy: configs, checkpoints, eval/control paths, the τ
calibration and its CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from rtdp.cli.main import main as rtdp_main
from rtdp.datasets import ReplayBuffer
from rtdp.datasets.dataset import SequenceDataset
from rtdp.policy.calibration import pick_tau, sweep_rti
from rtdp.policy.factory import make_policy
from rtdp.policy.levels import StreamingLevels
from rtdp.policy.loading import load_policy
from rtdp.policy.samplers import RTIRenoiseSampler, RTISampler, StreamingSampler
from rtdp.policy.samplers.rti_renoise import DEFAULT_DISCRETE_MODE, DEFAULT_HYSTERESIS, warm_steps_for_tau
from rtdp.policy.schedules import DDPMSchedule

OBS = {"keypoint": {"source": "keypoint"}, "agent_pos": {"source": "state", "columns": [0, 2]}}
TINY = ["policy.denoiser.down_dims=[16,32]", "policy.denoiser.level_embed_dim=32"]


def train_config(*overrides: str):
    with initialize_config_module("rtdp.configs", version_base=None):
        return compose("train", overrides=["policy=sdp_unet", "task=pusht_keypoints", *TINY, *overrides])


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/policy/conftest.py


@pytest.fixture(scope="module")
def pusht_memory(pusht_zarr):
    """The PushT replay buffer copied into memory (reading zarr chunks per batch is slow)."""
    return ReplayBuffer.copy_to_memory(ReplayBuffer.open(pusht_zarr, "r"), ["keypoint", "state", "action"])


@pytest.fixture(scope="module")
def tiny_run(pusht_memory, train_tiny_sdp, tmp_path_factory):
    """A tiny sdp_unet trained for 80 steps on 12 PushT episodes, saved as an `rtdp train` checkpoint."""
    return train_tiny_sdp(tmp_path_factory.mktemp("tiny_sdp"), pusht_memory, steps=80, n_episodes=12, batch=64)


def obs_window(batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    kp = rng.uniform(100, 400, (batch, 1, 9, 2)).repeat(2, axis=1)
    return {"keypoint": kp.astype(np.float32), "agent_pos": rng.uniform(100, 400, (batch, 2, 2)).astype(np.float32)}


def test_sdp_unet_feeds_the_denoiser_a_level_per_position_from_the_streaming_mixture():
    cfg = train_config()
    policy = make_policy(cfg.policy, cfg.sampler, {"keypoint": (9, 2), "agent_pos": (2,)}, 2)
    assert isinstance(policy.level_sampler, StreamingLevels)
    seen = []
    policy.denoiser.register_forward_hook(lambda mod, args, out: seen.append(args[1].clone()))
    batch = {"obs": {"keypoint": torch.randn(256, 2, 9, 2), "agent_pos": torch.randn(256, 2, 2)},
             "action": torch.randn(256, 16, 2)}
    policy.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    levels = seen[0]
    assert levels.shape == (256, 16)
    regimes = policy.level_sampler.last_regimes
    stairs = policy.level_sampler.table[policy.level_sampler.staircase + 1].to(levels.dtype)
    chunkwise, constant = regimes == 3, regimes == 0
    assert chunkwise.any() and constant.any()
    assert torch.equal(levels[chunkwise], stairs.expand(int(chunkwise.sum()), 16))  # the sampler's staircase
    assert torch.all(levels[constant] == levels[constant][:, :1])  # plain DP: one level per sample
    # one setting: the sampler=sdp config reads the streaming layout from the policy's levels node
    sdp_cfg = train_config("sampler=sdp", "policy.levels.steps_per_call=2")
    sdp = make_policy(sdp_cfg.policy, sdp_cfg.sampler, {"keypoint": (9, 2), "agent_pos": (2,)}, 2)
    assert isinstance(sdp.sampler, StreamingSampler)
    assert sdp.sampler.num_levels == sdp.level_sampler.num_levels == 30 and sdp.sampler.nfe_per_call == 2


def test_sdp_from_a_checkpoint_spends_one_evaluation_per_executed_action_and_reset_restarts_it(tiny_run):
    policy = load_policy(tiny_run, ["sampler=sdp"])
    assert isinstance(policy.sampler, StreamingSampler)
    first = policy.act(obs_window())
    assert first.nfe == 15 and first.n_exec == 1 and first.start == 1  # start-up: a full 15-level sample
    for step in range(5):
        chunk = policy.act(obs_window(seed=step + 1))
        assert chunk.nfe == 1 and chunk.nfe_per_action == 1.0
        assert np.isfinite(chunk.actions).all() and chunk.actions.shape == (1, 16, 2)
    policy.reset()
    assert policy.act(obs_window()).nfe == 15


def test_authors_rti_from_a_checkpoint_replans_every_step_at_three_evaluations(tiny_run):
    policy = load_policy(tiny_run, ["sampler=rti"])
    assert isinstance(policy.sampler, RTISampler) and policy.sampler.steps == [2, 1, 0]
    cold = policy.act(obs_window())
    assert cold.nfe == 100 and cold.n_exec == 1 and cold.start == 1  # the authors' full DDPM sample first
    for step in range(3):
        warm = policy.act(obs_window(seed=step + 1))
        assert warm.nfe == 3 and warm.n_exec == 1 and warm.info["warm"]
    policy.reset()
    assert policy.act(obs_window()).nfe == 100


def test_renoise_rti_from_a_checkpoint_warm_starts_from_tau_and_replans_every_two_steps(tiny_run):
    policy = load_policy(tiny_run, ["sampler=rti_renoise", "sampler.tau=20"])
    assert isinstance(policy.sampler, RTIRenoiseSampler) and policy.sampler.tau == 20
    cold = policy.act(obs_window())
    assert cold.nfe == 10 and cold.n_exec == 2
    warm = policy.act(obs_window(seed=1))
    assert warm.nfe == 3 and warm.nfe_per_action == 1.5  # grid levels 20, 10, 0
    policy.reset()
    assert policy.act(obs_window()).nfe == 10


def test_tau_selects_the_ddim_grid_levels_at_or_below_it():
    grid = DDPMSchedule().inference_levels(10).tolist()  # 90, 80, ..., 0, -1
    assert warm_steps_for_tau(grid, 20) == 3 and warm_steps_for_tau(grid, 25) == 3
    assert warm_steps_for_tau(grid, 0) == 1 and warm_steps_for_tau(grid, 99) == 10
    rti = RTIRenoiseSampler(DDPMSchedule(), num_steps=10, tau=45)
    assert rti.tau == 40 and rti.warm_levels == [40, 30, 20, 10, 0, -1]
    with pytest.raises(ValueError, match="below every level"):
        RTIRenoiseSampler(DDPMSchedule(spacing="trailing"), num_steps=10, tau=5)


def test_the_calibration_picks_the_smallest_tau_within_tolerance_on_a_hand_made_curve():
    devs = {0: 0.5, 10: 0.3, 20: 0.12, 30: 0.09, 40: 0.11, 90: 0.1}
    points = [{"tau": t, "deviation_mean": d} for t, d in devs.items()]
    assert pick_tau(points, 0.115)["tau"] == 30
    assert pick_tau(points, 0.12)["tau"] == 20
    assert pick_tau(points, 0.6)["tau"] == 0
    assert pick_tau(points, 0.05) is None


def test_the_calibration_sweep_on_a_real_policy_reports_every_tau_and_its_cost(tiny_run, pusht_memory):
    policy = load_policy(tiny_run)
    ds = SequenceDataset(pusht_memory, OBS, {"source": "action"}, horizon=16, n_obs_steps=2, n_action_steps=1,
                         episode_mask=np.arange(206) == 150, normalizer=policy.normalizer)
    idx = np.arange(0, 40, 2)
    now, nxt = ds.sample_batch(idx)["obs"], ds.sample_batch(idx + 2)["obs"]
    res = sweep_rti(policy, now, nxt, num_steps=10, n_exec=2, generator=torch.Generator().manual_seed(0))
    pts = res["points"]
    assert [p["warm_steps"] for p in pts] == list(range(1, 11)) and [p["tau"] for p in pts] == list(range(0, 100, 10))
    assert [p["nfe_per_call"] for p in pts] == list(range(1, 11)) and pts[-1]["cold"]
    floor = res["noise_floor"]["deviation_mean"]
    assert floor > 0 and all(p["deviation_max"] >= p["deviation_mean"] >= 0 for p in pts)
    # the cold point is a full sample with other noise: statistically the noise floor
    assert abs(pts[-1]["deviation_mean"] - floor) < 0.5 * floor + 0.05
    chosen = pick_tau(pts, 10 * floor)
    assert chosen["tau"] == 0  # a loose tolerance takes the cheapest warm start


def test_calibrate_rti_cli_writes_the_curve_and_prints_the_override(tiny_run, capsys):
    out = tiny_run / "calib"
    assert rtdp_main(["calibrate-rti", f"checkpoint={tiny_run}", "windows=24", "tolerance=100x", f"out={out}",
                      "progress=false"]) == 0
    printed = capsys.readouterr().out
    assert "use: sampler=rti_renoise sampler.tau=0" in printed
    rec = json.loads((out / "rti_calibration.json").read_text())
    assert rec["schema"] == "rtdp.metrics/1" and rec["kind"] == "rti_calibration"
    assert rec["chosen"]["override"] == "sampler=rti_renoise sampler.tau=0" and len(rec["points"]) == 10
    assert rec["n_windows"] == 24 and rec["noise_floor"]["deviation_mean"] > 0
    assert (out / "rti_calibration.png").stat().st_size > 0


def test_calibrate_rti_calibrates_the_gripper_variant_it_is_given_and_records_it(tiny_run, capsys):
    out = tiny_run / "calib_gripper"
    with pytest.warns(UserWarning, match="discrete_scale"):  # the tiny run's dim 1 was trained unscaled
        assert rtdp_main(["calibrate-rti", f"checkpoint={tiny_run}", "windows=16", "tolerance=100x", f"out={out}",
                          "progress=false", "sampler.discrete_dims=[1]", "sampler.discrete_mode=noiseless",
                          "sampler.discrete_hysteresis=1.6"]) == 0
    rec = json.loads((out / "rti_calibration.json").read_text())
    assert rec["rti"]["discrete_dims"] == [1] and rec["rti"]["discrete_mode"] == "noiseless"
    assert rec["rti"]["discrete_hysteresis"] == 1.6 and len(rec["points"]) == 10


@pytest.mark.parametrize("args,message", [
    (["bogus=1"], "unknown key 'bogus'"),
    (["sampler.bogus=1"], "does not exist"),
    (["+sampler.bogus=1"], "bogus"),
    (["tolerance=abc"], "tolerance must be a number"),
    (["tolerance=1e-9", "windows=8"], "no tau is within tolerance"),
])
def test_calibrate_rti_cli_refuses_bad_input_with_exit_2_and_writes_nothing(tiny_run, tmp_path, capsys, args,
                                                                           message):
    out = tmp_path / "calib"
    assert rtdp_main(["calibrate-rti", f"checkpoint={tiny_run}", f"out={out}", "progress=false", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_eval_with_sampler_sdp_reaches_the_streaming_sampler(tiny_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert rtdp_main(["eval", "task=pusht", "obs_mode=keypoints", f"checkpoint={tiny_run}", "sampler=sdp", "episodes=1", "n_envs=1",
                      "max_steps=10", f"out={out}", "progress=false"]) == 0
    summary = json.loads((out / "eval.json").read_text())["summary"]
    assert summary["mean_length"] == 10
    assert summary["nfe_per_action"] == pytest.approx((15 + 9) / 10)  # start-up sample, then 1 per step


PUSHT = ["task=pusht", "obs_mode=keypoints"]


def test_eval_num_threads_sets_torchs_threads_and_refuses_zero(tiny_run, tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert rtdp_main(["eval", *PUSHT, f"checkpoint={tiny_run}", "episodes=1", "n_envs=1", "max_steps=3",
                          "num_threads=1", f"out={tmp_path / 'eval'}", "progress=false"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
    assert rtdp_main(["eval", *PUSHT, f"checkpoint={tiny_run}", "num_threads=0", f"out={tmp_path / 'bad'}"]) == 2
    err = capsys.readouterr().err
    assert "num_threads takes an integer >= 1" in err and err.count("\n") == 1 and not (tmp_path / "bad").exists()


def test_run_with_the_renoise_rti_in_async_mode_reaches_the_warm_start(tiny_run, tmp_path):
    out = tmp_path / "run"
    assert rtdp_main(["run", f"checkpoint={tiny_run}", "env=pusht", "obs_mode=keypoints", "sampler=rti_renoise",
                      "sampler.warm_steps=2", "mode=async", "hz=20", "max_steps=12", f"out={out}"]) == 0
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["executed_actions"] == 12 and summary["chunks"] >= 3
    assert summary["nfe_total"] == 10 + 2 * (summary["chunks"] - 1)  # a cold start, then warm calls of 2


def test_sdp_transformer_trains_on_per_position_levels_and_streams_at_one_evaluation_per_action():
    with initialize_config_module("rtdp.configs", version_base=None):
        cfg = compose("train", overrides=["policy=sdp_transformer", "task=pusht_keypoints", "sampler=sdp",
                                          "policy.denoiser.n_layers=2", "policy.denoiser.dim=32"])
    policy = make_policy(cfg.policy, cfg.sampler, {"keypoint": (9, 2), "agent_pos": (2,)}, 2)
    assert isinstance(policy.level_sampler, StreamingLevels) and isinstance(policy.sampler, StreamingSampler)
    seen = []
    policy.denoiser.register_forward_hook(lambda mod, args, out: seen.append(args[1].clone()))
    batch = {"obs": {"keypoint": torch.randn(64, 2, 9, 2), "agent_pos": torch.randn(64, 2, 2)},
             "action": torch.randn(64, 10, 2)}
    loss, _ = policy.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    loss.backward()  # gradients flow through the per-position level embedding
    assert seen[0].shape == (64, 10) and torch.isfinite(loss)
    chunkwise = policy.level_sampler.last_regimes == 3
    stairs = policy.level_sampler.table[policy.level_sampler.staircase + 1].to(seen[0].dtype)
    assert chunkwise.any() and torch.equal(seen[0][chunkwise], stairs.expand(int(chunkwise.sum()), 10))
    # horizon 10, To 2, Ta 1: h = 9 chunks, N = 9 levels; after the start-up call, one evaluation per action
    policy.eval()
    first = policy.act(obs_window())
    assert first.nfe == policy.sampler.num_levels == 9
    for _ in range(3):
        chunk = policy.act(obs_window())
        assert chunk.nfe == 1 and chunk.n_exec == 1 and chunk.actions.shape == (1, 10, 2)


def test_sampler_rti_configs_carry_the_samplers_own_defaults():
    """The YAMLs users read and the classes the benchmarks and calibration build must not drift apart."""
    authors = train_config("sampler=rti", "+task.action.discrete_dims=[1]").sampler
    assert list(authors.steps) == [2, 1, 0] and authors.n_action_steps == 1 and authors.discrete == "scale"
    assert list(authors.discrete_dims) == [1]  # the task's, by default
    cfg = train_config("sampler=rti_renoise", "+task.action.discrete_dims=[1]")
    assert cfg.sampler.discrete_mode == DEFAULT_DISCRETE_MODE
    assert cfg.sampler.discrete_hysteresis == DEFAULT_HYSTERESIS
    assert list(cfg.sampler.discrete_dims) == [1]  # the task's, by default


def test_rtdp_eval_repeats_its_figures_exactly_for_the_same_seed(tiny_run, tmp_path, capsys):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert rtdp_main(["eval", *PUSHT, f"checkpoint={tiny_run}", "sampler=ddim", "episodes=2", "n_envs=2",
                          "max_steps=12", "seed=5", f"out={out}", "progress=false"]) == 0
        runs.append(json.loads((out / "eval.json").read_text())["episodes"])
    assert runs[0] == runs[1]
