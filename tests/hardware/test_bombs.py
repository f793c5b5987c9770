"""Decode bombs: envelopes that are small on the wire and huge in memory are refused before decoding."""

from __future__ import annotations

import struct
import threading
import time
import tracemalloc

import msgpack
import numpy as np
import pytest
import zmq

from rtdp.hardware import EnvServer, RemoteEnv, bounds
from rtdp.hardware import protocol as P
from rtdp.hardware.loopback_env import LoopbackEnv
from rtdp.hardware.server import PENALTY_S

MIB = 2**20


def _header(**over):
    env = {"v": P.PROTOCOL_VERSION, "type": P.STEP, "seq": 1, "ts": {}, "body": {}}
    env.update(over)
    return env


def map_bomb(n: int) -> bytes:
    """The issue's bomb: one array header declaring n elements, then n empty maps."""
    return b"\xdd" + struct.pack(">I", n) + b"\x80" * n


def inline_array_bomb(n: int) -> bytes:
    """~n tiny inline arrays (the issue's other bomb), each a legal one-byte array placeholder."""
    one = msgpack.packb({"__nd__": [b"\x01", "|u1", [1]]})
    return msgpack.packb(_header(body={"a": []}))[:-1] + b"\xdd" + struct.pack(">I", n) + one * n


def _decode_code(frames, limits=P.REQUEST_LIMITS) -> str:
    with pytest.raises(P.ProtocolError) as err:
        P.decode(frames, limits=limits)
    return err.value.code


def _peak_alloc(fn) -> int:
    """Peak bytes Python allocated while `fn` ran (the bomb itself was allocated before)."""
    tracemalloc.start()
    try:
        fn()
    except P.ProtocolError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize("limits", [P.REQUEST_LIMITS, P.DEFAULT_LIMITS], ids=["request", "default"])
def test_sixteen_mib_map_bomb_is_refused_without_allocating(limits):
    bomb = map_bomb(16 * MIB - 5)
    assert len(bomb) == 16 * MIB
    assert _decode_code([bomb], limits) == P.E_LIMIT
    assert _peak_alloc(lambda: P.decode([bomb], limits=limits)) < 64 * 1024


def test_a_million_tiny_inline_arrays_are_refused_without_allocating():
    bomb = inline_array_bomb(1_000_000)
    assert len(bomb) > 10 * MIB
    for limits in (P.REQUEST_LIMITS, P.DEFAULT_LIMITS):
        assert _decode_code([bomb], limits) == P.E_LIMIT
        assert _peak_alloc(lambda lim=limits: P.decode([bomb], limits=lim)) < 64 * 1024


def test_bomb_within_the_envelope_size_is_stopped_by_the_object_budget():
    limits = P.REQUEST_LIMITS
    rows = [[] for _ in range(limits.max_array_len)]  # each list is within max_array_len...
    env = msgpack.packb(_header(body={"a": [rows] * 8}))  # ...but together they hold 32k objects
    assert len(env) < limits.max_envelope_bytes
    with pytest.raises(P.ProtocolError, match="more than 4096 objects") as err:
        P.decode([env], limits=limits)
    assert err.value.code == P.E_LIMIT


@pytest.mark.parametrize("what, body, fragment", [
    ("depth", None, "deeper than 16"),
    ("array", {"a": list(range(5000))}, "exceeds max_array_len"),
    ("map", {"a": {str(i): 0 for i in range(300)}}, "exceeds max_map_len"),
    ("str", {"a": "x" * 5000}, "exceeds max_str_len"),
    ("bin", {"a": b"x" * 70000}, "exceeds"),
])
def test_each_length_and_depth_bound_is_enforced(what, body, fragment):
    if what == "depth":
        inner: list = []
        for _ in range(20):
            inner = [inner]
        body = {"a": inner}
    env = msgpack.packb(_header(body=body), use_bin_type=True)
    with pytest.raises(P.ProtocolError, match=fragment) as err:
        P.decode([env], limits=P.REQUEST_LIMITS)
    assert err.value.code == P.E_LIMIT


def test_a_container_declaring_more_elements_than_bytes_is_malformed():
    env = msgpack.packb(_header())[:-1] + b"\xdc\xff\xff"  # body: an array of 65535 with nothing after it
    assert _decode_code([env], P.DEFAULT_LIMITS) == P.E_MALFORMED


