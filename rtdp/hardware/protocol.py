"""The rtdp wire protocol: a msgpack envelope plus numpy arrays as raw frames (numpy, pyzmq, msgpack only).

A message is one ZeroMQ multipart message: frame 0 is the msgpack envelope
`{"v": version, "type": str, "seq": int, "ts": {name: ns}, "body": {...}}`; frames 1..n are the raw bytes
of numpy arrays. Inside `body` an array is the placeholder `{"__nd__": [frame, dtype, shape]}` (frame
1 is index 0; dtype is numpy's `dtype.str`, e.g. "<f4"); arrays of at most 1 KiB put their bytes in place
of the frame index. Sockets that keep only the latest message
(CONFLATE) cannot carry multipart messages, so `pack`/`unpack` lay the same frames out in one frame.
See docs/protocol.md.
"""

from __future__ import annotations

import math
import reprlib
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

from rtdp.hardware import bounds
from rtdp.hardware.bounds import DEFAULT_LIMITS, REQUEST_LIMITS, Limits  # noqa: F401 (re-exported)

PROTOCOL_VERSION = 1

# Request types (client -> server) and one-way types; a reply carries its request's type, or "error".
HELLO, INFO = "hello", "info"
RESET, STEP, OBSERVE, CLOSE = "reset", "step", "observe", "close"
COMMAND, STATE = "command", "state"
ERROR = "error"
# Robot server requests (`rtdp serve-robot`): take/give up ownership, home, status, e-stop latch and reset.
CONNECT, RELEASE, HOME, STATUS, ESTOP, RESET_ESTOP = "connect", "release", "home", "status", "estop", "reset_estop"
ROBOT_REQUESTS = frozenset({HELLO, CONNECT, RELEASE, HOME, STATUS, ESTOP, RESET_ESTOP})
MESSAGE_TYPES = frozenset({HELLO, INFO, RESET, STEP, OBSERVE, CLOSE, COMMAND, STATE, ERROR} | ROBOT_REQUESTS)

# Error codes carried by an "error" reply's body["code"].
E_MALFORMED = "malformed"  # not a message of this protocol (bad envelope, frame count, array sizes)
E_VERSION = "version"  # protocol version mismatch
E_UNKNOWN_TYPE = "unknown_type"
E_OVERSIZED = "oversized"
E_LIMIT = "limit"  # the envelope breaks a decoder bound (size, a length, nesting depth, object count)
E_BAD_ACTION = "bad_action"  # action of the wrong dtype or shape for the env's action space, or not finite
E_BAD_OPTIONS = "bad_options"  # reset seed/options that are not finite numbers or plain data
E_BUSY = "busy"  # every session is active: a new client is refused rather than evicting one
E_NO_EPISODE = "no_episode"  # step/observe before reset (e.g. after the server restarted)
E_ENV = "env_error"  # the env raised
E_NOT_OWNER = "not_owner"  # a robot request that needs the owner's token, from another client
E_ESTOP = "estop"  # the robot's e-stop is latched: reset it first
E_ROBOT = "robot_error"  # the robot driver raised
E_INTERNAL = "internal"

# Array dtypes allowed on the wire: plain numbers only (no object/void dtypes that could smuggle code).
_WIRE_KINDS = frozenset("biuf")
INLINE_MAX_BYTES = 1024  # arrays up to this size ride inside the envelope (see `encode`)
COPY_THRESHOLD = 65536  # messages with a frame at least this large are sent zero-copy
_ND = "__nd__"
_PACK_HEADER = struct.Struct("<I")  # packed form: u32 length of each frame before it
_short = reprlib.Repr(maxstring=40, maxother=40, maxlist=4, maxdict=4, maxlevel=2).repr  # echo no bomb back


