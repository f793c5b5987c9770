"""`RemoteEnv`: a gymnasium env whose reset/step run in an `EnvServer` on another process or machine.

Requests follow ZeroMQ's "lazy pirate" pattern: wait `timeout_s` for the reply, and if none comes, close
the socket, open a fresh one and resend the *same* sequence number, up to `retries` times. The server
answers a repeated sequence number from its reply cache, so a retried step is never executed twice.
The server keeps a client's session by its connection; the reset reply carries a secret session token,
which `RemoteEnv` sends with every request on a fresh socket (and with every request but step and observe)
so that the server can hand the session over to the fresh socket of a reconnect (and to nobody without the
token).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import zmq

from rtdp.hardware import protocol as P
from rtdp.hardware.curve import ClientKeys
from rtdp.hardware.endpoints import is_loopback
from rtdp.hardware.spaces import space_from_dict

_HOT = frozenset({P.STEP, P.OBSERVE})  # the per-control-step requests


class RemoteEnvError(RuntimeError):
    """The server answered with an error; `code` is the protocol error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class EpisodeLost(RemoteEnvError):
    """The server restarted (or evicted this client) mid-episode: the episode is gone, call reset()."""


class ServerGone(ConnectionError):
    """No reply after every retry: the server is down, unreachable or hung."""


