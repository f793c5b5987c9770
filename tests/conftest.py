"""Shared fixtures: where the PushT human data lives (read-only, never copied into the repo)."""

from __future__ import annotations

import os
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