class ProtocolError(ValueError):
    """A message that breaks the protocol; `code` is the error code to reply with."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Message:
    """A decoded message: envelope fields, with arrays put back in place inside `body`."""

    type: str
    seq: int = 0
    body: dict[str, Any] = field(default_factory=dict)
    ts: dict[str, int] = field(default_factory=dict)
    version: int = PROTOCOL_VERSION
    nbytes: int = 0


def now_ns() -> int:
    """The protocol clock: CLOCK_MONOTONIC in ns (comparable between processes on one host only)."""
    return time.perf_counter_ns()


def encode(msg_type: str, seq: int = 0, body: dict[str, Any] | None = None,
           ts: dict[str, int] | None = None, inline_max: int = INLINE_MAX_BYTES) -> list:
    """Frames of one message: the envelope, then each array's buffer (sent zero-copy by `copy=False`).

    Arrays of at most `inline_max` bytes travel inside the envelope as msgpack bin instead of a frame of
    their own: every extra frame costs several µs in pyzmq and libzmq, far more than copying a few hundred
    bytes, while large arrays (images) keep their zero-copy frame. msgpack walks the body in C and calls
    `default` only for what it cannot pack itself (arrays, numpy scalars).
    """
    arrays: list[np.ndarray] = []

    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            if obj.dtype.kind not in _WIRE_KINDS:
                raise TypeError(f"cannot send an array of dtype {obj.dtype} (numbers only)")
            if obj.nbytes <= inline_max:
                return {_ND: [obj.tobytes(), obj.dtype.str, list(obj.shape)]}
            arrays.append(obj if obj.flags.c_contiguous else np.ascontiguousarray(obj))
            return {_ND: [len(arrays) - 1, obj.dtype.str, list(obj.shape)]}
        if isinstance(obj, np.generic):
            return obj.item()
        return repr(obj)  # info dicts may hold arbitrary objects: send what they look like, never pickle

    stamps = {"sent": now_ns()}
    if ts:
        stamps.update(ts)
    envelope = {"v": PROTOCOL_VERSION, "type": msg_type, "seq": int(seq), "ts": stamps, "body": body or {}}
    return [msgpack.packb(envelope, default=default, use_bin_type=True), *arrays]


_DTYPES: dict[str, np.dtype] = {}


def _dtype(name: str) -> np.dtype:
    """np.dtype(name), cached: parsing a dtype string costs more than the rest of a small message."""
    dtype = _DTYPES.get(name)
    if dtype is None:
        dtype = np.dtype(name)
        if len(_DTYPES) < 64:
            _DTYPES[name] = dtype
    return dtype


def _buffer(frame: Any) -> memoryview:
    if hasattr(frame, "buffer"):  # zmq.Frame from recv_multipart(copy=False)
        return frame.buffer
    return memoryview(frame)


_SPECS: dict[tuple, tuple[np.dtype, tuple[int, ...], int]] = {}  # (dtype str, *shape) -> checked form


def _checked_spec(dtype_s: Any, shape: Any) -> tuple[np.dtype, tuple[int, ...], int]:
    """The dtype, shape and byte size a placeholder names, checked once per distinct (dtype, shape).

    A control loop sends the same few array layouts every step, so the checks run once and a hit costs one
    dict lookup (the cache stays bounded: at most 256 layouts are kept)."""
    try:
        key = (dtype_s, *shape)
        hit = _SPECS.get(key)
    except TypeError:  # unhashable parts (a nested list): not a shape
        raise ProtocolError(E_MALFORMED, f"array shape {_short(shape)} is not a list of integers") from None
    if hit is not None:
        return hit
    dims = tuple(shape) if isinstance(shape, (list, tuple)) else None
    if dims is None or not all(type(d) is int for d in dims):  # msgpack gives exact ints (never bools)
        raise ProtocolError(E_MALFORMED, f"array shape {_short(shape)} is not a list of integers")
    try:
        dtype = _dtype(dtype_s)
    except Exception:  # noqa: BLE001 - numpy raises several types for a bad dtype string
        raise ProtocolError(E_MALFORMED, f"array dtype {_short(dtype_s)} is not a numpy dtype string") from None
    if dtype.kind not in _WIRE_KINDS or len(dims) > 32 or min(dims, default=0) < 0:
        raise ProtocolError(E_MALFORMED, f"array: dtype {dtype} / shape {_short(list(dims))} not allowed")
    checked = (dtype, dims, math.prod(dims) * dtype.itemsize)
    if len(_SPECS) < 256:
        _SPECS[key] = checked
    return checked


def _array(spec: Any, bufs: list[memoryview], used: list[int]) -> np.ndarray:
    """The array a placeholder `[frame index or inline bytes, dtype, shape]` describes (read-only view)."""
    try:
        i, dtype_s, shape = spec
    except (TypeError, ValueError):
        raise ProtocolError(E_MALFORMED, f"array spec {_short(spec)} is not [frame, dtype, shape]") from None
    dtype, dims, nbytes = _checked_spec(dtype_s, shape)
    if isinstance(i, bytes):  # a small array inlined in the envelope
        buf = i
        size = len(i)
    elif isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(bufs) - 1:
        buf = bufs[i + 1]
        size = buf.nbytes
        used.append(i)
    else:
        raise ProtocolError(E_MALFORMED, f"array placeholder names frame {_short(i)}, message has "
                                         f"{len(bufs) - 1}")
    if nbytes != size:
        raise ProtocolError(E_MALFORMED, f"array {_short(i)}: {dtype}{list(dims)} needs {nbytes} bytes, "
                                         f"frame has {size}")
    try:
        return np.ndarray(dims, dtype, buffer=buf)  # zero-copy, read-only view
    except (ValueError, OverflowError, TypeError) as err:  # e.g. a zero-size array with a dimension beyond intp
        raise ProtocolError(E_MALFORMED, f"array {_short(i)}: shape {_short(list(dims))}: {err}") from None


def decode(frames: list, max_bytes: int | None = None, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse and validate the frames of one message; raise ProtocolError (with its reply code) if bad.

    The envelope is checked against `limits` before msgpack builds anything (see `bounds`): its size,
    then (unless it is too small to break them) its depth and object count, while msgpack itself bounds
    every string, binary, array and map length at its header.
    """
    if not frames:
        raise ProtocolError(E_MALFORMED, "empty message")
    bufs = [f.buffer if hasattr(f, "buffer") else memoryview(f) for f in frames]
    nbytes = 0
    for b in bufs:
        nbytes += b.nbytes
    if max_bytes is not None and nbytes > max_bytes:
        raise ProtocolError(E_OVERSIZED, f"message of {nbytes} bytes exceeds the limit of {max_bytes}")
    head = frames[0] if type(frames[0]) is bytes else bufs[0]  # msgpack reads bytes faster than a view
    if bufs[0].nbytes > limits.max_envelope_bytes:
        raise ProtocolError(E_LIMIT, f"envelope of {bufs[0].nbytes} bytes exceeds {limits.max_envelope_bytes}: "
                                     "send arrays as frames, not inside the envelope")
    if not bounds.within_by_size(head, limits):
        try:
            bounds.check(head, limits)
        except bounds.LimitExceeded as err:
            raise ProtocolError(E_LIMIT, f"{err}: the message was refused before decoding") from None
        except ValueError as err:
            raise ProtocolError(E_MALFORMED, f"envelope is not msgpack: {err}") from None
    used: list[int] = []

    def hook(d: dict) -> Any:
        if _ND in d and len(d) == 1:
            return _array(d[_ND], bufs, used)
        return d

    unpack_kw = limits.unpack_kwargs
    try:
        env = msgpack.unpackb(head, raw=False, strict_map_key=False, object_hook=hook, **unpack_kw)
    except ProtocolError:
        _check_version(head, unpack_kw)  # a message of another version is reported as such, not as malformed
        raise
    except ValueError as err:
        if "exceeds max_" in str(err):
            raise ProtocolError(E_LIMIT, f"{err}: the message was refused before decoding") from None
        raise ProtocolError(E_MALFORMED, f"envelope is not msgpack: {_short(str(err))}") from None
    except Exception as err:  # noqa: BLE001 - msgpack raises several unrelated exception types on garbage
        raise ProtocolError(E_MALFORMED, f"envelope is not msgpack: {_short(str(err))}") from None
    if not isinstance(env, dict) or "v" not in env or "type" not in env:
        raise ProtocolError(E_MALFORMED, "envelope must be a map with 'v' and 'type'")
    _check_version(env)
    mtype, seq = env["type"], env.get("seq", 0)
    if not isinstance(mtype, str) or not isinstance(seq, int) or isinstance(seq, bool):
        raise ProtocolError(E_MALFORMED, "envelope 'type' must be a string and 'seq' an integer")
    if mtype not in MESSAGE_TYPES:
        raise ProtocolError(E_UNKNOWN_TYPE, f"unknown message type {_short(mtype)}")
    if len(used) != len(bufs) - 1 or (used and sorted(used) != list(range(len(bufs) - 1))):
        raise ProtocolError(E_MALFORMED, f"{len(bufs) - 1} array frames followed the envelope but its "
                                         f"placeholders name frames {_short(sorted(used))}")
    body = env.get("body") or {}
    if not isinstance(body, dict):
        raise ProtocolError(E_MALFORMED, "envelope 'body' must be a map")
    ts = env.get("ts") or {}
    return Message(type=mtype, seq=seq, body=body, ts=ts if isinstance(ts, dict) else {},
                   version=env["v"], nbytes=nbytes)


