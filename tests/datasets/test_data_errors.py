"""Damaged metadata, truncated chunks and unwritable outputs are one-line errors, never tracebacks."""

from __future__ import annotations

import pytest
from rtdp_data_factory import make_episode

from rtdp.cli.main import main
from rtdp.datasets import ReplayBuffer, ReplayBufferError


def _store(path):
    buf = ReplayBuffer.create(path)
    for i, n in enumerate([5, 9, 7]):
        buf.add_episode(make_episode(i, n))
    return buf


def _one_line(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rtdp data: error:") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("node", ["meta/episode_ends", "data/state", "data/img", "meta"])
def test_garbage_zarr_json_is_one_line_naming_the_file(tmp_path, capsys, node):
    path = tmp_path / "b.zarr"
    _store(path)
    (path / node / "zarr.json").write_text('{"zarr_format": 3, "node_type": ')
    with pytest.raises(ReplayBufferError, match=f"{node}/zarr.json is not valid zarr metadata"):
        ReplayBuffer.open(path)
    for cmd in (["info", str(path)], ["stats", str(path)], ["convert", str(path), str(tmp_path / "c.zarr")]):
        assert main(["data", *cmd]) == 2
        _one_line(capsys, f"{node}/zarr.json", str(path))
    assert not (tmp_path / "c.zarr").exists()


def test_a_truncated_state_chunk_fails_plain_info(tmp_path, capsys):
    path = tmp_path / "b.zarr"
    _store(path)
    chunk = path / "data" / "state" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:40])
    assert main(["data", "info", str(path)]) == 2
    _one_line(capsys, "data/state", "chunk 0")


def test_create_in_an_unwritable_directory_is_a_replay_buffer_error(tmp_path, unwritable_dir):
    ro = unwritable_dir
    if ro is None:
        pytest.skip("no unwritable directory on this machine")
    target = ro / f"new-{tmp_path.name}.zarr"
    with pytest.raises(ReplayBufferError, match="cannot create the store") as err:
        ReplayBuffer.create(target)
    assert isinstance(err.value, ValueError) and str(target) in str(err.value)
    assert not target.exists()


@pytest.mark.parametrize("cmd", ["convert", "export-lerobot"])
def test_an_unwritable_output_is_refused_before_any_work(tmp_path, capsys, cmd, unwritable_dir):
    src = tmp_path / "b.zarr"
    _store(src)
    ro = unwritable_dir
    if ro is None:
        pytest.skip("no unwritable directory on this machine")
    target = ro / f"out-{tmp_path.name}"
    extra = ["--fps", "10"] if cmd == "export-lerobot" else []
    assert main(["data", cmd, str(src), str(target), *extra]) == 2
    _one_line(capsys, "cannot write in", str(target))
    assert not target.exists()


@pytest.mark.parametrize("episodes", ["5:2", "3:3", "10:20", "-1:0"])
def test_export_refuses_an_episode_range_that_selects_nothing(tmp_path, capsys, episodes):
    src = tmp_path / "b.zarr"
    _store(src)
    out = tmp_path / "lr"
    assert main(["data", "export-lerobot", str(src), str(out), "--fps", "10", f"--episodes={episodes}"]) == 2
    _one_line(capsys, "selects no episodes", "has 3")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["b.zarr"]


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert main(["data", "export-lerobot", str(tmp_path), str(tmp_path / "o"), "--fps", "abc"]) == 2
    _one_line(capsys, "--fps")
