"""The `rtdp` command: a table of subcommands, each a module with `main(argv) -> int`, imported lazily so
that `rtdp serve-env` starts without torch (the robosuite environment has none)."""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("rtdp.cli.demo", "run the main job end to end on the embedded default"),
    "data": ("rtdp.cli.data", "inspect, convert and import/export replay buffers (info|stats|convert|...)"),
    "collect": ("rtdp.cli.collect", "collect scripted-expert demonstrations into a replay buffer"),
    "train": ("rtdp.cli.train", "train a diffusion policy (hydra overrides: policy=... task=...)"),
    "eval": ("rtdp.cli.evaluate", "evaluate a checkpoint or expert on seeded episodes"),
    "bench": ("rtdp.cli.bench", "run a benchmark suite (rows of checkpoint x sampler x seeds) and write its report"),
    "serve-env": ("rtdp.cli.serve_env", "serve an rtdp gymnasium env over ZeroMQ"),
    "run": ("rtdp.cli.run", "run a policy in a fixed-rate control loop against a local or remote env"),
    "calibrate-rti": ("rtdp.cli.calibrate_rti", "sweep the RTI warm-start level tau and pick one"),
    "calibrate-cache": ("rtdp.cli.calibrate_cache", "calibrate a block-wise adaptive cache (BAC) for a transformer"),
    "serve-robot": ("rtdp.cli.serve_robot", "serve a robot (sim-arm, a LeRobot arm) over ZeroMQ with the safety layer"),
    "teleop": ("rtdp.cli.teleop", "drive a robot by hand (keyboard, gamepad, SpaceMouse) or with a scripted expert"),
    "record": ("rtdp.cli.record", "record teleoperated demonstrations on a robot into a replay buffer"),
    "deploy": ("rtdp.cli.deploy", "run a checkpoint on a robot through its robot server, recording every rollout"),
}


class CLIError(Exception):
    """A user error: printed as one line, exit code 2, nothing written."""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: rtdp <command> [args]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rtdp: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except CLIError as err:
        print(f"rtdp {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rtdp {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Under `python -m rtdp.cli.main` (torchrun) this file runs as `__main__`, a second copy whose CLIError is
    # not the one subcommands raise: dispatch through the imported module so errors stay one line, exit 2.
    from rtdp.cli.main import main as _main

    sys.exit(_main())