def _check_version(env: Any, unpack_kw: dict[str, int] | None = None) -> None:
    if not isinstance(env, dict):
        try:
            env = msgpack.unpackb(env, raw=False, strict_map_key=False, **(unpack_kw or {}))
        except Exception:  # noqa: BLE001 - not msgpack: not a version question
            return
        if not isinstance(env, dict):
            return
    if "v" in env and env["v"] != PROTOCOL_VERSION:
        raise ProtocolError(E_VERSION, f"protocol version {_short(env['v'])} not supported (this side speaks "
                                       f"{PROTOCOL_VERSION}): run the same rtdp version on both ends")


def copy_flag(frames: list) -> bool:
    """pyzmq `copy=` for sending frames (`encode`'s, after any routing ids): zero-copy pays off only for large
    arrays."""
    for a in frames:
        if type(a) is np.ndarray and a.nbytes >= COPY_THRESHOLD:
            return False
    return True


def send_frames(sock: zmq.Socket, frames: list) -> None:
    """Send one message: one pyzmq call per frame (`send_multipart` adds per-part checks), large arrays
    zero-copy (see `copy_flag`)."""
    copy = copy_flag(frames)
    last = len(frames) - 1
    for i, f in enumerate(frames):
        sock.send(f, zmq.SNDMORE if i < last else 0, copy=copy)


