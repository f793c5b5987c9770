"""Faults on the wire: dropped and delayed requests, a server killed and restarted mid-episode."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest
import zmq

from rtdp.hardware import EpisodeLost, RemoteEnv, ServerGone


class FlakyProxy:
    """A ROUTER->DEALER forwarder that drops chosen requests or holds chosen replies back."""

    def __init__(self, backend: str, drop_requests=(), delay_replies=(), delay_s: float = 0.5):
        ctx = zmq.Context.instance()
        self.front, self.back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
        for s in (self.front, self.back):
            s.setsockopt(zmq.LINGER, 0)
        self.front.bind("tcp://127.0.0.1:*")
        self.back.connect(backend)
        self.endpoint = self.front.getsockopt_string(zmq.LAST_ENDPOINT)
        self.drop, self.delay, self.delay_s = set(drop_requests), set(delay_replies), delay_s
        self.n_req = self.n_rep = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        held: list[tuple[float, list]] = []
        while not self._stop.is_set():
            events = dict(poller.poll(10))
            if self.front in events:
                ident, *msg = self.front.recv_multipart()
                self.n_req += 1
                if self.n_req not in self.drop:
                    self.back.send_multipart([ident, *msg])  # the DEALER carries the identity through
            if self.back in events:
                frames = self.back.recv_multipart()
                self.n_rep += 1
                if self.n_rep in self.delay:
                    held.append((time.monotonic() + self.delay_s, frames))
                else:
                    self.front.send_multipart(frames)
            now = time.monotonic()
            for item in [h for h in held if h[0] <= now]:
                held.remove(item)
                self.front.send_multipart(item[1])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.front.close(), self.back.close()




def test_dropped_request_is_retried_and_executed_once(server):
    proxy = FlakyProxy(server.endpoint, drop_requests={3})  # hello, reset, then the first step is lost
    try:
        env = RemoteEnv(proxy.endpoint, timeout_s=0.2, retries=3)
        env.reset(seed=0)
        for _ in range(3):
            env.step(np.ones(2, np.float32))
        obs = env.observe()
        assert env.reconnects == 1
        assert server.stats["steps"] == 3  # the lost step was sent again, and only executed once
        ref = RemoteEnv(server.endpoint)
        ref.reset(seed=0)
        for _ in range(3):
            ref_obs, *_ = ref.step(np.ones(2, np.float32))
        np.testing.assert_array_equal(obs["state"], ref_obs["state"])
        env.close(), ref.close()
    finally:
        proxy.close()


def test_delayed_reply_causes_retry_but_no_duplicated_step(server):
    proxy = FlakyProxy(server.endpoint, delay_replies={3}, delay_s=0.5)  # the first step's reply is late
    try:
        env = RemoteEnv(proxy.endpoint, timeout_s=0.2, retries=3)
        env.reset(seed=0)
        _, _, _, _, info = env.step(np.ones(2, np.float32))
        assert info["step"] == 1
        _, _, _, _, info = env.step(np.ones(2, np.float32))
        assert info["step"] == 2  # the retried step was answered from the cache, not stepped again
        assert env.reconnects >= 1 and server.stats["duplicates"] >= 1 and server.stats["steps"] == 2
        env.close()
    finally:
        proxy.close()


def test_server_killed_and_restarted_mid_episode(spawn):
    proc, endpoint = spawn()
    env = RemoteEnv(endpoint, timeout_s=0.3, retries=1)
    env.reset(seed=0)
    env.step(np.zeros(2, np.float32))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    t0 = time.monotonic()
    with pytest.raises(ServerGone, match="did not answer"):
        env.step(np.zeros(2, np.float32))
    assert time.monotonic() - t0 < 3.0  # bounded: timeout x tries, not a hang

    spawn("tcp://" + endpoint.split("//")[1])  # a new server on the same address
    obs, _ = env.reset(seed=1)  # the client reconnects by itself and the next episode works
    for _ in range(5):
        obs, *_ = env.step(np.zeros(2, np.float32))
    assert obs["image"].shape == (96, 96, 3)
    env.close()


def test_restart_seen_by_a_retry_reports_the_lost_episode(spawn):
    proc, endpoint = spawn()
    env = RemoteEnv(endpoint, timeout_s=2.0, retries=3)
    env.reset(seed=0)
    proc.send_signal(signal.SIGTERM)  # clean stop, then a fresh server picks up the retried step
    proc.wait(timeout=10)
    spawn("tcp://" + endpoint.split("//")[1])
    with pytest.raises(EpisodeLost, match="restarted"):
        env.step(np.zeros(2, np.float32))
    env.reset(seed=0)
    env.step(np.zeros(2, np.float32))
    env.close()