@pytest.mark.parametrize("body", [
    {},
    {"action": np.zeros(2, np.float32), "client": "c" * 32},
    {"obs": {"state": np.arange(20, dtype=np.float32), "image": np.zeros((8, 8, 3), np.uint8)},
     "info": {"success": False, "nested": [[1, 2], {"k": [None, True, 1.5, "s"]}]}},
    {"options": {"reset_to_state": [1.0, 2.0, 3.0], "names": ["a"] * 40}},
])
def test_the_header_walk_counts_what_msgpack_builds_and_accepts_legal_envelopes(body):
    frames = P.encode(P.RESET, 3, body)
    head = frames[0]
    count = bounds.check(head, P.DEFAULT_LIMITS)

    def objects(x) -> int:
        if isinstance(x, dict):
            return 1 + sum(objects(k) + objects(v) for k, v in x.items())
        if isinstance(x, list):
            return 1 + sum(objects(v) for v in x)
        return 1

    assert count == objects(msgpack.unpackb(head, strict_map_key=False))
    msg = P.decode(frames, limits=P.REQUEST_LIMITS)  # legal requests pass the request bounds
    assert msg.type == P.RESET and msg.seq == 3


def test_random_garbage_only_ever_raises_protocol_error():
    rng = np.random.default_rng(0)
    good = P.encode(P.STEP, 1, {"action": np.zeros(2, np.float32), "options": {"a": [1, 2.5, "x"]}})[0]
    for i in range(3000):  # bounded fuzz: mutated and random envelopes
        if i % 2:
            env = bytearray(good)
            for pos in rng.integers(0, len(env), size=rng.integers(1, 6)):
                env[pos] = int(rng.integers(0, 256))
            env = bytes(env[: rng.integers(1, len(env) + 1)])
        else:
            env = bytes([0xDE, 0, 5]) + rng.integers(0, 256, size=int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
        try:
            P.decode([env], limits=P.REQUEST_LIMITS)
        except P.ProtocolError:
            pass


@pytest.fixture
def server16():
    """A server with the 16 MiB message limit the issue's bombs fit in."""
    srv = EnvServer(lambda: LoopbackEnv(), "tcp://127.0.0.1:*", max_message_bytes=16 * MIB).start()
    yield srv
    srv.close()


def test_bomb_stream_gets_limit_errors_and_another_client_keeps_stepping(server16):
    """One peer sends 16 MiB bombs continuously; a second client's steps all succeed meanwhile."""
    server = server16
    env = RemoteEnv(server.endpoint, timeout_s=5.0, retries=0)
    env.reset(seed=0)
    bombs = [map_bomb(16 * MIB - 5), inline_array_bomb(900_000)]  # both within the 16 MiB message limit
    stop = threading.Event()
    counts = {"sent": 0, "answered": 0}

    def bomber():  # keeps 4 bombs in flight until told to stop
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        while not stop.is_set():
            if counts["sent"] - counts["answered"] < 4:
                sock.send(bombs[counts["sent"] % 2], copy=False)
                counts["sent"] += 1
            if sock.poll(10):
                sock.recv_multipart()
                counts["answered"] += 1
        sock.close()

    t = threading.Thread(target=bomber, daemon=True)
    t.start()
    steps, deadline = 0, time.monotonic() + 60  # generous: bounds the test, not a speed target
    try:
        while (steps < 100 or server.stats[f"error.{P.E_LIMIT}"] < 10) and time.monotonic() < deadline:
            env.step(np.zeros(2, np.float32))  # retries=0: one lost or late reply fails the test
            steps += 1
    finally:
        stop.set()
        t.join(timeout=10)
    assert server.stats["steps"] == steps >= 100
    assert server.stats[f"error.{P.E_LIMIT}"] >= 10
    assert server.stats["errors"] == server.stats[f"error.{P.E_LIMIT}"]  # every bomb, and only bombs
    assert server.stats["refused_unread"] >= 1  # after the first bomb, the rest were not even looked at
    env.close()


def test_default_limit_drops_a_sixteen_mib_frame_in_the_io_thread(server):
    """Above twice the (1 MiB) default, ZeroMQ closes the connection before Python sees the frame."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    sock.send(map_bomb(16 * MIB - 5))
    assert not sock.poll(1000)  # no reply: the frame never reached the server loop
    sock.close()
    env = RemoteEnv(server.endpoint)
    env.reset(seed=0)
    env.step(np.zeros(2, np.float32))
    assert server.stats["errors"] == 0
    env.close()


def test_a_connection_that_sent_a_bomb_is_refused_unread_then_served_again(server):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    hello = P.encode(P.HELLO, 1)
    for frames, expect in (([map_bomb(100_000)], "exceeds"), (hello, "refused unread")):
        sock.send_multipart(frames)
        assert sock.poll(5000)
        reply = P.decode(sock.recv_multipart())
        assert reply.body["code"] == P.E_LIMIT and expect in reply.body["message"]
    time.sleep(PENALTY_S + 0.05)
    sock.send_multipart(hello)
    assert sock.poll(5000) and P.decode(sock.recv_multipart()).type == P.INFO
    sock.close()
