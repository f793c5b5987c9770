"""Start `rtdp serve-env` subprocesses on free loopback ports (shared by the hardware and control tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "rtdp.hardware.loopback_env:LoopbackEnv"
# The `rtdp` command as its console script runs it (`python -m rtdp.cli.main` would define a second CLIError).
RTDP = [sys.executable, "-c", "import sys; from rtdp.cli.main import main; sys.exit(main(sys.argv[1:]))"]


def spawn_server(bind: str = "tcp://127.0.0.1:*", *args: str, timeout_s: float = 30.0):
    """Start `rtdp serve-env` on the loopback env; return (process, endpoint) once it is serving."""
    proc = subprocess.Popen([*RTDP, "serve-env", f"task={LOOPBACK}",
                             "image_size=96", "--bind", bind, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "serving" in line:
            return proc, line.split(" at ")[1].split(",")[0].strip()
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"serve-env did not start: {proc.stderr.read()}")
