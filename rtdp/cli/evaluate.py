"""`rtdp eval task=ID [agent=expert | checkpoint=PATH] episodes=50 seed=0 n_envs=2 out=DIR [video=N]
[obs_mode=...] [max_steps=N] [num_threads=N] [overrides ...]`: seeded, vectorised evaluation; writes eval.json,
eval.png, videos. `num_threads` sets torch's intra-op threads (1 when other jobs share the CPU: two evaluations
of 2 threads each on 2 cores thrash).

With `checkpoint=PATH` every remaining `key=value` is a hydra-style override for the policy
(`sampler=ddim sampler.num_steps=10`); with `agent=expert` they go to the env constructor.
"""

from __future__ import annotations

import json
from pathlib import Path

from rtdp.cli.args import _int, out_dir, parse_kv
from rtdp.cli.collect import task_args
from rtdp.cli.main import CLIError

USAGE = ("rtdp eval task=ID [agent=expert | checkpoint=PATH] [episodes=50] [seed=0] [n_envs=2] out=DIR "
         "[video=N] [obs_mode=MODE] [max_steps=N] [num_threads=N] [progress=true] [overrides ...]")


def main(argv: list[str]) -> int:
    from rtdp.envs.errors import MissingDependencyError

    raw = {a.partition("=")[0].lstrip("-"): a.partition("=")[2] for a in argv if "=" in a}
    args = parse_kv(argv, USAGE)
    env_cfg = _checkpoint_env(args.get("checkpoint"))
    # a checkpoint's task config supplies the task, observation mode and episode limit it was trained for
    for key, cfg_key in (("task", "id"), ("obs_mode", "obs_mode"), ("max_steps", "max_steps")):
        if key not in args and env_cfg.get(cfg_key) is not None:
            args[key] = env_cfg[cfg_key]
    task, obs_mode = task_args(args, USAGE)
    episodes = _int(args, "episodes", 50)
    n_envs = _int(args, "n_envs", 2)
    seed = _int(args, "seed", 0)
    videos = _int(args, "video", 0)
    max_steps = _int(args, "max_steps")
    num_threads = _int(args, "num_threads")
    if episodes < 1 or n_envs < 1 or videos < 0 or (num_threads is not None and num_threads < 1):
        raise CLIError(f"episodes, n_envs and num_threads must be >= 1 and video >= 0; usage: {USAGE}")
    out = out_dir(args, USAGE, "DIR", "eval.json, eval.png and videos")
    progress = bool(args.pop("progress", True))
    checkpoint = args.pop("checkpoint", None)
    agent_name = args.pop("agent", None if checkpoint is not None else "expert")
    if checkpoint is not None and agent_name is not None:
        raise CLIError("give either agent=expert or checkpoint=PATH, not both")
    env_kwargs: dict = {}
    if checkpoint is not None:
        path = Path(str(checkpoint))
        if not path.exists():
            raise CLIError(f"checkpoint={path} does not exist")
        from rtdp.policy.loading import load_policy
        overrides = [f"{k}={raw.get(k, v)}" for k, v in args.items()]
        if num_threads is not None:
            import torch

            torch.set_num_threads(num_threads)
        try:
            agent = load_policy(path, overrides)
        except (ValueError, KeyError, FileNotFoundError) as err:
            raise CLIError(f"cannot load {path}: {err}") from None
    elif agent_name == "expert":
        from rtdp.envs.experts import make_expert

        env_kwargs = args
        try:
            agent = make_expert(task, **{k: v for k, v in args.items() if k == "control"})
        except (MissingDependencyError, ValueError) as err:
            raise CLIError(str(err)) from None
    else:
        raise CLIError(f"unknown agent={agent_name!r}: use agent=expert or checkpoint=PATH")
    from rtdp.envs.evaluate import evaluate

    try:
        rec = evaluate(agent, task, n_episodes=episodes, seed=seed, n_envs=n_envs, obs_mode=obs_mode,
                       max_steps=max_steps, n_videos=videos, progress=progress, env_kwargs=env_kwargs,
                       out_dir=out)
    except (MissingDependencyError, ValueError, TypeError) as err:
        raise CLIError(str(err)) from None
    print(json.dumps(rec["summary"]))
    return 0


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
