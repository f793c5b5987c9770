"""`rtdp serve-env task=ID [key=value ...]`: serve an env over ZeroMQ (`rtdp serve-env --help` lists the keys).

`task` is an rtdp env id (`pusht`, `arm-lift`, `metaworld/<task>-v3`, `robosuite/lift`, made by
`rtdp.envs.make`) or `package.module:factory` for any other gymnasium env. The server's own options are
keys (`bind=tcp://127.0.0.1:5555 max_sessions=4`) or the equivalent flags (`--bind ...`,
`--max-sessions 4`); every other `key=value` is passed to the env factory (`env.KEY=VALUE` passes a key that
is also a server option). `rtdp serve-env keygen=DIR` makes CURVE keys instead of serving.
No torch here: this runs in the robosuite environment and on robot PCs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rtdp.cli.args import parse_value
from rtdp.cli.main import CLIError

if TYPE_CHECKING:
    from rtdp.hardware.curve import ServerKeys

USAGE = ("rtdp serve-env task=ID [bind=tcp://127.0.0.1:5555] [pub=ADDR] [max_sessions=4] [max_message_mb=1] "
         "[keys=DIR] [safety=true] [env key=value ...]  |  rtdp serve-env keygen=DIR [key_name=client]")


@dataclass(frozen=True)
class Option:
    """One server option: `key=value` and `--key-with-dashes value` are the same thing."""

    key: str
    kind: str  # "str", "int", "float", "bool", "path"
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


OPTIONS = [
    Option("bind", "str", "tcp://127.0.0.1:5555", "request/reply address to bind (tcp://HOST:PORT, port * = any "
           "free one; ipc://PATH)"),
    Option("pub", "str", None, "also publish every observation (PUB) at this address"),
    Option("max_sessions", "int", 4, "clients served at once (one env each)"),
    Option("max_message_mb", "float", 1.0, "largest request accepted, MiB (requests are actions: ~100 bytes)"),
    Option("idle_s", "float", 60.0, "a session idle this long (s) may be evicted for a new client; active ones "
           "never are"),
    Option("keys", "path", None, "CURVE key directory (from keygen=DIR): only listed clients connect, all "
           "traffic encrypted; required unless every bind address is loopback"),
    Option("insecure", "bool", False, "serve a non-loopback address without keys (unauthenticated, in clear)"),
    Option("safety", "bool", False, "wrap the env in SafetyWrapper: refuse NaN/inf (hold), clamp to the action "
           "space"),
    Option("max_delta", "float", None, "safety: largest change of each action dimension per step (implies "
           "safety=true)"),
    Option("watchdog_s", "float", None, "safety: hold when steps are further apart than this, s (implies "
           "safety=true)"),
    Option("keygen", "path", None, "make CURVE keys in this directory (server pair if missing + one client "
           "pair), then exit"),
    Option("key_name", "str", "client", "keygen: name of the client key pair to make"),
]
BY_KEY = {o.key: o for o in OPTIONS}


def env_factory(task: str, kwargs: dict[str, Any], safety: dict[str, Any] | None = None) -> Callable[[], Any]:
    """A zero-argument env maker for an rtdp task id or a `module:callable` path (safety-wrapped if asked)."""
    if ":" in task:
        mod_name, _, attr = task.partition(":")
        try:
            fn = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as err:
            raise CLIError(f"cannot load env factory {task!r}: {err}; give package.module:callable") from None

        def make() -> Any:
            return fn(**kwargs)
    else:
        try:
            from rtdp.envs import make as make_task
        except ImportError as err:
            raise CLIError(f"rtdp.envs is not importable here ({err}); serve a `module:callable` instead") from None

        def make() -> Any:
            return make_task(task, **kwargs)

    if safety is None:
        return make
    from rtdp.hardware.safety import SafetyWrapper

    return lambda: SafetyWrapper(make(), **safety)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one `CLIError` line (exit 2) instead of usage text."""

    def error(self, message: str):  # type: ignore[override]
        raise CLIError(f"{message}; usage: {USAGE}")


def _describe(o: Option) -> str:
    """One `--help` line for a key: its form, default and meaning."""
    form = "true|false" if o.kind == "bool" else o.kind.upper()
    default = "" if o.default is None else f" (default {str(o.default).lower() if o.kind == 'bool' else o.default})"
    return f"  {o.key}={form}{default}: {o.help}"


def _parser() -> argparse.ArgumentParser:
    keys = "\n".join(_describe(o) for o in OPTIONS)
    parser = _Parser(prog="rtdp serve-env", usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Serve a gymnasium env over ZeroMQ (see docs/protocol.md).",
                     epilog=f"keys (each also a flag, e.g. --max-sessions 4):\n  task=ID: rtdp task id or "
                            f"package.module:factory (required to serve)\n{keys}\n  env.KEY=VALUE: pass KEY to "
                            "the env even where it names a server option\n  any other KEY=VALUE: passed to the "
                            "env factory")
    for o in OPTIONS:
        if o.kind == "bool":
            parser.add_argument(o.flag, dest=o.key, action="store_const", const=True, default=None,
                                help=o.help)
        else:
            parser.add_argument(o.flag, dest=o.key, default=None, metavar=o.kind.upper(), help=o.help)
    parser.add_argument("overrides", nargs="*", help="task=ID, server keys and env key=value arguments")
    return parser


