"""`rtdp run (checkpoint=PATH | agent=expert) env=ID|tcp://HOST:PORT [mode=async] [hz=10] ...`: run a policy
in the fixed-rate control loop against a local or remote env, write metrics JSON + a timing plot, and
optionally record the episodes into a replay buffer. Any key=value not listed below is a policy override
(`sampler=ddim`, `sampler.num_steps=10`, ...) passed to the checkpoint loader.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import time
from pathlib import Path
from typing import Any

from rtdp.cli.args import BACKEND_HELP, BACKENDS, CACHE_HELP, Key, parse_keys
from rtdp.cli.main import CLIError

USAGE = ("rtdp run (checkpoint=PATH | agent=expert) env=pusht|tcp://127.0.0.1:5555 [mode=sync|async] [hz=10] "
         "[episodes=1] [max_steps=300] [seed=0] [out=DIR] [record=PATH.zarr] [backend=auto|eager|onnx|cuda_graph] "
         "[cache=bac|PATH] [sampler overrides ...]")
KEYS = {
    "checkpoint": Key("str", help="a run or checkpoint directory written by `rtdp train`, or lerobot:DIR for a "
                                  "diffusion policy saved by LeRobot (docs/lerobot.md)"),
    "agent": Key("str", help="expert, or package.module:factory returning an Agent"),
    "env": Key("str", help="an rtdp task id, the tcp:// or ipc:// address of `rtdp serve-env`, or module:factory"),
    "task": Key("str", help="the rtdp id of a remote env (to pick the expert for agent=expert)"),
    "obs_mode": Key("str", help="the local env's observation mode"),
    "mode": Key("str", "async", choices=("sync", "async"), help="inference on the loop thread or in a worker"),
    "hz": Key("float", 10.0, min=1.0, max=500.0, help="control rate"),
    "episodes": Key("int", 1, min=1, help="episodes to run (seeds seed, seed+1, ...)"),
    "max_steps": Key("int", 300, min=1, help="executed actions per episode at most"),
    "seed": Key("int", 0, min=0, help="the first episode's seed"),
    "out": Key("str", help="run directory for metrics.json and timing.png (default runs/run-<time>)"),
    "record": Key("str", help="a replay buffer (zarr) to record the episodes into"),
    "timeout": Key("float", 2.0, min=0.001, help="remote env reply timeout, s"),
    "retries": Key("int", 2, min=0, help="remote env retries per request"),
    "spin": Key("float", 0.001, min=0.0, max=0.05, help="busy-wait before each tick, s"),
    "rt": Key("int", 0, min=0, max=99, help="SCHED_FIFO priority of the loop thread (0 = off)"),
    "keys": Key("str", help="CURVE key folder of `rtdp serve-env keygen=DIR` (a server off loopback)"),
    "server_key": Key("str", help="the server's public CURVE key file (instead of keys=)"),
    "client_key": Key("str", help="this client's secret CURVE key file (instead of keys=)"),
    "backend": Key("str", "auto", choices=BACKENDS, help=BACKEND_HELP),
    "cache": Key("str", None, help=CACHE_HELP),
}


def _factory(path: str):
    mod, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as err:
        raise CLIError(f"cannot load {path!r}: {err}; give package.module:callable") from None


def make_env(opts: dict[str, Any]):
    """The env: a RemoteEnv for tcp://, ipc://; a factory path; or an rtdp task id."""
    env_id = opts.get("env")
    if not env_id:
        raise CLIError(f"no env given: add env=pusht or env=tcp://127.0.0.1:5555; usage: {USAGE}")
    if "://" in env_id:
        import zmq

        from rtdp.hardware.client import RemoteEnv, ServerGone

        try:
            return RemoteEnv(env_id, timeout_s=opts["timeout"], retries=opts["retries"], keys=opts["keys"],
                             server_key=opts["server_key"], client_key=opts["client_key"])
        except (ServerGone, ValueError, zmq.ZMQError) as err:
            raise CLIError(f"env={env_id}: {err}; give the address `rtdp serve-env` binds, "
                           "e.g. tcp://127.0.0.1:5555") from None
    if ":" in env_id:
        return _factory(env_id)()
    from rtdp.envs import make

    try:
        return make(env_id, obs_mode=opts.get("obs_mode"))
    except Exception as err:  # noqa: BLE001 - unknown id, bad obs_mode, missing simulator: user-fixable
        raise CLIError(f"cannot make env {env_id!r}: {err}") from None


