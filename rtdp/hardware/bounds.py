"""Bounds on an untrusted msgpack envelope, checked before msgpack builds a single object.

msgpack's unpacker bounds the length of each string, binary, array and map (its `max_*_len` options), but
not the nesting depth (its C stack stops at 1024) or how many objects one message makes: an envelope of
1M empty arrays passes every length limit and still costs ~1 s and ~100 MB to build. `check` walks the
headers only (no object is built, lengths are skipped by offset) and stops at the first bound broken, so a
bad envelope costs at most `max_objects` header reads. Most envelopes skip the walk: an envelope cannot
hold more objects than bytes, nor nest deeper than its container header bytes (counted in C by
`bytes.translate`), so small, flat ones are within bounds by arithmetic.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any


class LimitExceeded(ValueError):
    """The envelope breaks one of the `Limits`; the message says which and by how much."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one envelope (frame 0); arrays in their own frames are bounded by the message size only."""

    max_envelope_bytes: int = 1 << 20
    max_str_len: int = 1 << 16
    max_bin_len: int = 1 << 20
    max_array_len: int = 1 << 16
    max_map_len: int = 1 << 12
    max_depth: int = 32
    max_objects: int = 1 << 16

    @cached_property
    def unpack_kwargs(self) -> dict[str, int]:
        """msgpack's own length limits (checked at each header, before the container is allocated)."""
        return {"max_str_len": self.max_str_len, "max_bin_len": self.max_bin_len,
                "max_array_len": self.max_array_len, "max_map_len": self.max_map_len, "max_ext_len": 0}

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# What a server accepts in a request: an action, a seed, reset options. A step request is ~120 bytes and
# ~25 objects; these bounds leave 30x headroom and keep the worst case to ~1 ms of header walking.
REQUEST_LIMITS = Limits(max_envelope_bytes=1 << 16, max_str_len=1 << 12, max_bin_len=1 << 16,
                        max_array_len=1 << 12, max_map_len=1 << 8, max_depth=16, max_objects=1 << 12)
# Replies, state and commands from a peer that is trusted more (the server a client chose): generous.
DEFAULT_LIMITS = Limits()

_CONTAINER_BYTES = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
_NOT_CONTAINER = bytes(b for b in range(256) if b not in _CONTAINER_BYTES)

# Per first byte: fixed bytes to skip after it (scalars, fixstr), or the size of its length field.
_SKIP = [0] * 256
_LEN_FIELD = [0] * 256  # str 8/16/32 and bin 8/16/32: a length field, then that many bytes
for _b in range(0xA0, 0xC0):
    _SKIP[_b] = _b & 0x1F
for _b, _n in ((0xCA, 4), (0xCB, 8), (0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8), (0xD0, 1), (0xD1, 2),
               (0xD2, 4), (0xD3, 8)):
    _SKIP[_b] = _n
for _b, _n in ((0xC4, 1), (0xC5, 2), (0xC6, 4), (0xD9, 1), (0xDA, 2), (0xDB, 4)):
    _LEN_FIELD[_b] = _n
_U = {1: struct.Struct(">B").unpack_from, 2: struct.Struct(">H").unpack_from, 4: struct.Struct(">I").unpack_from}
_STR_BYTES = frozenset([0xD9, 0xDA, 0xDB])


def within_by_size(buf: Any, limits: Limits) -> bool:
    """True when `buf` cannot break the depth or object bounds, whatever it holds (no walk needed)."""
    n = len(buf)
    if n > limits.max_objects:
        return False
    if n <= limits.max_depth:
        return True
    return len(bytes(buf).translate(None, _NOT_CONTAINER)) <= limits.max_depth


def check(buf: Any, limits: Limits) -> int:
    """Walk the headers of the one msgpack object in `buf`; return its object count or raise LimitExceeded.

    Lengths of strings, binaries, arrays and maps, nesting depth and the object count are checked as each
    header is read, and a container may not declare more elements than bytes remain, so nothing is ever
    sized by a declared length. Ext types (unused by the protocol) and truncated input raise a plain
    ValueError (malformed rather than over a bound).
    """
    end = len(buf)
    pos = count = 0
    stack: list[int] = []  # elements still to read in each enclosing container
    left = 1
    max_depth, max_objects = limits.max_depth, limits.max_objects
    while True:
        if left == 0:
            if not stack:
                return count
            left = stack.pop()
            continue
        left -= 1
        count += 1
        if count > max_objects:
            raise LimitExceeded(f"envelope holds more than {max_objects} objects")
        if pos >= end:
            raise ValueError("envelope is truncated")
        b = buf[pos]
        pos += 1
        if b < 0x80 or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):  # fixint, nil, bool
            continue
        n = -1  # elements, if this is a container
        if b < 0x90:
            n = 2 * (b & 0x0F)
        elif b < 0xA0:
            n = b & 0x0F
        elif _SKIP[b]:
            pos += _SKIP[b]  # numbers and fixstr (at most 31 bytes)
        elif _LEN_FIELD[b]:
            f = _LEN_FIELD[b]
            if pos + f > end:
                raise ValueError("envelope is truncated")
            (size,) = _U[f](buf, pos)
            cap, what = (limits.max_str_len, "str") if b in _STR_BYTES else (limits.max_bin_len, "bin")
            if size > cap:
                raise LimitExceeded(f"{what} of {size} bytes exceeds max_{what}_len {cap}")
            pos += f + size
        elif 0xDC <= b <= 0xDF:
            f = 2 if b in (0xDC, 0xDE) else 4
            if pos + f > end:
                raise ValueError("envelope is truncated")
            (size,) = _U[f](buf, pos)
            pos += f
            what = "map" if b >= 0xDE else "array"
            cap = limits.max_map_len if what == "map" else limits.max_array_len
            if size > cap:
                raise LimitExceeded(f"{what} of {size} entries exceeds max_{what}_len {cap}")
            n = 2 * size if what == "map" else size
        else:
            raise ValueError(f"type byte 0x{b:02x} is not allowed (ext types are not part of the protocol)")
        if pos > end:
            raise ValueError("envelope is truncated")
        if n >= 0:
            if len(stack) + 1 > max_depth:
                raise LimitExceeded(f"envelope nests deeper than {max_depth} levels")
            if n > end - pos:
                raise ValueError(f"a container declares {n} elements but only {end - pos} bytes follow")
            if n:
                stack.append(left)
                left = n
