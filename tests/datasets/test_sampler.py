"""SequenceSampler: numba index table, edge padding by repetition, per-key frame limits, episode split."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rtdp_data_factory import make_episode

from rtdp.datasets import ReplayBuffer, SequenceSampler, get_val_mask
from rtdp.datasets.sampler import create_indices

REPO = Path(__file__).resolve().parents[2]


def _reference_windows(lengths, horizon, pad_before, pad_after, mask):
    """Brute force: every start s in [-pad_before, L - horizon + pad_after], frame t ↦ clip(s + t, 0, L-1)."""
    out, offset = [], 0
    for ep, length in enumerate(lengths):
        if mask[ep]:
            for s in range(-pad_before, length - horizon + pad_after + 1):
                pos = np.arange(s, s + horizon)
                out.append((offset + np.clip(pos, 0, length - 1), (pos < 0) | (pos >= length)))
        offset += length
    return out


def _counting_buffer(lengths) -> ReplayBuffer:
    buf = ReplayBuffer.in_memory()
    start = 0
    for n in lengths:
        buf.add_episode({"t": np.arange(start, start + n, dtype=np.int64)[:, None]})
        start += n
    return buf


@pytest.mark.parametrize("horizon,pad_before,pad_after", [(4, 1, 2), (16, 1, 7), (1, 0, 0), (5, 4, 4), (8, 0, 0)])
def test_windows_match_a_brute_force_reference(horizon, pad_before, pad_after):
    lengths = [3, 7, 1, 12, 5]
    mask = np.array([True, True, True, False, True])
    buf = _counting_buffer(lengths)
    sampler = SequenceSampler(buf, horizon, pad_before=pad_before, pad_after=pad_after, episode_mask=mask)
    ref = _reference_windows(lengths, horizon, pad_before, pad_after, mask)
    assert len(sampler) == len(ref)
    data, is_pad = sampler.sample_batch(np.arange(len(sampler)))
    for i, (frames, pad) in enumerate(ref):
        np.testing.assert_array_equal(data["t"][i, :, 0], frames)
        np.testing.assert_array_equal(is_pad["t"][i], pad)


def test_padding_repeats_the_first_and_last_frame_of_the_episode():
    buf = _counting_buffer([6, 6])
    sampler = SequenceSampler(buf, 6, pad_before=2, pad_after=3)
    first, pad_first = sampler.sample_sequence(0)
    np.testing.assert_array_equal(first["t"][:, 0], [0, 0, 0, 1, 2, 3])
    np.testing.assert_array_equal(pad_first["t"], [True, True, False, False, False, False])
    per_episode = len(sampler) // 2
    last, pad_last = sampler.sample_sequence(2 * per_episode - 1)
    np.testing.assert_array_equal(last["t"][:, 0], [9, 10, 11, 11, 11, 11])
    np.testing.assert_array_equal(pad_last["t"], [False, False, False, True, True, True])


def test_key_first_k_loads_only_the_leading_frames():
    buf = ReplayBuffer.in_memory()
    buf.add_episode({"obs": np.arange(10.0)[:, None], "act": np.arange(10.0)[:, None]})
    sampler = SequenceSampler(buf, 8, pad_before=1, pad_after=3, key_first_k={"obs": 2})
    data, is_pad = sampler.sample_batch([0, 4])
    assert data["obs"].shape == (2, 2, 1) and data["act"].shape == (2, 8, 1)
    np.testing.assert_array_equal(data["obs"], data["act"][:, :2])
    assert is_pad["obs"].shape == (2, 2)


def test_zarr_backed_and_in_memory_windows_agree(tmp_path):
    disk = ReplayBuffer.create(tmp_path / "b.zarr")
    for i, n in enumerate([9, 4, 30]):
        disk.add_episode(make_episode(i, n))
    mem = ReplayBuffer.copy_to_memory(disk)
    a = SequenceSampler(disk, 6, pad_before=1, pad_after=2, key_first_k={"img": 2})
    b = SequenceSampler(mem, 6, pad_before=1, pad_after=2, key_first_k={"img": 2})
    idx = np.random.default_rng(0).permutation(len(a))[:20]
    (da, pa), (db, pb) = a.sample_batch(idx), b.sample_batch(idx)
    for key in da:
        np.testing.assert_array_equal(da[key], db[key])
        np.testing.assert_array_equal(pa[key], pb[key])


def test_pusht_index_table_counts_dp_windows(pusht_zarr):
    buf = ReplayBuffer.open(pusht_zarr)
    sampler = SequenceSampler(buf, 16, pad_before=1, pad_after=7, keys=["action"])
    # each episode of length L yields L - 16 + 1 + 7 + 1 windows
    assert len(sampler) == int(np.sum(buf.episode_lengths - 7))


def test_validation_split_is_by_episode_seeded_and_disjoint():
    a, b, c = get_val_mask(100, 0.1, seed=1), get_val_mask(100, 0.1, seed=1), get_val_mask(100, 0.1, seed=2)
    assert a.sum() == 10 and np.array_equal(a, b) and not np.array_equal(a, c)
    assert get_val_mask(5, 0.0).sum() == 0 and get_val_mask(1, 0.5).sum() == 0
    assert get_val_mask(3, 0.01).sum() == 1 and get_val_mask(3, 0.99).sum() == 2


def test_index_kernel_is_cached_on_disk_for_fast_start():
    create_indices(np.array([3, 5]), 2, np.ones(2, bool), 0, 0)  # make sure this version is compiled + saved
    code = ("import numpy as np; from rtdp.datasets.sampler import create_indices as f;"
            "f(np.array([3, 5]), 2, np.ones(2, bool), 0, 0); print(sum(f.stats.cache_hits.values()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert int(out.stdout.strip()) >= 1
