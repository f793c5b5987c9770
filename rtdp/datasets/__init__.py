"""rtdp.datasets: replay buffers (zarr or memory), the numba sequence sampler, the torch dataset, LeRobot I/O.

`SequenceSampler` (numba) and `SequenceDataset` (torch) are imported on first use, so collectors and
`rtdp data info` start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from rtdp.datasets.replay_buffer import ReplayBuffer, ReplayBufferError

_LAZY = {"SequenceSampler": "rtdp.datasets.sampler", "get_val_mask": "rtdp.datasets.sampler",
         "SequenceDataset": "rtdp.datasets.dataset"}

__all__ = ["ReplayBuffer", "ReplayBufferError", "SequenceDataset", "SequenceSampler", "get_val_mask"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rtdp.datasets' has no attribute {name!r}")
