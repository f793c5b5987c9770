"""LeRobot interop via LeRobotDataset (v3.0): export, import, key renaming, round trips, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from rtdp.cli.main import main
from rtdp.datasets import ReplayBuffer


def _smooth_episode(seed: int, length: int, size: int = 64) -> dict[str, np.ndarray]:
    """Low-dim arrays plus frames a video codec keeps well (smooth) that differ a lot from step to step."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.empty((length, size, size, 3), np.uint8)
    for t in range(length):
        phase = rng.uniform(0, 2 * np.pi, 3)
        for c in range(3):
            img[t, :, :, c] = 128 + 90 * np.sin(2 * np.pi * (xx + yy * (c + 1) / 3) + phase[c])
    return {"img": img, "state": rng.normal(size=(length, 5)).astype(np.float32),
            "keypoint": rng.normal(size=(length, 9, 2)).astype(np.float32),
            "n_contacts": rng.integers(0, 3, size=(length, 1)).astype(np.float32),
            "action": rng.uniform(0, 512, size=(length, 2)).astype(np.float32)}


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("lr") / "small.zarr"
    buf = ReplayBuffer.create(path)
    for i, n in enumerate([12, 20, 9]):
        buf.add_episode(_smooth_episode(i, n))
    return path


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def test_export_writes_a_lerobot_v3_dataset_with_lerobot_key_names(small_store, tmp_path, capsys):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    out = tmp_path / "lr"
    assert main(["data", "export-lerobot", str(small_store), str(out), "--fps", "10", "--task", "push"]) == 0
    ds = LeRobotDataset("local/lr", root=out, video_backend="pyav")
    assert ds.meta.info["codebase_version"] == "v3.0" and ds.fps == 10
    assert ds.num_episodes == 3 and ds.num_frames == 41
    assert {"observation.state", "observation.images.img", "observation.keypoint", "action"} <= set(ds.features)
    assert ds.features["observation.images.img"]["dtype"] == "video"
    item = ds[13]  # second episode, frame 1
    np.testing.assert_array_equal(item["action"].numpy(), ReplayBuffer.open(small_store)["action"][13])
    assert item["task"] == "push" and item["observation.images.img"].shape == (3, 64, 64)


def test_round_trip_through_video_is_exact_for_lowdim_and_close_for_images(small_store, tmp_path, capsys):
    lr, back = tmp_path / "lr", tmp_path / "back.zarr"
    assert main(["data", "export-lerobot", str(small_store), str(lr), "--fps", "10"]) == 0
    assert main(["data", "import-lerobot", str(lr), str(back)]) == 0
    src, out = ReplayBuffer.open(small_store), ReplayBuffer.open(back)
    np.testing.assert_array_equal(out.episode_ends, src.episode_ends)
    assert sorted(out.keys()) == sorted(src.keys())
    for key in ("state", "keypoint", "n_contacts", "action"):
        assert out.dtype(key) == src.dtype(key)
        np.testing.assert_array_equal(out[key][:], src[key][:])
    a, b = src["img"][:], out["img"][:]
    assert b.dtype == np.uint8 and _psnr(a, b) > 30
    assert _psnr(a[1:], b[:-1]) < _psnr(a, b) - 10  # frames line up with their steps (no off-by-one)


def test_round_trip_through_png_images_is_exact(small_store, tmp_path, capsys):
    lr, back = tmp_path / "lr", tmp_path / "back.zarr"
    assert main(["data", "export-lerobot", str(small_store), str(lr), "--fps", "10", "--images", "image"]) == 0
    assert main(["data", "import-lerobot", str(lr), str(back)]) == 0
    src, out = ReplayBuffer.open(small_store), ReplayBuffer.open(back)
    for key in src.keys():  # noqa: SIM118 (ReplayBuffer is not a dict)
        np.testing.assert_array_equal(out[key][:], src[key][:], err_msg=key)


def test_renames_apply_in_both_directions(small_store, tmp_path, capsys):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    lr, back = tmp_path / "lr", tmp_path / "back.zarr"
    assert main(["data", "export-lerobot", str(small_store), str(lr), "--fps", "5", "--keys", "state,action,img",
                 "--rename", "state=observation.joints", "--images", "image", "--episodes", "1:3"]) == 0
    ds = LeRobotDataset("local/lr", root=lr)
    assert "observation.joints" in ds.features and "observation.state" not in ds.features
    assert ds.num_episodes == 2
    assert main(["data", "import-lerobot", str(lr), str(back), "--rename", "observation.joints=state"]) == 0
    out, src = ReplayBuffer.open(back), ReplayBuffer.open(small_store)
    assert sorted(out.keys()) == ["action", "img", "state"]
    np.testing.assert_array_equal(out.get_episode(0)["state"], src.get_episode(1)["state"])


def test_pusht_episodes_round_trip(pusht_zarr, tmp_path, capsys):
    lr, back = tmp_path / "lr", tmp_path / "back.zarr"
    assert main(["data", "export-lerobot", str(pusht_zarr), str(lr), "--fps", "10", "--episodes", "0:2"]) == 0
    assert main(["data", "import-lerobot", str(lr), str(back)]) == 0
    src, out = ReplayBuffer.open(pusht_zarr), ReplayBuffer.open(back)
    assert out.n_episodes == 2
    for i in range(2):
        a, b = src.get_episode(i), out.get_episode(i)
        for key in ("state", "keypoint", "n_contacts", "action"):
            np.testing.assert_array_equal(b[key], a[key])
        assert _psnr(a["img"], b["img"]) > 30  # PushT stores float 0..255, imported as uint8


@pytest.mark.parametrize("case", ["missing", "not_lerobot", "exists"])
def test_bad_paths_are_one_line_errors_and_write_nothing(small_store, tmp_path, capsys, case):
    if case == "missing":
        args = ["import-lerobot", str(tmp_path / "nope"), str(tmp_path / "out.zarr")]
    elif case == "not_lerobot":
        (tmp_path / "plain").mkdir()
        args = ["import-lerobot", str(tmp_path / "plain"), str(tmp_path / "out.zarr")]
    else:
        (tmp_path / "out").mkdir()
        args = ["export-lerobot", str(small_store), str(tmp_path / "out"), "--fps", "10"]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["data", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rtdp data: error:") and "\n" not in err and str(tmp_path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
