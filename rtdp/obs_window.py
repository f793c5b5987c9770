"""The observation window every rollout loop hands an `Agent`: the last `n_obs_steps` frames per key, oldest first.

One helper for the control loop, the evaluator, the collector and the benchmarks (numpy only, so the robot
side can use it). Rows are batch entries (one per env); a row that starts an episode fills its whole window
with its first frame, as Diffusion Policy pads the start of an episode. Every update builds new arrays, so a
window handed to an inference thread is never changed under it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def _as_dict(obs: Any) -> Mapping[str, Any]:
    return obs if isinstance(obs, Mapping) else {"obs": obs}


class ObsWindow:
    """Per-row windows `{key: [B, n, ...]}`; `batched=False` takes single frames (no batch axis) and keeps B = 1."""

    def __init__(self, n_obs_steps: int, batched: bool = True):
        self.n = max(int(n_obs_steps), 1)
        self.batched = batched
        self.buf: dict[str, np.ndarray] | None = None

    def _frames(self, obs: Any) -> dict[str, np.ndarray]:
        obs = _as_dict(obs)
        return {k: np.asarray(v) if self.batched else np.asarray(v)[None] for k, v in obs.items()}

    def start(self, obs: Any, rows: np.ndarray | None = None) -> None:
        """(Re)start `rows` (a bool mask or indices; None = all) from their frame in `obs`."""
        frames = self._frames(obs)
        if self.buf is None or rows is None:
            self.buf = {k: np.repeat(v[:, None], self.n, axis=1) for k, v in frames.items()}
            return
        buf = {k: v.copy() for k, v in self.buf.items()}
        for k, v in frames.items():
            buf[k][rows] = v[rows, None]
        self.buf = buf

    def push(self, obs: Any, rows: np.ndarray | None = None) -> None:
        """Append the frame in `obs` to `rows` (None = all), dropping their oldest."""
        if self.buf is None:
            raise RuntimeError("ObsWindow.push before start: start the window with the episode's first frame")
        frames = self._frames(obs)
        if rows is None:
            self.buf = {k: np.concatenate([self.buf[k][:, 1:], v[:, None]], axis=1) for k, v in frames.items()}
            return
        buf = {k: v.copy() for k, v in self.buf.items()}
        for k, v in frames.items():
            buf[k][rows] = np.concatenate([buf[k][rows, 1:], v[rows, None]], axis=1)
        self.buf = buf

    def window(self) -> dict[str, np.ndarray]:
        """`{key: [B, n_obs_steps, ...]}`, oldest frame first."""
        if self.buf is None:
            raise RuntimeError("ObsWindow.window before start")
        return self.buf

    @property
    def latest(self) -> dict[str, np.ndarray]:
        """The newest frame per key: `[B, ...]` batched, the frame itself otherwise."""
        latest = {k: v[:, -1] for k, v in self.window().items()}
        return latest if self.batched else {k: v[0] for k, v in latest.items()}
