"""`rtdp collect task=ID episodes=N out=PATH.zarr [seed=0] [obs_mode=...] [keep_failed=false] [max_steps=...]
[action_noise=0] [key=value ...]`: scripted-expert demonstrations into a ReplayBuffer (resumable: re-run to
append up to N). `action_noise=0.2` executes the expert's actions with noise and records the clean ones (DART).

Any other `key=value` is passed to the env constructor (e.g. `control=ee_abs` for arm-lift).
"""

from __future__ import annotations

import json
from pathlib import Path

from rtdp.cli.args import ENV_ADDRESS_HELP, Key, env_address, parse_keys, parse_value
from rtdp.cli.main import CLIError

USAGE = ("rtdp collect task=ID episodes=N out=PATH.zarr [seed=0] [obs_mode=MODE] [keep_failed=false] "
         "[max_steps=N] [action_noise=0] [env=tcp://ADDR] [progress=true] [env key=value ...]")
KEYS = {
    "task": Key("str", required=True, help="the rtdp task id (its scripted expert collects)"),
    "episodes": Key("int", required=True, min=1, help="episodes the buffer should hold (resumes up to it)"),
    "out": Key("str", required=True, help="the replay buffer (zarr) to create or append to"),
    "seed": Key("int", 0, min=0, help="attempt k uses seed seed+k"),
    "obs_mode": Key("str", help="the env's observation mode (default: the task's)"),
    "keep_failed": Key("bool", False, help="keep episodes the expert failed"),
    "max_steps": Key("int", None, min=1, help="episode step limit (default: the task's)"),
    "action_noise": Key("float", 0.0, min=0.0, max=1.0, help="DART noise, a fraction of the action range"),
    "progress": Key("bool", True, help="show a progress bar"),
    "env": Key("str", help=ENV_ADDRESS_HELP),
}


def check_task(task: str | None, obs_mode: str | None, usage: str) -> tuple[str, str | None]:
    """Check `task=` and `obs_mode=`: unknown tasks list the known ones, unknown modes the task's modes."""
    from rtdp.envs import check_obs_mode, get_spec
    from rtdp.envs.errors import UnknownTaskError

    if task is None:
        raise CLIError(f"missing task=ID; usage: {usage}")
    try:
        get_spec(task)
    except UnknownTaskError as err:
        raise CLIError(str(err)) from None
    try:
        return task, check_obs_mode(task, obs_mode)
    except ValueError as err:
        raise CLIError(str(err)) from None


def main(argv: list[str]) -> int:
    from rtdp.envs.errors import MissingDependencyError

    args, rest = parse_keys(argv, KEYS, USAGE, __doc__, rest=lambda key: True,
                            tail="Any other key=value is an env option (e.g. control=ee_abs for arm-lift).")
    task, obs_mode = check_task(args["task"], args["obs_mode"], USAGE)
    out = Path(args["out"])
    if out.exists() and not out.is_dir():
        raise CLIError(f"out={out} is a file; give a directory for the replay buffer")
    env_kwargs = {k: parse_value(v) for k, v in (a.split("=", 1) for a in rest)}
    env_kwargs.update(env_address(args["env"]))
    from rtdp.envs.collect import collect

    try:
        summary = collect(task, args["episodes"], out, seed=args["seed"], obs_mode=obs_mode,
                          keep_failed=args["keep_failed"], progress=args["progress"], max_steps=args["max_steps"],
                          env_kwargs=env_kwargs, action_noise=args["action_noise"])
    except (MissingDependencyError, ValueError, TypeError, ConnectionError) as err:
        raise CLIError(str(err)) from None
    print(json.dumps(summary))
    return 0
