"""`rtdp demo [episodes=250] [steps=4000] [minutes=15] [eval_episodes=50] [hz=20] [robot_episodes=20]
[robot_steps=300] [robot_minutes=3] [deploy_episodes=5] [threads=N] [out=runs/demo]`: the main job end to end on
the embedded default, rtdp's own MuJoCo arm (arm-lift), then the robot path on the same arm running in real time.

1. data: `rtdp data info` on the PushT human demonstrations in ../shared (skipped when absent);
2. collect: scripted-expert demonstrations of arm-lift into a replay buffer (noise-injected, resumable);
3. train: a small streaming U-Net (`policy=sdp_unet`, the demo recipe below) for a few minutes (a finished run
   is reused);
4. eval: the same weights with DDIM-10 (Ta=8) and with the streaming sampler (replans every step), 50 seeds;
5. run: the env served over ZeroMQ in another process, the policy in the fixed-rate loop with asynchronous
   streaming inference; timing metrics and plot;
6. record: demonstrations on the real-time sim arm (`robot=sim-arm`, behind `rtdp serve-robot`) with the
   scripted device (the expert, DART noise on what is sent, clean labels recorded);
7. fine-tune: the step-3 policy on those recordings (`init_from=`), briefly (a finished run is reused);
8. deploy: the step-3 policy and the fine-tuned one each drive the arm through the robot server with
   asynchronous streaming inference, every rollout recorded.
Each step calls the same subcommand a user would; everything lands under `out`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rtdp.cli.args import Key, parse_keys
from rtdp.cli.main import CLIError
from rtdp.cli.main import main as rtdp
from rtdp.metrics import wilson_interval

USAGE = ("rtdp demo [episodes=250] [steps=4000] [minutes=15] [eval_episodes=50] [hz=20] [robot_episodes=20] "
         "[robot_steps=300] [robot_minutes=3] [deploy_episodes=5] [threads=N] [out=runs/demo]")
KEYS = {
    "episodes": Key("int", 250, min=1, help="scripted arm-lift demonstrations to collect"),
    "steps": Key("int", 4000, min=1, help="training steps (the learning rate's cosine ends there)"),
    "minutes": Key("float", 15.0, min=0.05, help="training wall-time cap (a loaded machine stops early)"),
    "eval_episodes": Key("int", 50, min=1, help="seeded episodes per evaluated sampler"),
    "hz": Key("int", 20, min=1, max=500, help="control rate of the final run"),
    "robot_episodes": Key("int", 20, min=1, help="demonstrations to record on the real-time sim arm"),
    "robot_steps": Key("int", 300, min=1, help="fine-tuning steps on the recorded demonstrations"),
    "robot_minutes": Key("float", 3.0, min=0.05, help="fine-tuning wall-time cap"),
    "deploy_episodes": Key("int", 5, min=1, help="rollouts of each deployed policy on the sim arm"),
    "threads": Key("int", None, min=1, help="torch threads (default: the cores other jobs leave free, at least 1)"),
    "out": Key("str", "runs/demo", help="where everything lands"),
}
# The demo recipe (docs/training.md, "The demo recipe"): a U-Net at half the CPU preset's width, batch 64 and a
# 10x learning rate, so a few thousand steps reach the arm's success; the fine-tuning keeps the width and drops
# the rate 10x.
RECIPE = ["policy=sdp_unet", "policy.denoiser.down_dims=[32,64,128]", "task=arm_lift", "training.batch_size=64",
          "policy.optim.lr=1e-3", "training.warmup_steps=100", "training.val_every=0"]
FINE_TUNE = ["policy.optim.lr=1e-4", "training.warmup_steps=0"]
SHARED_PUSHT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pusht_cchi_v7_replay.zarr"


def _step(console: Console, title: str, argv: list[str]) -> None:
    """Run one `rtdp` subcommand in-process; a failure stops the demo with the step named."""
    console.rule(f"[bold]{title}")
    console.print(f"$ rtdp {' '.join(argv)}", style="dim")
    code = rtdp(argv)
    if code:
        raise CLIError(f"step '{title}' failed (exit {code}); see the message above")


def _train_once(console: Console, title: str, run_dir: Path, overrides: list[str]) -> None:
    """`rtdp train` into `run_dir`, or reuse the run already finished there (a rerun of the demo skips it)."""
    if (run_dir / "checkpoints" / "last" / "model.safetensors").is_file():
        console.rule(f"[bold]{title.split(':')[0]}")
        console.print(f"reusing the policy trained in {run_dir} (delete it to train again)")
        return
    _step(console, title, ["train", *overrides, f"out_dir={run_dir}"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summary(path: Path) -> dict:
    """The `summary` of a metrics record written by `rtdp eval` / `rtdp run` (empty when missing)."""
    return json.loads(path.read_text()).get("summary", {}) if path.is_file() else {}


def free_cores() -> int:
    """Cores the last minute's load leaves free, at least 1: two torch threads beside a busy core thrash."""
    cores = os.cpu_count() or 1
    return max(1, min(cores, cores - round(os.getloadavg()[0])))


