"""`rtdp calibrate-cache` and `cache=` on a tiny random transformer checkpoint of PushT: the schedule, plot and
override it writes and prints, `rtdp eval ... cache=bac`, and every bad input as one line, exit 2, nothing
written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from rtdp.cli.main import main
from rtdp.normalizer import Normalizer
from rtdp.policy.caching.attach import cache_hook
from rtdp.policy.factory import make_policy
from rtdp.policy.loading import load_policy
from rtdp.train.checkpoint import save_checkpoint

OBS = {"keypoint": (9, 2), "agent_pos": (2,)}
TINY = {"transformer": ["policy.denoiser.n_layers=2", "policy.denoiser.dim=32", "policy.denoiser.n_heads=2"],
        "unet1d": ["policy.denoiser.down_dims=[16,32]", "policy.denoiser.level_embed_dim=16"]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/policy/conftest.py


def tiny_checkpoint(root, pusht_zarr, policy: str, seed: int = 0):
    """A random-weight `policy` checkpoint of PushT keypoints, as `rtdp train` writes it (its dataset: PushT)."""
    with initialize_config_module("rtdp.configs", version_base=None):
        cfg = compose("train", overrides=[f"policy={policy}", "task=pusht_keypoints", *TINY[policy],
                                          f"task.dataset.path={pusht_zarr}"])
    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit({"keypoint": rng.uniform(0, 512, (100, 9, 2)),
                                 "agent_pos": rng.uniform(0, 512, (100, 2)), "action": rng.uniform(0, 512, (100, 2))})
    torch.manual_seed(seed)
    model = make_policy(cfg.policy, cfg.sampler, OBS, 2, normalizer)
    save_checkpoint(root, 1, model=model, ema_model=None, normalizer=normalizer, config=cfg,
                    data_meta={"obs_shapes": {k: list(v) for k, v in OBS.items()}, "action_dim": 2})
    return root


@pytest.fixture(scope="module")
def runs(pusht_zarr, tmp_path_factory):
    return {name: tiny_checkpoint(tmp_path_factory.mktemp(name), pusht_zarr, policy, seed)
            for name, policy, seed in (("transformer", "transformer", 0), ("other", "transformer", 1),
                                       ("unet", "unet1d", 0))}


def calibrate(run, *args: str):
    return main(["calibrate-cache", f"checkpoint={run}", "observations=6", "batch=3", "progress=false", *args])


def cache_dir(run):
    return next(run.glob("checkpoints/step_*")) / "cache"


def test_calibrate_cache_writes_the_schedule_and_plot_and_prints_the_override(runs, capsys):
    run = runs["transformer"]
    assert calibrate(run, "budget=3", "bubbling=2", "sampler=ddim") == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[0])
    path = summary["schedule"]
    assert out[1].startswith(f"use: cache={path} sampler=ddim")
    files = sorted(p.name for p in cache_dir(run).iterdir())
    stem = files[0][: -len(".json")]
    assert stem.startswith("bac-ddim-") and stem.endswith("-m3-bu2")
    assert files == [f"{stem}.json", f"{stem}.similarity.json", f"{stem}.similarity.png"]
    data = json.loads((cache_dir(run) / files[0]).read_text())
    assert data["format"] == "rtdp.bac_schedule" and data["version"] == 1 and data["observations"] == 6
    (grid,) = data["grids"]
    assert len(grid["levels"]) == 10 and len(grid["bubbled"]) == 2
    assert summary["grids"][0]["block_evals_per_plan"] == grid["predicted_block_evals"] < 6 * 10
    figure = json.loads((cache_dir(run) / files[1]).read_text())
    assert len(figure["grids"][0]["similarity"]["layer0.ffn"]) == 10

    policy = load_policy(run, ["sampler=ddim"], cache="bac")
    assert cache_hook(policy).schedule.path.name == files[0]
    chunk = policy.act({"keypoint": np.full((1, 2, 9, 2), 200.0, np.float32),
                        "agent_pos": np.full((1, 2, 2), 200.0, np.float32)})
    assert chunk.info["block_evals"] == grid["predicted_block_evals"]


def test_rtdp_eval_with_cache_bac_reports_block_evaluations(runs, tmp_path, capsys):
    run = runs["transformer"]
    if not cache_dir(run).is_dir():
        assert calibrate(run, "budget=3", "bubbling=2", "sampler=ddim") == 0
    capsys.readouterr()
    assert main(["eval", "task=pusht", "obs_mode=keypoints", f"checkpoint={run}", f"out={tmp_path / 'ev'}", "episodes=1", "n_envs=1", "max_steps=10",
                 "progress=false", "num_threads=1", "cache=bac", "sampler=ddim"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["block_evals_uncached_per_plan"] == 60 and 0 < summary["block_evals_per_plan"] < 60


def snapshot(*runs_):
    return {str(p): p.stat().st_mtime_ns for r in runs_ for p in sorted(r.rglob("*"))}


@pytest.mark.parametrize("args, message", [
    (["budget=11", "sampler=ddim"], "budget=11 is outside [1, 10]: the sampler's grid has 10 steps"),
    (["budget=101", "sampler=ddpm"], "budget=101 is outside [1, 100]"),
    (["budget=0"], "budget='0' is out of range"),
    (["budget=3", "observations=0"], "observations='0' is out of range"),
    (["budget=3", "bubbling=7", "sampler=ddim"], "bubbling=7 is more than this transformer's 6 blocks"),
    (["budget=3", "sampler=nope"], "no sampler config 'nope'"),
    (["observations=5"], "missing budget=..."),
])
def test_bad_calibrate_cache_input_is_one_line_exit_2_and_writes_nothing(runs, args, message, capsys):
    before = snapshot(runs["transformer"])
    assert calibrate(runs["transformer"], *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert snapshot(runs["transformer"]) == before


def test_calibrating_a_unet_checkpoint_says_bac_needs_a_transformer(runs, capsys):
    before = snapshot(runs["unet"])
    assert calibrate(runs["unet"], "budget=3") == 2
    err = capsys.readouterr().err
    assert "caches the residual blocks of a transformer denoiser" in err and "'unet1d'" in err
    assert "policy=transformer or policy=sdp_transformer" in err and err.count("\n") == 1
    assert snapshot(runs["unet"]) == before


def test_eval_with_a_missing_corrupt_or_stale_schedule_is_one_line_exit_2(runs, tmp_path, capsys):
    assert calibrate(runs["other"], "budget=2", "bubbling=0", "sampler=ddim") == 0
    capsys.readouterr()
    other_schedule = next(cache_dir(runs["other"]).glob("bac-*-bu0.json"))
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": "rtdp.bac_schedule", "version": 1')
    cases = [(tmp_path / "nope.json", "no such schedule file"),
             (corrupt, "is not a valid block-cache schedule (not JSON"),
             (other_schedule, "was made for other weights: sha256"),
             ("bac", "cache=bac: no schedule in")]
    for cache, message in cases:
        out = tmp_path / "ev"
        code = main(["eval", "task=pusht", "obs_mode=keypoints", f"checkpoint={runs['transformer']}", f"out={out}", "episodes=1", "progress=false",
                     f"cache={cache}", "sampler=ddim", "sampler.num_steps=5"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not out.exists()
