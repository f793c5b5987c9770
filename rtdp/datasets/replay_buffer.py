"""ReplayBuffer: episodes concatenated on axis 0 in `data/<key>`, with cumulative `meta/episode_ends`.

The layout is Diffusion Policy's. On disk it is a zarr group (zarr v2 stores are read, new stores are zarr v3);
in memory it is a dict of numpy arrays that grow geometrically.

Crash safety of `add_episode` on disk rests on three facts:
  1. every file the store writes is written to a temporary name, fsynced and renamed into place, so each
     chunk and each `zarr.json` is either the old or the new version, never half of one;
  2. an episode's data is written *past* the committed end first, and `meta/episode_ends` is extended
     last, so the episode exists only once its end is recorded (the commit);
  3. extending `episode_ends` is two writes (shape, then value); between them the new entry reads as the
     array's fill value (-1), which marks an uncommitted append.
So after a crash the data arrays may be *longer* than `episode_ends[-1]` (an uncommitted tail, discarded by
the next append), but never shorter. A store whose arrays are shorter than `episode_ends` says, or whose
ends are not increasing, is corrupt: opening it raises `ReplayBufferError` naming the episode it breaks at.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

PENDING = -1  # fill value of meta/episode_ends in stores we create: an entry that was never committed
_IMAGE_CHANNELS = (1, 3, 4)
_LOWDIM_CHUNK_BYTES = 1 << 18  # 256 KiB of rows per chunk for low-dim keys


class ReplayBufferError(Exception):
    """A replay buffer that is missing, malformed, inconsistent or misused; the message names the path."""


def is_image_shape(shape: tuple[int, ...]) -> bool:
    """True for [N, H, W, C] frames with C in (1, 3, 4): such keys are chunked per frame."""
    return len(shape) == 4 and shape[-1] in _IMAGE_CHANNELS


def default_chunks(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """Images one frame per chunk (random access reads one file); low-dim ~256 KiB of rows per chunk."""
    if is_image_shape(shape):
        return (1, *shape[1:])
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize)
    rows = 1 << max(0, int(math.log2(max(1, _LOWDIM_CHUNK_BYTES // row_bytes))))
    return (rows, *shape[1:])


def default_compressor(shape: tuple[int, ...], dtype: np.dtype) -> BloscCodec:
    """Blosc/zstd like Diffusion Policy's stores; bit-shuffle for images, byte-shuffle for numbers."""
    shuffle = "bitshuffle" if is_image_shape(shape) else "shuffle"
    return BloscCodec(cname="zstd", clevel=5 if not is_image_shape(shape) else 3, shuffle=shuffle,
                      typesize=np.dtype(dtype).itemsize)


class DurableLocalStore(LocalStore):
    """LocalStore whose writes are fsynced before the rename, so a commit survives power loss too.

    zarr's LocalStore already writes to a temporary file and renames it (atomic against SIGKILL); it does
    not fsync, and the commit order above is only meaningful on power loss if data reaches the disk first.
    """

    async def _set(self, key: str, value: Any, exclusive: bool = False) -> None:
        await self._ensure_open()
        self._check_writable()
        await asyncio.to_thread(_durable_put, self.root / key, value.as_buffer_like(), exclusive)


