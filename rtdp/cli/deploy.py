"""`rtdp deploy checkpoint=PATH robot=sim-arm|tcp://HOST:PORT [mode=async] [hz=H] [episodes=1] [sampler ...]`:
a trained policy drives a robot through the robot server, in the fixed-rate control loop of `rtdp run`
(asynchronous inference by default). Every rollout is recorded to a replay buffer (`record=`, default
OUT/rollouts.zarr), and OUT/metrics.json + OUT/timing.png are written as `rtdp run` writes them, with the
robot server's counters (refusals, watchdog holds, drops) beside them.

Operator keys (in the terminal): SPACE e-stop (latched on the server: the run stops; clear it with
`rtdp teleop robot=ADDR reset_estop=true`), p pause/resume (the robot holds), Q quit after this episode.
Any key=value not listed is a policy override (`sampler=ddim`, `sampler.num_steps=10`, ...).
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from pathlib import Path
from typing import Any

from rtdp.cli.args import BACKEND_HELP, BACKENDS, Key, parse_keys
from rtdp.cli.main import CLIError
from rtdp.cli.robots import CLIENT_KEYS, connect_robot, is_address

USAGE = ("rtdp deploy checkpoint=PATH robot=sim-arm|tcp://HOST:PORT [mode=sync|async] [hz=H] [episodes=1] "
         "[max_steps=200] [seed=0] [out=DIR] [record=PATH.zarr] [operator=auto] [robot.KEY=VALUE ...] [sampler ...]")
KEYS = {
    "checkpoint": Key("str", required=True, help="a run or checkpoint directory written by `rtdp train`, or "
                                                 "lerobot:DIR for a diffusion policy saved by LeRobot"),
    "robot": Key("str", "sim-arm", help="sim-arm, lerobot:<type>, package.module:Class, or tcp://HOST:PORT of "
                                        "`rtdp serve-robot`"),
    "mode": Key("str", "async", choices=("sync", "async"), help="inference on the loop thread or in a worker"),
    "hz": Key("float", min=1.0, max=500.0, help="control rate (default: the rate the policy was trained at)"),
    "episodes": Key("int", 1, min=1, help="rollouts to run (seeds seed, seed+1, ...)"),
    "max_steps": Key("int", 200, min=1, help="executed actions per rollout at most"),
    "seed": Key("int", 0, min=0, help="the first rollout's seed (a sim draws its scene from it)"),
    "out": Key("str", help="run directory for metrics.json and timing.png (default runs/deploy-<time>)"),
    "record": Key("str", help="the replay buffer to record every rollout into (default OUT/rollouts.zarr)"),
    "operator": Key("str", "auto", choices=("auto", "terminal", "none"),
                    help="where operator keys come from (auto: the terminal if stdin is one)"),
    "spin": Key("float", 0.001, min=0.0, max=0.05, help="busy-wait before each tick, s"),
    "rt": Key("int", 0, min=0, max=99, help="SCHED_FIFO priority of the loop thread (0 = off)"),
    "backend": Key("str", "auto", choices=BACKENDS, help=BACKEND_HELP),
    "num_threads": Key("int", 1, min=1, max=256, help="torch intra-op threads for the policy"),
    **CLIENT_KEYS,
}


def main(argv: list[str]) -> int:
    opts, rest = parse_keys(argv, KEYS, USAGE, __doc__, rest=lambda key: True,
                            tail="robot.KEY=VALUE: a driver option (see rtdp serve-robot --help); any other "
                                 "key=value is a policy override.")
    robot_args = [a for a in rest if a.startswith("robot.")]
    overrides = [a for a in rest if not a.startswith("robot.")]
    if is_address(opts["robot"]) and robot_args:
        raise CLIError(f"robot.KEY=VALUE options configure a driver; the server at {opts['robot']} takes them")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(opts["out"] or f"runs/deploy-{stamp}")
    if out.exists() and not out.is_dir():
        raise CLIError(f"out={out} is a file; give a directory for metrics.json and timing.png")
    record = Path(opts["record"]) if opts["record"] else out / "rollouts.zarr"
    if record.exists() and not record.is_dir():
        raise CLIError(f"record={record} is a file; give a zarr directory")
    from rtdp.policy.loading import checkpoint_exists

    if not checkpoint_exists(opts["checkpoint"]):
        raise CLIError(f"checkpoint {opts['checkpoint']} does not exist: give a run directory from `rtdp train`")
    from rtdp.hardware.keys import make_keys, operator_events

    try:
        keys = make_keys(opts["operator"])
    except RuntimeError as err:
        raise CLIError(str(err)) from None

    import torch

    from rtdp.policy.loading import load_policy

    torch.set_num_threads(opts["num_threads"])
    try:
        policy = load_policy(opts["checkpoint"], overrides, backend=opts["backend"])
    except Exception as err:  # noqa: BLE001 - any load failure is reported as one line
        raise CLIError(f"cannot load checkpoint {opts['checkpoint']} with {overrides}: {err}") from None
    hz = opts["hz"] or float(policy.fps)
    robot, local = connect_robot(opts["robot"], robot_args, opts)
    try:
        return _deploy(opts, policy, robot, keys, operator_events, hz, out, record, overrides)
    finally:
        keys.close()
        try:
            robot.disconnect()
        finally:
            if local is not None:
                local.close()


def _deploy(opts: dict[str, Any], policy, robot, keys, operator_events, hz: float, out: Path, record: Path,
            overrides: list[str]) -> int:
    from rtdp import metrics
    from rtdp.control.loop import ControlLoop
    from rtdp.control.recorder import EpisodeRecorder
    from rtdp.control.report import plot_timing, summarize
    from rtdp.datasets import ReplayBufferError
    from rtdp.hardware.client import RemoteEnvError, ServerGone
    from rtdp.hardware.robot_env import RobotEnv

    missing = [k for k in getattr(policy, "obs_keys", []) if k not in robot.features.state
               and k not in robot.features.cameras]
    if missing:
        raise CLIError(f"the policy reads {missing} but robot {robot.robot_name} gives "
                       f"{sorted(robot.features.state) + sorted(robot.features.cameras)}")
    try:
        recorder = EpisodeRecorder(record)
    except ReplayBufferError as err:
        raise CLIError(f"cannot record to {record}: {err}") from None
    env = RobotEnv(robot, events=lambda: operator_events(keys.poll()))
    loop = ControlLoop(env, policy, hz=hz, mode=opts["mode"], max_steps=opts["max_steps"], spin_s=opts["spin"],
                       record_data=True, realtime_priority=opts["rt"])
    results, episodes, failure = [], [], None
    t_start = time.perf_counter()
    try:
        for i in range(opts["episodes"]):
            try:
                ep = loop.run_episode(seed=opts["seed"] + i)
            except (ServerGone, RemoteEnvError) as err:
                failure = f"rollout {i} aborted: {err}"
                break
            results.append(ep)
            kept = recorder.add(ep)  # committed now: a later failure cannot lose it
            episodes.append({"seed": opts["seed"] + i, "success": ep.success, "steps": ep.n_env_steps,
                             "estop": env.estopped, "index": recorder.n_episodes - 1 if kept else None})
            print(f"rtdp deploy: rollout {i} (seed {opts['seed'] + i}): success {ep.success}, {ep.n_env_steps} "
                  f"steps{', E-STOP' if env.estopped else ''}", flush=True)
            if env.estopped:
                failure = (f"e-stop latched during rollout {i}: the robot holds; clear it with `rtdp teleop "
                           f"robot={robot.address} reset_estop=true`")
                break
            if env.quit:
                break
    finally:
        loop.close()
    try:
        server = robot.status()
    except (ServerGone, RemoteEnvError):
        server = {}
    summary = summarize(results)
    config = {"mode": opts["mode"], "hz": hz, "episodes": opts["episodes"], "max_steps": opts["max_steps"],
              "seed": opts["seed"], "robot": opts["robot"], "checkpoint": opts["checkpoint"],
              "overrides": overrides, "record": str(record)}
    metrics.write_json(out / "metrics.json", metrics.record(
        "deploy_run", config=config, summary=summary, episodes=episodes, failure=failure,
        robot_server={k: server.get(k) for k in ("stats", "safety", "refused", "latency_ms", "estop", "driver")},
        wall_s=time.perf_counter() - t_start))
    if results and results[0].steps:
        plot_timing(results[0], out / "timing.png", summary)
    if results:
        pe, lat = summary["period_error"], summary["inference_latency"]
        print(f"rtdp deploy: {len(results)} rollout(s), success {summary['success_rate']:.2f}, period error "
              f"p50/p99 {pe['p50_ms']:.3f}/{pe['p99_ms']:.3f} ms, inference p50 {lat['p50_ms']:.1f} ms, "
              f"{recorder.recorded} recorded to {record} -> {out}/metrics.json")
    if failure:
        print(f"rtdp deploy: error: {failure}", file=sys.stderr, flush=True)
        return 1
    return 0
