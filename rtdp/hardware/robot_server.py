"""Serve a robot over ZeroMQ (`rtdp serve-robot`): state published at the robot's rate, latest-only commands
through the safety layer, and request/reply for ownership, homing, status and the e-stop.

Three sockets, all bound here (the robot side is the fixed address):

    bind            ROUTER   hello, connect, release, home, status, estop, reset_estop (docs/robots.md)
    state_bind      PUB      one `state` message per robot tick (CONFLATE: subscribers read the newest)
    command_bind    PULL     `command` messages (CONFLATE per sender: only each sender's newest is queued)

Two threads: the state thread waits for each robot tick and publishes; the command thread answers requests,
passes each command through `SafeRobot` the moment it arrives, and runs the watchdog. One client owns the
robot at a time (`connect` hands it a secret token that its commands carry); everyone else's commands are
refused and counted, and a second `connect` is refused while the owner is active. Any client may latch the
e-stop; only the owner (or anyone, when nobody owns the robot) may reset it.
"""

from __future__ import annotations

import collections
import logging
import secrets
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import zmq

from rtdp.hardware import curve
from rtdp.hardware import protocol as P
from rtdp.hardware.endpoints import check_bind, is_loopback
from rtdp.hardware.pubsub import CommandReceiver, StatePublisher
from rtdp.hardware.robot import Robot, RobotError, set_realtime
from rtdp.hardware.robot_safety import SafeRobot
from rtdp.hardware.safety import EStopLatched
from rtdp.hardware.server import (
    MAX_CLIENT_LABEL,
    RCVHWM,
    _curve_user,
    _RateLimitedLog,
    _route_key,
    _split_route,
    close_transport,
)

log = logging.getLogger(__name__)

DEFAULT_WATCHDOG_S = 0.25  # no command for this long while commanding: the robot holds
DEFAULT_OWNER_IDLE_S = 5.0  # an owner silent this long may be replaced by another client's connect
MAX_REQUEST_BYTES = 1 << 16  # requests are small: labels, tokens, a seed


def derive_endpoint(bind: str, offset: int, suffix: str) -> str:
    """The address beside `bind` for another socket: TCP port + `offset` (`*` stays `*`), or `PATH.suffix`."""
    transport, _, rest = bind.partition("://")
    if transport != "tcp":
        return f"{bind}.{suffix}"
    host, _, port = rest.rpartition(":")
    return f"tcp://{host}:{port if port == '*' else int(port) + offset}"


@dataclass
class _Owner:
    route: bytes
    user: str | None
    label: str
    token: str
    since: float
    last_active: float


def _percentiles(values: Any) -> dict[str, float] | None:
    a = np.asarray(values, np.float64)
    if a.size == 0:
        return None
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max()),
            "n": int(a.size)}


