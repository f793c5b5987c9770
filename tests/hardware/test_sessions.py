"""Sessions belong to connections: no other peer can use or close one, eviction spares active ones."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

from rtdp.hardware import EnvServer, RemoteEnv, RemoteEnvError
from rtdp.hardware import protocol as P
from rtdp.hardware.loopback_env import LoopbackEnv


class Peer:
    """A raw DEALER connection that sends hand-made requests (what an attacker on loopback can do)."""

    def __init__(self, endpoint: str):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def request(self, kind: str, seq: int, body: dict | None = None, raw: bytes | None = None) -> P.Message:
        self.sock.send_multipart([raw] if raw is not None else P.encode(kind, seq, body or {}))
        assert self.sock.poll(5000), "server did not reply"
        return P.decode(self.sock.recv_multipart())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def small_server():
    srv = EnvServer(lambda: LoopbackEnv(), "tcp://127.0.0.1:*", max_sessions=2, idle_s=0.3).start()
    yield srv
    srv.close()


def test_another_peer_with_the_client_id_can_neither_step_nor_close_the_session(server):
    victim = RemoteEnv(server.endpoint)
    victim.reset(seed=0)
    attacker = Peer(server.endpoint)
    step = attacker.request(P.STEP, 1, {"client": victim.client_id, "action": np.zeros(2, np.float32)})
    assert step.type == P.ERROR and step.body["code"] == P.E_NO_EPISODE
    attacker.request(P.CLOSE, 2, {"client": victim.client_id})  # closes nothing of the victim's
    _, _, _, _, info = victim.step(np.zeros(2, np.float32))
    assert info["step"] == 1 and server.stats["steps"] == 1
    attacker.close(), victim.close()


def test_a_wrong_session_token_takes_nothing_over(server):
    victim = RemoteEnv(server.endpoint)
    victim.reset(seed=0)
    attacker = Peer(server.endpoint)
    reply = attacker.request(P.STEP, 1, {"session": "0" * 32, "action": np.zeros(2, np.float32)})
    assert reply.body["code"] == P.E_NO_EPISODE and server.stats["handovers"] == 0
    victim.step(np.zeros(2, np.float32))
    attacker.close(), victim.close()


def test_eviction_never_takes_an_active_session(small_server):
    a, b = RemoteEnv(small_server.endpoint), RemoteEnv(small_server.endpoint)
    a.reset(seed=0), b.reset(seed=1)
    intruder = RemoteEnv(small_server.endpoint)
    with pytest.raises(RemoteEnvError, match="sessions are active") as err:
        intruder.reset(seed=2)  # both sessions were used just now: refused, nobody evicted
    assert err.value.code == P.E_BUSY and small_server.stats["evictions"] == 0
    a.step(np.zeros(2, np.float32)), b.step(np.zeros(2, np.float32))
    time.sleep(0.4)  # a and b go idle (idle_s=0.3) ...
    b.step(np.zeros(2, np.float32))  # ... but b is active again
    intruder.reset(seed=2)  # takes the idle slot: a's
    assert small_server.stats["evictions"] == 1
    b.step(np.zeros(2, np.float32))
    with pytest.raises(RemoteEnvError):
        a.step(np.zeros(2, np.float32))  # a's episode is gone (it was idle)
    a.close(), b.close(), intruder.close()


def test_fresh_peers_cannot_evict_active_sessions_by_resetting(small_server):
    """The issue's attack: resets under fresh ids to push every other client out."""
    victim = RemoteEnv(small_server.endpoint)
    victim.reset(seed=0)
    codes = []
    for i in range(4):
        peer = Peer(small_server.endpoint)
        codes.append(peer.request(P.RESET, 1, {"client": f"fresh-{i}"}).type)
        peer.close()
    assert codes.count(P.RESET) == 1 and codes.count(P.ERROR) == 3  # one free slot, then busy
    victim.step(np.zeros(2, np.float32))
    victim.close()


def test_hello_shows_no_counters_to_an_unauthenticated_peer(server):
    info = Peer(server.endpoint).request(P.HELLO, 1).body
    assert "stats" not in info and info["authenticated"] is False
    assert info["limits"]["max_objects"] == P.REQUEST_LIMITS.max_objects  # the bounds it will enforce


@pytest.mark.parametrize("client", [[1, 2, 3], {"a": 1}, 12, "x" * 200])
def test_a_client_id_that_is_not_a_short_string_is_a_clean_malformed_reply(server, client):
    reply = Peer(server.endpoint).request(P.RESET, 1, raw=msgpack.packb(
        {"v": P.PROTOCOL_VERSION, "type": P.RESET, "seq": 1, "body": {"client": client}}))
    assert reply.body["code"] == P.E_MALFORMED and "client" in reply.body["message"]
    assert server.stats[f"error.{P.E_INTERNAL}"] == 0


def test_reply_cache_matches_the_message_type_as_well_as_the_sequence_number(server):
    peer = Peer(server.endpoint)
    reset = peer.request(P.RESET, 5, {"seed": 0})
    step = peer.request(P.STEP, 5, {"action": np.zeros(2, np.float32)})  # same seq, another request
    assert reset.type == P.RESET and step.type == P.STEP and step.body["info"]["step"] == 1
    again = peer.request(P.STEP, 5, {"action": np.zeros(2, np.float32)})  # a true retry: from the cache
    assert again.body["info"]["step"] == 1 and server.stats["steps"] == 1 and server.stats["duplicates"] == 1
    peer.close()
