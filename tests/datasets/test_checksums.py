"""Corruption is caught: flipped, truncated, swapped and deleted chunks, a moved episode boundary.

Each case damages a small store on disk the way the issue did, then reads it back in a way that must
fail with a message naming the key, the chunk and the episode (or the episode boundary) at fault.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from rtdp_data_factory import assert_episode_equal, make_episode

from rtdp.cli.main import main
from rtdp.datasets import ReplayBuffer, ReplayBufferError
from rtdp.datasets import checksums as C
from rtdp.datasets.replay_buffer import CorruptStoreError

LENGTHS = (5, 9, 7)  # episode ends 5, 14, 21; img chunks are frames, state/action one chunk each


def _store(path) -> list[dict]:
    buf = ReplayBuffer.create(path)
    eps = [make_episode(i, n) for i, n in enumerate(LENGTHS)]
    for ep in eps:
        buf.add_episode(ep)
    return eps


def _img_chunk(path, i):
    return path / "data" / "img" / "c" / str(i) / "0" / "0" / "0"


def _cli_error(capsys, *args) -> str:
    assert main(["data", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rtdp data: error:") and "Traceback" not in err, err
    return err


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "b.zarr"
    _store(path)
    return path


def test_a_clean_store_carries_checksums_and_reads_back(store, capsys):
    buf = ReplayBuffer.open(store)
    assert buf.checksums == "crc32"
    buf.verify()
    for i, ep in enumerate([make_episode(i, n) for i, n in enumerate(LENGTHS)]):
        assert_episode_equal(buf.get_episode(i), ep)
    assert main(["data", "info", str(store), "--verify"]) == 0
    assert "checksums: crc32 per chunk and per episode" in capsys.readouterr().out


def test_rewritten_values_that_decode_fine_are_caught_naming_key_chunk_and_episode(store, capsys):
    zarr.open_array(store / "data" / "state", mode="r+")[7] = 0.0  # a valid chunk with other numbers
    buf = ReplayBuffer.open(store)
    with pytest.raises(CorruptStoreError, match=r"data/state: chunk 0 \(steps 0:21, episodes 0-2\) does not "
                                                r"match its checksum \(first at steps 5:14\)"):
        buf.get_episode(1)
    err = _cli_error(capsys, "info", str(store))  # low-dim chunks are checked even without --verify
    assert "data/state: chunk 0" in err and "checksum" in err


@pytest.mark.parametrize("key", ["state", "action", "img"])
def test_flipped_bytes_in_a_chunk_file_are_caught(store, capsys, key):
    chunk = (_img_chunk(store, 8) if key == "img" else store / "data" / key / "c" / "0" / "0")
    raw = bytearray(chunk.read_bytes())
    for pos in (len(raw) - 1, len(raw) // 2 + 3):  # inside the payload: blosc stores random data raw
        raw[pos] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match=f"data/{key}") as err:
        ReplayBuffer.open(store).get_episode(1)
    assert ("chunk 8" if key == "img" else "chunk 0") in str(err.value) and "episode" in str(err.value)
    err = _cli_error(capsys, "info", str(store), "--verify")
    assert f"data/{key}: chunk" in err and "episode" in err


def test_an_image_chunk_truncated_to_half_is_caught(store, capsys):
    chunk = _img_chunk(store, 7)
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    with pytest.raises(CorruptStoreError, match=r"data/img.*chunk 7.*episode 1"):
        ReplayBuffer.open(store).get_episode(1)
    assert "chunk 7" in _cli_error(capsys, "info", str(store), "--verify")


def test_two_swapped_image_chunks_are_both_named(store, capsys):
    a, b = _img_chunk(store, 3), _img_chunk(store, 17)
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db), b.write_bytes(da)
    with pytest.raises(CorruptStoreError, match=r"data/img: chunk 3 \(steps 3:4, episode 0\)"):
        ReplayBuffer.open(store).get_episode(0)
    with pytest.raises(CorruptStoreError, match="2 bad chunk") as err:
        ReplayBuffer.open(store).verify()
    assert "chunk 3 (steps 3:4, episode 0)" in str(err.value) and "chunk 17 (steps 17:18, episode 2)" in str(err.value)
    err = _cli_error(capsys, "info", str(store), "--verify")
    assert "chunk 3" in err and "chunk 17" in err


def test_a_deleted_chunk_is_an_error_never_zeros(store, capsys):
    _img_chunk(store, 10).unlink()
    with pytest.raises(CorruptStoreError, match=r"data/img: chunk 10 \(steps 10:11, episode 1\) is missing"):
        ReplayBuffer.open(store).get_episode(1)
    ReplayBuffer.open(store).get_episode(0)  # other episodes still read
    assert "is missing" in _cli_error(capsys, "info", str(store), "--verify")


def test_a_deleted_chunk_of_a_store_without_checksums_is_an_error_too(tmp_path):
    path = tmp_path / "v2.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    ep = make_episode(0, 12, image=False)
    for key, value in ep.items():
        root.create_array(f"data/{key}", data=value, chunks=(4, *value.shape[1:]))
    root.create_array("meta/episode_ends", data=np.array([6, 12], dtype=np.int64))
    (path / "data" / "state" / "1.0").unlink()
    buf = ReplayBuffer.open(path)
    assert buf.checksums is None
    with pytest.raises(CorruptStoreError, match=r"data/state: chunk 1 \(steps 4:8, episodes 0-1\) is missing"):
        buf.get_steps(0, 12)


@pytest.mark.parametrize("entry, episode", [(0, 0), (1, 1)])
def test_a_low_bit_flipped_in_episode_ends_is_caught_at_open(store, capsys, entry, episode):
    chunk = store / "meta" / "episode_ends" / "c" / "0"
    raw = bytearray(chunk.read_bytes())  # uncompressed little-endian int64: byte 8*i is entry i's low byte
    raw[8 * entry] ^= 0x01
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match=rf"episode {episode} \(steps .*\) does not match its checksum.*"
                                                r"meta/episode_ends"):
        ReplayBuffer.open(store)
    assert f"episode {episode}" in _cli_error(capsys, "info", str(store))


def test_each_chunk_is_checked_once_per_process_and_again_when_it_grows(tmp_path, monkeypatch):
    path = tmp_path / "b.zarr"
    _store(path)
    fed = {"n": 0}
    real = C.SegmentHasher.feed

    def counting(self, first, rows):
        fed["n"] += 1
        return real(self, first, rows)

    monkeypatch.setattr(C.SegmentHasher, "feed", counting)
    buf = ReplayBuffer.open(path)
    buf.get_episode(1, keys=["state"])
    assert fed["n"] == 1
    ReplayBuffer.open(path).get_episode(2, keys=["state"])  # the same chunk: not hashed again
    assert fed["n"] == 1
    appender = ReplayBuffer.open(path, mode="a")
    appender.add_episode(make_episode(9, 4))  # hashes the new rows as they are written
    fed["n"] = 0
    ReplayBuffer.open(path).get_episode(0, keys=["state"])  # chunk 0 holds more rows now: checked again
    assert fed["n"] == 1


def test_appends_after_reopening_keep_every_checksum_valid(tmp_path):
    path = tmp_path / "b.zarr"
    eps = _store(path)
    for i in range(3):
        buf = ReplayBuffer.open(path, mode="a")
        eps.append(make_episode(10 + i, 3 + i))
        buf.add_episode(eps[-1])
    again = ReplayBuffer.open(path)
    again.verify()
    for i, ep in enumerate(eps):
        assert_episode_equal(again.get_episode(i), ep)


def test_convert_gives_a_store_without_checksums_a_checked_copy(tmp_path, capsys):
    path = tmp_path / "v2.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    ep = make_episode(0, 12, image=False)
    for key, value in ep.items():
        root.create_array(f"data/{key}", data=value, chunks=(4, *value.shape[1:]))
    root.create_array("meta/episode_ends", data=np.array([6, 12], dtype=np.int64))
    assert main(["data", "info", str(path)]) == 0
    assert "no checksums" in capsys.readouterr().out
    assert main(["data", "convert", str(path), str(tmp_path / "v3.zarr")]) == 0
    out = ReplayBuffer.open(tmp_path / "v3.zarr")
    assert out.checksums == "crc32"
    out.verify()
    zarr.open_array(tmp_path / "v3.zarr" / "data" / "action", mode="r+")[11] = 1.0
    with pytest.raises(CorruptStoreError, match=r"data/action: chunk 0 .* does not match"):
        ReplayBuffer.open(tmp_path / "v3.zarr").verify()


def test_the_published_pusht_store_opens_and_is_reported_without_checksums(pusht_zarr, capsys):
    buf = ReplayBuffer.open(pusht_zarr)
    assert buf.checksums is None
    assert main(["data", "info", str(pusht_zarr)]) == 0
    assert "no checksums" in capsys.readouterr().out


def test_corrupt_store_error_is_a_replay_buffer_error_and_a_value_error():
    assert issubclass(CorruptStoreError, ReplayBufferError) and issubclass(ReplayBufferError, ValueError)