def recv_frames(sock: zmq.Socket, n_bytes: int = 1) -> list:
    """Receive one message: its first `n_bytes` frames as bytes (routing ids, the envelope: small, and msgpack
    reads bytes fastest), the rest as `zmq.Frame` (array frames stay zero-copy). A `zmq.Frame` costs more
    than bytes to make and read, which matters for the small messages of a state round trip."""
    frames = [sock.recv()]
    while sock.getsockopt(zmq.RCVMORE):
        frames.append(sock.recv() if len(frames) < n_bytes else sock.recv(copy=False))
    return frames


def pack(frames: list) -> bytes:
    """The frames of one message as a single frame (u32 length + bytes each), for CONFLATE sockets."""
    out = bytearray()
    for f in frames:
        b = _buffer(f) if not isinstance(f, np.ndarray) else memoryview(f).cast("B")
        out += _PACK_HEADER.pack(b.nbytes)
        out += b
    return bytes(out)


def unpack(buf: Any) -> list[memoryview]:
    """Split a packed single frame back into frames (views, no copy)."""
    view = _buffer(buf).cast("B") if not isinstance(buf, memoryview) else buf.cast("B")
    frames, pos, n = [], 0, view.nbytes
    while pos < n:
        if pos + 4 > n:
            raise ProtocolError(E_MALFORMED, "packed message truncated in a frame header")
        (size,) = _PACK_HEADER.unpack_from(view, pos)
        pos += 4
        if pos + size > n:
            raise ProtocolError(E_MALFORMED, "packed message truncated in a frame")
        frames.append(view[pos : pos + size])
        pos += size
    return frames


def error_frames(seq: int, code: str, message: str, **extra: Any) -> list:
    """An error reply: what went wrong (`code`, one of the E_* constants) and what to do (`message`)."""
    return encode(ERROR, seq, {"code": code, "message": message, **extra})
