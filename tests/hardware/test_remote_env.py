"""RemoteEnv against an in-thread EnvServer: gymnasium compliance, equivalence, isolation, error replies."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq
from gymnasium.utils.env_checker import check_env

from rtdp.hardware import EnvServer, RemoteEnv, RemoteEnvError, ServerGone
from rtdp.hardware import protocol as P
from rtdp.hardware.loopback_env import LoopbackEnv


def _raw_request(endpoint: str, frames: list, timeout_ms: int = 2000) -> P.Message:
    """Send raw frames from a plain REQ socket (as a non-Python robot client would) and decode the reply."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        assert sock.poll(timeout_ms), "server did not reply"
        return P.decode(sock.recv_multipart())
    finally:
        sock.close()


def test_remote_env_passes_gymnasium_check_env(server):
    env = RemoteEnv(server.endpoint, timeout_s=2.0)
    check_env(env, skip_render_check=True)
    env.close()


def test_remote_episode_matches_local_env_step_for_step(server):
    local, remote = LoopbackEnv(state_dim=20, image_size=96), RemoteEnv(server.endpoint)
    lo, _ = local.reset(seed=3)
    ro, _ = remote.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        np.testing.assert_array_equal(lo["state"], ro["state"])
        np.testing.assert_array_equal(lo["image"], ro["image"])
        a = rng.uniform(-1, 1, 2).astype(np.float32)
        lo, lr, lt, ltr, li = local.step(a)
        ro, rr, rt, rtr, ri = remote.step(a)
        assert (lr, lt, ltr, li["success"]) == (rr, rt, rtr, ri["success"])
    assert remote.last_capture_ns is not None and remote.last_capture_ns <= P.now_ns()
    remote.close()


def test_each_client_has_its_own_env(server):
    a, b = RemoteEnv(server.endpoint), RemoteEnv(server.endpoint)
    a.reset(seed=1)
    ob, _ = b.reset(seed=2)
    for _ in range(3):
        a.step(np.ones(2, np.float32))
    ob2 = b.observe()
    np.testing.assert_array_equal(ob["state"], ob2["state"])  # b's env did not move with a's steps
    a.close(), b.close()


@pytest.mark.parametrize("action, fragment", [
    (np.zeros(3, np.float32), "shape"),
    (np.zeros((2, 1), np.float32), "shape"),
    (np.zeros(2, np.int32), "dtype"),
])
def test_wrong_action_gets_bad_action_error_and_episode_continues(server, action, fragment):
    env = RemoteEnv(server.endpoint)
    env.reset(seed=0)
    with pytest.raises(RemoteEnvError) as err:
        env.step(action)
    assert err.value.code == P.E_BAD_ACTION and fragment in str(err.value)
    env.step(np.zeros(2, np.float32))  # the same client keeps going
    assert server.stats[f"error.{P.E_BAD_ACTION}"] == 1
    env.close()


def test_step_before_reset_is_a_clear_error(server):
    env = RemoteEnv(server.endpoint)
    with pytest.raises(RemoteEnvError, match="reset"):
        env.step(np.zeros(2, np.float32))
    env.close()


@pytest.mark.parametrize("frames, code", [
    ([b"not msgpack at all \xc1"], P.E_MALFORMED),
    ([msgpack.packb({"v": P.PROTOCOL_VERSION + 9, "type": "step", "seq": 1})], P.E_VERSION),
    ([msgpack.packb({"v": P.PROTOCOL_VERSION, "type": "warp", "seq": 1})], P.E_UNKNOWN_TYPE),
    ([msgpack.packb({"v": P.PROTOCOL_VERSION, "type": "state", "seq": 1})], P.E_UNKNOWN_TYPE),
    ([msgpack.packb({"v": P.PROTOCOL_VERSION, "type": "step", "seq": 1,
                     "body": {"action": {"__nd__": [0, "<f4", [4]]}}}), b"\0" * 3], P.E_MALFORMED),
])
def test_bad_messages_get_error_reply_are_counted_and_others_keep_being_served(server, frames, code):
    good = RemoteEnv(server.endpoint)
    good.reset(seed=0)
    reply = _raw_request(server.endpoint, frames)
    assert reply.type == P.ERROR and reply.body["code"] == code and reply.body["message"]
    assert server.stats[f"error.{code}"] == 1
    good.step(np.zeros(2, np.float32))  # another client is unaffected
    good.close()


def test_oversized_message_gets_error_reply(server):
    server.max_message_bytes = 4096
    frames = P.encode(P.STEP, 1, {"action": np.zeros(10_000, np.float32)})
    reply = _raw_request(server.endpoint, [f if isinstance(f, bytes) else f.tobytes() for f in frames])
    assert reply.body["code"] == P.E_OVERSIZED
    assert server.stats[f"error.{P.E_OVERSIZED}"] == 1


def test_repeated_request_from_a_fresh_socket_with_the_session_token_is_answered_from_cache(server):
    """A lazy-pirate retry: same seq and type, sent again from a new connection that presents the token."""
    env = RemoteEnv(server.endpoint)
    env.reset(seed=0)
    frames = P.encode(P.STEP, 99, {"session": env._session, "action": np.ones(2, np.float32)})
    raw = [f if isinstance(f, bytes) else f.tobytes() for f in frames]
    first, second = _raw_request(server.endpoint, raw), _raw_request(server.endpoint, raw)
    assert server.stats["steps"] == 1 and server.stats["duplicates"] == 1
    np.testing.assert_array_equal(first.body["obs"]["state"], second.body["obs"]["state"])
    assert first.body["info"]["step"] == second.body["info"]["step"] == 1
    assert server.stats["handovers"] == 2  # each fresh socket took the session over with the token
    env.close()


def test_env_exception_is_an_error_reply_not_a_crash():
    class Exploding(LoopbackEnv):
        def step(self, action):
            raise RuntimeError("motor driver fault")

    with EnvServer(lambda: Exploding(), "tcp://127.0.0.1:*").start() as srv:
        env = RemoteEnv(srv.endpoint)
        env.reset(seed=0)
        with pytest.raises(RemoteEnvError, match="motor driver fault") as err:
            env.step(np.zeros(2, np.float32))
        assert err.value.code == P.E_ENV
        env.reset(seed=1)  # still serving
        env.close()


def test_no_server_is_a_clear_error_after_bounded_retries():
    sock = zmq.Context.instance().socket(zmq.ROUTER)  # reserve a port, then free it: nobody listens there
    sock.bind("tcp://127.0.0.1:*")
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.close(linger=0)
    with pytest.raises(ServerGone, match="serve-env"):
        RemoteEnv(endpoint, timeout_s=0.1, retries=2)
