"""`rtdp serve-robot` as a subprocess for the record/deploy/teleop tests (killed at teardown by the caller)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RTDP = [sys.executable, "-c", "import sys; from rtdp.cli.main import main; sys.exit(main(sys.argv[1:]))"]


def spawn_robot_server(*args: str, timeout_s: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start `rtdp serve-robot robot=sim-arm` on free loopback ports; (process, request address) once serving."""
    proc = subprocess.Popen([*RTDP, "serve-robot", "robot=sim-arm", "bind=tcp://127.0.0.1:*", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if " at tcp://" in line:
            return proc, line.split(" at ")[1].split()[0]
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"serve-robot did not start: {proc.stderr.read()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()
