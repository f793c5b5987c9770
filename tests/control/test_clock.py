"""The rate clock's arithmetic and wait."""

from __future__ import annotations

import time

from rtdp.control.clock import RateClock, wait_until


def test_wait_until_never_returns_early():
    for delay_ns in (0, 200_000, 3_000_000):
        deadline = time.perf_counter_ns() + delay_ns
        assert wait_until(deadline) >= deadline


def test_rate_clock_ticks_and_slots():
    c = RateClock(100.0)
    c.start(1_000)
    assert c.period_ns == 10_000_000 and c.due(3) == 30_001_000
    assert c.tick_at(c.due(3)) == 3 and c.tick_at(c.due(4) - 1) == 3