class RobotServer:
    """Serve `robot` (a driver; wrapped in `SafeRobot` here) on `bind` and the two addresses beside it.

    - `watchdog_s`: commands stop for this long (a client vanished) -> the robot holds, counted.
    - `max_command_hz`: commands closer together than 1/this are coalesced: the newest waits for its slot
      (counted `too_fast`); default the robot's rate.
    - `low`/`high`/`max_rate`: narrow the driver's own action limits (never widen them).
    - `owner_idle_s`: how long an owner may stay silent before another client's `connect` replaces it.
    - `keys`/`insecure`: CURVE, as `EnvServer` (required off loopback unless insecure).
    """

    def __init__(self, robot: Robot, bind: str = "tcp://127.0.0.1:*", *, state_bind: str | None = None,
                 command_bind: str | None = None, watchdog_s: float = DEFAULT_WATCHDOG_S,
                 max_command_hz: float | None = None, low: Any = None, high: Any = None, max_rate: Any = None,
                 owner_idle_s: float = DEFAULT_OWNER_IDLE_S, keys: str | Path | curve.ServerKeys | None = None,
                 insecure: bool = False, context: zmq.Context | None = None,
                 limits: P.Limits = P.REQUEST_LIMITS, realtime_priority: int = 0,
                 switch_interval_s: float | None = 2e-4):
        self.robot = robot if isinstance(robot, SafeRobot) else SafeRobot(robot, low=low, high=high,
                                                                          max_rate=max_rate,
                                                                          watchdog_s=watchdog_s)
        self.features = self.robot.features
        self.name = self.robot.driver.name
        self.watchdog_s, self.owner_idle_s, self.limits = float(watchdog_s), float(owner_idle_s), limits
        hz = self.features.rate_hz if max_command_hz is None else float(max_command_hz)
        self.min_interval_s = 1.0 / hz if hz > 0 else 0.0
        self.server_id = uuid.uuid4().hex
        self.stats: Counter[str] = Counter()
        self._log = _RateLimitedLog(what="robot server")
        state_bind = state_bind or derive_endpoint(bind, 1, "state")
        command_bind = command_bind or derive_endpoint(bind, 2, "command")
        binds = [check_bind(b) for b in (bind, state_bind, command_bind)]
        self.keys = curve.ServerKeys.load(keys) if isinstance(keys, (str, Path)) else keys
        exposed = [e for e in binds if not is_loopback(e)]
        if self.keys is None and not insecure and exposed:
            raise curve.CurveKeyError(
                f"{exposed[0]} is reachable from the network: serve it with CURVE keys (create them with "
                "`rtdp serve-env keygen=DIR`, then keys=DIR), or pass insecure=true to serve it unauthenticated "
                "and in clear")
        self._own_ctx = context is None and self.keys is not None
        self._ctx = context or (zmq.Context() if self._own_ctx else zmq.Context.instance())
        self._auth = curve.start_authenticator(self._ctx, self.keys) if self.keys is not None else None
        self._router = self._ctx.socket(zmq.ROUTER)
        for opt, value in ((zmq.LINGER, 0), (zmq.ROUTER_MANDATORY, 0), (zmq.MAXMSGSIZE, 2 * MAX_REQUEST_BYTES),
                           (zmq.RCVHWM, RCVHWM)):
            self._router.setsockopt(opt, value)
        if self.keys is not None:
            self.keys.apply(self._router)
        self.publisher: StatePublisher | None = None
        self.receiver: CommandReceiver | None = None
        try:
            self._router.bind(bind)
            self.publisher = StatePublisher(state_bind, context=self._ctx, keys=self.keys)
            self.receiver = CommandReceiver(command_bind, context=self._ctx, keys=self.keys)
        except zmq.ZMQError:
            self._close_sockets()
            raise
        self.endpoint: str = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.state_endpoint, self.command_endpoint = self.publisher.endpoint, self.receiver.endpoint
        if exposed and self.keys is None:
            log.warning("serving robot %s at %s without CURVE (insecure=True): anyone who can reach it can "
                        "command the robot", self.name, exposed[0])
        self._owner: _Owner | None = None
        self._holding: str | None = "start"  # why the robot is holding (None: following commands)
        self._pending: tuple[np.ndarray, P.Message] | None = None
        self._last_applied = -1e9
        self._commanding = False  # the owner has sent a command since it connected or homed (watchdog armed)
        self._lat_recv: collections.deque[float] = collections.deque(maxlen=4096)  # client send -> received, ms
        self._lat_driver: collections.deque[float] = collections.deque(maxlen=4096)  # client send -> driver, ms
        self._pub_t: collections.deque[int] = collections.deque(maxlen=4097)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # SCHED_FIFO for the state and command threads (0 = off; `realtime` says what they got), and a short
        # GIL switch interval while serving: CPython hands the GIL over every 5 ms by default, which would
        # hold the state thread's wake-up behind the driver's Python code.
        self.realtime_priority, self.switch_interval_s = int(realtime_priority), switch_interval_s
        self.realtime: dict[str, str] = {}
        self._old_switch: float | None = None

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> Self:
        """Connect the robot (if it is not) and serve from two daemon threads."""
        if not self.robot.is_connected:
            self.robot.connect()
        else:
            self.robot._seed(self.robot.observe())
        if self.switch_interval_s:
            self._old_switch = sys.getswitchinterval()
            sys.setswitchinterval(min(self._old_switch, self.switch_interval_s))
        self._threads = [threading.Thread(target=self._state_loop, name="rtdp-robot-state", daemon=True),
                         threading.Thread(target=self._command_loop, name="rtdp-robot-commands", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []
        if self._old_switch is not None:
            sys.setswitchinterval(self._old_switch)
            self._old_switch = None

    def close(self) -> None:
        """Stop serving, leave the robot holding, disconnect it, close the sockets."""
        self.stop()
        if self.robot.is_connected:
            try:
                if not self.robot.estopped:
                    self.robot.hold("shutdown")
            except Exception:
                log.exception("robot did not take the hold at shutdown")
            self.robot.disconnect()
        self._close_sockets()

    def _close_sockets(self) -> None:
        for s in (self.publisher, self.receiver):
            if s is not None:
                s.close()
        close_transport([self._router], self._auth, self._ctx if self._own_ctx else None)
        self._auth, self._own_ctx = None, False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ------------------------------------------------------------------------------------------
    def _state_loop(self) -> None:
        self.realtime["state"] = set_realtime(self.realtime_priority)
        last_frame: int | None = None
        assert self.publisher is not None
        while not self._stop.is_set():
            try:
                if not self.robot.wait_for_tick(0.2):
                    continue
                obs = self.robot.observe()
            except Exception as err:  # noqa: BLE001 - a driver hiccup is counted, the server keeps serving
                self.stats["robot_errors"] += 1
                self._log.warning("robot_error", f"observe failed: {type(err).__name__}: {err}")
                time.sleep(0.01)
                continue
            if last_frame is not None:
                if obs.frame == last_frame:
                    continue
                if obs.frame > last_frame + 1:
                    self.stats["dropped_frames"] += obs.frame - last_frame - 1
            last_frame = obs.frame
            body = {"frame": obs.frame, "state": obs.state, "images": obs.images, "image_ts": obs.image_t_ns,
                    "info": obs.info, "estop": self.robot.estopped, "holding": self._holding,
                    "owned": self._owner is not None, "dropped": self.stats["dropped_frames"],
                    "server": self.server_id}
            self.publisher.publish(body, ts={"capture": obs.t_ns})
            self._pub_t.append(time.perf_counter_ns())
            self.stats["published"] += 1

    # -- commands and requests ----------------------------------------------------------------------------
    def _command_loop(self) -> None:
        self.realtime["commands"] = set_realtime(self.realtime_priority)
        assert self.receiver is not None
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self.receiver.socket, zmq.POLLIN)
        while not self._stop.is_set():
            now = time.monotonic()
            wait = 0.05
            if self._pending is not None:
                wait = min(wait, self._last_applied + self.min_interval_s - now)
            if self._commanding and self._holding is None and self.robot.core.last_t is not None:
                wait = min(wait, self.robot.core.last_t + self.watchdog_s - now)
            events = dict(poller.poll(max(int(wait * 1000), 0)))
            if self._router in events:
                self._drain_requests()
            if self.receiver.socket in events:
                for msg in self.receiver.drain():
                    self._on_command(msg)
                errors = self.receiver.take_errors()
                for err in errors:
                    self._refuse(err.code, str(err))
            now = time.monotonic()
            if self._pending is not None and now >= self._last_applied + self.min_interval_s:
                action, msg = self._pending
                self._pending = None
                self._apply(action, msg)
            if (self._commanding and self._holding is None and not self.robot.estopped
                    and self.robot.stale(time.monotonic())):
                self.stats["watchdog_holds"] += 1
                self._log.warning("watchdog", f"no command for {self.watchdog_s:g}s: the robot holds")
                self._hold("watchdog")

    def _hold(self, reason: str) -> None:
        self._pending = None
        self._holding = reason
        try:
            self.robot.hold(reason)
        except Exception as err:  # noqa: BLE001
            self.stats["robot_errors"] += 1
            self._log.warning("robot_error", f"hold failed: {type(err).__name__}: {err}")

    def _refuse(self, reason: str, message: str) -> None:
        self.stats["refused"] += 1
        self.stats[f"refused.{reason}"] += 1
        self._log.warning(f"refused.{reason}", f"command refused ({reason}): {message}")

    def _on_command(self, msg: P.Message) -> None:
        t_recv = P.now_ns()
        body = msg.body
        owner = self._owner
        if msg.type != P.COMMAND:
            self._refuse("malformed", f"a {msg.type!r} message on the command stream")
            return
        if owner is None or not isinstance(body.get("token"), str) or not secrets.compare_digest(
                body["token"], owner.token):
            self._refuse("not_owner", "the command does not carry the owner's token (connect first; one client "
                                      "commands the robot at a time)")
            return
        owner.last_active = time.monotonic()
        if self.robot.estopped:
            self._refuse("estop", "e-stop latched: reset it before commanding")
            return
        if body.get("hold") is True:
            self.stats["operator_holds"] += 1
            self._commanding = False
            self._hold("operator")
            return
        action = body.get("action")
        if not isinstance(action, np.ndarray) or action.dtype.kind not in "biuf":
            self._refuse("bad_action", f"command 'action' must be a number array, got {type(action).__name__}")
            return
        sent = msg.ts.get("sent") if isinstance(msg.ts, dict) else None
        if isinstance(sent, int):
            self._lat_recv.append((t_recv - sent) / 1e6)
        if time.monotonic() - self._last_applied < self.min_interval_s:
            # sooner than its slot: it waits for the slot, replacing any that waited (only the newest matters)
            self.stats["too_fast"] += 1
            self._pending = (action, msg)
            return
        self._apply(action, msg)

    def _apply(self, action: np.ndarray, msg: P.Message) -> None:
        try:
            self.robot.command(action)
        except EStopLatched:
            self._refuse("estop", "e-stop latched: reset it before commanding")
            return
        except RobotError as err:
            self._refuse("bad_shape", str(err))
            return
        except Exception as err:  # noqa: BLE001 - the driver failed: hold, count, keep serving
            self.stats["robot_errors"] += 1
            self._log.warning("robot_error", f"command failed: {type(err).__name__}: {err}")
            self._hold("robot_error")
            return
        t_driver = P.now_ns()
        sent = msg.ts.get("sent") if isinstance(msg.ts, dict) else None
        if isinstance(sent, int):
            self._lat_driver.append((t_driver - sent) / 1e6)
        report = self.robot.last_report
        if report.get("non_finite_hold"):
            self._refuse("non_finite", "the action holds NaN, inf or a number beyond float32: the robot holds the "
                                       "last safe command")
            self._holding = "non_finite"
        else:
            self._holding = None
        self._last_applied = time.monotonic()
        self._commanding = True
        self.stats["commands"] += 1

    def _drain_requests(self) -> None:
        while True:
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            head, rest = _split_route(frames)
            seq = 0
            try:
                msg = P.decode(rest, max_bytes=MAX_REQUEST_BYTES, limits=self.limits)
                seq = msg.seq
                user = _curve_user(frames[-1]) if self.keys is not None else None
                reply = self._request(_route_key(head), user, msg)
            except P.ProtocolError as err:
                reply = self._error(seq, err.code, str(err))
            except Exception as err:
                log.exception("internal error while serving a robot request")
                reply = self._error(seq, P.E_INTERNAL, f"{type(err).__name__}: {err}")
            self._router.send_multipart(head + reply, copy=P.copy_flag(reply))

    def _error(self, seq: int, code: str, message: str) -> list:
        self.stats["errors"] += 1
        self.stats[f"error.{code}"] += 1
        self._log.warning(code, message)
        return P.error_frames(seq, code, message, server=self.server_id)

    def _is_owner(self, route: bytes, user: str | None, token: Any) -> bool:
        o = self._owner
        return (o is not None and o.user == user and isinstance(token, str)
                and secrets.compare_digest(token, o.token))

    def _request(self, route: bytes, user: str | None, msg: P.Message) -> list:
        kind, body = msg.type, msg.body
        label = body.get("client")
        if label is not None and (not isinstance(label, str) or len(label) > MAX_CLIENT_LABEL):
            raise P.ProtocolError(P.E_MALFORMED, f"body 'client' must be a string of at most {MAX_CLIENT_LABEL} "
                                                 "characters")
        if kind not in P.ROBOT_REQUESTS:
            raise P.ProtocolError(P.E_UNKNOWN_TYPE, f"{kind!r} is not a robot request (send hello, connect, "
                                                    "release, home, status, estop or reset_estop)")
        now = time.monotonic()
        token = body.get("token")
        owner = self._is_owner(route, user, token)
        if owner:
            assert self._owner is not None
            self._owner.last_active, self._owner.route = now, route
        out: dict[str, Any] = {"server": self.server_id}
        if kind == P.HELLO:
            out.update(self._hello(user))
        elif kind == P.CONNECT:
            out.update(self._connect(route, user, label or route.hex()[-16:], owner, now))
        elif kind == P.RELEASE:
            if owner:
                log.info("robot released by %s", self._owner.label if self._owner else "?")
                self._owner = None
                self._commanding = False
                if not self.robot.estopped:
                    self._hold("released")
        elif kind == P.ESTOP:
            self.robot.estop()
            self._pending, self._holding, self._commanding = None, "estop", False
            self.stats["estops"] += 1
            log.warning("e-stop latched by %s", label or "a client")
        elif kind == P.RESET_ESTOP:
            if self._owner is not None and not owner:
                raise P.ProtocolError(P.E_NOT_OWNER, "only the robot's owner resets the e-stop (connect first)")
            if self.robot.estopped:
                self.robot.reset_estop()
                self.stats["estop_resets"] += 1
                log.warning("e-stop reset by %s", label or "a client")
            self._holding = "estop_reset"
        elif kind == P.HOME:
            if not owner:
                raise P.ProtocolError(P.E_NOT_OWNER, "home needs the robot's owner: connect first")
            if self.robot.estopped:
                raise P.ProtocolError(P.E_ESTOP, "e-stop latched: reset it (reset_estop) before homing the robot")
            seed = body.get("seed")
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
                raise P.ProtocolError(P.E_BAD_OPTIONS, f"seed must be a non-negative integer or none, got {seed!r}")
            try:
                obs = self.robot.reset_to_home(seed)
            except Exception as err:  # noqa: BLE001
                self.stats["robot_errors"] += 1
                raise P.ProtocolError(P.E_ROBOT, f"homing failed: {type(err).__name__}: {err}") from None
            self._pending, self._holding, self._commanding = None, "home", False
            self.stats["homes"] += 1
            out.update({"frame": obs.frame, "state": obs.state, "info": obs.info})
        else:  # STATUS
            out.update(self._status(owner or user is not None))
        out.setdefault("estop", self.robot.estopped)
        return P.encode(kind, msg.seq, out)

    def _hello(self, user: str | None) -> dict[str, Any]:
        return {"name": self.name, "version": P.PROTOCOL_VERSION, "robot": self.features.to_dict(),
                "state_endpoint": self.state_endpoint, "command_endpoint": self.command_endpoint,
                "watchdog_s": self.watchdog_s, "max_command_hz": 1.0 / self.min_interval_s if self.min_interval_s
                else None, "owner_idle_s": self.owner_idle_s, "limits": self.limits.as_dict(),
                "authenticated": user is not None, "owned": self._owner is not None}

    def _connect(self, route: bytes, user: str | None, label: str, owner: bool, now: float) -> dict[str, Any]:
        o = self._owner
        if o is not None and not owner and now - o.last_active < self.owner_idle_s:
            self.stats["refused_connects"] += 1
            raise P.ProtocolError(P.E_BUSY, f"the robot is owned by {o.label!r} (active {now - o.last_active:.1f}s "
                                            "ago): one client commands it at a time; try again once it releases "
                                            f"the robot or stays silent for {self.owner_idle_s:g}s")
        if o is not None and not owner:
            self.stats["owner_takeovers"] += 1
            log.warning("robot owner %s silent for %.1fs: %s takes over", o.label, now - o.last_active, label)
        if not owner:
            self._owner = _Owner(route, user, label, secrets.token_hex(16), now, now)
            self._commanding = False
            if not self.robot.estopped:
                self._hold("owner_change")
            log.info("robot owned by %s", label)
        assert self._owner is not None
        return {"token": self._owner.token, "robot": self.features.to_dict(),
                "state_endpoint": self.state_endpoint, "command_endpoint": self.command_endpoint}

    def _status(self, privileged: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"estop": self.robot.estopped, "owned": self._owner is not None,
                               "holding": self._holding, "published": self.stats["published"]}
        if privileged:  # counters only for the owner and CURVE-authenticated peers
            pub = np.diff(np.asarray(self._pub_t, np.int64)) / 1e6
            out.update({"stats": dict(self.stats), "safety": dict(self.robot.core.counts),
                        "refused": dict(self.robot.refused), "driver": self.robot.stats(),
                        "latency_ms": {"command_received": _percentiles(self._lat_recv),
                                       "command_to_driver": _percentiles(self._lat_driver)},
                        "publish_interval_ms": _percentiles(pub), "realtime": dict(self.realtime),
                        "owner": self._owner.label if self._owner else None})
        return out

    def reset_latency(self) -> None:
        """Forget the latency and publish-interval samples (a benchmark's warm-up)."""
        self._lat_recv.clear()
        self._lat_driver.clear()
        self._pub_t.clear()


def serve_robot(robot: Robot, bind: str, *, on_ready: Any = None, **kw: Any) -> dict[str, int]:
    """Serve until interrupted; returns the server's counters."""
    server = RobotServer(robot, bind, **kw)
    try:
        server.start()
        if on_ready is not None:
            on_ready(server)
        while True:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        stats = dict(server.stats)
        server.close()
    return stats
