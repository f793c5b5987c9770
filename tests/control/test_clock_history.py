"""The rate clock's arithmetic and wait, and the observation window the agent sees."""

from __future__ import annotations

import time

import numpy as np

from rtdp.control.clock import RateClock, wait_until
from rtdp.control.history import ObsHistory


def test_wait_until_never_returns_early():
    for delay_ns in (0, 200_000, 3_000_000):
        deadline = time.perf_counter_ns() + delay_ns
        assert wait_until(deadline) >= deadline


def test_rate_clock_ticks_and_slots():
    c = RateClock(100.0)
    c.start(1_000)
    assert c.period_ns == 10_000_000 and c.due(3) == 30_001_000
    assert c.tick_at(c.due(3)) == 3 and c.tick_at(c.due(4) - 1) == 3


def test_history_repeats_first_frame_and_keeps_oldest_first():
    h = ObsHistory(3)
    h.reset({"s": np.array([0.0])})
    assert h.window()["s"].shape == (1, 3, 1) and h.window()["s"].ravel().tolist() == [0, 0, 0]
    h.push({"s": np.array([1.0])})
    h.push({"s": np.array([2.0])})
    h.push({"s": np.array([3.0])})
    assert h.window()["s"].ravel().tolist() == [1, 2, 3]


def test_history_copies_read_only_views():
    buf = np.arange(4.0)
    buf.flags.writeable = False
    h = ObsHistory(1)
    h.reset({"s": buf})
    assert h.latest["s"].flags.writeable and not np.shares_memory(h.latest["s"], buf)
