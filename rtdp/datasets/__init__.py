"""rtdp.datasets: replay buffers (zarr or memory), the numba sequence sampler, the torch dataset, LeRobot I/O."""

from rtdp.datasets.dataset import SequenceDataset
from rtdp.datasets.replay_buffer import ReplayBuffer, ReplayBufferError
from rtdp.datasets.sampler import SequenceSampler, get_val_mask

__all__ = ["ReplayBuffer", "ReplayBufferError", "SequenceDataset", "SequenceSampler", "get_val_mask"]
