"""Small generated episodes for the data-layer tests."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np


def make_episode(seed: int, length: int, image: bool = True, size: int = 8) -> dict[str, np.ndarray]:
    """An episode with a low-dim state, an action and (optionally) a small uint8 camera."""
    rng = np.random.default_rng(seed)
    ep = {"state": rng.normal(size=(length, 5)).astype(np.float32),
          "action": rng.uniform(0, 512, size=(length, 2)).astype(np.float32)}
    if image:
        ep["img"] = rng.integers(0, 256, size=(length, size, size, 3), dtype=np.uint8)
    return ep


def assert_episode_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for key, value in a.items():
        np.testing.assert_array_equal(value, b[key], err_msg=key)


def unwritable_dir(tmp_path: Path) -> Path | None:
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
