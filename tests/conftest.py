"""Shared fixtures: where the PushT human data lives (read-only, never copied into the repo)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PUSHT_ZARR = SHARED / "data" / "pusht_cchi_v7_replay.zarr"


@pytest.fixture(scope="session")
def pusht_zarr() -> Path:
    if not PUSHT_ZARR.exists():
        pytest.fail(f"PushT human data not found at {PUSHT_ZARR}: CI expects ../shared beside the repo")
    return PUSHT_ZARR


@pytest.fixture
def unwritable_dir(tmp_path) -> Path | None:
    """A directory nobody can create files in: mode 0500, or sysfs where root ignores modes (None: no such)."""
    if os.geteuid() != 0:
        d = tmp_path / "read-only"
        d.mkdir()
        d.chmod(0o500)
        return d
    probe = Path("/sys") / f"rtdp-probe-{uuid.uuid4().hex}"
    try:
        probe.mkdir()
    except OSError:
        return Path("/sys")
    probe.rmdir()
    return None
