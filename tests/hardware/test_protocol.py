"""The envelope + raw-frame encoding: round trips, the packed form, and every kind of bad message."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from rtdp.hardware import protocol as P


def test_nested_arrays_round_trip_zero_copy_with_dtype_and_shape():
    body = {"obs": {"state": np.arange(20, dtype=np.float32), "image": np.zeros((96, 96, 3), np.uint8)},
            "reward": np.float64(0.5), "list": [np.int64(3), np.ones((2, 2), np.int16)], "none": None}
    frames = P.encode(P.STEP, 7, body, ts={"capture": 11})
    assert len(frames) == 2  # the envelope (small arrays inline) + the image as its own frame
    assert frames[1] is body["obs"]["image"]  # handed to zmq as is: not copied
    msg = P.decode([bytes(f) if not isinstance(f, np.ndarray) else f.tobytes() for f in frames])
    assert (msg.type, msg.seq, msg.ts["capture"]) == (P.STEP, 7, 11)
    assert msg.body["obs"]["state"].dtype == np.float32 and msg.body["obs"]["image"].shape == (96, 96, 3)
    np.testing.assert_array_equal(msg.body["obs"]["state"], body["obs"]["state"])
    np.testing.assert_array_equal(msg.body["list"][1], body["list"][1])
    assert msg.body["reward"] == 0.5 and msg.body["list"][0] == 3 and msg.body["none"] is None


def test_every_array_gets_its_own_frame_when_inlining_is_off():
    body = {"a": np.arange(3, dtype=np.int16), "b": [np.ones((2, 2), np.float64)]}
    frames = P.encode(P.STEP, 1, body, inline_max=0)
    assert len(frames) == 3
    msg = P.decode(frames)
    np.testing.assert_array_equal(msg.body["a"], body["a"])
    np.testing.assert_array_equal(msg.body["b"][0], body["b"][0])


def test_inline_array_with_wrong_byte_count_is_malformed():
    import msgpack

    env = msgpack.packb({"v": P.PROTOCOL_VERSION, "type": P.STEP, "seq": 1,
                         "body": {"a": {"__nd__": [b"\0" * 5, "<f4", [2]]}}})
    with pytest.raises(P.ProtocolError) as err:
        P.decode([env])
    assert err.value.code == P.E_MALFORMED


def test_non_contiguous_arrays_are_sent_contiguous():
    a = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]
    msg = P.decode(P.unpack(P.pack(P.encode(P.STATE, 1, {"a": a}))))
    np.testing.assert_array_equal(msg.body["a"], a)


def test_packed_single_frame_round_trips():
    frames = P.encode(P.COMMAND, 3, {"action": np.array([0.1, -0.2], np.float32)})
    msg = P.decode(P.unpack(P.pack(frames)))
    np.testing.assert_allclose(msg.body["action"], [0.1, -0.2])


def _envelope(**over):
    env = {"v": P.PROTOCOL_VERSION, "type": P.STEP, "seq": 1, "ts": {}, "body": {}}
    env.update(over)
    return msgpack.packb(env)


def _nd(i, dtype, shape):
    return {"a": {"__nd__": [i, dtype, shape]}}


@pytest.mark.parametrize("frames, code", [
    ([b"\xc1garbage"], P.E_MALFORMED),
    ([msgpack.packb([1, 2, 3])], P.E_MALFORMED),
    ([_envelope(v=P.PROTOCOL_VERSION + 1)], P.E_VERSION),
    ([_envelope(v=P.PROTOCOL_VERSION + 1, body=_nd(0, "<f4", [2]))], P.E_VERSION),  # version checked first
    ([_envelope(type="teleport")], P.E_UNKNOWN_TYPE),
    ([_envelope(body=_nd(0, "<f4", [2]))], P.E_MALFORMED),  # placeholder, but no array frame
    ([_envelope(body=_nd(0, "<f4", [3])), b"\0" * 8], P.E_MALFORMED),  # 3 float32 need 12 bytes
    ([_envelope(body=_nd(0, "|O", [1])), b"\0" * 8], P.E_MALFORMED),  # object dtype never decoded
    ([_envelope(body=_nd(0, "not-a-dtype", [1])), b"\0" * 8], P.E_MALFORMED),
    ([_envelope(body=_nd(0, "<f4", [-1])), b""], P.E_MALFORMED),
    ([_envelope(body=_nd(5, "<f4", [1])), b"\0" * 4], P.E_MALFORMED),
    ([_envelope(), b"\0" * 4], P.E_MALFORMED),  # a frame no placeholder names
    ([_envelope(body=[1, 2])], P.E_MALFORMED),
    ([], P.E_MALFORMED),
])
def test_bad_messages_raise_protocol_error_with_reply_code(frames, code):
    with pytest.raises(P.ProtocolError) as err:
        P.decode(frames)
    assert err.value.code == code


def test_oversized_message_is_rejected_before_parsing():
    frames = P.encode(P.STEP, 1, {"a": np.zeros(1000, np.uint8)})
    with pytest.raises(P.ProtocolError) as err:
        P.decode(frames, max_bytes=500)
    assert err.value.code == P.E_OVERSIZED


def test_truncated_packed_message_is_malformed():
    packed = P.pack(P.encode(P.STATE, 1, {"a": np.zeros(10)}))
    with pytest.raises(P.ProtocolError):
        P.unpack(packed[:-3])


def test_object_arrays_cannot_be_sent():
    with pytest.raises(TypeError):
        P.encode(P.STEP, 1, {"a": np.array([object()])})
