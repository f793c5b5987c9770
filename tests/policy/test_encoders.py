"""Observation encoders: low-dim MLP, ResNet-18 (GroupNorm, spatial softmax) per camera, random crops."""

from __future__ import annotations

import pytest
import torch

from rtdp.policy.encoders import ObservationEncoder, ResNet18Encoder, random_crop


def test_lowdim_keys_are_concatenated_per_frame_without_hidden_layers():
    enc = ObservationEncoder({"b": (2,), "a": (3, 2)})
    obs = {"a": torch.randn(4, 2, 3, 2), "b": torch.randn(4, 2, 2)}
    out = enc(obs)
    assert out.shape == (4, 2, 8) and enc.out_dim == 8
    torch.testing.assert_close(out, torch.cat([obs["a"].reshape(4, 2, 6), obs["b"]], dim=-1))


def test_mlp_maps_lowdim_to_its_output_width():
    enc = ObservationEncoder({"state": (5,)}, mlp_hidden_dims=[32], mlp_out_dim=16)
    assert enc({"state": torch.randn(3, 2, 5)}).shape == (3, 2, 16)


def test_resnet_uses_groupnorm_and_no_batchnorm():
    enc = ResNet18Encoder((3, 32, 32))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in enc.modules()) >= 17


def test_two_cameras_and_lowdim_make_one_feature_per_frame():
    enc = ObservationEncoder({"front": (3, 40, 40), "wrist": (3, 40, 40), "pos": (2,)}, crop_shape=(36, 36),
                             image_feature_dim=16)
    assert set(enc.cameras) == {"front", "wrist"} and enc.out_dim == 2 + 2 * 16
    obs = {"front": torch.rand(2, 2, 3, 40, 40), "wrist": torch.rand(2, 2, 3, 40, 40), "pos": torch.randn(2, 2, 2)}
    assert enc(obs).shape == (2, 2, 34)


def test_training_crops_randomly_and_evaluation_crops_the_centre():
    enc = ResNet18Encoder((3, 24, 24), crop_shape=(20, 20), out_dim=8)
    seen: list[torch.Tensor] = []
    enc.trunk.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    img = torch.rand(6, 3, 24, 24)
    with torch.no_grad():
        enc.eval()
        enc(img)
        enc(img)
        enc.train()
        enc(img)
        enc(img)
    assert all(s.shape == (6, 3, 20, 20) for s in seen)
    assert torch.equal(seen[0], img[:, :, 2:22, 2:22]) and torch.equal(seen[0], seen[1])
    assert not torch.equal(seen[2], seen[3])


def test_random_crop_takes_independent_windows_of_each_image():
    img = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    g = torch.Generator().manual_seed(3)
    crops = random_crop(img, 4, 4, generator=g)
    assert crops.shape == (2, 1, 4, 4)
    for i in range(2):  # every crop is a contiguous window of its own image
        top, left = divmod(int(crops[i, 0, 0, 0] - img[i, 0, 0, 0]), 6)
        assert torch.equal(crops[i], img[i, :, top : top + 4, left : left + 4])


def test_missing_observation_key_is_named():
    enc = ObservationEncoder({"state": (5,), "pos": (2,)})
    with pytest.raises(KeyError, match="missing keys \\['pos'\\]"):
        enc({"state": torch.randn(1, 2, 5)})
