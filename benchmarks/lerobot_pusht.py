"""rtdp against LeRobot's DiffusionPolicy on PushT keypoints at equal training wall time (issue 19).

Both train on the same human demonstrations (`../shared/data`) with the same U-Net size (down_dims 64/128/256,
level embedding 128, kernel 5), horizon 16, 2 observation frames, batch 256, AdamW 1e-4 with a 500-step warm-up
and a cosine over 20,000 steps, for the same minutes on one core each, side by side. LeRobot trains with its own
`lerobot-train` on the data exported by rtdp's `export_lerobot`; both are then evaluated by rtdp's evaluator on
the same seeds (`benchmarks/suites/lerobot_pusht.yaml`, its LeRobot row through `checkpoint=lerobot:PATH`).

    .venv/bin/python benchmarks/lerobot_pusht.py prepare                 # the LeRobot dataset (runs/lerobot_pusht/)
    .venv/bin/python benchmarks/lerobot_pusht.py train --minutes 60      # both trainings, one core each, in parallel
    rtdp bench benchmarks/suites/lerobot_pusht.yaml                      # both evaluated, report.md
    .venv/bin/python benchmarks/lerobot_pusht.py record                  # benchmarks/results/lerobot_pusht.json

LeRobot's `normalization_mapping` gains `ENV: MIN_MAX`: its default leaves `observation.environment_state` (the
keypoints, in pixels) unscaled, which no one training on PushT keypoints would keep. LeRobot has no wall-clock
limit, so it saves a checkpoint every `--save-every` steps and is stopped at the deadline; its newest checkpoint
is the one evaluated (at most `--save-every` steps before the deadline). rtdp stops itself at `max_minutes`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtdp import metrics

DATA = REPO.parent / "shared" / "data" / "pusht_cchi_v7_replay.zarr"
WORK = REPO / "runs" / "lerobot_pusht"
RTDP_RUN = REPO / "runs" / "bench" / "pusht_unet_1core"
LEROBOT_RUN = WORK / "lerobot_train"
OUT = REPO / "benchmarks" / "results" / "lerobot_pusht.json"
# The shared recipe: rtdp's `policy=unet1d task=pusht_keypoints` preset, and LeRobot's flags for the same model.
RTDP_TRAIN = ["policy=unet1d", "task=pusht_keypoints", "training.batch_size=256", "training.num_steps=20000",
              "num_threads=1"]
LEROBOT_POLICY = {"type": "diffusion", "device": "cpu", "push_to_hub": "false", "horizon": "16", "n_obs_steps": "2",
                  "n_action_steps": "8", "down_dims": "[64,128,256]", "diffusion_step_embed_dim": "128",
                  "kernel_size": "5", "n_groups": "8", "num_train_timesteps": "100",
                  "normalization_mapping": '{"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ENV": "MIN_MAX", '
                                           '"ACTION": "MIN_MAX"}'}


def prepare(args: argparse.Namespace) -> None:
    """PushT keypoints as LeRobot features: `observation.state` the agent position (2), `observation.environment_state`
    the 9 block keypoints flattened (18), `action` (2); rtdp's task reads the same columns."""
    from rtdp.datasets.lerobot_io import export_lerobot
    from rtdp.datasets.replay_buffer import ReplayBuffer

    out = WORK / "lerobot_dataset"
    if out.exists():
        print(f"{out} exists; delete it to export again")
        return
    src = ReplayBuffer.open(DATA, "r")
    flat = WORK / "pusht_keypoints_flat.zarr"
    shutil.rmtree(flat, ignore_errors=True)
    buf = ReplayBuffer.create(flat)
    for e in range(src.n_episodes):
        ep = src.get_episode(e, keys=["state", "keypoint", "action"])
        buf.add_episode({"agent_pos": np.asarray(ep["state"][:, :2], np.float32),
                         "keypoint": np.asarray(ep["keypoint"], np.float32).reshape(len(ep["action"]), -1),
                         "action": np.asarray(ep["action"], np.float32)})
    export_lerobot(buf, out, fps=10, use_videos=False, task="push the T into its target",
                   rename={"agent_pos": "observation.state", "keypoint": "observation.environment_state"},
                   progress=True)
    print(f"LeRobot dataset: {out} ({buf.n_episodes} episodes, {buf.n_steps} steps)")