def make_agent(opts: dict[str, Any], overrides: list[str]):
    """The agent: a checkpoint's policy, a task's scripted expert, or a factory path."""
    ckpt, agent = opts.get("checkpoint"), opts.get("agent")
    if bool(ckpt) == bool(agent):
        raise CLIError(f"give exactly one of checkpoint=PATH or agent=expert; usage: {USAGE}")
    if overrides and not ckpt:
        raise CLIError(f"unknown options {overrides} (policy overrides need checkpoint=...); usage: {USAGE}")
    if ckpt:
        from rtdp.policy.loading import checkpoint_exists

        if not checkpoint_exists(ckpt):
            raise CLIError(f"checkpoint {ckpt} does not exist: give a file or run directory from `rtdp train`")
        from rtdp.policy.loading import load_policy  # torch is imported only on this path

        try:
            return load_policy(ckpt, overrides, backend=opts.get("backend") or "auto", cache=opts.get("cache"))
        except Exception as err:  # noqa: BLE001 - any load failure is reported as one line
            raise CLIError(f"cannot load checkpoint {ckpt} with {overrides}: {err}") from None
    if agent == "expert":
        task = opts.get("task") or opts.get("env", "")
        if "://" in task:
            raise CLIError("agent=expert with a remote env needs task=<rtdp id> to pick the expert")
        from rtdp.envs.experts import make_expert

        try:
            return make_expert(task)
        except Exception as err:  # noqa: BLE001 - unknown task or missing simulator
            raise CLIError(f"no expert for {task!r}: {err}") from None
    if ":" in agent:
        return _factory(agent)()
    raise CLIError(f"agent={agent!r}: use agent=expert or agent=package.module:factory")


def main(argv: list[str]) -> int:
    opts, overrides = parse_keys(argv, KEYS, USAGE, __doc__, rest=lambda key: True,
                                 tail="Any other key=value is a policy override (with checkpoint=...).")
    mode, hz, episodes, max_steps = opts["mode"], opts["hz"], opts["episodes"], opts["max_steps"]
    seed, spin, rt, record = opts["seed"], opts["spin"], opts["rt"], opts["record"]
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(opts["out"] or f"runs/run-{stamp}")
    if out.exists() and not out.is_dir():  # checked now: the run must not end in a failed write
        raise CLIError(f"out={out} is a file; give a directory for metrics.json and timing.png")

    agent = make_agent(opts, overrides)
    env = make_env(opts)
    recorder = None
    if record:
        from rtdp.control.recorder import EpisodeRecorder
        from rtdp.datasets import ReplayBufferError

        try:
            recorder = EpisodeRecorder(record)
        except ReplayBufferError as err:
            raise CLIError(f"cannot record to {record}: {err}") from None

    from rich.progress import Progress

    from rtdp import metrics
    from rtdp.control.loop import ControlLoop
    from rtdp.control.report import plot_timing, summarize
    from rtdp.hardware.client import EpisodeLost, RemoteEnvError, ServerGone

    loop = ControlLoop(env, agent, hz=hz, mode=mode, max_steps=max_steps, spin_s=spin,
                       record_data=recorder is not None, realtime_priority=rt)
    results, failure = [], None
    t_start = time.perf_counter()
    try:
        with Progress(transient=True) as progress:
            bar = progress.add_task(f"{mode} @ {hz:g} Hz", total=episodes)
            for i in range(episodes):
                try:
                    ep = loop.run_episode(seed=seed + i)
                except (ServerGone, EpisodeLost, RemoteEnvError) as err:
                    failure = f"episode {i} aborted: {err}"
                    break
                results.append(ep)
                if recorder is not None:
                    recorder.add(ep)  # committed now: a later failure cannot lose it
                progress.advance(bar)
    finally:
        loop.close()
        env.close()
    summary = summarize(results)
    config = {"mode": mode, "hz": hz, "rt": rt, "episodes": episodes, "max_steps": max_steps, "seed": seed,
              "env": opts.get("env"), "checkpoint": opts.get("checkpoint"), "agent": opts.get("agent"),
              "overrides": overrides, "record": record, "backend": opts.get("backend"),
              "cache": opts.get("cache")}
    metrics.write_json(out / "metrics.json", metrics.record("control_run", config=config, summary=summary,
                                                            failure=failure,
                                                            wall_s=time.perf_counter() - t_start))
    if results and results[0].steps:
        plot_timing(results[0], out / "timing.png", summary)
    if results:
        pe = summary["period_error"]
        print(f"rtdp run: {len(results)} episode(s), success {summary['success_rate']:.2f}, period error "
              f"p50/p99 {pe['p50_ms']:.3f}/{pe['p99_ms']:.3f} ms, {summary['deadline_misses']} deadline misses, "
              f"inference p50 {summary['inference_latency']['p50_ms']:.1f} ms -> {out}/metrics.json")
    if recorder is not None:
        print(f"rtdp run: recorded {recorder.recorded} episode(s) to {record} ({recorder.n_episodes} in store)")
    if failure:
        print(f"rtdp run: error: {failure}", flush=True)
        return 1
    return 0
