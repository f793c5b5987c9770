"""Serve any gymnasium env over ZeroMQ: a ROUTER socket answering hello/reset/step/observe/close.

Each client (named by the `client` id it sends) gets its own env and a reply cache keyed by sequence number,
so a retried request is answered from the cache instead of being executed twice. Bad messages get an
error reply, are counted and logged, and never stop the server from serving other clients.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import gymnasium as gym
import numpy as np
import zmq

from rtdp.hardware import protocol as P
from rtdp.hardware.pubsub import StatePublisher
from rtdp.hardware.spaces import check_action, space_to_dict

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 16 * 2**20


@dataclass
class _Session:
    env: gym.Env
    last_seq: int = -1
    last_reply: list = field(default_factory=list)
    last_obs: Any = None
    in_episode: bool = False


def _own(obs: Any) -> Any:
    """A private copy of an observation, so a cached reply never changes when the env reuses its buffers."""
    if isinstance(obs, np.ndarray):
        return obs.copy()
    if isinstance(obs, dict):
        return {k: _own(v) for k, v in obs.items()}
    if isinstance(obs, (list, tuple)):
        return type(obs)(_own(v) for v in obs)
    return obs


def _split_route(frames: list) -> tuple[list[bytes], list]:
    """Split a ROUTER message into its routing envelope and the protocol message.

    The first frame is the peer id ROUTER adds. ROUTER/DEALER proxies in between add theirs (ZeroMQ's
    generated ids: 5 bytes, the first 0; an envelope always starts with a msgpack map header instead),
    and a REQ client adds an empty delimiter: all of that is sent back in front of the reply.
    """
    i, n = 1, len(frames)
    while i < n and len(frames[i]) == 5 and frames[i][0] == 0:
        i += 1
    if i < n and len(frames[i]) == 0:
        i += 1
    return frames[:i], frames[i:]


class EnvServer:
    """Answer the rtdp protocol for envs made by `env_fn` (one env per client, at most `max_sessions`)."""

    def __init__(self, env_fn: Callable[[], gym.Env], bind: str = "tcp://127.0.0.1:*", *,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_sessions: int = 4,
                 pub_bind: str | None = None, name: str = "env", context: zmq.Context | None = None):
        self.env_fn, self.name = env_fn, name
        self.max_message_bytes, self.max_sessions = int(max_message_bytes), int(max_sessions)
        self.server_id = uuid.uuid4().hex
        self.stats: Counter[str] = Counter()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._spare: gym.Env | None = env_fn()  # made up front: fails fast and gives the spaces for `info`
        self._info = {"observation_space": space_to_dict(self._spare.observation_space),
                      "action_space": space_to_dict(self._spare.action_space),
                      "metadata": {k: v for k, v in self._spare.metadata.items()
                                   if isinstance(v, (int, float, str, list))},
                      "spec": getattr(self._spare.spec, "id", None)}
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a vanished client's reply is dropped, not an error
        # Hard cap in the kernel-side reader: a peer sending more than this is disconnected before Python
        # sees it (memory stays bounded); below it, oversized messages get an `oversized` error reply.
        self._sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_message_bytes)
        self._sock.bind(bind)
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.publisher = StatePublisher(pub_bind, context=self._ctx) if pub_bind else None
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
                # bytes, not zmq.Frame objects: requests are small (actions), and a Frame costs more to
                # make than copying them
                frames = self._sock.recv_multipart(copy=True)
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one request -----------------------------------------------------------------------------------
    def _handle(self, frames: list) -> None:
        t_recv = P.now_ns()
        head, rest = _split_route(frames)
        self.stats["requests"] += 1
        seq = 0
        try:
            msg = P.decode(rest, max_bytes=self.max_message_bytes)
            seq = msg.seq
            client = str(msg.body.get("client") or bytes(head[0]).hex())
            reply = self._dispatch(client, msg, t_recv)
        except P.ProtocolError as err:
            reply = self._error(seq, err.code, str(err))
        except Exception as err:
            log.exception("internal error while serving a request")
            reply = self._error(seq, P.E_INTERNAL, f"{type(err).__name__}: {err}")
        self._sock.send_multipart(head + reply, copy=P.copy_flag(reply))

    def _error(self, seq: int, code: str, message: str) -> list:
        self.stats["errors"] += 1
        self.stats[f"error.{code}"] += 1
        log.warning("error reply (%s): %s", code, message)
        return P.error_frames(seq, code, message, server=self.server_id)

    def _session(self, client: str, create: bool) -> _Session | None:
        s = self._sessions.get(client)
        if s is not None:
            self._sessions.move_to_end(client)
            return s
        if not create:
            return None
        while len(self._sessions) >= self.max_sessions:  # evict the least recently used client
            old_client, old = self._sessions.popitem(last=False)
            log.warning("evicting idle client %s (max_sessions=%d)", old_client, self.max_sessions)
            old.env.close()
        env, self._spare = (self._spare, None) if self._spare is not None else (self.env_fn(), None)
        s = self._sessions[client] = _Session(env=env)
        return s

    def _dispatch(self, client: str, msg: P.Message, t_recv: int) -> list:
        kind = msg.type
        if kind == P.HELLO:
            return P.encode(P.INFO, msg.seq, {**self._info, "server": self.server_id, "name": self.name,
                                              "version": P.PROTOCOL_VERSION,
                                              "max_message_bytes": self.max_message_bytes,
                                              "stats": dict(self.stats)})
        if kind not in (P.RESET, P.STEP, P.OBSERVE, P.CLOSE):
            raise P.ProtocolError(P.E_UNKNOWN_TYPE, f"{kind!r} is not a request type "
                                                    "(send hello, reset, step, observe or close)")
        session = self._session(client, create=kind == P.RESET)
        if session is None:
            if kind == P.CLOSE:
                return P.encode(P.CLOSE, msg.seq, {"server": self.server_id})
            return self._error(msg.seq, P.E_NO_EPISODE, f"no episode for this client on server "
                                                        f"{self.server_id[:8]}: call reset() first")
        if msg.seq == session.last_seq and session.last_reply:
            self.stats["duplicates"] += 1  # a retry of a request already executed: answer, do not redo
            return session.last_reply
        try:
            reply = self._execute(client, session, msg, t_recv)
        except P.ProtocolError as err:
            reply = self._error(msg.seq, err.code, str(err))
        except Exception as err:  # noqa: BLE001 - the env's failure goes back to its client
            log.warning("env raised on %s: %s", kind, traceback.format_exc(limit=3))
            reply = self._error(msg.seq, P.E_ENV, f"the env raised {type(err).__name__}: {err}")
        session.last_seq, session.last_reply = msg.seq, reply
        return reply

    def _execute(self, client: str, s: _Session, msg: P.Message, t_recv: int) -> list:
        body, kind = msg.body, msg.type
        if kind == P.RESET:
            seed, options = body.get("seed"), body.get("options")
            obs, info = s.env.reset(seed=seed, options=options)
            t_cap = P.now_ns()
            s.last_obs, s.in_episode = _own(obs), True
            self.stats["resets"] += 1
            out = {"obs": s.last_obs, "info": info, "server": self.server_id}
        elif kind == P.STEP:
            if not s.in_episode:
                raise P.ProtocolError(P.E_NO_EPISODE, "step before reset: call reset() first")
            try:
                action = check_action(s.env.action_space, body.get("action"))
            except ValueError as err:
                raise P.ProtocolError(P.E_BAD_ACTION, f"{err}: send the action space's shape and dtype "
                                                      "(see the hello/info reply)") from None
            obs, reward, terminated, truncated, info = s.env.step(action)
            t_cap = P.now_ns()
            s.last_obs = _own(obs)
            self.stats["steps"] += 1
            out = {"obs": s.last_obs, "reward": float(reward), "terminated": bool(terminated),
                   "truncated": bool(truncated), "info": info, "server": self.server_id}
        elif kind == P.OBSERVE:
            if s.last_obs is None:
                raise P.ProtocolError(P.E_NO_EPISODE, "nothing observed yet: call reset() first")
            t_cap = P.now_ns()
            out = {"obs": s.last_obs, "server": self.server_id}
        else:  # CLOSE
            s.env.close()
            del self._sessions[client]
            return P.encode(P.CLOSE, msg.seq, {"server": self.server_id})
        if self.publisher is not None and kind != P.OBSERVE:
            self.publisher.publish({"client": client, "obs": s.last_obs}, ts={"capture": t_cap})
        return P.encode(kind, msg.seq, out, ts={"recv": t_recv, "capture": t_cap})


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