class RequestClient:
    """The request side of the protocol: a DEALER socket, lazy-pirate retries, error replies raised.

    `RemoteEnv` and `rtdp.hardware.remote_robot.RemoteRobot` both send their requests through it. CURVE: pass
    `server_key` + `client_key`, or `keys` (a key directory or a loaded `curve.ClientKeys`). `service` names
    the command that serves `address`, for the message when nothing answers.
    """

    service = "rtdp serve-env"

    def __init__(self, address: str, *, timeout_s: float = 2.0, retries: int = 2, client_id: str | None = None,
                 context: zmq.Context | None = None, keys: str | Path | ClientKeys | None = None,
                 server_key: str | bytes | Path | None = None, client_key: str | Path | None = None):
        self.address, self.timeout_s, self.retries = address, float(timeout_s), int(retries)
        self.client_id = client_id or uuid.uuid4().hex  # a label for the server's logs; it grants nothing
        self._session: str | None = None  # the server's secret for this client's session (reset reply)
        if (server_key is None) != (client_key is None):
            raise ValueError("CURVE needs both server_key (the server's public key) and client_key "
                             "(this client's .key_secret file)")
        if server_key is not None:
            keys = ClientKeys.load(server_key, client_key)
        elif keys is not None and not isinstance(keys, ClientKeys):
            keys = ClientKeys.from_dir(keys)
        self.keys: ClientKeys | None = keys
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._seq = 0
        self.reconnects = 0
        self.last_timing: dict[str, int] = {}
        self.server_id: str | None = None

    # -- transport -------------------------------------------------------------------------------------
    def _connect(self) -> zmq.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if self.keys is not None:
                self.keys.apply(sock)
            # Blocking receive with a timeout rather than poll-then-receive: one system call fewer per step.
            sock.setsockopt(zmq.RCVTIMEO, max(int(self.timeout_s * 1000), 1))
            sock.connect(self.address)
            self._sock = sock
        return self._sock

    def set_timeout(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for each reply from now on: e.g. briefly for the first answer, then long
        enough for a server that builds a heavy env on a session's first reset."""
        self.timeout_s = float(timeout_s)
        if self._sock is not None:
            self._sock.setsockopt(zmq.RCVTIMEO, max(int(self.timeout_s * 1000), 1))

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def request(self, kind: str, body: dict[str, Any] | None = None) -> P.Message:
        """Send one request and return its reply, retrying on timeout; raise on an error reply."""
        self._seq += 1
        seq = self._seq
        # A step or observe on a live connection carries only its body: the server knows the connection's
        # session. The label and the session token go with every other request, and with any request on a
        # fresh socket (a reconnect), where the token hands the session over.
        lean = kind in _HOT and self._sock is not None
        frames = self._frames(kind, seq, body, lean)
        timeout_ns = max(int(self.timeout_s * 1e9), 1_000_000)
        for attempt in range(self.retries + 1):
            if attempt and lean:
                frames, lean = self._frames(kind, seq, body, False), False
            sock = self._connect()
            t_send = P.now_ns()
            deadline = t_send + timeout_ns
            P.send_frames(sock, frames)
            while P.now_ns() < deadline:
                try:
                    parts = P.recv_frames(sock)  # the envelope as bytes, image frames zero-copy
                except zmq.Again:
                    break
                if parts and len(parts[0]) == 0:
                    parts = parts[1:]
                reply = P.decode(parts)
                if reply.seq != seq:
                    continue  # a late answer to an earlier, abandoned attempt
                self.last_timing = {"client_sent": t_send, "client_recv": P.now_ns(), "server": reply.ts}
                if reply.type == P.ERROR:
                    self._raise(reply)
                return reply
            # Lazy pirate: the socket may hold a half-dead connection; a fresh one reconnects cleanly.
            self._drop_socket()
            self.reconnects += 1
        self._gone()
        hint = ("" if self.keys is not None or is_loopback(self.address) else
                " (a server with CURVE keys drops clients without them: pass keys= or server_key=)")
        raise ServerGone(f"{self.service.removeprefix('rtdp ')} server at {self.address} did not answer {kind!r} "
                         f"(seq {seq}) within {self.timeout_s:g}s on {self.retries + 1} tries: is `{self.service}` "
                         f"running there and reachable{hint}?")

    def _frames(self, kind: str, seq: int, body: dict[str, Any] | None, lean: bool) -> list:
        payload: dict[str, Any] = {} if lean else {"client": self.client_id}
        if self._session is not None and not lean:
            payload["session"] = self._session
        if body:
            payload.update(body)
        return P.encode(kind, seq, payload)

    def _gone(self) -> None:
        """Called when every retry went unanswered, before `ServerGone` is raised."""

    def _raise(self, reply: P.Message) -> None:
        code = reply.body.get("code", P.E_INTERNAL)
        message = reply.body.get("message", "error reply without a message")
        raise RemoteEnvError(code, f"{self.service.removeprefix('rtdp ')} server at {self.address}: {message}")


class RemoteEnv(RequestClient, gym.Env):
    """A gymnasium env served by `rtdp serve-env` (or an `EnvServer`) at `address`.

    Observation arrays are read-only views of the received network buffers (no copy); copy one before
    writing into it. For a server with CURVE on, pass `server_key` (its `server.key` file or z85 public
    key) and `client_key` (this client's `NAME.key_secret` file), or `keys` (a key directory:
    `server.key` + `client.key_secret`), or a loaded `curve.ClientKeys` as `keys`.
    """

    def __init__(self, address: str, *, timeout_s: float = 2.0, retries: int = 2,
                 client_id: str | None = None, context: zmq.Context | None = None,
                 keys: str | Path | ClientKeys | None = None, server_key: str | bytes | Path | None = None,
                 client_key: str | Path | None = None):
        RequestClient.__init__(self, address, timeout_s=timeout_s, retries=retries, client_id=client_id,
                               context=context, keys=keys, server_key=server_key, client_key=client_key)
        self.last_capture_ns: int | None = None  # when the last observation was taken, in this host's clock
        self._in_episode = False
        info = self.hello()
        self.observation_space = space_from_dict(info["observation_space"])
        self.action_space = space_from_dict(info["action_space"])
        self.metadata = {**info.get("metadata", {}), "render_modes": []}  # rendering stays server-side
        self.render_mode = None
        self.server_info = info

    def _gone(self) -> None:
        self._in_episode = False

    def _raise(self, reply: P.Message) -> None:
        code = reply.body.get("code", P.E_INTERNAL)
        message = reply.body.get("message", "error reply without a message")
        server = reply.body.get("server")
        if code == P.E_NO_EPISODE and self._in_episode:
            self._in_episode = False
            why = "restarted" if server != self.server_id else "dropped this client's episode"
            raise EpisodeLost(code, f"env server at {self.address} {why} mid-episode; the episode is lost: "
                                    "call reset() to start a new one")
        raise RemoteEnvError(code, f"env server at {self.address}: {message}")

    # -- gymnasium API ---------------------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        """Ask the server for its spaces, version and counters."""
        info = self.request(P.HELLO).body
        self.server_id = info.get("server")
        return info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        reply = self.request(P.RESET, {"seed": seed, "options": options})
        self.server_id = reply.body.get("server", self.server_id)
        self._session = reply.body.get("session", self._session)
        self._in_episode = True
        self._note_capture()
        return reply.body["obs"], reply.body.get("info", {})

    def step(self, action: Any):
        reply = self.request(P.STEP, {"action": np.asarray(action)})
        b = reply.body
        self._note_capture()
        return b["obs"], b["reward"], b["terminated"], b["truncated"], b.get("info", {})

    def observe(self) -> Any:
        """The server's latest observation, without stepping."""
        reply = self.request(P.OBSERVE)
        self._note_capture()
        return reply.body["obs"]

    def close(self) -> None:
        if self._sock is not None:
            retries, timeout = self.retries, self.timeout_s
            self.retries, self.timeout_s = 0, min(self.timeout_s, 0.2)
            self._sock.setsockopt(zmq.RCVTIMEO, max(int(self.timeout_s * 1000), 1))
            try:
                self.request(P.CLOSE)
            except (ServerGone, RemoteEnvError):
                pass  # closing a gone server is not an error
            finally:
                self.retries, self.timeout_s = retries, timeout
                self._drop_socket()
        super().close()

    def _note_capture(self) -> None:
        """Map the server's capture time into this host's clock using only durations (no clock sync)."""
        t = self.last_timing
        server = t["server"]
        held = server.get("sent", 0) - server.get("capture", server.get("sent", 0))
        self.last_capture_ns = t["client_recv"] - max(held, 0)
