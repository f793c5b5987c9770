"""High-rate state publishing (PUB/SUB) and latest-only command streaming (PUSH/PULL with CONFLATE).

Both carry protocol messages in the packed single-frame form (`protocol.pack`), because ZeroMQ's CONFLATE
option, which keeps only the newest message in a queue, does not support multipart messages. The robot
side binds (it is the fixed address); the policy side connects.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zmq

from rtdp.hardware import protocol as P

COMMAND_MAX_BYTES = 1 << 20  # a command is an action: a frame larger than this drops the sender's connection


def _socket(ctx: zmq.Context | None, kind: int, keys: Any = None, **opts: int) -> zmq.Socket:
    """A socket with LINGER 0 and `opts`; `keys` (`curve.ServerKeys`/`ClientKeys`) turns CURVE on."""
    sock = (ctx or zmq.Context.instance()).socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in opts.items():
        sock.setsockopt(getattr(zmq, name), value)
    if keys is not None:
        keys.apply(sock)
    return sock


class StatePublisher:
    """Publish state messages. `conflate=True` (latest-only) keeps just the newest unsent state per
    subscriber, so a burst never makes PUB drop the newest one; otherwise the queue is bounded by `hwm`
    and, when full, new states are dropped for that subscriber (ZeroMQ PUB semantics)."""

    def __init__(self, bind: str, *, conflate: bool = True, hwm: int = 16,
                 context: zmq.Context | None = None, keys: Any = None):
        self._sock = _socket(context, zmq.PUB, keys, **({"CONFLATE": 1} if conflate else {"SNDHWM": hwm}))
        self._sock.bind(bind)
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.seq = 0

    def publish(self, body: dict[str, Any], ts: dict[str, int] | None = None) -> int:
        """Publish one state (never blocks: PUB drops for subscribers whose queue is full); returns seq."""
        self.seq += 1
        self._sock.send(P.pack(P.encode(P.STATE, self.seq, body, ts)), zmq.NOBLOCK, copy=False)
        return self.seq

    def close(self) -> None:
        self._sock.close(linger=0)


class _LatestReader:
    """Shared receive logic: wait up to a timeout, decode, remember the newest message."""

    _sock: zmq.Socket

    def __init__(self, limits: P.Limits = P.DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.latest: P.Message | None = None
        self.received = 0
        self.errors = 0

    def recv(self, timeout_s: float | None = 0.0) -> P.Message | None:
        """The newest message if one arrived within `timeout_s` (None waits forever), else None."""
        ms = -1 if timeout_s is None else int(timeout_s * 1000)
        if not self._sock.poll(ms, zmq.POLLIN):
            return None
        msg = None
        while True:  # drain: with CONFLATE there is at most one; without it, keep only the newest
            try:
                frame = self._sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                msg = P.decode(P.unpack(frame), limits=self.limits)
            except P.ProtocolError:
                self.errors += 1
                continue
        if msg is not None:
            self.latest = msg
            self.received += 1
        return msg

    def close(self) -> None:
        self._sock.close(linger=0)


class StateSubscriber(_LatestReader):
    """Subscribe to a StatePublisher; `conflate=True` keeps only the newest state in the queue."""

    def __init__(self, connect: str, *, conflate: bool = True, hwm: int = 16,
                 context: zmq.Context | None = None, keys: Any = None):
        super().__init__()
        opts = {"CONFLATE": 1} if conflate else {"RCVHWM": hwm}
        self._sock = _socket(context, zmq.SUB, keys, **opts)  # CONFLATE must be set before connect
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(connect)


class CommandSender:
    """Stream commands (e.g. target joint positions) where only the newest one matters."""

    def __init__(self, connect: str, *, context: zmq.Context | None = None, keys: Any = None):
        self._sock = _socket(context, zmq.PUSH, keys, CONFLATE=1)
        self._sock.connect(connect)
        self.seq = 0

    def send(self, action: np.ndarray, target_ns: int | None = None, **body: Any) -> int:
        """Queue a command, replacing any not yet delivered; returns its sequence number."""
        self.seq += 1
        ts = {"target": int(target_ns)} if target_ns is not None else None
        try:
            self._sock.send(P.pack(P.encode(P.COMMAND, self.seq, {"action": np.asarray(action), **body}, ts)),
                            zmq.NOBLOCK, copy=False)
        except zmq.Again:  # no peer yet: a command nobody can receive is stale by definition
            pass
        return self.seq

    def close(self) -> None:
        self._sock.close(linger=0)


class CommandReceiver(_LatestReader):
    """The robot side of a command stream: `recv()` gives the newest command, older ones are gone.

    Commands come from the network, so they are decoded with `protocol.REQUEST_LIMITS` and frames above
    `max_bytes` drop the sender's connection; check actions (`finite.find_non_finite`, `SafetyWrapper`)
    before they reach the robot.
    """

    def __init__(self, bind: str, *, context: zmq.Context | None = None, keys: Any = None,
                 max_bytes: int = COMMAND_MAX_BYTES):
        super().__init__(P.REQUEST_LIMITS)
        self._sock = _socket(context, zmq.PULL, keys, CONFLATE=1, MAXMSGSIZE=max_bytes)
        self._sock.bind(bind)
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._errors: list[P.ProtocolError] = []

    @property
    def socket(self) -> zmq.Socket:
        """The PULL socket, for a caller's `zmq.Poller`."""
        return self._sock

    def drain(self) -> list[P.Message]:
        """Every command queued now, oldest first, decoded (at most one per sender: CONFLATE keeps each
        connection's newest). Undecodable ones are counted in `errors` and kept for `take_errors()`."""
        out: list[P.Message] = []
        while True:
            try:
                frame = self._sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return out
            try:
                out.append(P.decode(P.unpack(frame), limits=self.limits))
            except P.ProtocolError as err:
                self.errors += 1
                if len(self._errors) < 64:
                    self._errors.append(err)
                continue
            self.received += 1
            self.latest = out[-1]

    def take_errors(self) -> list[P.ProtocolError]:
        """The decode errors `drain` met since the last call."""
        errors, self._errors = self._errors, []
        return errors
