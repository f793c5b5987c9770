"""The observation window an `Agent` sees: the last `n_obs_steps` frames, first frame repeated at the start."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np


class ObsHistory:
    """Keeps the last `n` observation dicts and stacks them to `[1, n, ...]` per key."""

    def __init__(self, n_obs_steps: int):
        self.n = max(int(n_obs_steps), 1)
        self._frames: deque[dict[str, np.ndarray]] = deque(maxlen=self.n)

    def reset(self, obs: dict[str, Any]) -> None:
        self._frames.clear()
        frame = _copy(obs)
        for _ in range(self.n):
            self._frames.append(frame)

    def push(self, obs: dict[str, Any]) -> None:
        self._frames.append(_copy(obs))

    @property
    def latest(self) -> dict[str, np.ndarray]:
        return self._frames[-1]

    def window(self) -> dict[str, np.ndarray]:
        """`{key: [1, n_obs_steps, ...]}`, oldest frame first."""
        return {k: np.stack([f[k] for f in self._frames])[None] for k in self._frames[-1]}


def _copy(obs: dict[str, Any]) -> dict[str, np.ndarray]:
    # A private, writable copy: remote observations are read-only views into received network buffers.
    if not isinstance(obs, dict):
        return {"obs": np.array(obs)}
    return {k: np.array(v) for k, v in obs.items()}
