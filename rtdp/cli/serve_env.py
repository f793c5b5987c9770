"""`rtdp serve-env task=ID [key=value ...] [--bind ADDR] [--pub ADDR]`: serve an env over ZeroMQ.

`task` is an rtdp env id (`pusht`, `arm-lift`, `metaworld/<task>-v3`, `robosuite/lift`, made by
`rtdp.envs.make`) or `package.module:factory` for any other gymnasium env; every other `key=value` is passed
to the factory. No torch here: this runs in the robosuite environment and on robot PCs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from rtdp.cli.args import parse_value
from rtdp.cli.main import CLIError

USAGE = ("rtdp serve-env task=ID [key=value ...] [--bind tcp://127.0.0.1:5555] [--pub tcp://127.0.0.1:5556] "
         "[--max-sessions N] [--max-message-mb M]")


def env_factory(task: str, kwargs: dict[str, Any]) -> Callable[[], Any]:
    """A zero-argument env maker for an rtdp task id or a `module:callable` path."""
    if ":" in task:
        mod_name, _, attr = task.partition(":")
        try:
            fn = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as err:
            raise CLIError(f"cannot load env factory {task!r}: {err}; give package.module:callable") from None
        return lambda: fn(**kwargs)
    try:
        from rtdp.envs import make
    except ImportError as err:
        raise CLIError(f"rtdp.envs is not importable here ({err}); serve a `module:callable` instead") from None
    return lambda: make(task, **kwargs)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, str, dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="rtdp serve-env", usage=USAGE, add_help=True)
    parser.add_argument("--bind", default="tcp://127.0.0.1:5555", help="request/reply address to bind")
    parser.add_argument("--pub", default=None, help="also publish every observation (PUB) at this address")
    parser.add_argument("--max-sessions", type=int, default=4, help="clients served at once (one env each)")
    parser.add_argument("--max-message-mb", type=float, default=16.0, help="largest request accepted")
    parser.add_argument("overrides", nargs="*", help="task=ID and key=value env arguments")
    args = parser.parse_args(argv)
    kv: dict[str, Any] = {}
    for item in args.overrides:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CLIError(f"expected key=value, got {item!r}; usage: {USAGE}")
        kv[key] = parse_value(value)
    task = kv.pop("task", None) or kv.pop("env", None)
    if not task:
        raise CLIError(f"no task given: add task=pusht (or task=package.module:factory); usage: {USAGE}")
    if args.max_sessions < 1 or args.max_message_mb <= 0:
        raise CLIError("--max-sessions must be >= 1 and --max-message-mb > 0")
    return args, str(task), kv


def main(argv: list[str]) -> int:
    args, task, kwargs = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    import zmq

    from rtdp.hardware.server import serve

    # SIGTERM (docker stop, systemd, kill) shuts down like Ctrl-C: sockets and envs closed cleanly.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    def ready(server) -> None:
        pub = f", publishing at {server.publisher.endpoint}" if server.publisher else ""
        print(f"rtdp serve-env: serving {task} at {server.endpoint}{pub}", flush=True)

    factory = env_factory(task, kwargs)
    try:
        stats = serve(factory, args.bind, pub_bind=args.pub, name=task, on_ready=ready,
                      max_sessions=args.max_sessions, max_message_bytes=int(args.max_message_mb * 2**20))
    except zmq.ZMQError as err:
        raise CLIError(f"cannot bind {args.bind}: {err}; pick a free port or tcp://127.0.0.1:*") from None
    except (ValueError, TypeError, KeyError) as err:
        raise CLIError(f"cannot make env {task!r} with {kwargs}: {err}") from None
    print(f"rtdp serve-env: stopped; {stats}", file=sys.stderr, flush=True)
    return 0
