"""SequenceSampler: fixed-length windows over a ReplayBuffer, padded at episode edges by repeating frames.

A window of `sequence_length` steps may start up to `pad_before` steps before an episode's first frame and
end up to `pad_after` steps after its last; the missing positions repeat the first/last frame and are
flagged in an `is_pad` mask. The index table (one row per window: buffer start/end, sample start/end) is
built by a numba kernel, cached on disk so only the first import ever compiles it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numba
import numpy as np

from rtdp.datasets.replay_buffer import ReplayBuffer, ReplayBufferError


@numba.njit(cache=True)
def create_indices(episode_ends: np.ndarray, sequence_length: int, episode_mask: np.ndarray,
                   pad_before: int, pad_after: int) -> np.ndarray:
    """Rows [buffer_start, buffer_end, sample_start, sample_end] for every window of every kept episode."""
    pad_before = min(max(pad_before, 0), sequence_length - 1)
    pad_after = min(max(pad_after, 0), sequence_length - 1)
    total = 0
    for i in range(len(episode_ends)):
        if episode_mask[i]:
            start = episode_ends[i - 1] if i > 0 else 0
            total += max(0, episode_ends[i] - start - sequence_length + pad_before + pad_after + 1)
    out = np.empty((total, 4), dtype=np.int64)
    row = 0
    for i in range(len(episode_ends)):
        if not episode_mask[i]:
            continue
        start = episode_ends[i - 1] if i > 0 else 0
        length = episode_ends[i] - start
        for idx in range(-pad_before, length - sequence_length + pad_after + 1):
            lo = max(idx, 0)                              # first real frame inside the episode
            hi = min(idx + sequence_length, length)       # one past the last real frame
            out[row, 0] = start + lo
            out[row, 1] = start + hi
            out[row, 2] = lo - idx                        # window position of the first real frame
            out[row, 3] = hi - idx                        # one past the last real position
            row += 1
    return out


def get_val_mask(n_episodes: int, val_ratio: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of held-out episodes: round(val_ratio·n) of them (≥1 if ratio>0, ≤n−1), chosen by seed."""
    mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio <= 0 or n_episodes < 2:
        return mask
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    mask[np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False)] = True
    return mask


def frame_indices(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Buffer index of each of the first `k` window positions of `rows` ([B, 4]) and its pad mask ([B, k])."""
    pos = np.arange(k, dtype=np.int64)[None, :]
    buffer_start, buffer_end = rows[:, 0:1], rows[:, 1:2]
    sample_start, sample_end = rows[:, 2:3], rows[:, 3:4]
    idx = np.clip(buffer_start + pos - sample_start, buffer_start, buffer_end - 1)
    is_pad = (pos < sample_start) | (pos >= sample_end)
    return idx, is_pad


def gather(array, idx: np.ndarray) -> np.ndarray:
    """`array[idx]` for an index array of any shape, for numpy arrays and zarr arrays alike (unchecked:
    read a ReplayBuffer through `ReplayBuffer.gather`, which checks each chunk against its checksum)."""
    if isinstance(array, np.ndarray):
        return array[idx]
    flat = idx.reshape(-1)
    lo, hi = int(flat.min()), int(flat.max()) + 1
    if hi - lo <= 4 * flat.size:  # one contiguous read beats many scattered chunk reads
        block = np.asarray(array[lo:hi])
        return block[idx - lo]
    uniq, inverse = np.unique(flat, return_inverse=True)
    block = np.asarray(array.oindex[uniq])
    return block[inverse].reshape(*idx.shape, *block.shape[1:])


class SequenceSampler:
    """Windows of `sequence_length` over the episodes in `episode_mask`; `key_first_k` limits loaded frames."""

    def __init__(self, buffer: ReplayBuffer, sequence_length: int, pad_before: int = 0, pad_after: int = 0,
                 keys: Iterable[str] | None = None, key_first_k: Mapping[str, int] | None = None,
                 episode_mask: np.ndarray | None = None) -> None:
        if sequence_length < 1:
            raise ValueError(f"sequence_length must be ≥ 1, got {sequence_length}")
        self.buffer = buffer
        self.sequence_length = sequence_length
        self.keys = list(buffer.keys() if keys is None else keys)
        missing = [k for k in self.keys if k not in buffer]
        if missing:
            raise ReplayBufferError(f"{buffer._name}: no key(s) {missing} (keys: {', '.join(buffer.keys())})")
        self.key_first_k = {k: min(int(v), sequence_length) for k, v in (key_first_k or {}).items()}
        if episode_mask is None:
            episode_mask = np.ones(buffer.n_episodes, dtype=bool)
        episode_mask = np.asarray(episode_mask, dtype=bool)
        if episode_mask.shape != (buffer.n_episodes,):
            raise ValueError(f"episode_mask has shape {episode_mask.shape}, buffer has {buffer.n_episodes} episodes")
        self.episode_mask = episode_mask
        self.indices = create_indices(np.asarray(buffer.episode_ends, dtype=np.int64), int(sequence_length),
                                      episode_mask, int(pad_before), int(pad_after))

    def __len__(self) -> int:
        return len(self.indices)

    def sample_batch(self, indices: np.ndarray | Iterable[int]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Windows for `indices`: data `{key: [B, k, ...]}` and `is_pad` `{key: bool[B, k]}`."""
        rows = self.indices[np.asarray(indices, dtype=np.int64).reshape(-1)]
        data, is_pad = {}, {}
        for key in self.keys:
            idx, pad = frame_indices(rows, self.key_first_k.get(key, self.sequence_length))
            data[key] = self.buffer.gather(key, idx)
            is_pad[key] = pad
        return data, is_pad

    def sample_sequence(self, idx: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """One window: data `{key: [k, ...]}` and `is_pad` `{key: bool[k]}`."""
        data, is_pad = self.sample_batch([idx])
        return {k: v[0] for k, v in data.items()}, {k: v[0] for k, v in is_pad.items()}
