"""Small generated episodes for the data-layer tests."""

from __future__ import annotations

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
