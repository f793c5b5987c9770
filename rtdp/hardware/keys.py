"""Operator keys from a terminal (no display needed: works over ssh, in tmux and in a pty) or from a script.

`TerminalKeys` puts the terminal in cbreak mode (keys arrive one by one, unechoed; Ctrl-C still interrupts)
and restores it on close; `poll()` returns the characters typed since the last call without blocking.
`ScriptedKeys` plays keys at given times (tests, the demo). `operator_events` turns characters into the
record/deploy events below; the keyboard teleop device reads the same characters for motion.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from collections.abc import Iterable
from typing import Protocol

# key -> operator event (the keyboard device uses other keys, see teleop.KeyboardDevice)
OPERATOR_KEYS = {"\r": "start_stop", "\n": "start_stop", "x": "discard", "r": "rerecord", "Q": "quit",
                 " ": "estop", "u": "reset_estop", "p": "pause"}
OPERATOR_HELP = ("Enter start/stop  x discard  r re-record  p pause  SPACE e-stop  u reset e-stop  Q quit")


class KeySource(Protocol):
    def poll(self) -> str: ...

    def close(self) -> None: ...


def operator_events(chars: str) -> list[str]:
    """The operator events in `chars`, in order (other characters are ignored here)."""
    return [OPERATOR_KEYS[c] for c in chars if c in OPERATOR_KEYS]


class NoKeys:
    """No operator: nothing is ever pressed."""

    def poll(self) -> str:
        return ""

    def close(self) -> None:
        pass


class ScriptedKeys:
    """Keys typed by a script: `at` is `[(seconds after the first poll, chars), ...]`; `push` adds keys now."""

    def __init__(self, at: Iterable[tuple[float, str]] = ()):
        self._at = sorted(at)
        self._t0: float | None = None
        self._pushed: list[str] = []
        self._lock = threading.Lock()

    def push(self, chars: str) -> None:
        with self._lock:
            self._pushed.append(chars)

    def poll(self) -> str:
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        out = []
        while self._at and self._at[0][0] <= now - self._t0:
            out.append(self._at.pop(0)[1])
        with self._lock:
            out += self._pushed
            self._pushed = []
        return "".join(out)

    def close(self) -> None:
        pass


class TerminalKeys:
    """Keys typed in the terminal on `fd` (default stdin), read without blocking; a RuntimeError when `fd` is
    not a terminal (say where the keys come from instead: keys=none, or a script)."""

    def __init__(self, fd: int | None = None):
        import termios
        import tty

        self.fd = sys.stdin.fileno() if fd is None else fd
        if not os.isatty(self.fd):
            raise RuntimeError("operator keys need a terminal (stdin is not one): run in a terminal, tmux or "
                               "ssh -t, or pass operator=none")
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)

    def poll(self) -> str:
        out = b""
        while select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, 64)
            if not chunk:
                break
            out += chunk
        return out.decode("utf-8", "replace")

    def close(self) -> None:
        import termios

        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def __del__(self) -> None:
        if getattr(self, "_saved", None) is not None:
            self.close()


def make_keys(spec: str) -> KeySource:
    """`terminal` (stdin), `none`, or `auto` (the terminal when stdin is one, else none)."""
    if spec == "none" or (spec == "auto" and not os.isatty(sys.stdin.fileno() if sys.stdin else -1)):
        return NoKeys()
    if spec in ("terminal", "auto"):
        return TerminalKeys()
    raise ValueError(f"operator={spec!r}: use terminal, none or auto")
