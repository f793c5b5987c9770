"""State publishing and latest-only command streaming: a slow consumer sees the newest value, memory bounded."""

from __future__ import annotations

import time

import numpy as np

from rtdp.hardware import CommandReceiver, CommandSender, RemoteEnv, StatePublisher, StateSubscriber
from rtdp.hardware.loopback_env import LoopbackEnv
from rtdp.hardware.server import EnvServer


def _wait_connected(send, recv, timeout_s: float = 5.0):
    """PUB/SUB joins asynchronously: publish until the first message gets through."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        send()
        if recv.recv(timeout_s=0.02) is not None:
            return
    raise AssertionError("subscriber never connected")


def test_slow_state_subscriber_with_conflate_gets_only_the_latest():
    pub = StatePublisher("tcp://127.0.0.1:*")
    sub = StateSubscriber(pub.endpoint, conflate=True)
    try:
        _wait_connected(lambda: pub.publish({"x": np.zeros(20, np.float32)}), sub)
        for i in range(2000):
            last = pub.publish({"x": np.full(20, i, np.float32)})
        time.sleep(0.2)  # the consumer is busy; 2000 states arrive meanwhile
        msg = sub.recv(timeout_s=1.0)
        assert msg.seq == last and msg.body["x"][0] == 1999
        assert sub.recv(timeout_s=0.05) is None  # nothing older was queued behind it
    finally:
        pub.close(), sub.close()


def test_slow_subscriber_without_conflate_is_bounded_by_hwm():
    pub = StatePublisher("tcp://127.0.0.1:*", conflate=False, hwm=8)
    sub = StateSubscriber(pub.endpoint, conflate=False, hwm=8)
    try:
        _wait_connected(lambda: pub.publish({"x": np.zeros(1000, np.float32)}), sub)
        for i in range(5000):
            pub.publish({"x": np.full(1000, i, np.float32)})
        time.sleep(0.2)
        got = 0
        while sub._sock.poll(50):
            sub._sock.recv()
            got += 1
        # queued messages never exceed the two high-water marks plus what is in flight in the kernel
        assert got < 5000 // 4, got
    finally:
        pub.close(), sub.close()


def test_command_stream_keeps_only_the_newest_command():
    rx = CommandReceiver("tcp://127.0.0.1:*")
    tx = CommandSender(rx.endpoint)
    try:
        _wait_connected(lambda: tx.send(np.zeros(7)), rx)
        for i in range(1000):
            tx.send(np.full(7, i, np.float64), target_ns=i)
        time.sleep(0.2)
        msg = rx.recv(timeout_s=1.0)
        assert msg.body["action"][0] == 999 and msg.ts["target"] == 999
        assert rx.recv(timeout_s=0.05) is None and rx.latest is msg
    finally:
        tx.close(), rx.close()


def test_server_publishes_every_observation():
    srv = EnvServer(lambda: LoopbackEnv(), "tcp://127.0.0.1:*", pub_bind="tcp://127.0.0.1:*").start()
    sub = StateSubscriber(srv.publisher.endpoint, conflate=False)
    env = RemoteEnv(srv.endpoint)
    try:
        env.reset(seed=0)
        _wait_connected(lambda: env.step(np.zeros(2, np.float32)), sub)
        obs, *_ = env.step(np.ones(2, np.float32))
        msg = sub.recv(timeout_s=1.0)
        np.testing.assert_array_equal(msg.body["obs"]["state"], obs["state"])
        assert "capture" in msg.ts
    finally:
        env.close(), sub.close(), srv.close()
