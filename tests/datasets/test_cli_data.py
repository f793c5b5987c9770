"""`rtdp data info|stats|convert`: summaries of real data, and one-line errors (exit 2, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from rtdp_data_factory import make_episode

from rtdp.cli.main import main
from rtdp.datasets import ReplayBuffer


def _store(path, image_dtype=np.uint8):
    buf = ReplayBuffer.create(path)
    for i, n in enumerate([5, 9, 7]):
        ep = make_episode(i, n)
        ep["img"] = ep["img"].astype(image_dtype)
        buf.add_episode(ep)
    return buf


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rtdp data: error:"), err
    for needle in needles:
        assert needle in err, err
    return err


def test_info_summarises_pusht(pusht_zarr, capsys, tmp_path):
    assert main(["data", "info", str(pusht_zarr), "--json", str(tmp_path / "info.json")]) == 0
    out = capsys.readouterr().out
    assert "206 episodes, 25650 steps" in out and "(25650, 96, 96, 3)" in out and "float32" in out
    assert "min 49, mean 124.5, max 246" in out
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["schema"] == "rtdp.metrics/1" and info["kind"] == "data.info"
    assert info["episodes"] == 206 and info["keys"]["keypoint"]["shape"] == [25650, 9, 2]
    assert sum(info["episode_length"]["histogram"]["counts"]) == 206


def test_info_verify_and_stats_on_a_small_store(tmp_path, capsys):
    _store(tmp_path / "b.zarr")
    assert main(["data", "info", str(tmp_path / "b.zarr"), "--verify"]) == 0
    assert "every chunk decodes" in capsys.readouterr().out
    assert main(["data", "stats", str(tmp_path / "b.zarr"), "--json", str(tmp_path / "s.json")]) == 0
    stats = json.loads((tmp_path / "s.json").read_text())["keys"]
    buf = ReplayBuffer.open(tmp_path / "b.zarr")
    np.testing.assert_allclose(stats["state"]["mean"], buf["state"][:].mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["state"]["std"], buf["state"][:].std(0), rtol=1e-4)
    assert stats["img"]["per"] == "channel" and len(stats["img"]["max"]) == 3


@pytest.mark.parametrize("cmd,case", [(cmd, case) for cmd in ("info", "stats")
                                      for case in ("missing", "not_a_buffer", "inconsistent", "corrupt_chunk")]
                         + [("stats", "missing_key")])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, cmd, case):
    path = tmp_path / "b.zarr"
    needle = str(path)
    extra = []
    if case == "not_a_buffer":
        path.mkdir()
        (path / "readme.txt").write_text("not zarr")
    elif case != "missing":
        _store(path)
    if case == "inconsistent":
        zarr.open_array(path / "data" / "action", mode="r+").resize((10, 2))
        needle = "episode 1"
    elif case == "missing_key":
        extra = ["--keys", "nope"]
        needle = "no key 'nope'"
    elif case == "corrupt_chunk":
        (path / "data" / "state" / "c" / "0" / "0").write_bytes(b"\x00garbage")
        extra = ["--verify"] if cmd == "info" else []
        needle = "data/state"
    out_json = tmp_path / "out.json"
    assert main(["data", cmd, str(path), *extra, "--json", str(out_json)]) == 2
    _one_line_error(capsys, needle, str(path))
    assert not out_json.exists()


def test_convert_pusht_lowdim_to_v3_keeps_arrays(pusht_zarr, tmp_path, capsys):
    dst = tmp_path / "pusht_v3.zarr"
    assert main(["data", "convert", str(pusht_zarr), str(dst), "--keys", "action,state,keypoint"]) == 0
    src, out = ReplayBuffer.open(pusht_zarr), ReplayBuffer.open(dst)
    assert zarr.open_group(dst, mode="r").metadata.zarr_format == 3
    np.testing.assert_array_equal(out.episode_ends, src.episode_ends)
    for key in ("action", "state", "keypoint"):
        np.testing.assert_array_equal(out[key][:], src[key][:])


def test_convert_stores_exact_float_images_as_uint8(tmp_path, capsys):
    _store(tmp_path / "f.zarr", image_dtype=np.float32)
    assert main(["data", "convert", str(tmp_path / "f.zarr"), str(tmp_path / "u.zarr")]) == 0
    out, src = ReplayBuffer.open(tmp_path / "u.zarr"), ReplayBuffer.open(tmp_path / "f.zarr")
    assert out.dtype("img") == np.uint8 and out["img"].chunks == (1, 8, 8, 3)
    np.testing.assert_array_equal(out["img"][:], src["img"][:])
    assert main(["data", "convert", str(tmp_path / "f.zarr"), str(tmp_path / "k.zarr"), "--image-dtype", "keep"]) == 0
    assert ReplayBuffer.open(tmp_path / "k.zarr").dtype("img") == np.float32


def test_convert_refuses_existing_destination_and_corrupt_source_without_writing(tmp_path, capsys):
    _store(tmp_path / "a.zarr")
    _store(tmp_path / "b.zarr")
    assert main(["data", "convert", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")]) == 2
    _one_line_error(capsys, "already exists")
    (tmp_path / "a.zarr" / "data" / "img" / "c" / "7" / "0" / "0" / "0").write_bytes(b"bad")
    assert main(["data", "convert", str(tmp_path / "a.zarr"), str(tmp_path / "c.zarr")]) == 2
    _one_line_error(capsys, "data/img", "corrupt chunk")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr", "b.zarr"]  # no output, no temp dir


@pytest.mark.slow
def test_convert_whole_pusht_with_images_to_uint8_per_frame_chunks(pusht_zarr, tmp_path, capsys):
    dst = tmp_path / "pusht_v3.zarr"
    assert main(["data", "convert", str(pusht_zarr), str(dst)]) == 0
    src, out = ReplayBuffer.open(pusht_zarr), ReplayBuffer.open(dst)
    assert out.dtype("img") == np.uint8 and out["img"].chunks == (1, 96, 96, 3)
    np.testing.assert_array_equal(out.episode_ends, src.episode_ends)
    for i in (0, 100, 205):
        a, b = src.get_episode(i), out.get_episode(i)
        for key in a:
            np.testing.assert_array_equal(b[key], a[key], err_msg=key)
