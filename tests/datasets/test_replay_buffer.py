"""ReplayBuffer: layout, zarr v2 read / v3 write, in-memory variant, validation of inconsistent stores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from rtdp_data_factory import assert_episode_equal, make_episode

from rtdp.datasets import ReplayBuffer, ReplayBufferError
from rtdp.datasets.replay_buffer import PENDING


def _filled(path, lengths=(5, 7, 3), image=True) -> tuple[ReplayBuffer, list[dict]]:
    buf = ReplayBuffer.create(path)
    eps = [make_episode(i, n, image=image) for i, n in enumerate(lengths)]
    for ep in eps:
        buf.add_episode(ep)
    return buf, eps


def test_created_store_is_zarr_v3_with_diffusion_policy_layout(tmp_path):
    _filled(tmp_path / "b.zarr")
    root = zarr.open_group(tmp_path / "b.zarr", mode="r")
    assert root.metadata.zarr_format == 3
    assert sorted(root["data"].array_keys()) == ["action", "img", "state"]
    np.testing.assert_array_equal(root["meta"]["episode_ends"][:], [5, 12, 15])
    assert root["data"]["img"].chunks == (1, 8, 8, 3)          # images: one frame per chunk
    assert root["data"]["state"].chunks[0] >= 1024                # low-dim: many rows per chunk
    assert root["data"]["img"].dtype == np.uint8


def test_append_then_reopen_reads_every_episode_and_slice(tmp_path):
    _, eps = _filled(tmp_path / "b.zarr")
    buf = ReplayBuffer.open(tmp_path / "b.zarr")
    assert (buf.n_episodes, buf.n_steps) == (3, 15)
    np.testing.assert_array_equal(buf.episode_lengths, [5, 7, 3])
    for i, ep in enumerate(eps):
        assert_episode_equal(buf.get_episode(i), ep)
    assert_episode_equal(buf.get_episode(-1), eps[2])
    steps = buf.get_steps(3, 9, keys=["action"])
    np.testing.assert_array_equal(steps["action"], np.concatenate([eps[0]["action"][3:], eps[1]["action"][:4]]))
    assert buf.keys() == ["action", "img", "state"] and buf.shape("img") == (15, 8, 8, 3)


def test_open_append_mode_continues_an_existing_store(tmp_path):
    _, eps = _filled(tmp_path / "b.zarr")
    buf = ReplayBuffer.open(tmp_path / "b.zarr", mode="a")
    extra = make_episode(99, 4)
    buf.add_episode(extra)
    again = ReplayBuffer.open(tmp_path / "b.zarr")
    assert again.n_episodes == 4
    assert_episode_equal(again.get_episode(3), extra)
    assert_episode_equal(again.get_episode(0), eps[0])


def test_in_memory_buffer_matches_disk_semantics_and_saves_to_zarr(tmp_path):
    mem = ReplayBuffer.in_memory()
    eps = [make_episode(i, n) for i, n in enumerate([4, 40, 2])]
    for ep in eps:
        mem.add_episode(ep)
    assert mem.backend == "memory" and mem.n_steps == 46 and mem["state"].shape == (46, 5)
    assert_episode_equal(mem.get_episode(1), eps[1])
    disk = mem.save_to(tmp_path / "m.zarr")
    assert disk.n_episodes == 3
    assert_episode_equal(ReplayBuffer.open(tmp_path / "m.zarr").get_episode(2), eps[2])


def test_copy_to_memory_takes_a_path_or_buffer_and_a_key_subset(tmp_path):
    _, eps = _filled(tmp_path / "b.zarr")
    mem = ReplayBuffer.copy_to_memory(tmp_path / "b.zarr", keys=["action"])
    assert mem.keys() == ["action"] and mem.backend == "memory"
    np.testing.assert_array_equal(mem.get_episode(1)["action"], eps[1]["action"])
    mem2 = ReplayBuffer.copy_to_memory(ReplayBuffer.open(tmp_path / "b.zarr"))
    assert_episode_equal(mem2.get_episode(2), eps[2])


def test_float_images_become_uint8_in_memory_only_when_exact(tmp_path):
    buf = ReplayBuffer.create(tmp_path / "f.zarr")
    exact = {"img": np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3) % 256, "a": np.ones((2, 1))}
    buf.add_episode(exact)
    mem = ReplayBuffer.copy_to_memory(tmp_path / "f.zarr")
    assert mem["img"].dtype == np.uint8
    np.testing.assert_array_equal(mem["img"], exact["img"])
    buf2 = ReplayBuffer.create(tmp_path / "g.zarr")
    buf2.add_episode({"img": exact["img"] / 255.0, "a": exact["a"]})
    mem2 = ReplayBuffer.copy_to_memory(tmp_path / "g.zarr")
    assert mem2["img"].dtype.kind == "f"
    np.testing.assert_allclose(mem2["img"], exact["img"] / 255.0)


def test_reads_the_pusht_v2_store_read_only(pusht_zarr):
    buf = ReplayBuffer.open(pusht_zarr)
    assert (buf.n_episodes, buf.n_steps) == (206, 25650)
    assert buf.keys() == ["action", "img", "keypoint", "n_contacts", "state"]
    assert buf.episode_lengths.min() == 49 and buf.episode_lengths.max() == 246
    ep = buf.get_episode(0, keys=["keypoint", "action"])
    assert ep["keypoint"].shape == (161, 9, 2) and ep["action"].dtype == np.float32
    with pytest.raises(ReplayBufferError, match="read-only"):
        buf.add_episode(ep)


def test_pusht_images_load_into_memory_as_exact_uint8(pusht_zarr):
    src = ReplayBuffer.open(pusht_zarr)
    mem = ReplayBuffer.copy_to_memory(src, keys=["img"])
    assert mem["img"].dtype == np.uint8 and mem["img"].shape == (25650, 96, 96, 3)
    np.testing.assert_array_equal(mem.get_episode(100)["img"], src.get_episode(100, keys=["img"])["img"])


@pytest.mark.parametrize("bad", ["ragged", "empty", "keys", "shape", "dtype"])
def test_bad_episodes_are_refused_and_leave_the_store_unchanged(tmp_path, bad):
    buf, _ = _filled(tmp_path / "b.zarr")
    ep = make_episode(7, 4)
    if bad == "ragged":
        ep["state"] = ep["state"][:3]
    elif bad == "empty":
        ep = {k: v[:0] for k, v in ep.items()}
    elif bad == "keys":
        ep["extra"] = ep.pop("state")
    elif bad == "shape":
        ep["state"] = ep["state"][:, :4]
    else:
        ep["action"] = ep["action"].astype(np.complex64)
    with pytest.raises(ReplayBufferError, match=str(tmp_path / "b.zarr")):
        buf.add_episode(ep)
    again = ReplayBuffer.open(tmp_path / "b.zarr")
    assert again.n_episodes == 3 and again.uncommitted_steps == 0


def test_create_refuses_to_overwrite_unless_asked(tmp_path):
    _filled(tmp_path / "b.zarr")
    with pytest.raises(ReplayBufferError, match="already exists"):
        ReplayBuffer.create(tmp_path / "b.zarr")
    assert ReplayBuffer.create(tmp_path / "b.zarr", overwrite=True).n_episodes == 0


@pytest.mark.parametrize("case,message", [
    ("missing", "no such file"),
    ("file", "not a zarr replay buffer"),
    ("plain_group", "not a replay buffer"),
])
def test_paths_that_are_not_replay_buffers_are_reported(tmp_path, case, message):
    path = tmp_path / "x.zarr"
    if case == "file":
        path.write_text("hello")
    elif case == "plain_group":
        zarr.open_group(path, mode="w").create_array("foo", shape=(3,), dtype="f4")
    with pytest.raises(ReplayBufferError, match=message) as err:
        ReplayBuffer.open(path)
    assert str(path) in str(err.value)


def test_arrays_shorter_than_episode_ends_are_reported_with_the_broken_episode(tmp_path):
    _filled(tmp_path / "b.zarr", lengths=(5, 7, 3, 6))
    zarr.open_array(tmp_path / "b.zarr" / "data" / "state", mode="r+").resize((13, 5))  # cuts into episode 2
    with pytest.raises(ReplayBufferError, match=r"data/state has 13 steps.*episode 2 \(steps 12:15\)"):
        ReplayBuffer.open(tmp_path / "b.zarr")


def test_non_increasing_episode_ends_are_reported(tmp_path):
    _filled(tmp_path / "b.zarr")
    zarr.open_array(tmp_path / "b.zarr" / "meta" / "episode_ends", mode="r+")[1] = 4
    with pytest.raises(ReplayBufferError, match="not increasing at episode 1"):
        ReplayBuffer.open(tmp_path / "b.zarr")


def test_a_pending_episode_end_is_an_uncommitted_append_not_corruption(tmp_path):
    _, eps = _filled(tmp_path / "b.zarr")
    ends = zarr.open_array(tmp_path / "b.zarr" / "meta" / "episode_ends", mode="r+")
    ends.resize((4,))  # extended but value never written: reads as the fill value
    assert ends[3] == PENDING
    buf = ReplayBuffer.open(tmp_path / "b.zarr", mode="a")
    assert buf.n_episodes == 3
    buf.add_episode(eps[0])
    np.testing.assert_array_equal(ReplayBuffer.open(tmp_path / "b.zarr").episode_ends, [5, 12, 15, 20])


def test_corrupt_chunk_is_reported_with_key_and_steps(tmp_path):
    _filled(tmp_path / "b.zarr")
    chunk = tmp_path / "b.zarr" / "data" / "img" / "c" / "6" / "0" / "0" / "0"
    chunk.write_bytes(b"garbage, not blosc")
    buf = ReplayBuffer.open(tmp_path / "b.zarr")
    buf.get_episode(0)  # other episodes still read
    with pytest.raises(ReplayBufferError, match=r"data/img: cannot read steps 5:12 \(corrupt chunk"):
        buf.get_episode(1)
    with pytest.raises(ReplayBufferError, match="data/img"):
        buf.verify()


def test_missing_key_is_reported(tmp_path):
    buf, _ = _filled(tmp_path / "b.zarr")
    with pytest.raises(ReplayBufferError, match="no key 'nope'"):
        buf["nope"]
    with pytest.raises(ReplayBufferError, match="no key 'nope'"):
        buf.get_episode(0, keys=["nope"])


def test_zarr_metadata_lists_blosc_zstd_compression(tmp_path):
    _filled(tmp_path / "b.zarr")
    meta = json.loads((tmp_path / "b.zarr" / "data" / "state" / "zarr.json").read_text())
    blosc = [c for c in meta["codecs"] if c["name"] == "blosc"]
    assert blosc and blosc[0]["configuration"]["cname"] == "zstd"


def test_appending_to_a_zarr_v2_store_keeps_it_v2_and_consistent(tmp_path):
    path = tmp_path / "v2.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    first = make_episode(0, 6, image=False)
    for key, value in first.items():
        root.create_array(f"data/{key}", data=value, chunks=(4, *value.shape[1:]))
    root.create_array("meta/episode_ends", data=np.array([6], dtype=np.int64))
    buf = ReplayBuffer.open(path, mode="a")
    second = make_episode(1, 3, image=False)
    buf.add_episode(second)
    again = ReplayBuffer.open(path)
    assert zarr.open_group(path, mode="r").metadata.zarr_format == 2
    np.testing.assert_array_equal(again.episode_ends, [6, 9])
    assert_episode_equal(again.get_episode(0), first)
    assert_episode_equal(again.get_episode(1), second)
