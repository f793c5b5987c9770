"""`key=value` command-line arguments, typed; shared by the subcommands (imports nothing heavy, so the
torch-free `rtdp serve-env` can use it)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rtdp.cli.main import CLIError


def parse_value(text: str) -> Any:
    """`3` -> 3, `0.5` -> 0.5, `true` -> True, `none` -> None, anything else stays a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_kv(argv: list[str], usage: str) -> dict[str, Any]:
    """`key=value` arguments into a dict (values typed by `parse_value`); anything else is a usage error."""
    out: dict[str, Any] = {}
    for arg in argv:
        if arg in ("-h", "--help"):
            raise SystemExit(print(usage) or 0)
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise CLIError(f"expected key=value, got {arg!r}; usage: {usage}")
        out[key.lstrip("-").replace("-", "_")] = parse_value(value)
    return out


@dataclass(frozen=True)
class Key:
    """One `key=value` option of a command: its type (`int`, `float`, `bool`, `str`), default, bounds, choices and
    a line of help. Values are checked before a command does anything, so a bad one writes nothing."""

    type: str = "str"
    default: Any = None
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    required: bool = False

    def describe(self) -> str:
        what = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}[self.type]
        if self.choices:
            what = " | ".join(self.choices)
        if self.min is not None and self.max is not None:
            return f"{what} in [{self.min:g}, {self.max:g}]"
        if self.min is not None:
            return f"{what} >= {self.min:g}"
        return f"{what} <= {self.max:g}" if self.max is not None else what


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")

# the `backend=` key of the commands that load a policy (the names of rtdp.policy.backends, kept here so the
# torch-free commands can share this module)
BACKENDS = ("auto", "eager", "onnx", "cuda_graph")
BACKEND_HELP = ("who evaluates the denoiser: eager (torch), onnx (ONNX Runtime on the CPU; pip install "
                "'rtdp[onnx]'), cuda_graph (CUDA graphs, with device=cuda), auto (cuda_graph on a GPU, else eager)")
# the `cache=` key of the same commands (rtdp.policy.caching; docs/caching.md)
CACHE_HELP = ("block cache of a transformer policy: bac (the schedule `rtdp calibrate-cache` wrote beside the "
              "checkpoint for these weights and sampler), the path of a schedule JSON, or none")


ENV_ADDRESS_HELP = ("the address of an `rtdp serve-env` serving the task (tcp://HOST:PORT or ipc://PATH): the "
                    "task runs there, e.g. robosuite in .venv-robosuite (default: made in this process)")


def env_address(raw: str | None) -> dict[str, str]:
    """`env=ADDRESS` as env options for `rtdp.envs.make` (none when not given); a value that is no ZeroMQ
    address is refused with what to pass."""
    if raw is None:
        return {}
    from rtdp.envs.remote import is_address

    if not is_address(raw):
        from rtdp.cli.main import CLIError

        raise CLIError(f"env={raw} is not the address of an env server: give tcp://HOST:PORT or ipc://PATH, as "
                       "`rtdp serve-env bind=...` was started with")
    return {"address": raw}


def convert(key: str, raw: str, spec: Key) -> Any:
    """`raw` as `spec` says, or a CLIError naming the key, the value and what it takes."""
    text = raw.strip()
    if text.lower() in ("none", "null") and not spec.required and spec.type != "str":
        return None
    try:
        if spec.type == "int":
            value: Any = int(text)
        elif spec.type == "float":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
        elif spec.type == "bool":
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError(text)
            value = text.lower() in _TRUE
        else:
            value = text
    except ValueError:
        raise CLIError(f"{key}={raw!r} is not valid: {key} takes {spec.describe()}") from None
    if spec.choices and value not in spec.choices:
        raise CLIError(f"{key}={raw!r} is not valid: use one of {', '.join(spec.choices)}")
    if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
        raise CLIError(f"{key}={raw!r} is out of range: {key} takes {spec.describe()}")
    return value


def help_text(doc: str, keys: dict[str, Key], tail: str = "") -> str:
    """A command's help: its docstring, then every key with what it takes, its default and its help line."""
    width = max(map(len, keys), default=0)
    lines = [doc.strip(), "", "keys:"]
    for name, spec in keys.items():
        default = "required" if spec.required else f"default {spec.default}"
        lines.append(f"  {name:<{width}}  {spec.help} ({spec.describe()}; {default})")
    if tail:
        lines += ["", tail.strip()]
    return "\n".join(lines)


def parse_keys(argv: list[str], keys: dict[str, Key], usage: str, doc: str = "",
               rest: Callable[[str], bool] | None = None, tail: str = "") -> tuple[dict[str, Any], list[str]]:
    """Typed values of a command's own `keys` (defaults filled in) and the remaining `key=value` arguments that
    `rest(key)` accepts (policy overrides, env options), in order. Anything else is a one-line usage error;
    `-h`/`--help` prints the help and exits."""
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(doc or usage, keys, tail))
        raise SystemExit(0)
    values: dict[str, Any] = {}
    extra: list[str] = []
    for arg in argv:
        key, sep, raw = arg.partition("=")
        if not sep or not key:
            raise CLIError(f"expected key=value, got {arg!r}; usage: {usage}")
        name = key.lstrip("-").replace("-", "_")
        if name in keys:
            values[name] = convert(name, raw, keys[name])
        elif rest is not None and rest(key):
            extra.append(arg)
        else:
            raise CLIError(f"unknown key {key!r}; keys: {', '.join(keys)} (see --help); usage: {usage}")
    for name, spec in keys.items():
        if name not in values:
            if spec.required:
                raise CLIError(f"missing {name}=...: {spec.help}; usage: {usage}")
            values[name] = spec.default
    return values, extra


def check_values(values: Mapping[str, Any], keys: Mapping[str, Key]) -> None:
    """Check already-parsed values (a composed config's, by dotted name) against `keys`; the first bad one is a
    one-line CLIError naming it and what it takes."""
    for name, spec in keys.items():
        if name in values:
            value = values[name]
            convert(name, "none" if value is None else str(value), spec)