def lerobot_cmd(minutes: float, save_every: int) -> list[str]:
    """`lerobot-train` on the exported dataset with the shared recipe (no eval env, no hub, no wandb)."""
    cmd = [str(REPO / ".venv" / "bin" / "lerobot-train"), "--dataset.repo_id=local/pusht_keypoints",
           f"--dataset.root={WORK / 'lerobot_dataset'}", f"--output_dir={LEROBOT_RUN}", "--batch_size=256",
           "--steps=20000", f"--save_freq={save_every}", "--log_freq=50", "--num_workers=0",
           "--wandb.enable=false", "--seed=0"]
    return cmd + [f"--policy.{k}={v}" for k, v in LEROBOT_POLICY.items()]


def train(args: argparse.Namespace) -> None:
    """Both trainings at once, one torch thread each, for `--minutes` of wall time."""
    if not (WORK / "lerobot_dataset").exists():
        raise SystemExit("run `benchmarks/lerobot_pusht.py prepare` first")
    for run in (RTDP_RUN, LEROBOT_RUN):
        if run.exists():
            raise SystemExit(f"{run} exists: move it away to train again")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "rtdp_train.log", "w") as rtdp_log, open(WORK / "lerobot_train.log", "w") as lerobot_log:
        t0 = time.time()
        rtdp = subprocess.Popen([str(REPO / ".venv" / "bin" / "rtdp"), "train", *RTDP_TRAIN,
                                 f"training.max_minutes={args.minutes}", f"out_dir={RTDP_RUN}", "eval.final_episodes=0"],
                                stdout=rtdp_log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        lerobot = subprocess.Popen(lerobot_cmd(args.minutes, args.save_every), stdout=lerobot_log,
                                   stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = t0 + 60 * args.minutes
        while lerobot.poll() is None and time.time() < deadline:
            time.sleep(5)
        if lerobot.poll() is None:  # no wall-clock limit of its own: stopped at the deadline
            lerobot.terminate()
            lerobot.wait(60)
        lerobot_wall = time.time() - t0
        rtdp.wait()
    meta = {"minutes": args.minutes, "save_every": args.save_every, "started": t0, "lerobot_wall_s": lerobot_wall,
            "rtdp_wall_s": time.time() - t0, "rtdp_rc": rtdp.returncode, "lerobot_cmd": lerobot_cmd(args.minutes,
                                                                                                   args.save_every),
            "rtdp_cmd": ["rtdp", "train", *RTDP_TRAIN, f"training.max_minutes={args.minutes}"]}
    (WORK / "train_meta.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta, indent=2))


def lerobot_steps() -> dict:
    """LeRobot's newest saved checkpoint (the one evaluated) and the last step its log reached."""
    ckpts = sorted((LEROBOT_RUN / "checkpoints").glob("[0-9]*"))
    log = (WORK / "lerobot_train.log").read_text() if (WORK / "lerobot_train.log").exists() else ""
    # lerobot-train's progress bar counts every step ("| 2504/20000 ["); its log lines round to thousands ("2K")
    counted = [int(m) for m in re.findall(r"\|\s*(\d+)/\d+ \[", log)]
    return {"checkpoint_step": int(ckpts[-1].name) if ckpts else None, "last_logged_step": max(counted, default=None)}


def paired_coverage(ours: list[dict], theirs: list[dict]) -> dict:
    """Mean max-coverage difference (ours − theirs) over the seeds both rows ran, each seed the same initial
    state for both, with a 95% interval from the paired t distribution (`scipy.stats.ttest_rel`)."""
    from scipy.stats import ttest_rel

    a = {e["seed"]: e["max_coverage"] for e in ours}
    b = {e["seed"]: e["max_coverage"] for e in theirs}
    seeds = sorted(set(a) & set(b))
    x, y = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
    test = ttest_rel(x, y)
    ci = test.confidence_interval(0.95)
    return {"n": len(seeds), "mean_difference": float(np.mean(x - y)), "ci95": [float(ci.low), float(ci.high)],
            "p_value": float(test.pvalue)}


def record(args: argparse.Namespace) -> None:
    """One record: both trainings (steps, wall time, commands) and the suite's rows (success with Wilson intervals,
    coverage), with rtdp − LeRobot coverage per sampler paired by seed and the success ratio (Katz)."""
    import yaml

    suite = yaml.safe_load((REPO / "benchmarks" / "suites" / "lerobot_pusht.yaml").read_text())
    rows = {path.stem: json.loads(path.read_text()) for path in sorted((REPO / suite["results"] / "rows").glob("*.json"))}
    rtdp_ckpts = sorted((RTDP_RUN / "checkpoints").glob("step_*"))
    meta = json.loads((WORK / "train_meta.json").read_text())
    comparisons = {}
    for sampler in ("ddim10", "ddpm100"):
        ours, theirs = rows.get(f"rtdp_{sampler}"), rows.get(f"lerobot_{sampler}")
        if not (ours and theirs and ours["status"] == theirs["status"] == "done"):
            continue
        (k1, n1), (k0, n0) = ((round(r["score"]["success_rate"] * r["score"]["n"]), r["score"]["n"])
                              for r in (ours, theirs))
        ratio, lo, hi = metrics.ratio_interval(k1, n1, k0, n0) if k0 else (None, None, None)
        comparisons[sampler] = {"coverage_rtdp_minus_lerobot": paired_coverage(ours["episodes"], theirs["episodes"]),
                                "success_rtdp": [k1, n1], "success_lerobot": [k0, n0],
                                "success_ratio_katz95": [ratio, lo, hi]}
    rtdp_step = int(rtdp_ckpts[-1].name.removeprefix("step_")) if rtdp_ckpts else None
    lerobot = lerobot_steps()
    # training speed, one core each, side by side: steps reached per minute of the shared wall time
    pace = {"rtdp_steps_per_min": rtdp_step / meta["minutes"] if rtdp_step else None,
            "lerobot_steps_per_min": (lerobot["last_logged_step"] or 0) / meta["minutes"]}
    if pace["rtdp_steps_per_min"] and pace["lerobot_steps_per_min"]:
        pace["rtdp_over_lerobot"] = pace["rtdp_steps_per_min"] / pace["lerobot_steps_per_min"]
    rec = metrics.record("lerobot_vs_rtdp_pusht", training={
        **meta, "rtdp_final_step": rtdp_step, "lerobot": lerobot, "pace": pace},
        rows={k: {key: v.get(key) for key in ("status", "score", "nfe_per_action", "timing", "row", "finished")}
              for k, v in rows.items()}, comparisons=comparisons)
    metrics.write_json(OUT, rec)
    print(json.dumps({"training": rec["training"], "comparisons": comparisons}, indent=2))
    print(f"record: {OUT}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare", help="export the PushT keypoints data as a LeRobot dataset")
    tr = sub.add_parser("train", help="train rtdp and LeRobot side by side")
    tr.add_argument("--minutes", type=float, default=60.0)
    tr.add_argument("--save-every", type=int, default=250, help="LeRobot checkpoint interval (steps)")
    sub.add_parser("record", help="write benchmarks/results/lerobot_pusht.json from the runs and the suite's rows")
    args = ap.parse_args(argv)
    {"prepare": prepare, "train": train, "record": record}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
