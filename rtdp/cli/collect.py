"""`rtdp collect task=ID episodes=N out=PATH.zarr [seed=0] [obs_mode=...] [keep_failed=false] [max_steps=...]
[action_noise=0] [key=value ...]`: scripted-expert demonstrations into a ReplayBuffer (resumable: re-run to
append up to N). `action_noise=0.2` executes the expert's actions with noise and records the clean ones (DART).

Any other `key=value` is passed to the env constructor (e.g. `control=ee_abs` for arm-lift).
"""

from __future__ import annotations

import json
from typing import Any

from rtdp.cli.args import _int, out_dir, parse_kv
from rtdp.cli.main import CLIError

USAGE = ("rtdp collect task=ID episodes=N out=PATH.zarr [seed=0] [obs_mode=MODE] [keep_failed=false] "
         "[max_steps=N] [action_noise=0] [progress=true] [env key=value ...]")


def task_args(args: dict[str, Any], usage: str) -> tuple[str, str | None]:
    """Pop and check `task=` and `obs_mode=`: unknown tasks list the known ones, unknown modes the task's modes."""
    from rtdp.envs import check_obs_mode, get_spec
    from rtdp.envs.errors import UnknownTaskError

    task = args.pop("task", None)
    if task is None:
        raise CLIError(f"missing task=ID; usage: {usage}")
    task = str(task)
    try:
        get_spec(task)
    except UnknownTaskError as err:
        raise CLIError(str(err)) from None
    obs_mode = args.pop("obs_mode", None)
    try:
        obs_mode = check_obs_mode(task, None if obs_mode is None else str(obs_mode))
    except ValueError as err:
        raise CLIError(str(err)) from None
    return task, obs_mode


def main(argv: list[str]) -> int:
    from rtdp.envs.errors import MissingDependencyError

    args = parse_kv(argv, USAGE)
    task, obs_mode = task_args(args, USAGE)
    episodes = _int(args, "episodes")
    if episodes is None or episodes < 1:
        raise CLIError(f"episodes=N (N >= 1) is required; usage: {USAGE}")
    out = out_dir(args, USAGE, "PATH.zarr", "the replay buffer")
    seed = _int(args, "seed", 0)
    max_steps = _int(args, "max_steps")
    keep_failed = bool(args.pop("keep_failed", False))
    progress = bool(args.pop("progress", True))
    noise = args.pop("action_noise", 0.0)
    if not isinstance(noise, (int, float)) or isinstance(noise, bool):
        raise CLIError(f"action_noise must be a number (a fraction of the action range), got {noise!r}")
    from rtdp.envs.collect import collect

    try:
        summary = collect(task, episodes, out, seed=seed, obs_mode=obs_mode, keep_failed=keep_failed,
                          progress=progress, max_steps=max_steps, env_kwargs=args,
                          action_noise=float(noise))
    except (MissingDependencyError, ValueError, TypeError) as err:
        raise CLIError(str(err)) from None
    print(json.dumps(summary))
    return 0
