"""The observation window every rollout loop builds: first frame repeated, oldest first, per-row restarts, and
arrays that never change under a reader."""

from __future__ import annotations

import numpy as np
import pytest

from rtdp.obs_window import ObsWindow


def test_a_single_frame_window_repeats_the_first_frame_and_keeps_the_oldest_first():
    w = ObsWindow(3, batched=False)
    w.start({"s": np.array([0.0])})
    assert w.window()["s"].shape == (1, 3, 1) and w.window()["s"].ravel().tolist() == [0, 0, 0]
    for v in (1.0, 2.0, 3.0):
        w.push({"s": np.array([v])})
    assert w.window()["s"].ravel().tolist() == [1, 2, 3]
    assert w.latest["s"].tolist() == [3.0]


def test_the_window_copies_read_only_views_it_is_given():
    buf = np.arange(4.0)
    buf.flags.writeable = False
    w = ObsWindow(1, batched=False)
    w.start({"s": buf})
    assert w.latest["s"].flags.writeable and not np.shares_memory(w.latest["s"], buf)


def test_a_window_handed_out_never_changes_when_later_frames_arrive():
    w = ObsWindow(2)
    w.start({"s": np.zeros((2, 1))})
    before = w.window()
    w.push({"s": np.ones((2, 1))}, rows=np.array([True, False]))
    assert before["s"].sum() == 0 and w.window()["s"][:, -1, 0].tolist() == [1.0, 0.0]


def test_rows_restart_and_advance_independently():
    w = ObsWindow(2)
    w.start({"s": np.array([[0.0], [10.0]])})
    w.push({"s": np.array([[1.0], [11.0]])})
    w.start({"s": np.array([[5.0], [99.0]])}, rows=np.array([False, True]))
    assert w.window()["s"][:, :, 0].tolist() == [[0.0, 1.0], [99.0, 99.0]]


def test_a_non_dict_observation_gets_the_key_obs_and_push_before_start_is_refused():
    w = ObsWindow(2, batched=False)
    with pytest.raises(RuntimeError, match="before start"):
        w.push({"s": np.zeros(1)})
    w.start(np.array([1.0, 2.0]))
    assert list(w.window()) == ["obs"] and w.window()["obs"].shape == (1, 2, 2)
