"""Checksums of a replay buffer's data: per chunk (split at episode ends) and per episode, CRC-32 of the rows.

A *segment* is the rows of one chunk that belong to one episode: the steps `[0, n)` cut at every chunk
boundary and every episode start. A committed segment never changes (appends only add rows after it), so
its checksum can be written with the episode, before the commit, and stays valid forever, however often the
last chunk of a low-dim key is rewritten by later appends. Checksums cover the decoded rows (little-endian
bytes of the stored dtype), so they catch flipped bytes, truncated or swapped chunk files and chunks read
back as zeros alike, whatever the codec.

An episode's checksum is the CRC-32 of its start, end and the checksums of its segments of every key: a
moved episode boundary (one bit in `meta/episode_ends`) changes it, and it is checked when a store opens.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

import numpy as np

ALGORITHM = "crc32"
VERSION = 1


def segment_starts(ends: np.ndarray, chunk_rows: int, n: int | None = None) -> np.ndarray:
    """First row of every segment of `[0, n)` (n defaults to the last end): chunk starts and episode starts."""
    ends = np.asarray(ends, dtype=np.int64)
    n = int(ends[-1]) if n is None and len(ends) else int(n or 0)
    if n <= 0:
        return np.zeros(0, np.int64)
    episode_starts = np.concatenate([[0], ends[:-1]])
    return np.union1d(episode_starts[episode_starts < n], np.arange(0, n, int(chunk_rows), dtype=np.int64))


def _le_bytes(block: np.ndarray) -> np.ndarray:
    """`block` as a C-contiguous little-endian array (what the checksum covers), without copying if it is."""
    dtype = block.dtype.newbyteorder("<") if block.dtype.byteorder == ">" else block.dtype
    return np.ascontiguousarray(block, dtype=dtype)


class SegmentHasher:
    """Checksums of the segments that start at `starts` (ending at the next start, the last at `n`).

    Feed row blocks in order with `feed(first_row, rows)`; a segment split across blocks is continued
    (CRC-32 is incremental), so blocks need not be aligned to segments.
    """

    def __init__(self, starts: np.ndarray, n: int):
        self.starts = np.asarray(starts, dtype=np.int64)
        self.stops = np.append(self.starts[1:], n).astype(np.int64)
        self.crcs = np.zeros(len(self.starts), np.uint32)

    def feed(self, first_row: int, rows: np.ndarray) -> None:
        rows = _le_bytes(rows)
        last = first_row + len(rows)
        i = max(int(np.searchsorted(self.starts, first_row, side="right")) - 1, 0)
        while i < len(self.starts) and self.starts[i] < last:
            a, b = max(int(self.starts[i]), first_row), min(int(self.stops[i]), last)
            if a < b:
                self.crcs[i] = zlib.crc32(rows[a - first_row:b - first_row], int(self.crcs[i]))
            i += 1


def episode_checksum(start: int, end: int, crcs: Mapping[str, np.ndarray]) -> int:
    """An episode's checksum: its bounds and, key by key (sorted), the checksums of its segments."""
    crc = zlib.crc32(struct.pack("<qq", int(start), int(end)))
    for key in sorted(crcs):
        crc = zlib.crc32(key.encode() + b"\0", crc)
        crc = zlib.crc32(np.ascontiguousarray(crcs[key], dtype="<u4"), crc)
    return crc


def episode_checksums(ends: np.ndarray, starts: Mapping[str, np.ndarray],
                      crcs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The checksum of every episode of `ends` from the segment `starts` and checksums of each key."""
    ends = np.asarray(ends, dtype=np.int64)
    ep_starts = np.concatenate([[0], ends[:-1]])
    span = {k: (np.searchsorted(starts[k], ep_starts), np.searchsorted(starts[k], ends)) for k in starts}
    out = np.zeros(len(ends), np.uint32)
    for e in range(len(ends)):
        out[e] = episode_checksum(ep_starts[e], ends[e], {k: crcs[k][lo[e]:hi[e]] for k, (lo, hi) in span.items()})
    return out


def episodes_of_rows(ends: np.ndarray, first: int, last: int) -> list[int]:
    """The episodes that hold any of the rows `[first, last)`."""
    ends = np.asarray(ends, dtype=np.int64)
    lo = int(np.searchsorted(ends, first, side="right"))
    hi = int(np.searchsorted(ends, max(last - 1, first), side="right"))
    return list(range(lo, min(hi, len(ends) - 1) + 1))