def _typed(o: Option, raw: Any, given_as: str) -> Any:
    """A server option's value, checked: finite positive numbers, integers, booleans."""
    value = parse_value(raw) if isinstance(raw, str) else raw
    if o.kind == "bool":
        if not isinstance(value, bool):
            raise CLIError(f"{given_as} must be true or false, got {raw!r}")
        return value
    if o.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise CLIError(f"{given_as} must be an integer, got {raw!r}")
        return value
    if o.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CLIError(f"{given_as} must be a finite number, got {raw!r}")
        return float(value)
    return str(raw)


def parse_args(argv: list[str]) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """(server options, task or None, env kwargs) from flags and `key=value` arguments."""
    args = _parser().parse_intermixed_args(argv)
    opts: dict[str, Any] = {}
    for o in OPTIONS:
        raw = getattr(args, o.key)
        if raw is not None:
            opts[o.key] = _typed(o, raw, o.flag)
    kv: dict[str, Any] = {}
    task = None
    for item in args.overrides:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CLIError(f"expected key=value, got {item!r}; usage: {USAGE}")
        if key in ("task", "env"):
            task = value
        elif key in BY_KEY:
            if key in opts:
                raise CLIError(f"{key} given twice (as {BY_KEY[key].flag} and {key}=)")
            opts[key] = _typed(BY_KEY[key], value, f"{key}=")
        elif key.startswith("env."):
            kv[key[4:]] = parse_value(value)
        else:
            kv[key] = parse_value(value)
    for o in OPTIONS:
        opts.setdefault(o.key, o.default)
    if opts["max_sessions"] < 1:
        raise CLIError(f"max_sessions must be >= 1, got {opts['max_sessions']}")
    if not 0 < opts["max_message_mb"] <= 1024:
        raise CLIError(f"max_message_mb must be in (0, 1024], got {opts['max_message_mb']:g}")
    if opts["idle_s"] < 0:
        raise CLIError(f"idle_s must be >= 0, got {opts['idle_s']:g}")
    for key in ("max_delta", "watchdog_s"):
        if opts[key] is not None and opts[key] <= 0:
            raise CLIError(f"{key} must be > 0, got {opts[key]:g}")
    if opts["keygen"] is None and not task:
        raise CLIError(f"no task given: add task=pusht (or task=package.module:factory); usage: {USAGE}")
    return opts, task, kv


def _keygen(opts: dict[str, Any]) -> int:
    from rtdp.hardware.curve import CurveKeyError, generate

    try:
        made = generate(opts["keygen"], opts["key_name"])
    except CurveKeyError as err:
        raise CLIError(str(err)) from None
    for what, path in made.items():
        print(f"rtdp serve-env: wrote {what.replace('_', ' ')} {path}")
    d, name = opts["keygen"], opts["key_name"]
    print(f"next: serve with keys={d}; copy {d}/server.key and {d}/{name}.key_secret to the client and pass "
          f"them to RemoteEnv(addr, server_key=..., client_key=...); delete {d}/clients/{name}.key to revoke it")
    return 0


def server_keys(binds: list[str], keys_dir: str | None, insecure: bool) -> ServerKeys | None:
    """Check a server's bind addresses and load its CURVE keys (`ServerKeys` or None), refusing a network
    address without keys unless `insecure`; each problem is one CLIError line."""
    from rtdp.hardware.curve import CurveKeyError, ServerKeys
    from rtdp.hardware.endpoints import check_bind, is_loopback

    for b in binds:
        try:
            check_bind(b)
        except ValueError as err:
            raise CLIError(str(err)) from None
    keys = None
    if keys_dir is not None:
        try:
            keys = ServerKeys.load(keys_dir)
        except CurveKeyError as err:
            raise CLIError(str(err)) from None
    exposed = [b for b in binds if not is_loopback(b)]
    if exposed and keys is None and not insecure:
        raise CLIError(f"{exposed[0]} is reachable from the network: create keys with `rtdp serve-env keygen=DIR` "
                       "and serve with keys=DIR, or pass insecure=true to serve it unauthenticated and in clear")
    return keys


def main(argv: list[str]) -> int:
    opts, task, kwargs = parse_args(argv)
    if opts["keygen"] is not None:
        return _keygen(opts)
    keys = server_keys([opts[k] for k in ("bind", "pub") if opts[k] is not None], opts["keys"], opts["insecure"])
    safety = None
    if opts["safety"] or opts["max_delta"] is not None or opts["watchdog_s"] is not None:
        safety = {"max_delta": opts["max_delta"], "watchdog_s": opts["watchdog_s"]}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    import zmq

    from rtdp.hardware.server import serve

    # SIGTERM (docker stop, systemd, kill) shuts down like Ctrl-C: sockets and envs closed cleanly.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    def ready(server) -> None:
        pub = f", publishing at {server.publisher.endpoint}" if server.publisher else ""
        auth = ", CURVE on" if server.keys is not None else ""
        print(f"rtdp serve-env: serving {task} at {server.endpoint}{pub}{auth}", flush=True)

    factory = env_factory(str(task), kwargs, safety)
    try:
        stats = serve(factory, opts["bind"], pub_bind=opts["pub"], name=str(task), on_ready=ready,
                      max_sessions=opts["max_sessions"], max_message_bytes=int(opts["max_message_mb"] * 2**20),
                      keys=keys, insecure=opts["insecure"], idle_s=opts["idle_s"])
    except zmq.ZMQError as err:
        raise CLIError(f"cannot bind {opts['bind']}: {err}; pick a free port or tcp://127.0.0.1:*") from None
    except (ValueError, TypeError, KeyError) as err:
        raise CLIError(f"cannot make env {task!r} with {kwargs}: {err}") from None
    print(f"rtdp serve-env: stopped; {stats}", file=sys.stderr, flush=True)
    return 0
