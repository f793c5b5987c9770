"""`rtdp eval task=ID [agent=expert | checkpoint=PATH] out=DIR [episodes=50] [seed=0] [n_envs=2] [video=N]
[obs_mode=...] [max_steps=N] [num_threads=N] [delay=0|N|auto] [execution=naive|blend|ensemble]
[backend=auto|eager|onnx|cuda_graph] [cache=bac|PATH] [overrides ...]`: seeded, vectorised evaluation; writes eval.json,
eval.png, seams.png and videos.

`delay=N` lets the world move while the policy thinks: every plan after the first arrives N control steps after
its observation and the env keeps executing the earlier plans meanwhile, as an asynchronous robot does
(`delay=auto`: the policy's inference time at the task's rate, measured first with a short batch-1 timing run
and reported). `execution` says how overlapping plans are merged: naive switching (the default), LeRobot's
blending or ACT's temporal ensembling (baselines for `sampler=rtc`; docs/rtc.md).

With `checkpoint=PATH` every other `key=value` is a hydra-style override for the policy (`sampler=ddim
sampler.num_steps=10`), and the checkpoint's task supplies `task`, `obs_mode` and `max_steps` unless given; with
`agent=expert` they go to the env constructor. The sampler's noise is seeded from `seed` too, so a command
repeats its figures exactly. `num_threads=1` when other jobs share the CPU (two evaluations of 2 threads each
on 2 cores thrash).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rtdp.cli.args import (
    BACKEND_HELP,
    BACKENDS,
    CACHE_HELP,
    ENV_ADDRESS_HELP,
    Key,
    env_address,
    parse_keys,
    parse_value,
)
from rtdp.cli.collect import check_task
from rtdp.cli.main import CLIError

USAGE = ("rtdp eval task=ID [agent=expert | checkpoint=PATH] out=DIR [episodes=50] [seed=0] [n_envs=2] "
         "[video=N] [obs_mode=MODE] [max_steps=N] [num_threads=N] [delay=0|N|auto] [execution=naive|blend|ensemble] "
         "[backend=auto|eager|onnx|cuda_graph] [cache=bac|PATH] [only_task=NAME] [env=tcp://ADDR] [progress=true] "
         "[overrides ...]")
TIMING_CALLS = 12  # plans timed for delay=auto, after the start-up call
KEYS = {
    "task": Key("str", help="the rtdp task id (default: the checkpoint's task)"),
    "checkpoint": Key("str", help="a run or checkpoint directory written by `rtdp train`, or lerobot:DIR for a "
                                  "diffusion policy saved by LeRobot (with task= and obs_mode=; docs/lerobot.md)"),
    "agent": Key("str", choices=("expert",), help="evaluate the task's scripted expert instead"),
    "out": Key("str", required=True, help="directory for eval.json, eval.png and videos"),
    "episodes": Key("int", 50, min=1, help="seeded episodes (seeds seed, seed+1, ...)"),
    "seed": Key("int", 0, min=0, help="the first episode's seed; also seeds the sampler's noise"),
    "n_envs": Key("int", 2, min=1, help="envs stepped in parallel (one process each)"),
    "video": Key("int", 0, min=0, help="episodes to record as MP4"),
    "obs_mode": Key("str", help="the env's observation mode (default: the checkpoint's)"),
    "max_steps": Key("int", None, min=1, help="episode step limit (default: the task's)"),
    "num_threads": Key("int", None, min=1, help="torch intra-op threads"),
    "progress": Key("bool", True, help="show a progress bar"),
    "delay": Key("str", "0", help="control steps each plan takes to arrive while the env keeps executing the "
                 "previous one (an integer >= 0), or auto: measured first at batch 1"),
    "execution": Key("str", "naive", choices=("naive", "blend", "ensemble"),
                     help="how overlapping plans are merged: naive switching, LeRobot's blending, ACT's ensembling"),
    "backend": Key("str", "auto", choices=BACKENDS, help=BACKEND_HELP),
    "cache": Key("str", None, help=CACHE_HELP),
    "only_task": Key("str", help="task=metaworld/mt10: run this one of its tasks (<name>-v3) in every episode, "
                     "with its task id"),
    "env": Key("str", help=ENV_ADDRESS_HELP),
}


def main(argv: list[str]) -> int:
    from rtdp.envs.errors import MissingDependencyError

    args, rest = parse_keys(argv, KEYS, USAGE, __doc__, rest=lambda key: True,
                            tail="Any other key=value: a policy override (with checkpoint) or an env option.")
    checkpoint, agent_name = args["checkpoint"], args["agent"]
    if checkpoint is not None and agent_name is not None:
        raise CLIError("give either agent=expert or checkpoint=PATH, not both")
    delay = _delay(args["delay"])
    env_cfg = _checkpoint_env(checkpoint)
    # a checkpoint's task config supplies the task, observation mode and episode limit it was trained for
    for key, cfg_key in (("task", "id"), ("obs_mode", "obs_mode"), ("max_steps", "max_steps")):
        if args[key] is None and env_cfg.get(cfg_key) is not None:
            args[key] = env_cfg[cfg_key]
    if checkpoint is not None and str(checkpoint).startswith("lerobot:") and args["task"] is None:
        raise CLIError("a LeRobot checkpoint does not say which env it was trained for: give task=ID and obs_mode= "
                       "(e.g. task=pusht obs_mode=keypoints)")
    task, obs_mode = check_task(args["task"], args["obs_mode"], USAGE)
    out = Path(args["out"])
    if out.exists() and not out.is_dir():
        raise CLIError(f"out={out} is a file; give a directory for eval.json, eval.png and videos")
    env_kwargs: dict = {}
    if checkpoint is not None:
        from rtdp.policy.loading import checkpoint_exists

        path = checkpoint
        if not checkpoint_exists(path):
            raise CLIError(f"checkpoint={path} does not exist")
        import torch

        from rtdp.policy.loading import load_policy

        if args["num_threads"] is not None:
            torch.set_num_threads(args["num_threads"])
        try:
            agent = load_policy(path, rest, backend=args["backend"], cache=args["cache"])
        except (ValueError, KeyError, FileNotFoundError) as err:
            raise CLIError(f"cannot load {path}: {err}") from None
        torch.manual_seed(args["seed"])  # the sampler's noise: the same command gives the same figures
    else:
        if args["cache"] is not None:
            raise CLIError("cache= caches a transformer policy's blocks: it needs checkpoint=PATH, not agent=expert")
        from rtdp.envs.experts import make_expert

        env_kwargs = {k: parse_value(v) for k, v in (a.split("=", 1) for a in rest)}
        try:
            agent = make_expert(task, **{k: v for k, v in env_kwargs.items() if k == "control"})
        except (MissingDependencyError, ValueError) as err:
            raise CLIError(str(err)) from None
    if args["only_task"] is not None:
        env_kwargs["only_task"] = args["only_task"]
    env_kwargs.update(env_address(args["env"]))
    from rtdp.envs.evaluate import evaluate
    from rtdp.envs.execution import check_delay

    timing = None
    if delay == "auto":  # measure first, then say what was measured
        from rtdp.envs.timing import describe_timing, time_inference

        try:
            # episodes at the task's own length: an evaluation's shorter max_steps may end them before a replan
            timing = time_inference(agent, task, n_calls=TIMING_CALLS, seed=args["seed"], obs_mode=obs_mode,
                                    env_kwargs=env_kwargs)
        except (MissingDependencyError, ValueError, TypeError, ConnectionError) as err:
            raise CLIError(f"delay=auto: the timing run failed: {err}") from None
        delay = int(timing["delay_steps"])
        measured = f"delay=auto: {describe_timing(timing)}"
        try:
            check_delay(agent, delay)
        except ValueError as err:
            raise CLIError(f"{measured}, which this policy cannot run: {err}") from None
        print(f"rtdp eval: {measured}", file=sys.stderr, flush=True)
        if checkpoint is not None:
            import torch

            torch.manual_seed(args["seed"])  # the timing run drew noise: delay=auto repeats delay=<measured>
    try:
        check_delay(agent, delay)
        rec = evaluate(agent, task, n_episodes=args["episodes"], seed=args["seed"], n_envs=args["n_envs"],
                       obs_mode=obs_mode, max_steps=args["max_steps"], n_videos=args["video"],
                       progress=args["progress"], env_kwargs=env_kwargs, out_dir=out, delay=delay,
                       execution=args["execution"], timing=timing)
    except (MissingDependencyError, ValueError, TypeError, ConnectionError) as err:
        raise CLIError(str(err)) from None
    print(json.dumps(rec["summary"]))
    return 0


def _delay(raw: str) -> int | str:
    """`delay=`'s value: a number of control steps >= 0, or `auto`."""
    text = str(raw).strip().lower()
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise CLIError(f"delay={raw!r} is not valid: delay takes a number of control steps >= 0 or auto")
    return value


def _checkpoint_env(checkpoint) -> dict:
    """`task.env` of a checkpoint's saved config ({} when there is none or it cannot be read)."""
    if checkpoint is None:
        return {}
    path = Path(str(checkpoint))
    for cfg_path in (path / "config.yaml", path.parent / "config.yaml"):
        if cfg_path.is_file():
            import yaml
            from omegaconf import OmegaConf
            from omegaconf.errors import OmegaConfBaseException

            try:
                env = OmegaConf.select(OmegaConf.load(cfg_path), "task.env", default=None)
                return dict(OmegaConf.to_container(env, resolve=True)) if env is not None else {}
            except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException):
                return {}  # an unreadable config is reported by load_policy with its own message
    return {}
