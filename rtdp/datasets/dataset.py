"""SequenceDataset: Diffusion Policy training windows from a ReplayBuffer, as normalised torch tensors.

A sample is `{"obs": {name: float32[To, ...]}, "action": float32[T, Da]}`: observation names map to buffer keys
(optionally a column range) and load only their To frames; the action window is the full horizon T. Windows
start up to To−1 steps before an episode and end up to Ta−1 steps after it, padded by repeating the edge frame.
Images (frames of shape [H, W, 3]) come out float CHW in [0, 1]. Batches are gathered with one vectorised
index per key (`sample_batch`), so a training process can draw them itself without DataLoader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtdp.datasets.replay_buffer import ReplayBuffer, ReplayBufferError
from rtdp.datasets.sampler import SequenceSampler, frame_indices, get_val_mask
from rtdp.normalizer import Normalizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Field:
    """One output tensor: where it comes from and how it is shaped."""

    name: str
    source: str
    columns: tuple[int, int] | None
    frames: int
    image: bool
    scale: float  # images: divide by this to land in [0, 1]


class SequenceDataset(torch.utils.data.Dataset):
    """Training windows of a task spec (`obs`/`action` → buffer keys) over the episodes in `episode_mask`.

    `episode_mask` (bool per episode) selects the training episodes; when None, `val_ratio` episodes chosen by
    `seed` are held out and `get_validation_dataset()` returns them.
    """

    def __init__(self, buffer: ReplayBuffer | str | Path, obs: Mapping[str, Mapping[str, Any]],
                 action: Mapping[str, Any], horizon: int = 16, n_obs_steps: int = 2, n_action_steps: int = 8,
                 episode_mask: np.ndarray | None = None, normalizer: Normalizer | None = None,
                 val_ratio: float = 0.0, seed: int = 42, return_is_pad: bool = False) -> None:
        if not isinstance(buffer, ReplayBuffer):
            buffer = ReplayBuffer.open(buffer, "r")
        if not 1 <= n_obs_steps <= horizon or not 1 <= n_action_steps <= horizon:
            raise ValueError(f"need 1 ≤ n_obs_steps ({n_obs_steps}), n_action_steps ({n_action_steps}) ≤ "
                             f"horizon ({horizon})")
        self.buffer = buffer
        self.obs_spec = {name: dict(spec) for name, spec in obs.items()}
        self.action_spec = dict(action)
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.val_ratio, self.seed, self.return_is_pad = val_ratio, seed, return_is_pad
        if episode_mask is None:
            self.val_mask = get_val_mask(buffer.n_episodes, val_ratio, seed)
            episode_mask = ~self.val_mask
        else:
            episode_mask = np.asarray(episode_mask, dtype=bool)
            self.val_mask = ~episode_mask
        self.episode_mask = episode_mask
        self.obs_fields = [self._field(name, spec, n_obs_steps) for name, spec in self.obs_spec.items()]
        self.action_field = self._field("action", self.action_spec, horizon)
        if self.action_field.image:
            raise ReplayBufferError(f"{buffer._name}: action source {self.action_field.source!r} holds images")
        self.sampler = SequenceSampler(buffer, horizon, pad_before=n_obs_steps - 1, pad_after=n_action_steps - 1,
                                       keys=list(dict.fromkeys(f.source for f in self.fields)),
                                       key_first_k={f.source: max(g.frames for g in self.fields
                                                                  if g.source == f.source) for f in self.fields},
                                       episode_mask=episode_mask)
        self.normalizer = normalizer

    @property
    def fields(self) -> list[_Field]:
        return [*self.obs_fields, self.action_field]

    def _field(self, name: str, spec: Mapping[str, Any], frames: int) -> _Field:
        if "source" not in spec:
            raise ValueError(f"spec of {name!r} needs a 'source' key (the replay-buffer key), got {dict(spec)}")
        source = spec["source"]
        if source not in self.buffer:
            raise ReplayBufferError(f"{self.buffer._name}: no key {source!r} for {name!r} "
                                    f"(keys: {', '.join(self.buffer.keys())})")
        frame_shape = self.buffer[source].shape[1:]
        columns = tuple(int(c) for c in spec["columns"]) if spec.get("columns") is not None else None
        image = len(frame_shape) == 3 and frame_shape[-1] == 3
        if columns is not None and (image or len(columns) != 2
                                    or not 0 <= columns[0] < columns[1] <= frame_shape[-1]):
            raise ValueError(f"{name!r}: columns {list(columns)} do not fit {source!r} of frame shape "
                             f"{tuple(frame_shape)} (want [start, stop) on the last axis, no images)")
        return _Field(name, source, columns, frames, image, self._image_scale(source, spec) if image else 1.0)

    def _image_scale(self, source: str, spec: Mapping[str, Any]) -> float:
        """255 for uint8 and for float images whose values exceed 1 (PushT stores float 0..255), else 1."""
        if spec.get("scale") is not None:
            return float(spec["scale"])
        arr = self.buffer[source]
        if np.dtype(arr.dtype) == np.uint8:
            return 255.0
        n = self.buffer.n_steps
        probe = self.buffer.gather(source, np.unique(np.linspace(0, n - 1, num=min(n, 8)).astype(np.int64)))
        scale = 255.0 if float(np.max(probe)) > 1.0 else 1.0
        log.info("image key %r is %s with max %.1f on 8 probed frames: dividing by %g",
                 source, arr.dtype, float(np.max(probe)), scale)
        return scale

    # ------------------------------------------------------------------ normalisation
    def get_normalizer(self, modes: Mapping[str, str] | None = None) -> Normalizer:
        """Fit on this dataset's episodes: minmax for action and low-dim obs, identity for images."""
        modes = dict(modes or {})
        steps = _episode_steps(self.buffer.episode_ends, self.episode_mask)
        data, all_modes = {}, {}
        for f in self.fields:
            mode = modes.get(f.name, "identity" if f.image else "minmax")
            all_modes[f.name] = mode
            if mode == "identity" and f.image:
                data[f.name] = np.zeros((1,), np.float32)
                continue
            x = self._select_columns(f, self.buffer.gather(f.source, steps)).astype(np.float32)
            data[f.name] = self._image_to_chw(f, x) if f.image else x
        return Normalizer.fit(data, all_modes)

    def _select_columns(self, f: _Field, x: np.ndarray) -> np.ndarray:
        return x[..., f.columns[0]:f.columns[1]] if f.columns is not None else x

    @staticmethod
    def _image_to_chw(f: _Field, x: np.ndarray) -> torch.Tensor:
        """[..., H, W, C] → float32 [..., C, H, W] / scale in one numpy pass (torch's strided cast is ~2× slower)."""
        out = np.empty((*x.shape[:-3], x.shape[-1], *x.shape[-3:-1]), dtype=np.float32)
        np.multiply(np.moveaxis(x, -1, -3), np.float32(1.0 / f.scale), out=out, casting="unsafe")
        return torch.from_numpy(out)

    # ------------------------------------------------------------------ sampling
    def __len__(self) -> int:
        return len(self.sampler)

    def sample_batch(self, indices: np.ndarray | Iterable[int]) -> dict[str, Any]:
        """A batch `{"obs": {name: [B, To, ...]}, "action": [B, T, Da]}` gathered with one index per key."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} windows")
        rows = self.sampler.indices[indices]
        out: dict[str, Any] = {"obs": {}}
        is_pad: dict[str, torch.Tensor] = {}
        for f in self.fields:
            idx, pad = frame_indices(rows, f.frames)
            x = self._select_columns(f, self.buffer.gather(f.source, idx))
            if f.image:
                t = self._image_to_chw(f, x)
                if self.normalizer is not None and f.name in self.normalizer and \
                        self.normalizer.mode(f.name) != "identity":
                    t = self.normalizer.normalize(f.name, t)
            else:
                x = x.astype(np.float32, copy=False)
                if self.normalizer is not None:
                    x = self.normalizer.normalize(f.name, x)
                t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            if f is self.action_field:
                out["action"] = t
            else:
                out["obs"][f.name] = t
            is_pad[f.name] = torch.from_numpy(pad)
        if self.return_is_pad:
            out["is_pad"] = is_pad
        return out

    def __getitem__(self, index: int | np.ndarray | list[int]) -> dict[str, Any]:
        """One sample for an int; a whole batch for a list/array (use with a BatchSampler and batch_size=None)."""
        if isinstance(index, (int, np.integer)):
            return _unbatch(self.sample_batch([int(index)]), 0)
        return self.sample_batch(index)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """DataLoader's batched fetch: gather once, hand back per-sample views for the default collate."""
        batch = self.sample_batch(indices)
        return [_unbatch(batch, i) for i in range(len(indices))]

    def get_validation_dataset(self) -> SequenceDataset:
        """The held-out episodes with the same spec, windows and normalizer."""
        return SequenceDataset(self.buffer, self.obs_spec, self.action_spec, horizon=self.horizon,
                               n_obs_steps=self.n_obs_steps, n_action_steps=self.n_action_steps,
                               episode_mask=self.val_mask, normalizer=self.normalizer,
                               val_ratio=self.val_ratio, seed=self.seed, return_is_pad=self.return_is_pad)

    def __repr__(self) -> str:
        return (f"SequenceDataset({len(self)} windows of {self.horizon} from {int(self.episode_mask.sum())}/"
                f"{self.buffer.n_episodes} episodes, obs={[f.name for f in self.obs_fields]}, "
                f"To={self.n_obs_steps}, Ta={self.n_action_steps})")


def _episode_steps(episode_ends: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Buffer indices of every step of the episodes in `mask`."""
    starts = np.concatenate([[0], episode_ends[:-1]])
    return np.concatenate([np.arange(s, e) for s, e, m in zip(starts, episode_ends, mask) if m] or
                          [np.zeros(0, np.int64)]).astype(np.int64)


def _unbatch(batch: Any, i: int) -> Any:
    if isinstance(batch, dict):
        return {k: _unbatch(v, i) for k, v in batch.items()}
    return batch[i]