def _durable_put(path: Path, view: Any, exclusive: bool = False) -> None:
    """Write to a temporary file, fsync, rename into place (link when `exclusive`: fails if `path` exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(view)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ReplayBuffer:
    """Episodes of equal-length arrays per key; zarr-backed (`open`/`create`) or in memory (`in_memory`)."""

    def __init__(self, *, root: zarr.Group | None, path: Path | None, mode: str,
                 episode_ends: np.ndarray, memory: dict[str, np.ndarray] | None = None) -> None:
        self._root = root
        self.path = path
        self.mode = mode
        self._ends = np.asarray(episode_ends, dtype=np.int64)
        self._memory = memory  # in-memory backend: arrays with spare capacity, valid up to n_steps
        self._tail_checked = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> ReplayBuffer:
        """Open an existing store read-only (`"r"`) or for appending (`"a"`); validates it on the way."""
        path = Path(path)
        if mode not in ("r", "a"):
            raise ReplayBufferError(f"{path}: mode must be 'r' or 'a', got {mode!r}")
        if not path.exists():
            raise ReplayBufferError(f"{path}: no such file or directory")
        if not path.is_dir():
            raise ReplayBufferError(f"{path}: not a zarr replay buffer (a file, not a directory)")
        try:
            store = LocalStore(path, read_only=True) if mode == "r" else DurableLocalStore(path)
            root = zarr.open_group(store=store, mode="r" if mode == "r" else "r+")
        except Exception as err:  # noqa: BLE001 (zarr raises several types for "not a group here")
            raise ReplayBufferError(f"{path}: not a zarr replay buffer ({type(err).__name__}: {err})") from None
        if "meta" not in root or "episode_ends" not in root["meta"] or "data" not in root:
            raise ReplayBufferError(f"{path}: not a replay buffer: expected groups data/ and meta/episode_ends")
        ends = _read_committed_ends(path, root["meta"]["episode_ends"])
        buf = cls(root=root, path=path, mode=mode, episode_ends=ends)
        buf._check_lengths()
        return buf

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> ReplayBuffer:
        """Create an empty zarr v3 store at `path` (data arrays are made by the first `add_episode`)."""
        path = Path(path)
        if path.exists():
            if not overwrite:
                raise ReplayBufferError(f"{path}: already exists (pass overwrite=True to replace it)")
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        root = zarr.open_group(store=DurableLocalStore(path), mode="w-", zarr_format=3)
        root.create_group("data")
        meta = root.create_group("meta")
        meta.create_array("episode_ends", shape=(0,), dtype="int64", chunks=(1024,), fill_value=PENDING,
                          compressors=None)
        return cls(root=root, path=path, mode="a", episode_ends=np.zeros(0, np.int64))

    @classmethod
    def in_memory(cls) -> ReplayBuffer:
        """An empty buffer held in numpy arrays (appends are amortised O(1))."""
        return cls(root=None, path=None, mode="a", episode_ends=np.zeros(0, np.int64), memory={})

    @classmethod
    def copy_to_memory(cls, src: str | Path | ReplayBuffer, keys: Iterable[str] | None = None,
                       image_uint8: bool = True, progress: bool = False) -> ReplayBuffer:
        """Load a store (or buffer) into memory; float images holding exact 0..255 integers become uint8.

        PushT's `img` is float32 0..255 (2.8 GB); as uint8 it is 0.7 GB, and batches gather 4× fewer bytes.
        """
        src_buf = src if isinstance(src, ReplayBuffer) else cls.open(src, "r")
        keys = src_buf._select_keys(keys)
        n = src_buf.n_steps
        memory: dict[str, np.ndarray] = {}
        with _progress(progress) as bar:
            for key in keys:
                arr = src_buf[key]
                task = bar.add_task(f"load {key}", total=n) if bar is not None else None
                want_uint8 = image_uint8 and is_image_shape(arr.shape) and arr.dtype.kind == "f"
                out = np.empty((n, *arr.shape[1:]), dtype=np.uint8 if want_uint8 else arr.dtype)
                for start, stop in _slabs(arr, n):
                    block = src_buf._read(key, slice(start, stop))
                    if want_uint8 and not _is_exact_uint8(block):
                        want_uint8 = False  # not 0..255 integers: keep the source dtype, start over
                        out = np.empty((n, *arr.shape[1:]), dtype=arr.dtype)
                        out[:stop] = src_buf._read(key, slice(0, stop))
                    else:
                        out[start:stop] = block
                    if bar is not None:
                        bar.update(task, completed=stop)
                memory[key] = out
        return cls(root=None, path=None, mode="a", episode_ends=src_buf.episode_ends.copy(), memory=memory)

    # ------------------------------------------------------------------ properties
    @property
    def backend(self) -> str:
        return "memory" if self._memory is not None else "zarr"

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def uncommitted_steps(self) -> int:
        """Steps past the last committed episode (left by a crashed append; dropped by the next append)."""
        if self._memory is not None:
            return 0
        return max((arr.shape[0] - self.n_steps for arr in self._data_arrays().values()), default=0)

    def keys(self) -> list[str]:
        if self._memory is not None:
            return list(self._memory)
        return sorted(self._root["data"].array_keys())

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __getitem__(self, key: str) -> np.ndarray | zarr.Array:
        """The array of `key` over all committed steps: a numpy view in memory, a zarr array on disk."""
        if key not in self.keys():
            raise ReplayBufferError(f"{self._name}: no key {key!r} (keys: {', '.join(self.keys()) or 'none'})")
        if self._memory is not None:
            return self._memory[key][: self.n_steps]
        return self._root["data"][key]

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of `key` over the committed steps."""
        return (self.n_steps, *self[key].shape[1:])

    def dtype(self, key: str) -> np.dtype:
        return np.dtype(self[key].dtype)

    def __repr__(self) -> str:
        where = self.path if self.path is not None else "memory"
        return f"ReplayBuffer({where}, episodes={self.n_episodes}, steps={self.n_steps}, keys={self.keys()})"

    # ------------------------------------------------------------------ reading
    def get_episode(self, i: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """All steps of episode `i` (negative indices count from the end) as numpy arrays."""
        n = self.n_episodes
        if not -n <= i < n:
            raise ReplayBufferError(f"{self._name}: episode {i} out of range (store has {n} episodes)")
        i = i % n
        start = int(self._ends[i - 1]) if i > 0 else 0
        return self.get_steps(start, int(self._ends[i]), keys)

    def get_steps(self, start: int, stop: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Steps [start, stop) of the committed data (across episode boundaries) as numpy arrays."""
        if not 0 <= start <= stop <= self.n_steps:
            raise ReplayBufferError(f"{self._name}: steps {start}:{stop} outside 0:{self.n_steps}")
        return {key: self._read(key, slice(start, stop)) for key in self._select_keys(keys)}

    def _read(self, key: str, sel: Any) -> np.ndarray:
        """Read a selection, turning codec/IO failures into an error that names the key and steps."""
        arr = self[key]
        if self._memory is not None:
            return arr[sel]
        try:
            return np.asarray(arr[sel])
        except Exception as err:  # noqa: BLE001 (codec and IO errors vary by codec)
            where = f"steps {sel.start}:{sel.stop}" if isinstance(sel, slice) else "the requested steps"
            raise ReplayBufferError(f"{self._name}: data/{key}: cannot read {where} "
                                    f"(corrupt chunk? {type(err).__name__}: {err})") from None

    def verify(self, keys: Iterable[str] | None = None, progress: bool = False) -> None:
        """Decode every chunk of every key; raise `ReplayBufferError` at the first unreadable one."""
        with _progress(progress) as bar:
            for key in self._select_keys(keys):
                arr = self[key]
                task = bar.add_task(f"verify {key}", total=self.n_steps) if bar is not None else None
                for start, stop in _slabs(arr, self.n_steps):
                    self._read(key, slice(start, stop))
                    if bar is not None:
                        bar.update(task, completed=stop)

    # ------------------------------------------------------------------ writing
    def add_episode(self, data: Mapping[str, np.ndarray]) -> None:
        """Append one episode (all arrays the same length ≥ 1); atomic on disk, see the module docstring."""
        if self.mode != "a":
            raise ReplayBufferError(f"{self._name}: opened read-only; use ReplayBuffer.open(path, mode='a')")
        data = self._check_episode(data)
        length = len(next(iter(data.values())))
        start = self.n_steps
        if self._memory is not None:
            for key, value in data.items():
                self._memory[key] = _grow(self._memory.get(key), start + length, value)
                self._memory[key][start:start + length] = value
            self._ends = np.append(self._ends, start + length)
            return
        try:
            self._append_on_disk(data, start, length)
        except BaseException as err:
            self._tail_checked = False  # whatever was written is an uncommitted tail: clean it next time
            if isinstance(err, OSError):
                raise ReplayBufferError(f"{self._name}: cannot write episode {self.n_episodes} "
                                        f"({type(err).__name__}: {err})") from None
            raise
        self._ends = np.append(self._ends, start + length)

    def _append_on_disk(self, data: dict[str, np.ndarray], start: int, length: int) -> None:
        """Data past the committed end first, then the commit (see the module docstring)."""
        self._discard_uncommitted()
        group = self._root["data"]
        for key, value in data.items():
            if key not in group:
                shape = (0, *value.shape[1:])
                group.create_array(key, shape=shape, dtype=value.dtype, chunks=default_chunks(value.shape,
                                   value.dtype), compressors=default_compressor(value.shape, value.dtype),
                                   fill_value=0)
            arr = group[key]
            arr.resize((start + length, *arr.shape[1:]))
            arr[start:start + length] = value
        # The commit: extend episode_ends (shape first, then the value; see the module docstring).
        ends = self._root["meta"]["episode_ends"]
        n = self.n_episodes
        ends.resize((n + 1,))
        ends[n] = start + length
        _fsync_dir(self.path / "meta" / "episode_ends" / "c")
        _fsync_dir(self.path / "meta" / "episode_ends")

    def _check_episode(self, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not data:
            raise ReplayBufferError(f"{self._name}: add_episode got no arrays")
        data = {k: np.asarray(v) for k, v in data.items()}
        lengths = {k: (v.shape[0] if v.ndim else -1) for k, v in data.items()}
        if len(set(lengths.values())) != 1 or min(lengths.values()) < 1:
            raise ReplayBufferError(f"{self._name}: add_episode needs arrays of one length ≥ 1, got {lengths}")
        existing = self.keys() if self.n_episodes else []  # arrays without a committed episode are dropped
        if existing and set(existing) != set(data):
            missing, extra = sorted(set(existing) - set(data)), sorted(set(data) - set(existing))
            raise ReplayBufferError(f"{self._name}: episode keys differ from the store's "
                                    f"(missing {missing}, unexpected {extra})")
        for key, value in data.items():
            if key not in existing:
                continue
            arr = self[key]
            if tuple(value.shape[1:]) != tuple(arr.shape[1:]):
                raise ReplayBufferError(f"{self._name}: data/{key} has frames of shape {tuple(arr.shape[1:])},"
                                        f" episode gives {tuple(value.shape[1:])}")
            if not np.can_cast(value.dtype, arr.dtype, casting="same_kind"):
                raise ReplayBufferError(f"{self._name}: data/{key} is {arr.dtype}, episode gives {value.dtype}")
            data[key] = value.astype(arr.dtype, copy=False)
        return data

    def _discard_uncommitted(self) -> None:
        """Drop what a crashed append left past the last commit (data tail, a pending end) and temp files."""
        if self._tail_checked:
            return
        n = self.n_steps
        for key, arr in self._data_arrays().items():
            if n == 0:  # nothing committed yet: the first episode defines keys, shapes and dtypes afresh
                del self._root["data"][key]
            elif arr.shape[0] > n:
                arr.resize((n, *arr.shape[1:]))
        ends = self._root["meta"]["episode_ends"]
        if ends.shape[0] > self.n_episodes:
            ends.resize((self.n_episodes,))
        for tmp in self.path.rglob("*.partial"):
            tmp.unlink(missing_ok=True)
        self._tail_checked = True

    # ------------------------------------------------------------------ saving
    def save_to(self, path: str | Path, keys: Iterable[str] | None = None, overwrite: bool = False,
                image_uint8: bool = False, progress: bool = False) -> ReplayBuffer:
        """Write the committed episodes to a new zarr v3 store with per-frame image chunks.

        Data is written first and `episode_ends` last, so an interrupted save leaves an empty (but valid)
        store. With `image_uint8`, float images that hold exact 0..255 integers are stored as uint8.
        """
        keys = self._select_keys(keys)
        out = ReplayBuffer.create(path, overwrite=overwrite)
        group = out._root["data"]
        n = self.n_steps
        with _progress(progress) as bar:
            for key in keys:
                src = self[key]
                shape, dtype = (n, *src.shape[1:]), np.dtype(src.dtype)
                to_uint8 = image_uint8 and is_image_shape(shape) and dtype.kind == "f"
                task = bar.add_task(f"write {key}", total=n) if bar is not None else None
                while True:
                    out_dtype = np.dtype(np.uint8) if to_uint8 else dtype
                    dst = group.create_array(key, shape=shape, dtype=out_dtype, chunks=default_chunks(
                        shape, out_dtype), compressors=default_compressor(shape, out_dtype), fill_value=0,
                        overwrite=True)
                    for start, stop in _slabs(src, n):
                        block = self._read(key, slice(start, stop))
                        if to_uint8 and not _is_exact_uint8(block):
                            break
                        dst[start:stop] = block.astype(out_dtype, copy=False)
                        if bar is not None:
                            bar.update(task, completed=stop)
                    else:
                        break
                    to_uint8 = False  # not exact 0..255 integers: rewrite this key in its own dtype
        ends = out._root["meta"]["episode_ends"]
        ends.resize((self.n_episodes,))
        ends[:] = self._ends
        out._ends = self._ends.copy()
        return out

    # ------------------------------------------------------------------ helpers
    @property
    def _name(self) -> str:
        return str(self.path) if self.path is not None else "in-memory replay buffer"

    def _data_arrays(self) -> dict[str, zarr.Array]:
        group = self._root["data"]
        return {k: group[k] for k in group.array_keys()}

    def _select_keys(self, keys: Iterable[str] | None) -> list[str]:
        available = self.keys()
        if keys is None:
            return available
        keys = [keys] if isinstance(keys, str) else list(keys)
        for key in keys:
            if key not in available:
                raise ReplayBufferError(f"{self._name}: no key {key!r} (keys: {', '.join(available) or 'none'})")
        return keys

    def _check_lengths(self) -> None:
        """Every data array must cover every committed episode; name the first episode that is cut."""
        n = self.n_steps
        for key, arr in self._data_arrays().items():
            if arr.ndim == 0:
                raise ReplayBufferError(f"{self._name}: data/{key} is a scalar, not a per-step array")
            if arr.shape[0] < n:
                ep = int(np.searchsorted(self._ends, arr.shape[0], side="right"))
                start = int(self._ends[ep - 1]) if ep > 0 else 0
                raise ReplayBufferError(
                    f"{self._name}: inconsistent store: data/{key} has {arr.shape[0]} steps but "
                    f"meta/episode_ends ends at {n}; episode {ep} (steps {start}:{int(self._ends[ep])}) "
                    f"is not fully in data/{key}")
        if self.n_episodes and not self._data_arrays():
            raise ReplayBufferError(f"{self._name}: inconsistent store: {self.n_episodes} episodes "
                                    "in meta/episode_ends but no arrays under data/")


def _read_committed_ends(path: Path, arr: zarr.Array) -> np.ndarray:
    """Read `episode_ends`, dropping a trailing never-committed entry; reject anything else inconsistent."""
    if arr.ndim != 1 or np.dtype(arr.dtype).kind not in "iu":
        raise ReplayBufferError(f"{path}: meta/episode_ends must be a 1-D integer array, "
                                f"got shape {arr.shape} dtype {arr.dtype}")
    try:
        ends = np.asarray(arr[:], dtype=np.int64)
    except Exception as err:  # noqa: BLE001 (codec and IO errors vary by codec)
        raise ReplayBufferError(f"{path}: meta/episode_ends cannot be read "
                                f"(corrupt chunk? {type(err).__name__}: {err})") from None
    fill = arr.fill_value
    if len(ends) and fill is not None and ends[-1] == int(fill) and (len(ends) == 1 or ends[-1] <= ends[-2]):
        ends = ends[:-1]  # extended but never written: an append that did not commit
    starts = np.concatenate([[0], ends[:-1]])
    bad = np.flatnonzero(ends <= starts)
    if len(bad):
        i = int(bad[0])
        raise ReplayBufferError(f"{path}: inconsistent store: meta/episode_ends is not increasing at "
                                f"episode {i} (end {int(ends[i])} after {int(starts[i])})")
    return ends


def _slabs(arr: Any, n: int, target_bytes: int = 64 << 20) -> Iterable[tuple[int, int]]:
    """Row ranges of ~64 MB aligned to the array's chunks, for streaming copies."""
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * np.dtype(arr.dtype).itemsize)
    chunk = int(arr.chunks[0]) if hasattr(arr, "chunks") and arr.chunks else 1
    rows = max(chunk, (target_bytes // row_bytes) // chunk * chunk)
    return [(s, min(s + rows, n)) for s in range(0, n, rows)]


def _is_exact_uint8(block: np.ndarray) -> bool:
    return bool(block.size == 0 or (block.min() >= 0 and block.max() <= 255 and np.all(np.rint(block) == block)))


def _grow(arr: np.ndarray | None, size: int, like: np.ndarray) -> np.ndarray:
    """Return `arr` with capacity ≥ `size` rows (doubling), keeping its contents."""
    if arr is not None and arr.shape[0] >= size:
        return arr
    cap = max(size, 2 * (arr.shape[0] if arr is not None else 0), 16)
    out = np.empty((cap, *like.shape[1:]), dtype=like.dtype if arr is None else arr.dtype)
    if arr is not None:
        out[: arr.shape[0]] = arr
    return out


def _fsync_dir(path: Path) -> None:
    """fsync a directory so the renames in it are durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _progress:
    """A rich progress bar when asked for, else nothing (tests and library use stay quiet)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import Progress
            self.bar = Progress(transient=True)
            self.bar.__enter__()
        return self.bar

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
