"""`rtdp serve-env task=pusht` serves a real rtdp task, step for step identical to the local env."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from wire_helpers import REPO, RTDP

from rtdp.hardware import RemoteEnv


@pytest.fixture
def pusht_server():
    proc = subprocess.Popen([*RTDP, "serve-env", "task=pusht", "obs_mode=image",
                             "--bind", "tcp://127.0.0.1:*"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = ""
        while "serving" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail(f"serve-env failed: {proc.stderr.read()}")
        yield line.split(" at ")[1].split(",")[0].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        proc.stdout.close(), proc.stderr.close()


def test_served_pusht_matches_the_local_env(pusht_server):
    from rtdp.envs import make

    local = make("pusht", obs_mode="image")
    remote = RemoteEnv(pusht_server, timeout_s=5.0)
    assert remote.observation_space == local.observation_space and remote.action_space == local.action_space
    lo, _ = local.reset(seed=7)
    ro, rinfo = remote.reset(seed=7)
    rng = np.random.default_rng(0)
    for _ in range(5):
        for key in lo:
            np.testing.assert_array_equal(lo[key], ro[key])
        a = rng.uniform(100, 400, 2).astype(np.float32)
        lo, lr, *_ , linfo = local.step(a)
        ro, rr, *_ , rinfo = remote.step(a)
        assert lr == rr and linfo["coverage"] == rinfo["coverage"]
    remote.close(), local.close()


def test_serve_env_rejects_bad_input_with_one_line():
    out = subprocess.run([*RTDP, "serve-env", "--bind", "tcp://127.0.0.1:*"],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "no task given" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([*RTDP, "serve-env", "task=nope:Nothing"],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "cannot load env factory" in out.stderr
