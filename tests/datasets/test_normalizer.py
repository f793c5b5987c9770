"""Normalizer: minmax to [-1, 1], mean/std, identity; constant dimensions; numpy/torch; safetensors round trip."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rtdp.normalizer import Normalizer


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 7, size=(500, 3)).astype(np.float32)
    x[:, 1] = 2.5  # a constant dimension
    return x


def test_minmax_maps_range_to_minus_one_one_and_inverts():
    x = _data()
    norm = Normalizer.fit({"action": x}, {"action": "minmax"})
    y = norm.normalize("action", x)
    np.testing.assert_allclose(y[:, [0, 2]].min(0), -1, atol=1e-6)
    np.testing.assert_allclose(y[:, [0, 2]].max(0), 1, atol=1e-6)
    np.testing.assert_allclose(norm.unnormalize("action", y), x, atol=1e-5)


@pytest.mark.parametrize("mode", ["minmax", "meanstd"])
def test_constant_dimensions_map_to_zero_without_division_by_zero(mode):
    x = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a divide-by-zero RuntimeWarning would fail here
        norm = Normalizer.fit({"k": x}, {"k": mode})
        y = norm.normalize("k", x)
    np.testing.assert_array_equal(y[:, 1], 0)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(norm.unnormalize("k", y)[:, 1], 2.5)


def test_meanstd_gives_zero_mean_unit_std():
    x = _data()
    y = Normalizer.fit({"k": x}, {"k": "meanstd"}).normalize("k", x)
    np.testing.assert_allclose(y[:, [0, 2]].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y[:, [0, 2]].std(0), 1, atol=1e-4)


def test_stats_are_per_dimension_of_the_frame_shape():
    kp = np.random.default_rng(1).normal(size=(100, 9, 2)).astype(np.float32) * np.arange(1, 19).reshape(9, 2)
    norm = Normalizer.fit({"keypoint": kp})
    assert norm.stats("keypoint")["min"].shape == (9, 2)
    y = norm.normalize("keypoint", kp)
    np.testing.assert_allclose(y.reshape(100, -1).max(0), 1, atol=1e-5)


def test_torch_in_torch_out_with_same_dtype_and_device_numpy_keeps_dtype():
    x = _data()
    norm = Normalizer.fit({"a": x})
    for dtype in (torch.float32, torch.float64):
        t = torch.as_tensor(x, dtype=dtype)
        y = norm.normalize("a", t)
        assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.device == t.device
        torch.testing.assert_close(norm.unnormalize("a", y), t, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(y.numpy(), norm.normalize("a", x), atol=1e-5)
    assert norm.normalize("a", x).dtype == np.float32
    assert norm.normalize("a", x.astype(np.float64)).dtype == np.float64


def test_identity_leaves_values_alone():
    img = np.random.default_rng(0).uniform(size=(4, 3, 8, 8)).astype(np.float32)
    norm = Normalizer.fit({"image": img}, {"image": "identity"})
    np.testing.assert_array_equal(norm.normalize("image", img), img)
    assert norm.mode("image") == "identity"


def test_state_dict_round_trips_through_safetensors(tmp_path):
    x = _data()
    norm = Normalizer.fit({"observation.state": x, "action": x[:, :2], "image": x}, {
        "observation.state": "meanstd", "action": "minmax", "image": "identity"})
    state = norm.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    save_file(state, tmp_path / "norm.safetensors")
    back = Normalizer.from_state_dict(load_file(tmp_path / "norm.safetensors"))
    assert sorted(back.keys()) == sorted(norm.keys())
    for key in norm.keys():  # noqa: SIM118 (Normalizer is not a dict)
        assert back.mode(key) == norm.mode(key)
        np.testing.assert_array_equal(back.normalize(key, x[:, :2] if key == "action" else x),
                                      norm.normalize(key, x[:, :2] if key == "action" else x))


def test_unknown_key_and_mode_are_clear_errors():
    norm = Normalizer.fit({"a": _data()})
    with pytest.raises(KeyError, match="no key 'b'"):
        norm.normalize("b", np.zeros(3))
    with pytest.raises(ValueError, match="mode must be one of"):
        Normalizer.fit({"a": _data()}, {"a": "zscore"})


def test_scaling_dimensions_multiplies_their_normalised_values_and_still_inverts():
    x = np.stack([np.linspace(-1, 1, 50), np.where(np.arange(50) % 2, 1.0, -1.0)], axis=1).astype(np.float32)
    norm = Normalizer.fit({"action": x})
    norm.scale_dims("action", [1], 0.1)
    y = norm.normalize("action", x)
    assert np.allclose(y[:, 0], x[:, 0]) and np.allclose(np.unique(y[:, 1]), [-0.1, 0.1])
    assert np.allclose(norm.unnormalize("action", y), x, atol=1e-6)
    assert np.allclose(Normalizer.from_state_dict(norm.state_dict()).normalize("action", x), y)  # saved with it
    with pytest.raises(ValueError, match=r"dimension\(s\) \[2\] out of range"):
        norm.scale_dims("action", [2], 0.1)
    with pytest.raises(ValueError, match="must be > 0"):
        norm.scale_dims("action", [1], 0.0)
