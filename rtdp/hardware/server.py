"""Serve any gymnasium env over ZeroMQ: a ROUTER socket answering hello/reset/step/observe/close.

A session (an env and a reply cache) belongs to the connection that made it: it is keyed by the ROUTER
routing id (the route, through any proxies), never by an id the client writes in its messages, so no other
peer can step or close it. The reset reply carries a secret session token; a request from a new connection
(a client's lazy-pirate reconnect) that presents it takes the session over. With CURVE on (`keys=`), only
clients whose public key is listed get a connection at all, and a session also belongs to that key. The reply cache is keyed by sequence number and
message type, so a retried request is answered from it instead of being executed twice. Bad messages get
an error reply, are counted and logged (rate-limited), and never stop the server from serving others.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import traceback
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import gymnasium as gym
import numpy as np
import zmq

from rtdp.hardware import curve
from rtdp.hardware import protocol as P
from rtdp.hardware.endpoints import check_bind, is_loopback
from rtdp.hardware.finite import find_non_finite
from rtdp.hardware.pubsub import StatePublisher
from rtdp.hardware.spaces import check_action, space_to_dict

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 2**20  # requests are actions, seeds and reset options: ~100 bytes each
DEFAULT_IDLE_S = 60.0  # a session without requests for this long may be evicted for a new client
RCVHWM = 4  # requests queued per connection: a flooding peer is pushed back, not buffered (RSS stays bounded)
MAX_CLIENT_LABEL = 128
PENALTY_S = 1.0  # after a message over the bounds, a connection's messages are refused unread this long
_PENALIZED = frozenset({P.E_LIMIT, P.E_OVERSIZED, P.E_MALFORMED})  # what a flood of bombs gets


def close_transport(sockets: list[zmq.Socket], auth: Any, own_ctx: zmq.Context | None) -> None:
    """Close a server's sockets without lingering, stop its CURVE authenticator (if any) and destroy the context
    it created (`own_ctx`; None when the caller's context is shared)."""
    for sock in sockets:
        if not sock.closed:
            sock.close(linger=0)
    if auth is not None:
        auth.stop()
    if own_ctx is not None:
        own_ctx.destroy(linger=0)


@dataclass
class _Session:
    env: gym.Env
    label: str  # what the client calls itself (logs and the pub stream only; it grants nothing)
    user: str | None  # the CURVE public key that owns it (None without CURVE)
    token: str = field(default_factory=lambda: secrets.token_hex(16))  # hands it to a reconnected socket
    last_seq: int = -1
    last_type: str = ""
    last_reply: list = field(default_factory=list)
    last_obs: Any = None
    in_episode: bool = False
    last_active: float = field(default_factory=time.monotonic)


def _own(obs: Any) -> Any:
    """A private copy of an observation, so a cached reply never changes when the env reuses its buffers."""
    if isinstance(obs, np.ndarray):
        return obs.copy()
    if isinstance(obs, dict):
        return {k: _own(v) for k, v in obs.items()}
    if isinstance(obs, (list, tuple)):
        return type(obs)(_own(v) for v in obs)
    return obs


def _buf(frame: Any) -> memoryview:
    return frame.buffer if hasattr(frame, "buffer") else memoryview(frame)


def _is_generated_id(frame: Any) -> bool:
    """ZeroMQ's generated routing ids: 5 bytes, the first 0 (a user-set id may not start with 0)."""
    return len(frame) == 5 and _buf(frame)[0] == 0


def _split_route(frames: list) -> tuple[list, list]:
    """Split a ROUTER message into its routing envelope and the protocol message.

    The first frame is the peer id ROUTER adds. ROUTER/DEALER proxies in between add theirs (ZeroMQ's
    generated ids: 5 bytes, the first 0; an envelope always starts with a msgpack map header instead),
    and a REQ client adds an empty delimiter: all of that is sent back in front of the reply.
    """
    i, n = 1, len(frames)
    while i < n and _is_generated_id(frames[i]):
        i += 1
    if i < n and len(frames[i]) == 0:
        i += 1
    return frames[:i], frames[i:]


def _route_key(head: list) -> bytes:
    """The session key: every routing frame, length-prefixed (the connection, through any proxies)."""
    return b"".join(len(b).to_bytes(2, "big") + b for b in (f if type(f) is bytes else bytes(_buf(f)) for f in head))


class _RateLimitedLog:
    """At most one warning per error code per second; the rest are counted and summarised in the next one."""

    def __init__(self, interval_s: float = 1.0, what: str = "error reply"):
        self.interval_s, self.what = interval_s, what
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, code: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(code, -1e9) < self.interval_s:
            self._suppressed[code] += 1
            return
        more = self._suppressed.pop(code, 0)
        self._last[code] = now
        log.warning("%s (%s): %s%s", self.what, code, message,
                    f" (+{more} more '{code}' replies in the last {self.interval_s:g}s)" if more else "")


class EnvServer:
    """Answer the rtdp protocol for envs made by `env_fn` (one env per connection, at most `max_sessions`).

    - `keys`: a key directory (`rtdp serve-env keygen=DIR`) or `curve.ServerKeys`: CURVE on, only listed
      clients connect. `insecure=True` allows a non-loopback `bind` without keys (otherwise refused).
    - `idle_s`: a session without requests for this long may be evicted when a new client needs its slot;
      an active one never is (the new client gets a `busy` error instead).
    - `limits`: decoder bounds for requests (`protocol.REQUEST_LIMITS`).
    """

    def __init__(self, env_fn: Callable[[], gym.Env], bind: str = "tcp://127.0.0.1:*", *,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_sessions: int = 4,
                 pub_bind: str | None = None, name: str = "env", context: zmq.Context | None = None,
                 keys: str | Path | curve.ServerKeys | None = None, insecure: bool = False,
                 idle_s: float = DEFAULT_IDLE_S, limits: P.Limits = P.REQUEST_LIMITS):
        self.env_fn, self.name = env_fn, name
        self.max_message_bytes, self.max_sessions = int(max_message_bytes), int(max_sessions)
        self.idle_s, self.limits = float(idle_s), limits
        self.server_id = uuid.uuid4().hex
        self.stats: Counter[str] = Counter()
        self._sessions: OrderedDict[bytes, _Session] = OrderedDict()  # by route key, least recent first
        self._tokens: dict[str, bytes] = {}  # session token -> route key
        self._penalty: dict[bytes, float] = {}  # route key -> until when its messages are refused unread
        self._log = _RateLimitedLog()
        binds = [check_bind(bind), *([check_bind(pub_bind)] if pub_bind else [])]
        self.keys = curve.ServerKeys.load(keys) if isinstance(keys, (str, Path)) else keys
        exposed = [e for e in binds if not is_loopback(e)]
        if self.keys is None and not insecure and exposed:
            raise curve.CurveKeyError(
                f"{exposed[0]} is reachable from the network: serve it "
                "with CURVE keys (create them with `rtdp serve-env keygen=DIR`, then keys=DIR), or pass "
                "insecure=true to serve it unauthenticated and in clear")
        self._spare: gym.Env | None = env_fn()  # made up front: fails fast and gives the spaces for `info`
        self._info = {"observation_space": space_to_dict(self._spare.observation_space),
                      "action_space": space_to_dict(self._spare.action_space),
                      "metadata": {k: v for k, v in self._spare.metadata.items()
                                   if isinstance(v, (int, float, str, list))},
                      "spec": getattr(self._spare.spec, "id", None)}
        # CURVE needs its own context: ZeroMQ allows one ZAP handler per context.
        self._own_ctx = context is None and self.keys is not None
        self._ctx = context or (zmq.Context() if self._own_ctx else zmq.Context.instance())
        self._auth = curve.start_authenticator(self._ctx, self.keys) if self.keys is not None else None
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a vanished client's reply is dropped, not an error
        # Hard caps in the I/O thread: a frame larger than MAXMSGSIZE drops the connection before Python
        # sees it, and at most RCVHWM messages wait per connection, so a flood is pushed back to the sender.
        self._sock.setsockopt(zmq.MAXMSGSIZE, 2 * self.max_message_bytes)
        self._sock.setsockopt(zmq.RCVHWM, RCVHWM)
        if self.keys is not None:
            self.keys.apply(self._sock)
        self.publisher: StatePublisher | None = None
        try:
            self._sock.bind(bind)
            self.publisher = StatePublisher(pub_bind, context=self._ctx, keys=self.keys) if pub_bind else None
        except zmq.ZMQError:
            self._spare.close()
            self._close_transport()
            raise
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if exposed and self.keys is None:
            log.warning("serving %s without CURVE (insecure=True): anyone who can reach it can drive the env "
                        "and read its traffic", exposed[0])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- serving -------------------------------------------------------------------------------------
    def serve_forever(self, poll_ms: int = 100) -> None:
        """Answer requests until `stop()` (checked every `poll_ms`)."""
        # A blocking receive with a timeout (not a Poller + non-blocking drain): one system call per request
        # on the hot path, which matters at the ~100 µs round trips this serves.
        self._sock.setsockopt(zmq.RCVTIMEO, poll_ms)
        while not self._stop.is_set():
            try:
                # The routing id and the envelope as bytes (a zmq.Frame costs more to make and read); a frame
                # beyond MAXMSGSIZE never reaches Python, so a bomb's copy is bounded. With CURVE every frame
                # is a zmq.Frame: the last one carries the client's public key.
                frames = (self._sock.recv_multipart(copy=False) if self.keys is not None
                          else P.recv_frames(self._sock, n_bytes=2))
            except zmq.Again:
                continue
            self._handle(frames)

    def start(self) -> EnvServer:
        """Serve in a daemon thread (tests, benchmarks, in-process robots)."""
        self._thread = threading.Thread(target=self.serve_forever, name=f"rtdp-env-server-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self) -> None:
        """Stop serving, close every env and the sockets."""
        self.stop()
        for s in self._sessions.values():
            s.env.close()
        self._sessions.clear()
        if self._spare is not None:
            self._spare.close()
            self._spare = None
        self._sock.close(linger=0)
        if self.publisher is not None:
            self.publisher.close()
        self._close_transport()

    def _close_transport(self) -> None:
        close_transport([self._sock], self._auth, self._ctx if self._own_ctx else None)
        self._auth, self._own_ctx = None, False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one request -----------------------------------------------------------------------------------
    def _handle(self, frames: list) -> None:
        t_recv = P.now_ns()
        head, rest = _split_route(frames)
        key = _route_key(head)
        self.stats["requests"] += 1
        seq = 0
        if key in self._penalty and self._penalized(key):
            self.stats["refused_unread"] += 1
            reply = self._error(0, P.E_LIMIT, f"refused unread: this connection sent a message over the "
                                              f"decoder bounds less than {PENALTY_S:g}s ago")
            P.send_frames(self._sock, head + reply)
            return
        try:
            msg = P.decode(rest, max_bytes=self.max_message_bytes, limits=self.limits)
            seq = msg.seq
            user = _curve_user(frames[-1]) if self.keys is not None else None
            reply = self._dispatch(key, user, msg, t_recv)
        except P.ProtocolError as err:
            if err.code in _PENALIZED:  # one bomb per second per connection is decoded at most
                self._penalize(key)
            reply = self._error(seq, err.code, str(err))
        except Exception as err:
            log.exception("internal error while serving a request")
            reply = self._error(seq, P.E_INTERNAL, f"{type(err).__name__}: {err}")
        P.send_frames(self._sock, head + reply)

    def _penalize(self, key: bytes) -> None:
        now = time.monotonic()
        if len(self._penalty) >= 1024:  # many offenders: forget the expired ones (the table stays bounded)
            for k in [k for k, t in self._penalty.items() if t <= now]:
                del self._penalty[k]
        self._penalty[key] = now + PENALTY_S

    def _penalized(self, key: bytes) -> bool:
        """Whether `key` is still in the penalty box (an expired entry is dropped)."""
        if time.monotonic() < self._penalty[key]:
            return True
        del self._penalty[key]
        return False

    def _error(self, seq: int, code: str, message: str) -> list:
        self.stats["errors"] += 1
        self.stats[f"error.{code}"] += 1
        self._log.warning(code, message)
        return P.error_frames(seq, code, message, server=self.server_id)

    def _session(self, key: bytes, user: str | None, token: Any, label: str, create: bool) -> _Session | None:
        """This connection's session; or one handed over by its token (a reconnect); or a new one (reset)."""
        s = self._sessions.get(key)
        if s is None and isinstance(token, str) and token in self._tokens:
            old_key = self._tokens[token]
            candidate = self._sessions.get(old_key)
            if candidate is not None and candidate.user == user:  # CURVE: only the same key takes it over
                s = self._sessions[key] = self._sessions.pop(old_key)
                self._tokens[token] = key
                self.stats["handovers"] += 1
        if s is not None:
            self._sessions.move_to_end(key)
            return s
        if not create:
            return None
        if len(self._sessions) >= self.max_sessions:  # evict the least recently used idle session, if any
            now = time.monotonic()
            idle = next((k for k, v in self._sessions.items() if now - v.last_active > self.idle_s), None)
            if idle is None:
                raise P.ProtocolError(P.E_BUSY, f"all {self.max_sessions} sessions are active (a session is idle "
                                                f"after {self.idle_s:g}s without requests): try again later, "
                                                "or serve with a larger max_sessions")
            old = self._drop(idle)
            log.warning("evicting idle client %s (max_sessions=%d)", old.label, self.max_sessions)
            self.stats["evictions"] += 1
            old.env.close()
        env, self._spare = (self._spare, None) if self._spare is not None else (self.env_fn(), None)
        s = self._sessions[key] = _Session(env=env, label=label, user=user)
        self._tokens[s.token] = key
        return s

    def _drop(self, key: bytes) -> _Session:
        s = self._sessions.pop(key)
        self._tokens.pop(s.token, None)
        return s

    def _dispatch(self, key: bytes, user: str | None, msg: P.Message, t_recv: int) -> list:
        kind = msg.type
        label = msg.body.get("client")
        if label is not None and (not isinstance(label, str) or len(label) > MAX_CLIENT_LABEL):
            raise P.ProtocolError(P.E_MALFORMED, f"body 'client' must be a string of at most {MAX_CLIENT_LABEL} "
                                                 f"characters, got {type(label).__name__}")
        if kind == P.HELLO:
            info = {**self._info, "server": self.server_id, "name": self.name, "version": P.PROTOCOL_VERSION,
                    "max_message_bytes": self.max_message_bytes, "limits": self.limits.as_dict(),
                    "authenticated": user is not None}
            if user is not None:  # counters only for peers the server has authenticated (CURVE)
                info["stats"] = dict(self.stats)
            return P.encode(P.INFO, msg.seq, info)
        if kind not in (P.RESET, P.STEP, P.OBSERVE, P.CLOSE):
            raise P.ProtocolError(P.E_UNKNOWN_TYPE, f"{kind!r} is not a request type "
                                                    "(send hello, reset, step, observe or close)")
        session = self._session(key, user, msg.body.get("session"), label or key.hex()[-16:],
                                create=kind == P.RESET)
        if session is None:
            if kind == P.CLOSE:
                return P.encode(P.CLOSE, msg.seq, {"server": self.server_id})
            return self._error(msg.seq, P.E_NO_EPISODE, f"no episode for this connection on server "
                                                        f"{self.server_id[:8]}: call reset() first")
        session.last_active = time.monotonic()
        if msg.seq == session.last_seq and kind == session.last_type and session.last_reply:
            self.stats["duplicates"] += 1  # a retry of a request already executed: answer, do not redo
            return session.last_reply
        try:
            reply = self._execute(key, session, msg, t_recv)
        except P.ProtocolError as err:
            reply = self._error(msg.seq, err.code, str(err))
        except Exception as err:  # noqa: BLE001 - the env's failure goes back to its client
            log.warning("env raised on %s: %s", kind, traceback.format_exc(limit=3))
            reply = self._error(msg.seq, P.E_ENV, f"the env raised {type(err).__name__}: {err}")
        session.last_seq, session.last_type, session.last_reply = msg.seq, kind, reply
        return reply

    def _execute(self, key: bytes, s: _Session, msg: P.Message, t_recv: int) -> list:
        body, kind = msg.body, msg.type
        if kind == P.RESET:
            seed, options = body.get("seed"), body.get("options")
            _check_reset_args(seed, options)
            obs, info = s.env.reset(seed=seed, options=options)
            t_cap = P.now_ns()
            s.last_obs, s.in_episode = _own(obs), True
            self.stats["resets"] += 1
            out = {"obs": s.last_obs, "info": info, "server": self.server_id, "session": s.token}
        elif kind == P.STEP:
            if not s.in_episode:
                raise P.ProtocolError(P.E_NO_EPISODE, "step before reset: call reset() first")
            try:
                action = check_action(s.env.action_space, body.get("action"))
            except ValueError as err:
                raise P.ProtocolError(P.E_BAD_ACTION, f"{err}: send the action space's shape and dtype "
                                                      "(see the hello/info reply)") from None
            bad = find_non_finite(action, "action")
            if bad is not None:
                self.stats["non_finite_actions"] += 1
                raise P.ProtocolError(P.E_BAD_ACTION, f"{bad} is not finite (or beyond float32): refused, the "
                                                      "env did not step; send finite numbers")
            obs, reward, terminated, truncated, info = s.env.step(action)
            t_cap = P.now_ns()
            s.last_obs = _own(obs)
            self.stats["steps"] += 1
            out = {"obs": s.last_obs, "reward": float(reward), "terminated": bool(terminated),
                   "truncated": bool(truncated), "info": info}
        elif kind == P.OBSERVE:
            if s.last_obs is None:
                raise P.ProtocolError(P.E_NO_EPISODE, "nothing observed yet: call reset() first")
            t_cap = P.now_ns()
            out = {"obs": s.last_obs, "server": self.server_id}
        else:  # CLOSE
            s.env.close()
            self._drop(key)
            return P.encode(P.CLOSE, msg.seq, {"server": self.server_id})
        if self.publisher is not None and kind != P.OBSERVE:
            self.publisher.publish({"client": s.label, "obs": s.last_obs}, ts={"capture": t_cap})
        return P.encode(kind, msg.seq, out, ts={"recv": t_recv, "capture": t_cap})


def _curve_user(frame: Any) -> str | None:
    """The ZAP user id (the client's z85 public key) of a frame received on a CURVE socket."""
    try:
        user = frame.get("User-Id")
    except (zmq.ZMQError, AttributeError):
        return None
    return user or None


def _check_reset_args(seed: Any, options: Any) -> None:
    """Refuse a seed that is not a non-negative int and options that are not plain, finite data."""
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise P.ProtocolError(P.E_BAD_OPTIONS, f"seed must be a non-negative integer or none, got {seed!r}")
    if options is None:
        return
    if not isinstance(options, dict):
        raise P.ProtocolError(P.E_BAD_OPTIONS, f"options must be a map, got {type(options).__name__}")
    bad = find_non_finite(options, "options")
    if bad is not None:
        raise P.ProtocolError(P.E_BAD_OPTIONS, f"{bad} is not finite (or beyond float32): refused, the env "
                                               "was not reset; send finite numbers")


def serve(env_fn: Callable[[], gym.Env], bind: str, *, pub_bind: str | None = None, name: str = "env",
          on_ready: Callable[[EnvServer], None] | None = None, **kw: Any) -> dict[str, int]:
    """Serve until interrupted; returns the server's counters."""
    server = EnvServer(env_fn, bind, pub_bind=pub_bind, name=name, **kw)
    try:
        if on_ready is not None:
            on_ready(server)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stats = dict(server.stats)
        server.close()
        time.sleep(0)  # let zmq flush the close before the process exits
    return stats
