"""`key=value` command-line arguments, typed; shared by the subcommands (imports nothing heavy, so the
torch-free `rtdp serve-env` can use it)."""

from __future__ import annotations

from pathlib import Path
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


def _int(args: dict[str, Any], key: str, default: int | None = None) -> int | None:
    value = args.pop(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise CLIError(f"{key} must be an integer, got {value!r}")
    return value


def out_dir(args: dict[str, Any], usage: str, placeholder: str, holds: str) -> Path:
    """Pop the required `out=` directory; a file already at that path is refused (`holds`: what goes in it)."""
    out = args.pop("out", None)
    if out is None:
        raise CLIError(f"missing out={placeholder}; usage: {usage}")
    out = Path(str(out))
    if out.exists() and not out.is_dir():
        raise CLIError(f"out={out} is a file; give a directory for {holds}")
    return out
