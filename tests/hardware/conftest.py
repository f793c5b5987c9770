"""Fixtures for the wire tests: an in-thread env server and `rtdp serve-env` subprocesses on free ports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rtdp.hardware import EnvServer
from rtdp.hardware.loopback_env import LoopbackEnv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wire_helpers import spawn_server


@pytest.fixture
def server():
    """A loopback env (20-dim state + 96x96x3 image) served from a thread on a free port."""
    srv = EnvServer(lambda: LoopbackEnv(state_dim=20, image_size=96), "tcp://127.0.0.1:*").start()
    yield srv
    srv.close()


@pytest.fixture
def spawn():
    """Factory for serve-env subprocesses; every one started is killed at teardown."""
    procs = []

    def _spawn(*args, **kw):
        proc, endpoint = spawn_server(*args, **kw)
        procs.append(proc)
        return proc, endpoint

    yield _spawn
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        for stream in (p.stdout, p.stderr):
            stream.close()
