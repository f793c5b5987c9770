"""Record control-loop episodes into a ReplayBuffer, one atomic `add_episode` per completed episode, so a
crash or a lost server never costs an episode that had completed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtdp.control.loop import EpisodeResult


class EpisodeRecorder:
    """Appends each finished episode's observations, executed actions and tick times to a zarr store."""

    def __init__(self, path: str | Path):
        from rtdp.datasets import ReplayBuffer  # zarr: imported only when recording

        self.path = Path(path)
        self.buffer = (ReplayBuffer.open(self.path, mode="a") if self.path.exists()
                       else ReplayBuffer.create(self.path))
        self.recorded = 0

    def add(self, ep: EpisodeResult) -> bool:
        """Commit one episode (skipped, returning False, if it executed no action)."""
        if not ep.data or not ep.data.get("action"):
            return False
        self.buffer.add_episode({k: np.stack(v) for k, v in ep.data.items()})
        self.recorded += 1
        return True

    @property
    def n_episodes(self) -> int:
        return self.buffer.n_episodes
