"""`rtdp bench`: a suite is checked before it runs, its rows run in worker processes and resume after a kill,
and the report is rebuilt from the saved JSON alone, with Wilson intervals and ratio intervals that are right."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from rtdp.bench.report import build_report
from rtdp.bench.runner import row_paths, run_suite
from rtdp.bench.suite import SuiteError, load_suite
from rtdp.cli.main import main as rtdp_main
from rtdp.datasets import ReplayBuffer
from rtdp.metrics import paired_ratio_interval, ratio_interval, wilson_interval

REPO = Path(__file__).resolve().parents[2]
OBS = {"keypoint": {"source": "keypoint"}, "agent_pos": {"source": "state", "columns": [0, 2]}}


@pytest.fixture(scope="module")
def tiny_ckpt(pusht_zarr, train_tiny_sdp, tmp_path_factory):
    """A tiny sdp_unet trained for 30 steps on 8 PushT episodes, saved as an `rtdp train` checkpoint."""
    buf = ReplayBuffer.copy_to_memory(ReplayBuffer.open(pusht_zarr, "r"), ["keypoint", "state", "action"])
    return train_tiny_sdp(tmp_path_factory.mktemp("bench_ckpt"), buf, steps=30, n_episodes=8, batch=32)


def write_suite(path: Path, results: Path, rows: list[dict], **top) -> Path:
    path.write_text(yaml.safe_dump({"name": "tiny", "results": str(results), "workers": 2, **top,
                                    "defaults": {"max_steps": 24, "n_envs": 1, "timing_calls": 2, "seed": 5000},
                                    "rows": rows}))
    return path


def rows_for(ckpt: Path) -> list[dict]:
    return [{"name": "ddim2", "checkpoint": str(ckpt), "overrides": ["sampler=ddim", "sampler.num_steps=2"],
             "episodes": 2, "baseline": True},
            {"name": "sdp", "checkpoint": str(ckpt), "overrides": ["sampler=sdp"], "episodes": 2}]


def test_wilson_intervals_match_known_values():
    assert wilson_interval(45, 50) == pytest.approx((0.7864, 0.9565), abs=1e-4)
    assert wilson_interval(0, 50) == pytest.approx((0.0, 0.0713), abs=1e-4)
    assert wilson_interval(50, 50) == pytest.approx((0.9287, 1.0), abs=1e-4)


def test_ratio_interval_is_katzs_log_interval_and_stays_finite_at_zero():
    # 45/50 over 47/50: se = sqrt(1/45 - 1/50 + 1/47 - 1/50) = 0.05916, ratio 0.9574 * exp(±1.96 se)
    assert ratio_interval(45, 50, 47, 50) == pytest.approx((0.9574, 0.8526, 1.0751), abs=1e-4)
    r, lo, hi = ratio_interval(0, 50, 10, 50)
    assert 0 < lo < r < hi < 1
    with pytest.raises(ValueError, match="n >= 1"):
        ratio_interval(1, 0, 1, 5)


def test_the_paired_ratio_interval_is_tighter_than_independent_ones_when_seeds_share_their_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.2, 1.0, 50)  # what a seed does to every method alike
    reference, scores = difficulty, np.clip(0.9 * difficulty + rng.normal(0, 0.02, 50), 0, 1)
    ratio, lo, hi = paired_ratio_interval(scores, reference)
    assert ratio == pytest.approx(scores.mean() / reference.mean())
    assert lo < ratio < hi < 0.95  # 0.9x is told apart from 0.95x on 50 paired seeds
    shuffled = paired_ratio_interval(scores, rng.permutation(reference))  # the pairing broken: much wider
    assert shuffled[2] - shuffled[1] > 3 * (hi - lo)
    assert paired_ratio_interval(reference, reference) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="one length"):
        paired_ratio_interval(scores[:10], reference)


@pytest.mark.parametrize("change, message", [
    ({"rows": [{"name": "a", "checkpoint": "x", "sampler": "ddim"}]}, "unknown key 'sampler'"),
    ({"rows": [{"name": "a", "checkpoint": "x"}, {"name": "a", "checkpoint": "y"}]}, "two rows are named 'a'"),
    ({"rows": [{"name": "a", "checkpoint": "x", "backend": "tensorrt"}]}, "backend must be one of"),
    ({"rows": [{"name": "a", "checkpoint": "x", "episodes": 0}]}, "episodes must be an integer >= 1"),
    ({"rows": [{"name": "a", "checkpoint": "x", "seed_role": "test"}]}, "seed_role must be"),
    ({"rows": [{"name": "a"}]}, "needs checkpoint: PATH"),
    ({"rows": []}, "'rows' must be a non-empty list"),
    ({"on_missing": "download", "rows": [{"name": "a", "checkpoint": "x"}]}, "on_missing must be"),
    ({"rows": [{"name": "a", "checkpoint": "lerobot:x"}]}, "a LeRobot checkpoint does not say which env"),
    ({"rows": [{"name": "a", "checkpoint": "x", "obs_mode": "keypoints"}]}, "obs_mode: goes with task:"),
    ({"rows": [{"name": "a", "checkpoint": "x", "env": "localhost:5601"}]}, "env must be the address"),
])
def test_a_bad_suite_is_refused_in_one_line_naming_the_row_and_key(tmp_path, capsys, change, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", **change}))
    with pytest.raises(SuiteError, match=message):
        load_suite(path)
    assert rtdp_main(["bench", str(path)]) == 2
    err = capsys.readouterr().err
    assert message.split("'")[0] in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_tiny_suite_runs_end_to_end_and_its_report_shows_every_row(tiny_ckpt, tmp_path, capsys):
    results = tmp_path / "results"
    rows = rows_for(tiny_ckpt) + [{"name": "absent", "checkpoint": str(tmp_path / "nope"), "episodes": 2}]
    suite = write_suite(tmp_path / "suite.yaml", results, rows)
    assert rtdp_main(["bench", str(suite), "--no-progress"]) == 1  # a missing checkpoint is not a success
    out = capsys.readouterr().out
    assert "ddim2: done" in out and "sdp: done" in out and "absent: missing" in out
    ddim = json.loads((results / "rows" / "ddim2.json").read_text())
    sdp = json.loads((results / "rows" / "sdp.json").read_text())
    assert ddim["status"] == "done" and ddim["score"]["n"] == 2 and ddim["task"] == "pusht"
    assert [e["seed"] for e in ddim["episodes"]] == [5000, 5001]
    assert ddim["nfe_per_action"] == pytest.approx(2 / 8)  # 2 DDIM steps per plan of 8 executed actions
    assert sdp["actions_per_plan"] == 1 and sdp["timing"]["nfe_per_step"] == pytest.approx(1.0)  # SDP, steady
    assert ddim["timing"]["calls"] == 2 and ddim["run_id"] == sdp["run_id"]
    report = (results / "report.md").read_text()
    assert "| ddim2 (baseline) |" in report and "| sdp |" in report and "missing: checkpoint" in report
    assert (results / "success_vs_compute.png").is_file()


def test_the_report_regenerates_from_saved_json_alone(tiny_ckpt, tmp_path):
    results = tmp_path / "results"
    run_suite(load_suite(write_suite(tmp_path / "suite.yaml", results, rows_for(tiny_ckpt))), progress=False)
    first = build_report(results).read_text()
    copy = tmp_path / "copy" / "results"
    shutil.copytree(results / "rows", copy / "rows")
    shutil.copytree(results / "runs", copy / "runs")
    assert build_report(copy).read_text() == first
    with pytest.raises(FileNotFoundError, match="not a `rtdp bench` results folder"):
        build_report(tmp_path / "empty")


def test_a_killed_suite_resumes_with_finished_rows_kept_and_the_killed_row_rerun(tiny_ckpt, tmp_path, capsys):
    results = tmp_path / "results"
    rows = [{"name": "quick", "checkpoint": str(tiny_ckpt), "overrides": ["sampler=sdp"], "episodes": 1},
            {"name": "long", "checkpoint": str(tiny_ckpt), "overrides": ["sampler=sdp"], "episodes": 8,
             "max_steps": 150}]
    suite = write_suite(tmp_path / "suite.yaml", results, rows, workers=1)
    proc = subprocess.Popen([sys.executable, "-m", "rtdp.cli.main", "bench", str(suite), "--no-progress"],
                            cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    quick, long_ = row_paths(results, "quick"), row_paths(results, "long")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (quick["result"].is_file() and long_["progress"].is_file()
                                               and long_["progress"].read_text() not in ("", "0")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker, mid-row
    proc.wait()
    assert quick["result"].is_file() and not long_["result"].is_file()
    kept = quick["result"].stat().st_mtime_ns
    assert rtdp_main(["bench", str(suite), "--no-progress"]) == 2  # finished rows are not overwritten silently
    assert "--resume" in capsys.readouterr().err
    assert rtdp_main(["bench", str(suite), "--resume", "--no-progress"]) == 0
    assert quick["result"].stat().st_mtime_ns == kept
    rec = json.loads(long_["result"].read_text())
    assert rec["status"] == "done" and rec["score"]["n"] == 8
    assert len(list((results / "runs").glob("*.json"))) == 2


def test_a_resumed_suite_keeps_its_rows_but_takes_their_new_baseline_and_group(tiny_ckpt, tmp_path):
    results = tmp_path / "results"
    rows = rows_for(tiny_ckpt)
    suite = write_suite(tmp_path / "suite.yaml", results, rows, workers=1)
    assert rtdp_main(["bench", str(suite), "--no-progress"]) == 0
    before = {n: json.loads(row_paths(results, n)["result"].read_text()) for n in ("ddim2", "sdp")}
    rows[0]["baseline"], rows[1]["baseline"], rows[1]["group"] = False, True, "other"
    write_suite(tmp_path / "suite.yaml", results, rows, workers=1)
    assert rtdp_main(["bench", str(suite), "--resume", "--no-progress"]) == 0
    after = {n: json.loads(row_paths(results, n)["result"].read_text()) for n in ("ddim2", "sdp")}
    assert after["sdp"]["row"]["baseline"] and after["sdp"]["row"]["group"] == "other"
    assert not after["ddim2"]["row"]["baseline"]
    for n in after:  # the figures are the ones measured before
        assert after[n]["score"] == before[n]["score"] and after[n]["finished"] == before[n]["finished"]
    assert "## other" in (results / "report.md").read_text()


def test_only_runs_the_named_rows_with_the_workers_asked_and_an_unknown_name_lists_the_rows(tiny_ckpt, tmp_path, capsys):
    results = tmp_path / "results"
    suite = write_suite(tmp_path / "suite.yaml", results, rows_for(tiny_ckpt))
    assert rtdp_main(["bench", str(suite), "--only", "sdp", "--workers", "1", "--no-progress"]) == 0
    assert (results / "rows" / "sdp.json").is_file() and not (results / "rows" / "ddim2.json").exists()
    assert [json.loads(p.read_text())["workers"] for p in (results / "runs").glob("*.json")] == [1]
    assert rtdp_main(["bench", str(suite), "--only", "ddim3", "--no-progress"]) == 2
    assert "its rows: ddim2, sdp" in capsys.readouterr().err
    assert rtdp_main(["bench", str(suite), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


def test_a_missing_checkpoint_is_trained_from_the_rows_preset_when_the_suite_says_so(pusht_zarr, tmp_path, capsys):
    results, run = tmp_path / "results", tmp_path / "run"
    preset = ["policy=sdp_unet", "task=pusht_keypoints", f"task.dataset.path={pusht_zarr}",
              "policy.denoiser.down_dims=[16,32]", "policy.denoiser.level_embed_dim=32", "training.num_steps=4",
              "training.batch_size=8", "training.val_every=0"]
    rows = [{"name": "trained", "checkpoint": str(run), "train": preset, "overrides": ["sampler=sdp"], "episodes": 1,
             "timing_calls": 0},
            {"name": "untrainable", "checkpoint": str(tmp_path / "bad"), "train": ["policy=no_such_policy"],
             "episodes": 1}]
    suite = write_suite(tmp_path / "suite.yaml", results, rows, on_missing="train")
    assert rtdp_main(["bench", str(suite), "--no-progress"]) == 1
    assert "trained: done" in capsys.readouterr().out
    assert (run / "checkpoints").is_dir()
    assert json.loads((results / "rows" / "trained.json").read_text())["score"]["n"] == 1
    bad = json.loads((results / "rows" / "untrainable.json").read_text())
    assert bad["status"] == "missing" and "training failed" in bad["why"]
    assert (results / "logs" / f"train-{str(tmp_path / 'bad').strip('/').replace('/', '_')}.log").is_file()


def test_executor_ray_runs_rows_on_a_local_ray_with_the_same_results_layout(tiny_ckpt, tmp_path):
    ray = pytest.importorskip("ray")
    results = tmp_path / "results"
    suite = load_suite(write_suite(tmp_path / "suite.yaml", results, rows_for(tiny_ckpt), executor="ray"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        status = run_suite(suite, progress=False)
    finally:
        ray.shutdown()
    assert status == {"ddim2": "done", "sdp": "done"}
    for name in ("ddim2", "sdp"):
        rec = json.loads((results / "rows" / f"{name}.json").read_text())
        assert rec["status"] == "done" and rec["score"]["n"] == 2 and rec["key"]
    assert json.loads((results / "rows" / "ddim2.json").read_text())["nfe_per_action"] == pytest.approx(2 / 8)
    assert "| sdp |" in build_report(results).read_text()


def test_executor_ray_without_ray_installed_names_the_extra(tiny_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    suite = write_suite(tmp_path / "suite.yaml", tmp_path / "results", rows_for(tiny_ckpt), executor="ray")
    assert rtdp_main(["bench", str(suite), "--no-progress"]) == 2
    assert "pip install 'rtdp[ray]'" in capsys.readouterr().err
