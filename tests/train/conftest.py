"""Fixtures of the training tests: a tiny generated dataset (seconds-long runs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_task import make_tiny_buffer


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_buffer(tmp_path_factory.mktemp("tiny") / "tiny.zarr")