def _rate(summary: dict) -> tuple[str, str]:
    """Episodes, and the success rate with its Wilson 95% interval over them."""
    rate, n = summary.get("success_rate"), summary.get("n_episodes") or summary.get("episodes")
    if rate is None or not n:
        return "", "n/a"
    lo, hi = wilson_interval(round(rate * n), n)
    return str(n), f"{rate:.2f} [{lo:.2f}, {hi:.2f}]"


def main(argv: list[str]) -> int:
    args, _ = parse_keys(argv, KEYS, USAGE, __doc__)
    episodes, minutes, eval_episodes, hz = args["episodes"], args["minutes"], args["eval_episodes"], args["hz"]
    steps = args["steps"]
    threads = args["threads"] or free_cores()
    out = Path(args["out"])
    console = Console()
    t0 = time.perf_counter()
    console.print(f"torch threads: {threads} (of {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f})")

    if SHARED_PUSHT.exists():
        _step(console, "1/8 data: the PushT human demonstrations", ["data", "info", str(SHARED_PUSHT)])
    else:
        console.print(f"[yellow]skipping the PushT data step: {SHARED_PUSHT} not found")

    data = out / "arm_lift_dart.zarr"
    _step(console, "2/8 collect: scripted arm-lift demonstrations (noise-injected, clean labels)",
          ["collect", "task=arm-lift", f"episodes={episodes}", f"out={data}", "seed=0", "action_noise=0.3"])

    train_dir = out / "train"
    _train_once(console, f"3/8 train: streaming U-Net, {steps} steps on the CPU (at most {minutes:g} min)", train_dir,
                [*RECIPE, f"task.dataset.path={data.resolve()}", f"training.max_minutes={minutes}",
                 f"training.num_steps={steps}", f"num_threads={threads}", f"training.checkpoint_every={steps}"])

    results = {}
    for name, overrides in (("ddim10", ["sampler=ddim"]), ("sdp", ["sampler=sdp"])):
        _step(console, f"4/8 eval: {name}, {eval_episodes} seeded episodes",
              ["eval", "task=arm-lift", f"checkpoint={train_dir}", f"episodes={eval_episodes}", "n_envs=10",
               f"num_threads={threads}", f"out={out / f'eval_{name}'}", *overrides])
        results[name] = _summary(out / f"eval_{name}" / "eval.json")

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "rtdp.cli.main", "serve-env", "task=arm-lift",
                               "--bind", f"tcp://127.0.0.1:{port}"], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _step(console, f"5/8 run: {hz} Hz control loop, async streaming inference, env over ZeroMQ",
              ["run", f"checkpoint={train_dir}", f"env=tcp://127.0.0.1:{port}", "task=arm-lift", "mode=async",
               f"hz={hz}", "episodes=2", "max_steps=200", f"out={out / 'run'}", "sampler=sdp"])
    finally:
        server.terminate()
        server.wait(timeout=10)
    run = _summary(out / "run" / "metrics.json")

    robot_data, robot_train = out / "robot_demos.zarr", out / "robot_train"
    _step(console, f"6/8 record: {args['robot_episodes']} demonstrations on the real-time sim arm, scripted device",
          ["record", "robot=sim-arm", "device=scripted", f"out={robot_data}", f"episodes={args['robot_episodes']}",
           "auto=true", "operator=none", "noise=0.3", "seed=1000"])
    _train_once(console, f"7/8 fine-tune: the step-3 policy on the recordings, {args['robot_steps']} steps",
                robot_train,
                [*RECIPE, *FINE_TUNE, f"task.dataset.path={robot_data.resolve()}", f"init_from={train_dir}",
                 f"training.max_minutes={args['robot_minutes']}", f"num_threads={threads}",
                 f"training.num_steps={args['robot_steps']}", f"training.checkpoint_every={args['robot_steps']}"])
    deploys = {}
    for name, ckpt_dir, sub in (("deploy sdp @ sim-arm", train_dir, "deploy"),
                                ("deploy sdp, fine-tuned @ sim-arm", robot_train, "deploy_fine_tuned")):
        _step(console, f"8/8 {name}: through the robot server, async streaming",
              ["deploy", f"checkpoint={ckpt_dir}", "robot=sim-arm", "mode=async",
               f"episodes={args['deploy_episodes']}", f"out={out / sub}", "operator=none", "sampler=sdp"])
        deploys[name] = _summary(out / sub / "metrics.json")

    table = Table(title=f"rtdp demo (arm-lift), {time.perf_counter() - t0:.0f} s; files under {out}")
    for col in ("", "episodes", "success [95% CI]", "NFE / action", "inference p50 / p99 (ms)"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(f"eval {name}", *_rate(r), f"{r.get('nfe_per_action', float('nan')):.2f}", "")
    for name, r in {f"run sdp @ {hz} Hz async": run, **deploys}.items():
        lat = r.get("inference_latency", {})
        table.add_row(name, *_rate(r), f"{r.get('nfe_per_executed_action', float('nan')):.2f}",
                      f"{lat.get('p50_ms', 0):.1f} / {lat.get('p99_ms', 0):.1f}")
    console.print(table)
    console.print(f"deadline misses: {run.get('deadline_misses')}, period error p99: "
                  f"{run.get('period_error', {}).get('p99_ms', float('nan')):.3f} ms "
                  f"(timing plot: {out / 'run' / 'timing.png'})")
    return 0
