"""SequenceDataset on the PushT human data and generated data: shapes, alignment, padding, images, split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rtdp_data_factory import make_episode

from rtdp.datasets import ReplayBuffer, SequenceDataset

KEYPOINT_OBS = {"keypoint": {"source": "keypoint"}, "agent_pos": {"source": "state", "columns": [0, 2]}}
IMAGE_OBS = {"image": {"source": "img"}, "agent_pos": {"source": "state", "columns": [0, 2]}}


@pytest.fixture(scope="module")
def pusht_lowdim(pusht_zarr):
    return ReplayBuffer.copy_to_memory(pusht_zarr, keys=["keypoint", "state", "action"])


@pytest.fixture(scope="module")
def keypoint_ds(pusht_lowdim):
    ds = SequenceDataset(pusht_lowdim, KEYPOINT_OBS, {"source": "action"}, horizon=16, n_obs_steps=2,
                         n_action_steps=8, val_ratio=0.05, seed=3)
    ds.normalizer = ds.get_normalizer()
    return ds


def test_pusht_keypoint_samples_have_the_contract_shapes_and_range(keypoint_ds):
    s = keypoint_ds[123]
    assert set(s) == {"obs", "action"}
    assert s["obs"]["keypoint"].shape == (2, 9, 2) and s["obs"]["agent_pos"].shape == (2, 2)
    assert s["action"].shape == (16, 2)
    assert all(t.dtype == torch.float32 for t in (*s["obs"].values(), s["action"]))
    batch = keypoint_ds.sample_batch(np.arange(len(keypoint_ds)))
    assert batch["action"].min() >= -1 - 1e-6 and batch["action"].max() <= 1 + 1e-6
    assert batch["action"].min() < -0.99 and batch["action"].max() > 0.99  # the fit saw these episodes


def test_windows_align_observations_with_actions_and_pad_at_episode_start(keypoint_ds, pusht_lowdim):
    norm = keypoint_ds.normalizer
    raw_state, raw_action = pusht_lowdim["state"], pusht_lowdim["action"]
    first_ep = int(np.flatnonzero(keypoint_ds.episode_mask)[0])
    start = int(pusht_lowdim.episode_ends[first_ep - 1]) if first_ep else 0
    s = keypoint_ds[0]  # first window of the first training episode: To-1 = 1 padded obs frame
    pos = norm.unnormalize("agent_pos", s["obs"]["agent_pos"]).numpy()
    np.testing.assert_allclose(pos, raw_state[[start, start], :2], atol=1e-3)
    act = norm.unnormalize("action", s["action"]).numpy()
    np.testing.assert_allclose(act, raw_action[[start] + list(range(start, start + 15))], atol=1e-3)
    s = keypoint_ds[5]  # inside the episode: obs frames t-1, t; action frames t-1 .. t+14
    t = start + 5 + 1 - 1
    np.testing.assert_allclose(norm.unnormalize("agent_pos", s["obs"]["agent_pos"]).numpy(),
                               raw_state[t - 1 + 1 - 1:t + 1, :2][-2:], atol=1e-3)
    np.testing.assert_allclose(norm.unnormalize("action", s["action"]).numpy(), raw_action[t - 1:t + 15],
                               atol=1e-3)


def test_is_pad_marks_repeated_frames_when_asked(pusht_lowdim):
    ds = SequenceDataset(pusht_lowdim, KEYPOINT_OBS, {"source": "action"}, return_is_pad=True)
    first, last = ds[0], ds[len(ds) - 1]
    assert first["is_pad"]["agent_pos"].tolist() == [True, False]
    assert last["is_pad"]["action"].tolist() == [False] * 9 + [True] * 7


def test_validation_dataset_holds_the_other_episodes(keypoint_ds, pusht_lowdim):
    val = keypoint_ds.get_validation_dataset()
    assert not np.any(val.episode_mask & keypoint_ds.episode_mask)
    assert val.episode_mask.sum() == round(0.05 * 206)
    assert val.normalizer is keypoint_ds.normalizer and len(val) > 0
    again = SequenceDataset(pusht_lowdim, KEYPOINT_OBS, {"source": "action"}, val_ratio=0.05, seed=3)
    np.testing.assert_array_equal(again.episode_mask, keypoint_ds.episode_mask)


def test_getitems_with_default_collate_equals_sample_batch(keypoint_ds):
    loader = torch.utils.data.DataLoader(keypoint_ds, batch_size=32, shuffle=False)
    batch = next(iter(loader))
    direct = keypoint_ds.sample_batch(np.arange(32))
    torch.testing.assert_close(batch["action"], direct["action"])
    torch.testing.assert_close(batch["obs"]["keypoint"], direct["obs"]["keypoint"])
    whole = keypoint_ds[np.arange(32)]  # list/array index → batch (BatchSampler with batch_size=None)
    torch.testing.assert_close(whole["obs"]["agent_pos"], direct["obs"]["agent_pos"])


def test_pusht_images_come_out_chw_in_unit_range_from_float_zarr_and_uint8_memory(pusht_zarr):
    on_disk = SequenceDataset(pusht_zarr, IMAGE_OBS, {"source": "action"})
    assert on_disk.fields[0].image and on_disk.fields[0].scale == 255.0  # float 0..255 store, explicit /255
    idx = [0, 500, 9000]
    disk_batch = on_disk.sample_batch(idx)
    img = disk_batch["obs"]["image"]
    assert img.shape == (3, 2, 3, 96, 96) and img.dtype == torch.float32
    assert 0 <= img.min() and img.max() <= 1 and img.max() > 0.5
    # the same windows from a uint8 in-memory copy of the first episodes
    last_step = int(on_disk.sampler.indices[max(idx), 1])
    n_ep = int(np.searchsorted(on_disk.buffer.episode_ends, last_step)) + 1
    mem = ReplayBuffer.in_memory()
    for i in range(n_ep):
        ep = on_disk.buffer.get_episode(i, keys=["img", "state", "action"])
        ep["img"] = ep["img"].astype(np.uint8)
        mem.add_episode(ep)
    in_mem = SequenceDataset(mem, IMAGE_OBS, {"source": "action"})
    torch.testing.assert_close(in_mem.sample_batch(idx)["obs"]["image"], img)


def test_float_images_in_unit_range_are_not_rescaled_and_scale_can_be_explicit():
    buf = ReplayBuffer.in_memory()
    ep = make_episode(0, 20)
    buf.add_episode({"img": ep["img"] / 255.0, "action": ep["action"]})
    ds = SequenceDataset(buf, {"image": {"source": "img"}}, {"source": "action"}, horizon=4, n_obs_steps=2,
                         n_action_steps=2)
    assert ds.fields[0].scale == 1.0
    explicit = SequenceDataset(buf, {"image": {"source": "img", "scale": 0.5}}, {"source": "action"}, horizon=4,
                               n_obs_steps=2, n_action_steps=2)
    torch.testing.assert_close(explicit[3]["obs"]["image"], ds[3]["obs"]["image"] * 2)


def test_bad_specs_are_clear_errors(pusht_lowdim):
    from rtdp.datasets import ReplayBufferError
    with pytest.raises(ReplayBufferError, match="no key 'nope'"):
        SequenceDataset(pusht_lowdim, {"x": {"source": "nope"}}, {"source": "action"})
    with pytest.raises(ValueError, match="columns"):
        SequenceDataset(pusht_lowdim, {"x": {"source": "state", "columns": [3, 9]}}, {"source": "action"})
    with pytest.raises(ValueError, match="source"):
        SequenceDataset(pusht_lowdim, {"x": {"key": "state"}}, {"source": "action"})


def test_dataloader_with_workers_yields_normalised_batches(keypoint_ds):
    loader = torch.utils.data.DataLoader(keypoint_ds, batch_size=64, shuffle=True, num_workers=1,
                                         generator=torch.Generator().manual_seed(0))
    batches = [b for _, b in zip(range(3), loader)]
    assert all(b["action"].shape == (64, 16, 2) for b in batches)
    assert all(b["action"].abs().max() <= 1 + 1e-6 for b in batches)
