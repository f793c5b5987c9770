"""CURVE: key generation, only listed clients get in, sessions belong to a key, network binds need keys."""

from __future__ import annotations

import stat

import numpy as np
import pytest
import zmq

from rtdp.hardware import EnvServer, RemoteEnv, RemoteEnvError, ServerGone
from rtdp.hardware import protocol as P
from rtdp.hardware.curve import ClientKeys, CurveKeyError, ServerKeys, generate
from rtdp.hardware.endpoints import check_bind, is_loopback
from rtdp.hardware.loopback_env import LoopbackEnv

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")


@pytest.fixture
def keys(tmp_path):
    d = tmp_path / "keys"
    generate(d, "laptop")
    generate(d, "other")
    return d


@pytest.fixture
def curve_server(keys):
    with EnvServer(lambda: LoopbackEnv(), "tcp://127.0.0.1:*", keys=keys).start() as srv:
        yield srv


def test_keygen_writes_a_server_pair_client_pairs_and_the_allowed_list(keys):
    assert sorted(p.name for p in keys.iterdir()) == ["clients", "laptop.key_secret", "other.key_secret",
                                                       "server.key", "server.key_secret"]
    assert sorted(p.name for p in (keys / "clients").iterdir()) == ["laptop.key", "other.key"]
    for secret in keys.glob("*.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    with pytest.raises(CurveKeyError, match="already exists"):
        generate(keys, "laptop")  # never overwrites a client's keys
    ServerKeys.load(keys), ClientKeys.from_dir(keys, "laptop")


def test_a_listed_client_is_served_and_sees_the_counters(curve_server, keys):
    env = RemoteEnv(curve_server.endpoint, server_key=keys / "server.key",
                    client_key=keys / "laptop.key_secret")
    env.reset(seed=0)
    env.step(np.zeros(2, np.float32))
    assert env.server_info["authenticated"] is True and "stats" in env.hello()
    env.close()


@pytest.mark.parametrize("how", ["no keys", "unlisted key", "wrong server key"])
def test_clients_without_a_listed_key_get_no_connection(curve_server, keys, tmp_path, how):
    kw = {}
    if how == "unlisted key":
        stranger = tmp_path / "stranger"
        generate(stranger, "me")  # a valid pair the server never listed
        kw = {"server_key": keys / "server.key", "client_key": stranger / "me.key_secret"}
    elif how == "wrong server key":
        other = tmp_path / "other"
        generate(other, "me")
        kw = {"server_key": other / "server.key", "client_key": keys / "laptop.key_secret"}
    with pytest.raises(ServerGone):
        RemoteEnv(curve_server.endpoint, timeout_s=0.3, retries=1, **kw)
    assert curve_server.stats["requests"] == 0  # nothing reached the server loop


def test_a_session_token_does_not_hand_a_session_to_another_key(curve_server, keys):
    owner = RemoteEnv(curve_server.endpoint, keys=ClientKeys.from_dir(keys, "laptop"))
    owner.reset(seed=0)
    thief = RemoteEnv(curve_server.endpoint, keys=ClientKeys.from_dir(keys, "other"))
    thief._session = owner._session  # even with the token, another key's request finds no episode
    with pytest.raises(RemoteEnvError, match="reset") as err:
        thief.step(np.zeros(2, np.float32))
    assert err.value.code == P.E_NO_EPISODE
    assert curve_server.stats["handovers"] == 0
    owner.step(np.zeros(2, np.float32))
    owner.close(), thief.close()


def test_a_network_bind_needs_keys_or_an_explicit_insecure_flag(keys):
    with pytest.raises(CurveKeyError, match="reachable from the network"):
        EnvServer(lambda: LoopbackEnv(), "tcp://*:*")
    with EnvServer(lambda: LoopbackEnv(), "tcp://*:*", insecure=True) as srv:
        assert srv.keys is None
    with EnvServer(lambda: LoopbackEnv(), "tcp://*:*", keys=keys) as srv:
        assert srv.keys is not None


def test_the_state_stream_is_encrypted_too(keys):
    from rtdp.hardware import StateSubscriber

    with EnvServer(lambda: LoopbackEnv(), "tcp://127.0.0.1:*", pub_bind="tcp://127.0.0.1:*",
                   keys=keys).start() as srv:
        client_keys = ClientKeys.from_dir(keys, "laptop")
        sub = StateSubscriber(srv.publisher.endpoint, keys=client_keys)
        stranger = StateSubscriber(srv.publisher.endpoint)
        env = RemoteEnv(srv.endpoint, keys=client_keys)
        env.reset(seed=0)
        got = None
        for _ in range(50):
            env.step(np.zeros(2, np.float32))
            got = got or sub.recv(timeout_s=0.02)
        assert got is not None and got.type == P.STATE
        assert stranger.recv(timeout_s=0.2) is None
        env.close(), sub.close(), stranger.close()


@pytest.mark.parametrize("endpoint, loopback", [
    ("tcp://127.0.0.1:5555", True), ("tcp://localhost:5555", True), ("tcp://[::1]:5555", True),
    ("ipc:///tmp/x", True), ("inproc://x", True), ("tcp://*:5555", False), ("tcp://0.0.0.0:5555", False),
    ("tcp://192.168.1.10:5555", False), ("tcp://eth0:5555", False),
])
def test_loopback_endpoints_are_told_from_network_ones(endpoint, loopback):
    assert is_loopback(endpoint) is loopback


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:99999", "tcp://127.0.0.1:0", "tcp://127.0.0.1",
                                      "tcp://127.0.0.1:abc", "udp://127.0.0.1:5", "127.0.0.1:5555"])
def test_bind_addresses_that_zmq_would_bend_are_refused(endpoint):
    with pytest.raises(ValueError, match="bind address"):
        check_bind(endpoint)
