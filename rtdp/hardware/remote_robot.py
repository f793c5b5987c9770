"""`RemoteRobot`: a robot served by `rtdp serve-robot` (a `RobotServer`), behind the same contract as a driver.

Requests (hello, connect, home, status, e-stop) go over the lazy-pirate request socket (`RequestClient`);
state comes from the server's PUB stream (the newest only) and commands go out on its latest-only command
stream, carrying the owner token `connect()` obtained. The server's safety layer decides what reaches the
driver: `command()` returns the action as sent, and each state message says what the server did
(`info["applied"]`, `holding`, `estop`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from rtdp.hardware import protocol as P
from rtdp.hardware.client import RemoteEnvError, RequestClient, ServerGone
from rtdp.hardware.curve import ClientKeys
from rtdp.hardware.pubsub import CommandSender, StateSubscriber
from rtdp.hardware.robot import Robot, RobotFeatures, RobotNotConnected, RobotObservation

DEFAULT_STATE_TIMEOUT_S = 1.0


class RobotServerError(RemoteEnvError):
    """The robot server refused a request (`code`: busy, not_owner, estop, robot_error, ...)."""


class _Requests(RequestClient):
    service = "rtdp serve-robot"

    def _raise(self, reply: P.Message) -> None:
        code = reply.body.get("code", P.E_INTERNAL)
        raise RobotServerError(code, f"robot server at {self.address}: {reply.body.get('message', code)}")


def _beside(address: str, endpoint: str) -> str:
    """`endpoint` as reachable from here: the host of `address` with the port the server bound."""
    transport, _, rest = address.partition("://")
    if transport != "tcp" or not endpoint.startswith("tcp://"):
        return endpoint
    host = rest.rpartition(":")[0]
    return f"tcp://{host}:{endpoint.rpartition(':')[2]}"


class RemoteRobot(Robot):
    """The robot served at `address` (the server's request address). `state_timeout_s`: `observe` raises
    `ServerGone` when no state came for this long (the server died or the link broke)."""

    name = "remote"
    registered = False

    def __init__(self, address: str, *, timeout_s: float = 2.0, retries: int = 2,
                 state_timeout_s: float = DEFAULT_STATE_TIMEOUT_S, client_id: str | None = None,
                 context: zmq.Context | None = None, keys: str | Path | ClientKeys | None = None,
                 server_key: str | bytes | Path | None = None, client_key: str | Path | None = None):
        self.address = address
        self.state_timeout_s = float(state_timeout_s)
        self._req = _Requests(address, timeout_s=timeout_s, retries=retries, client_id=client_id,
                              context=context, keys=keys, server_key=server_key, client_key=client_key)
        self._ctx = context or zmq.Context.instance()
        self.info = self._req.request(P.HELLO).body
        self._features = RobotFeatures.from_dict(self.info["robot"])
        self.server_id = self.info.get("server")
        self.robot_name = self.info.get("name", "?")
        self._token: str | None = None
        self._sub: StateSubscriber | None = None
        self._cmd: CommandSender | None = None
        self._last: RobotObservation | None = None
        self.last_state: dict[str, Any] = {}  # the newest state message's body (estop, holding, dropped, ...)
        self.received = 0

    # -- the contract -----------------------------------------------------------------------------------
    @property
    def features(self) -> RobotFeatures:
        return self._features

    @property
    def is_connected(self) -> bool:
        return self._token is not None

    def connect(self) -> None:
        """Become the robot's owner, subscribe to its state and open the command stream."""
        if self.is_connected:
            return
        reply = self._req.request(P.CONNECT).body
        self._token = reply["token"]
        keys = self._req.keys
        self._sub = StateSubscriber(_beside(self.address, reply["state_endpoint"]), context=self._ctx, keys=keys)
        self._cmd = CommandSender(_beside(self.address, reply["command_endpoint"]), context=self._ctx, keys=keys)
        self._last = None
        self.observe()  # the first state: the subscription is live

    def disconnect(self) -> None:
        """Give the robot back (it holds) and close the streams; a gone server is not an error here."""
        if self._token is not None:
            retries, timeout = self._req.retries, self._req.timeout_s
            self._req.retries, self._req.timeout_s = 0, min(timeout, 0.5)
            try:
                self._request(P.RELEASE)
            except (ServerGone, RemoteEnvError):
                pass
            finally:
                self._req.retries, self._req.timeout_s = retries, timeout
        self._token = None
        for s in (self._sub, self._cmd):
            if s is not None:
                s.close()
        self._sub = self._cmd = None
        self._req._drop_socket()

    def observe(self, newer: bool = False, timeout_s: float | None = None) -> RobotObservation:
        """The newest state. `newer=True` waits for one newer than the last returned. No state for
        `state_timeout_s` (or `timeout_s`) raises `ServerGone`."""
        if self._sub is None:
            raise RobotNotConnected(f"remote robot at {self.address} is not connected: call connect() first")
        timeout = self.state_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        wait = 0.0
        while True:
            msg = self._sub.recv(wait)  # the newest message within `wait`, or None
            if msg is not None:
                self._last = self._to_obs(msg)
            if self._last is not None:
                if newer:
                    if self._newest_returned is None or self._last.frame > self._newest_returned:
                        break
                elif msg is not None or self._fresh():
                    break
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerGone(f"robot server at {self.address} sent no state for {timeout:g}s: it stopped, "
                                 "or the link to it broke")
            wait = min(left, 0.05)
        self._newest_returned = self._last.frame
        return self._last

    _newest_returned: int | None = None
    _last_rx: float = 0.0

    def _fresh(self) -> bool:
        """Whether the newest state arrived recently (within two robot periods, or 50 ms)."""
        return time.monotonic() - self._last_rx < max(2.0 / self._features.rate_hz, 0.05)

    def _to_obs(self, msg: P.Message) -> RobotObservation:
        b = msg.body
        self._last_rx = time.monotonic()
        self.received += 1
        self.last_state = b
        # the capture time in this host's clock, from durations only: received now, held (sent - capture) there
        held = msg.ts.get("sent", 0) - msg.ts.get("capture", msg.ts.get("sent", 0))
        t_ns = P.now_ns() - max(int(held), 0)
        info = dict(b.get("info") or {})
        for key in ("estop", "holding", "dropped"):
            info[key] = b.get(key)
        return RobotObservation(t_ns, int(b.get("frame", 0)), dict(b.get("state") or {}),
                                dict(b.get("images") or {}), dict(b.get("image_ts") or {}), info)

    def command(self, action: np.ndarray) -> np.ndarray:
        """Send one action on the latest-only stream; returns it as sent (the server's safety layer may still
        clamp, rate-limit or refuse it: see `info["applied"]` in the next states)."""
        if self._cmd is None:
            raise RobotNotConnected(f"remote robot at {self.address} is not connected: call connect() first")
        a = np.asarray(action, np.float32)
        self._cmd.send(a, token=self._token)
        return a

    def hold(self) -> None:
        """Ask the server to hold the robot (an operator pause; it follows commands again on the next one)."""
        if self._cmd is None:
            raise RobotNotConnected(f"remote robot at {self.address} is not connected: call connect() first")
        self._cmd.send(np.zeros(0, np.float32), token=self._token, hold=True)

    def reset_to_home(self, seed: int | None = None) -> RobotObservation:
        """Home the robot (a sim re-draws its scene from `seed`) and return the first state after it."""
        reply = self._request(P.HOME, {"seed": seed}).body
        frame = int(reply.get("frame", 0))
        deadline = time.monotonic() + self.state_timeout_s
        while True:
            obs = self.observe(newer=True, timeout_s=max(deadline - time.monotonic(), 0.01))
            if obs.frame >= frame:
                return obs

    def halt(self, hold: np.ndarray) -> None:
        self.estop()

    # -- requests ---------------------------------------------------------------------------------------
    def _request(self, kind: str, body: dict[str, Any] | None = None) -> P.Message:
        return self._req.request(kind, {"token": self._token, **(body or {})})

    def estop(self) -> None:
        """Latch the robot's e-stop (any client may); it holds until an explicit `reset_estop()`."""
        self._request(P.ESTOP)

    def reset_estop(self) -> None:
        """Clear a latched e-stop (the owner, or anyone while nobody owns the robot)."""
        self._request(P.RESET_ESTOP)

    def status(self) -> dict[str, Any]:
        """The server's status: e-stop, holding, and (for the owner) counters, refusals and latencies."""
        return self._request(P.STATUS).body

    def stats(self) -> dict[str, Any]:
        return {"received": self.received, "reconnects": self._req.reconnects}

    def wait_for_tick(self, timeout_s: float) -> bool:
        try:
            self.observe(newer=True, timeout_s=timeout_s)
        except ServerGone:
            return False
        return True
