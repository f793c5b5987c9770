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

Stores created here also carry checksums (`checksums.py`): one per chunk segment in
`meta/chunk_checksums/<key>` and one per episode in `meta/episode_checksums`, written past the committed end
with the episode's data, so the same commit makes them valid. Episode checksums are checked when a store
opens; each chunk is checked (and looked for: a missing chunk is an error, never zeros) the first time this
process reads it, and every chunk by `verify()`. Stores written before checksums (zarr v2 from Diffusion
Policy, older rtdp stores) open as before with `checksums` None; their chunks are still looked for.
"""

from __future__ import annotations

import asyncio
import itertools
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

from rtdp.datasets import checksums as C

PENDING = -1  # fill value of meta/episode_ends in stores we create: an entry that was never committed
_IMAGE_CHANNELS = (1, 3, 4)
_LOWDIM_CHUNK_BYTES = 1 << 18  # 256 KiB of rows per chunk for low-dim keys
CHUNK_SUMS = "chunk_checksums"  # meta/chunk_checksums/<key>: uint32 per segment (chunk x episode)
EPISODE_SUMS = "episode_checksums"  # meta/episode_checksums: uint32 per episode
_SUM_CHUNK = 1 << 16  # checksum entries per chunk of those arrays
_WRITE_ALL = {"write_empty_chunks": True}  # every chunk exists on disk, so a missing one is an error


class ReplayBufferError(ValueError):
    """A replay buffer that is missing, malformed, inconsistent, unwritable or misused; the message names
    the path and what to do. A ValueError, so CLIs that turn ValueError into one line handle it too."""


class CorruptStoreError(ReplayBufferError):
    """Data that does not match its checksum, a chunk that is missing or does not decode: names the key,
    chunk, steps and episode."""


# Chunks this process has checked: (store, key) -> {chunk index: committed rows it held when checked}.
_VERIFIED: dict[tuple[str, str], dict[int, int]] = {}


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
                 episode_ends: np.ndarray, memory: dict[str, np.ndarray] | None = None,
                 arrays: dict[str, zarr.Array] | None = None) -> None:
        self._root = root
        self.path = path
        self.mode = mode
        self._ends = np.asarray(episode_ends, dtype=np.int64)
        self._memory = memory  # in-memory backend: arrays with spare capacity, valid up to n_steps
        self._arrays = arrays if arrays is not None else {}  # zarr backend: data/<key>, metadata parsed once
        self._tail_checked = False
        self._sums: _Sums | None = None  # checksum tables (None: a store written before checksums)

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
        meta = _node(path, root, "meta", group=True)
        data = _node(path, root, "data", group=True)
        ends_arr = _node(path, root, "meta/episode_ends") if meta is not None else None
        if meta is None or data is None or ends_arr is None:
            raise ReplayBufferError(f"{path}: not a replay buffer: expected groups data/ and meta/episode_ends")
        ends = _read_committed_ends(path, ends_arr)
        buf = cls(root=root, path=path, mode=mode, episode_ends=ends, arrays=_open_arrays(path, root, data))
        buf._check_lengths()
        buf._sums = _Sums.load(buf)
        return buf

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> ReplayBuffer:
        """Create an empty zarr v3 store at `path` (data arrays are made by the first `add_episode`)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ReplayBufferError(f"{path}: already exists (pass overwrite=True to replace it)")
        try:
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            root = zarr.open_group(store=DurableLocalStore(path), mode="w-", zarr_format=3)
            root.create_group("data")
            meta = root.create_group("meta")
            meta.create_array("episode_ends", shape=(0,), dtype="int64", chunks=(1024,), fill_value=PENDING,
                              compressors=None)
            _Sums.create(meta)
        except OSError as err:
            raise ReplayBufferError(f"{path}: cannot create the store ({err.strerror or err}): pick a writable "
                                    "directory") from None
        buf = cls(root=root, path=path, mode="a", episode_ends=np.zeros(0, np.int64))
        buf._sums = _Sums.load(buf)
        return buf

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

    @property
    def checksums(self) -> str | None:
        """The checksum algorithm the store carries ("crc32"), or None (written before checksums existed)."""
        return C.ALGORITHM if self._sums is not None else None

    def keys(self) -> list[str]:
        if self._memory is not None:
            return list(self._memory)
        return sorted(self._arrays)

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __getitem__(self, key: str) -> np.ndarray | zarr.Array:
        """The array of `key` over all committed steps: a numpy view in memory, a zarr array on disk."""
        if key not in self.keys():
            raise ReplayBufferError(f"{self._name}: no key {key!r} (keys: {', '.join(self.keys()) or 'none'})")
        if self._memory is not None:
            return self._memory[key][: self.n_steps]
        return self._arrays[key]

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

    def _read(self, key: str, sel: slice) -> np.ndarray:
        """Rows `sel` (a slice of committed steps) of `key`, each chunk checked the first time it is read."""
        arr = self[key]
        if self._memory is not None:
            return arr[sel]
        start, stop, _ = sel.indices(self.n_steps)
        if stop <= start:
            return self._raw(key, slice(start, start))
        rows = self._chunk_rows(key)
        todo = self._unverified(key, range(start // rows, (stop - 1) // rows + 1))
        if not todo:
            return self._raw(key, slice(start, stop))
        lo, hi = min(todo[0] * rows, start), max(min((todo[-1] + 1) * rows, self.n_steps), stop)
        block = self._raw(key, slice(lo, hi))  # whole chunks: checked from the same read
        self._check_chunks(key, todo, block, lo)
        return block[start - lo:stop - lo]

    def gather(self, key: str, idx: np.ndarray) -> np.ndarray:
        """`self[key][idx]` for an index array of committed steps of any shape, chunks checked once."""
        idx = np.asarray(idx, dtype=np.int64)
        if self._memory is not None:
            return self._memory[key][: self.n_steps][idx]
        flat = idx.reshape(-1)
        if flat.size == 0:
            return np.empty((*idx.shape, *self[key].shape[1:]), self.dtype(key))
        lo, hi = int(flat.min()), int(flat.max()) + 1
        if lo < 0 or hi > self.n_steps:
            raise ReplayBufferError(f"{self._name}: steps {lo}:{hi} outside 0:{self.n_steps}")
        if hi - lo <= 4 * flat.size:  # one contiguous read beats many scattered chunk reads
            return self._read(key, slice(lo, hi))[idx - lo]
        uniq, inverse = np.unique(flat, return_inverse=True)
        rows = self._chunk_rows(key)
        todo = self._unverified(key, np.unique(uniq // rows).tolist())
        if todo:  # read just the unchecked chunks, in one call, and check them
            wanted = np.concatenate([np.arange(c * rows, min((c + 1) * rows, self.n_steps)) for c in todo])
            self._check_chunks(key, todo, self._raw(key, wanted), None, wanted)
        block = self._raw(key, uniq)
        return block[inverse].reshape(*idx.shape, *block.shape[1:])

    def _raw(self, key: str, sel: slice | np.ndarray) -> np.ndarray:
        """A read without checks; codec and IO failures name the key, the steps and the chunk at fault."""
        arr = self[key]
        try:
            return np.asarray(arr[sel] if isinstance(sel, slice) else arr.oindex[sel])
        except Exception as err:  # noqa: BLE001 (codec and IO errors vary by codec)
            if isinstance(sel, slice):
                where = f"steps {sel.start}:{sel.stop}"
                first, last = sel.start, sel.stop
            else:
                where, first, last = "the requested steps", int(np.min(sel)), int(np.max(sel)) + 1
            bad = self._first_undecodable(key, first, last)
            raise CorruptStoreError(f"{self._name}: data/{key}: cannot read {where} (corrupt chunk"
                                    f"{' ' + bad if bad else '?'} {type(err).__name__}: {err})") from None

    def _first_undecodable(self, key: str, first: int, last: int) -> str:
        """Which chunk of rows [first, last) fails to decode (for the error message), as text."""
        rows = self._chunk_rows(key)
        for c in range(first // rows, (last - 1) // rows + 1):
            a, b = c * rows, min((c + 1) * rows, self.n_steps)
            try:
                np.asarray(self[key][a:b])
            except Exception:  # noqa: BLE001
                return f"{c}, {self._where(a, b)}:"
        return ""

    def verify(self, keys: Iterable[str] | None = None, progress: bool = False) -> None:
        """Check every chunk of every key: present, decodable, equal to its checksum (if the store has them).

        Raises `CorruptStoreError` listing the chunks that fail (key, chunk, steps, episode); ignores what
        this process has already checked.
        """
        if self._memory is not None:
            return
        problems: list[str] = []
        with _progress(progress) as bar:
            for key in self._select_keys(keys):
                arr = self[key]
                rows = self._chunk_rows(key)
                _VERIFIED.pop(self._cache_key(key), None)
                task = bar.add_task(f"verify {key}", total=self.n_steps) if bar is not None else None
                for start, stop in _slabs(arr, self.n_steps):
                    chunks = list(range(start // rows, (stop - 1) // rows + 1))
                    try:
                        block = np.asarray(arr[start:stop])
                    except Exception:  # noqa: BLE001 (then each chunk is read alone, to name the bad ones)
                        block = None
                    problems += self._check_chunks(key, chunks, block, start, collect=True)
                    if bar is not None:
                        bar.update(task, completed=stop)
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise CorruptStoreError(f"{self._name}: {len(problems)} bad chunk(s): " + "; ".join(problems[:5])
                                    + more + ": restore the store from a copy")

    # ------------------------------------------------------------------ chunk checks
    def _chunk_rows(self, key: str) -> int:
        chunks = getattr(self[key], "chunks", None)
        return int(chunks[0]) if chunks else max(self.n_steps, 1)

    def _cache_key(self, key: str) -> tuple[str, str]:
        store = self._sums.store_id if self._sums is not None else f"{self.path.resolve()}"
        return store, key

    def _unverified(self, key: str, chunks: Iterable[int]) -> list[int]:
        """The chunks this process has not checked with the rows they hold now."""
        done = _VERIFIED.get(self._cache_key(key), {})
        rows, n = self._chunk_rows(key), self.n_steps
        return [c for c in chunks if done.get(c) != min((c + 1) * rows, n) - c * rows]

    def _where(self, first: int, last: int) -> str:
        eps = C.episodes_of_rows(self._ends, first, last)
        what = f"episode {eps[0]}" if len(eps) == 1 else f"episodes {eps[0]}-{eps[-1]}"
        return f"steps {first}:{last}, {what}"

    def _check_chunks(self, key: str, chunks: list[int], block: np.ndarray | None, first: int | None,
                      rows_read: np.ndarray | None = None, collect: bool = False) -> list[str]:
        """Check chunks against the disk and their checksums, from `block` (rows `first`.. or `rows_read`).

        Raises at the first bad chunk, or with `collect` returns what is wrong with each; marks good ones.
        """
        arr, rows, n = self[key], self._chunk_rows(key), self.n_steps
        done = _VERIFIED.setdefault(self._cache_key(key), {})
        problems = []
        for c in chunks:
            a, b = c * rows, min((c + 1) * rows, n)
            problem = self._missing_chunk(key, arr, c)
            part = None
            if problem is None:
                if block is not None and first is not None:
                    part = block[a - first:b - first]
                elif block is not None:
                    sel = np.flatnonzero((rows_read >= a) & (rows_read < b))
                    part = block[sel]
                else:
                    try:
                        part = np.asarray(arr[a:b])
                    except Exception as err:  # noqa: BLE001
                        problem = f"does not decode ({type(err).__name__}: {err})"
            if problem is None and self._sums is not None:
                problem = self._sums.mismatch(key, a, b, part)
            if problem is None:
                done[c] = b - a
                continue
            message = f"data/{key}: chunk {c} ({self._where(a, b)}) {problem}"
            if not collect:
                raise CorruptStoreError(f"{self._name}: {message}: the store is damaged; restore it from a copy "
                                        "(`rtdp data info --verify` lists every bad chunk)")
            problems.append(message)
        return problems

    def _missing_chunk(self, key: str, arr: zarr.Array, c: int) -> str | None:
        """Why chunk `c` is not on disk (zarr would read it as zeros), or None when every file of it is."""
        grid = [range(math.ceil(s / k)) for s, k in zip(arr.shape[1:], arr.chunks[1:])]
        for rest in itertools.product(*grid):
            rel = arr.metadata.encode_chunk_key((c, *rest))
            if not (self.path / "data" / key / rel).is_file():
                return f"is missing (no file data/{key}/{rel}; a missing chunk is never read as zeros)"
        return None

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
            if self._sums is not None:
                self._sums.rollback()
            if isinstance(err, OSError):
                raise ReplayBufferError(f"{self._name}: cannot write episode {self.n_episodes} "
                                        f"({type(err).__name__}: {err})") from None
            raise
        self._ends = np.append(self._ends, start + length)
        if self._sums is not None:
            self._sums.committed(self._ends)

    def _append_on_disk(self, data: dict[str, np.ndarray], start: int, length: int) -> None:
        """Data past the committed end first, then its checksums, then the commit (see the module docstring)."""
        self._discard_uncommitted()
        group = self._root["data"]
        for key, value in data.items():
            if key not in self._arrays:
                shape = (0, *value.shape[1:])
                self._arrays[key] = group.create_array(
                    key, shape=shape, dtype=value.dtype, chunks=default_chunks(value.shape, value.dtype),
                    compressors=default_compressor(value.shape, value.dtype), fill_value=0)
            arr = self._arrays[key].with_config(_WRITE_ALL)
            arr.resize((start + length, *arr.shape[1:]))
            arr[start:start + length] = value
            self._arrays[key] = arr
        if self._sums is not None:
            self._sums.append(data, start, length)
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
        """Drop what a crashed append left past the last commit (data tail, a pending end, checksums) and
        temp files."""
        if self._tail_checked:
            return
        n = self.n_steps
        for key, arr in list(self._arrays.items()):
            if n == 0:  # nothing committed yet: the first episode defines keys, shapes and dtypes afresh
                del self._root["data"][key]
                del self._arrays[key]
            elif arr.shape[0] > n:
                arr.resize((n, *arr.shape[1:]))
        if self._sums is not None:
            self._sums.discard_uncommitted(drop_keys=n == 0)
        ends = self._root["meta"]["episode_ends"]
        if ends.shape[0] > self.n_episodes:
            ends.resize((self.n_episodes,))
        for tmp in self.path.rglob("*.partial"):
            tmp.unlink(missing_ok=True)
        self._tail_checked = True

    # ------------------------------------------------------------------ saving
    def save_to(self, path: str | Path, keys: Iterable[str] | None = None, overwrite: bool = False,
                image_uint8: bool = False, progress: bool = False) -> ReplayBuffer:
        """Write the committed episodes to a new zarr v3 store with per-frame image chunks and checksums.

        Data and checksums are written first and `episode_ends` last, so an interrupted save leaves an empty
        (but valid) store. With `image_uint8`, float images that hold exact 0..255 integers are stored as uint8.
        """
        keys = self._select_keys(keys)
        out = ReplayBuffer.create(path, overwrite=overwrite)
        group = out._root["data"]
        n = self.n_steps
        crcs: dict[str, np.ndarray] = {}
        with _progress(progress) as bar:
            for key in keys:
                src = self[key]
                shape, dtype = (n, *src.shape[1:]), np.dtype(src.dtype)
                to_uint8 = image_uint8 and is_image_shape(shape) and dtype.kind == "f"
                task = bar.add_task(f"write {key}", total=n) if bar is not None else None
                while True:
                    out_dtype = np.dtype(np.uint8) if to_uint8 else dtype
                    chunks = default_chunks(shape, out_dtype)
                    dst = group.create_array(key, shape=shape, dtype=out_dtype, chunks=chunks,
                                             compressors=default_compressor(shape, out_dtype), fill_value=0,
                                             overwrite=True).with_config(_WRITE_ALL)
                    hasher = C.SegmentHasher(C.segment_starts(self._ends, chunks[0], n), n)
                    for start, stop in _slabs(src, n):
                        block = self._read(key, slice(start, stop))
                        if to_uint8 and not _is_exact_uint8(block):
                            break
                        block = block.astype(out_dtype, copy=False)
                        dst[start:stop] = block
                        hasher.feed(start, block)
                        if bar is not None:
                            bar.update(task, completed=stop)
                    else:
                        break
                    to_uint8 = False  # not exact 0..255 integers: rewrite this key in its own dtype
                out._arrays[key] = dst
                crcs[key] = hasher.crcs
        out._sums.write_all(self._ends, crcs)
        ends = out._root["meta"]["episode_ends"]
        ends.resize((self.n_episodes,))
        ends[:] = self._ends
        out._ends = self._ends.copy()
        out._sums.committed(out._ends)
        return out

    # ------------------------------------------------------------------ helpers
    @property
    def _name(self) -> str:
        return str(self.path) if self.path is not None else "in-memory replay buffer"

    def _data_arrays(self) -> dict[str, zarr.Array]:
        return dict(self._arrays)

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


def _node(path: Path, root: zarr.Group, name: str, group: bool = False) -> Any:
    """`root[name]` if it is a group (or an array), None if absent; unreadable metadata is one clear line."""
    try:
        node = root[name]
    except KeyError:
        return None
    except Exception as err:  # noqa: BLE001 (garbage metadata: JSONDecodeError, ValueError, TypeError ...)
        raise ReplayBufferError(f"{path}: {name}/{_meta_file(root)} is not valid zarr metadata "
                                f"({type(err).__name__}: {err}); the store is damaged") from None
    return node if isinstance(node, zarr.Group) == group else None


def _meta_file(root: zarr.Group) -> str:
    return "zarr.json" if root.metadata.zarr_format == 3 else ".zarray/.zgroup"


def _open_arrays(path: Path, root: zarr.Group, data: zarr.Group) -> dict[str, zarr.Array]:
    """Every array under data/, each opened on its own so that a damaged one is named."""
    names = sorted(p.name for p in (path / "data").iterdir() if p.is_dir() and not p.name.startswith("."))
    arrays = {}
    for name in names:
        arr = _node(path, root, f"data/{name}")
        if arr is not None:
            arrays[name] = arr
    return arrays


class _Sums:
    """The checksum tables of one store (see `checksums`), kept in memory for the committed episodes."""

    def __init__(self, buf: ReplayBuffer, group: zarr.Group, episodes: zarr.Array):
        self.buf, self.group, self.episodes = buf, group, episodes
        self.store_id = str(group.attrs.get("store_id", buf.path))
        self.starts: dict[str, np.ndarray] = {}
        self.crcs: dict[str, np.ndarray] = {}
        self.episode_crcs = np.zeros(0, np.uint32)
        self._pending: tuple[dict[str, np.ndarray], dict[str, np.ndarray], int] | None = None

    @staticmethod
    def create(meta: zarr.Group) -> None:
        """The empty tables of a new store."""
        group = meta.create_group(CHUNK_SUMS)
        group.attrs.update({"algorithm": C.ALGORITHM, "version": C.VERSION, "store_id": uuid.uuid4().hex,
                            "segments": "rows of one chunk that belong to one episode"})
        meta.create_array(EPISODE_SUMS, shape=(0,), dtype="uint32", chunks=(_SUM_CHUNK,), fill_value=0,
                          compressors=None)

    @classmethod
    def load(cls, buf: ReplayBuffer) -> _Sums | None:
        """The tables of `buf`'s store, checked against its episodes; None for a store without them."""
        path, root = buf.path, buf._root
        group = _node(path, root, f"meta/{CHUNK_SUMS}", group=True)
        if group is None:
            return None
        episodes = _node(path, root, f"meta/{EPISODE_SUMS}")
        if episodes is None or group.attrs.get("algorithm") != C.ALGORITHM:
            raise CorruptStoreError(f"{path}: meta/{CHUNK_SUMS} is not an rtdp {C.ALGORITHM} table or "
                                    f"meta/{EPISODE_SUMS} is missing; the store is damaged")
        sums = cls(buf, group, episodes)
        n_eps = buf.n_episodes
        if n_eps == 0:
            return sums
        for key in buf.keys():  # noqa: SIM118 (ReplayBuffer is not a dict)
            arr = _node(path, root, f"meta/{CHUNK_SUMS}/{key}")
            starts = C.segment_starts(buf.episode_ends, buf._chunk_rows(key))
            if arr is None or arr.shape[0] < len(starts):
                raise CorruptStoreError(f"{path}: meta/{CHUNK_SUMS}/{key} holds "
                                        f"{0 if arr is None else arr.shape[0]} checksums, the committed "
                                        f"episodes need {len(starts)}; the store is damaged")
            sums.starts[key], sums.crcs[key] = starts, _read_all(path, arr, len(starts))
        if episodes.shape[0] < n_eps:
            raise CorruptStoreError(f"{path}: meta/{EPISODE_SUMS} holds {episodes.shape[0]} checksums for "
                                    f"{n_eps} episodes; the store is damaged")
        sums.episode_crcs = _read_all(path, episodes, n_eps)
        expected = C.episode_checksums(buf.episode_ends, sums.starts, sums.crcs)
        bad = np.flatnonzero(expected != sums.episode_crcs)
        if len(bad):
            e = int(bad[0])
            lo = int(buf.episode_ends[e - 1]) if e else 0
            raise CorruptStoreError(f"{path}: episode {e} (steps {lo}:{int(buf.episode_ends[e])}) does not match "
                                    f"its checksum{f' (and {len(bad) - 1} more episodes)' if len(bad) > 1 else ''}: "
                                    "meta/episode_ends (an episode boundary) or the checksum tables were "
                                    "altered; the store is damaged")
        return sums

    def mismatch(self, key: str, first: int, last: int, rows: np.ndarray) -> str | None:
        """What is wrong with rows [first, last) of `key` (decoded), or None when they match."""
        starts, crcs = self.starts.get(key), self.crcs.get(key)
        if starts is None:
            return "has no checksums (the store lists none for this key)"
        lo, hi = int(np.searchsorted(starts, first)), int(np.searchsorted(starts, last))
        hasher = C.SegmentHasher(starts[lo:hi], last)
        hasher.feed(first, rows)
        bad = np.flatnonzero(hasher.crcs != crcs[lo:hi])
        if not len(bad):
            return None
        a = int(starts[lo + bad[0]])
        b = int(starts[lo + bad[0] + 1]) if lo + bad[0] + 1 < len(starts) else self.buf.n_steps
        return (f"does not match its checksum (first at steps {a}:{b}): flipped, truncated or swapped data"
                if len(bad) == 1 else f"does not match its checksums ({len(bad)} segments, first at steps {a}:{b})")

    # -- writing -------------------------------------------------------------------------------------
    def _array(self, key: str) -> zarr.Array:
        if key not in self.group:
            self.group.create_array(key, shape=(0,), dtype="uint32", chunks=(_SUM_CHUNK,), fill_value=0,
                                    compressors=None)
        return self.group[key].with_config(_WRITE_ALL)

    def append(self, data: Mapping[str, np.ndarray], start: int, length: int) -> None:
        """Write the checksums of an episode about to be committed (past the committed entries)."""
        new_starts, new_crcs = {}, {}
        for key, value in data.items():
            rows = self.buf._chunk_rows(key)
            starts = np.union1d([start], np.arange((start // rows + 1) * rows, start + length, rows))
            hasher = C.SegmentHasher(starts.astype(np.int64), start + length)
            hasher.feed(start, np.asarray(value, dtype=self.buf.dtype(key)))
            arr = self._array(key)
            old = len(self.starts.get(key, ()))
            arr.resize((old + len(starts),))
            arr[old:] = hasher.crcs
            new_starts[key], new_crcs[key] = starts, hasher.crcs
        digest = C.episode_checksum(start, start + length, new_crcs)
        n = self.buf.n_episodes
        episodes = self.episodes.with_config(_WRITE_ALL)
        episodes.resize((n + 1,))
        episodes[n] = digest
        self._pending = (new_starts, new_crcs, digest)

    def committed(self, ends: np.ndarray) -> None:
        """The commit went through: what `append` wrote is now part of the store."""
        if self._pending is not None:
            new_starts, new_crcs, digest = self._pending
            for key in new_starts:
                self.starts[key] = np.concatenate([self.starts.get(key, np.zeros(0, np.int64)), new_starts[key]])
                self.crcs[key] = np.concatenate([self.crcs.get(key, np.zeros(0, np.uint32)), new_crcs[key]])
            self.episode_crcs = np.append(self.episode_crcs, np.uint32(digest))
            self._pending = None

    def rollback(self) -> None:
        self._pending = None

    def write_all(self, ends: np.ndarray, crcs: Mapping[str, np.ndarray]) -> None:
        """All tables at once (a store written by `save_to`), before its episode_ends."""
        starts = {key: C.segment_starts(ends, self.buf._chunk_rows(key)) for key in crcs}
        for key, values in crcs.items():
            arr = self._array(key)
            arr.resize((len(values),))
            arr[:] = values
        digests = C.episode_checksums(ends, starts, crcs)
        episodes = self.episodes.with_config(_WRITE_ALL)
        episodes.resize((len(ends),))
        episodes[:] = digests
        self.starts, self.crcs, self.episode_crcs = starts, dict(crcs), digests

    def discard_uncommitted(self, drop_keys: bool) -> None:
        """Trim entries a crashed append left past the committed ones (all of them for a store with none)."""
        for key in list(self.group.array_keys()):
            if drop_keys:
                del self.group[key]
                self.starts.pop(key, None), self.crcs.pop(key, None)
                continue
            arr = self.group[key]
            keep = len(self.starts.get(key, ()))
            if arr.shape[0] > keep:
                arr.resize((keep,))
        if self.episodes.shape[0] > self.buf.n_episodes:
            self.episodes.resize((self.buf.n_episodes,))


def _read_all(path: Path, arr: zarr.Array, n: int) -> np.ndarray:
    try:
        return np.asarray(arr[:n], dtype=np.uint32)
    except Exception as err:  # noqa: BLE001 (codec and IO errors vary by codec)
        raise CorruptStoreError(f"{path}: {arr.path} cannot be read ({type(err).__name__}: {err}); the store "
                                "is damaged") from None


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
