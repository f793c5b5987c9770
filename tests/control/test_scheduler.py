"""Timestamped action scheduling: chunks on the tick grid, newest wins, passed actions dropped, never late."""

from __future__ import annotations

import numpy as np

from rtdp.control.scheduler import ActionScheduler
from rtdp.types import ActionChunk

P = 10_000_000  # 100 Hz period in ns


def _chunk(values, start=0, n_exec=None, dt=0.01):
    a = np.asarray(values, np.float32).reshape(1, -1, 1)
    return ActionChunk(a, start=start, n_exec=n_exec or a.shape[1] - start, dt=dt, nfe=3)


def test_chunk_lands_on_ticks_from_its_observation_tick_starting_at_start():
    s = ActionScheduler(P)
    assert s.merge(_chunk([9, 0, 1, 2, 3], start=1), obs_tick=5, now_tick=5, chunk_id=1) == 4
    for k, want in zip(range(5, 9), [0, 1, 2, 3]):
        e = s.take(k, now_ns=k * P, due_ns=k * P)
        assert e.action[0] == want and e.tick == k and e.chunk_id == 1


def test_newer_chunk_replaces_overlapping_ticks_and_keeps_the_rest():
    s = ActionScheduler(P)
    s.merge(_chunk([0, 1, 2, 3, 4, 5]), obs_tick=0, now_tick=0, chunk_id=1)
    s.merge(_chunk([20, 30]), obs_tick=2, now_tick=2, chunk_id=2)
    got = [s.take(k, k * P, k * P) for k in range(6)]
    assert [e.chunk_id for e in got] == [1, 1, 2, 2, 1, 1]
    assert [e.action[0] for e in got] == [0, 1, 20, 30, 4, 5]
    assert s.counts["replaced"] == 2


def test_actions_for_passed_ticks_are_dropped_on_arrival():
    s = ActionScheduler(P)
    n = s.merge(_chunk([0, 1, 2, 3]), obs_tick=10, now_tick=12, chunk_id=1)  # arrived two ticks late
    assert n == 2 and s.counts["dropped_on_arrival"] == 2
    assert s.take(12, 12 * P, 12 * P).action[0] == 2


def test_action_is_never_executed_after_its_slot():
    s = ActionScheduler(P)
    s.merge(_chunk([0, 1, 2]), obs_tick=0, now_tick=0, chunk_id=1)
    assert s.take(0, now_ns=P - 1, due_ns=0) is not None  # last ns of its slot: still on time
    assert s.take(1, now_ns=2 * P, due_ns=P) is None  # slot over: dropped
    assert s.counts["dropped_late"] == 1
    assert s.take(2, 2 * P, 2 * P).action[0] == 2


def test_take_drops_every_earlier_unexecuted_action():
    s = ActionScheduler(P)
    s.merge(_chunk([0, 1, 2, 3]), obs_tick=0, now_tick=0, chunk_id=1)
    assert s.take(3, 3 * P, 3 * P).action[0] == 3
    assert s.counts["dropped_late"] == 3 and s.remaining(0) == 0


def test_slower_chunk_rate_is_held_and_executable_only_limits_to_n_exec():
    s = ActionScheduler(P)
    s.merge(_chunk([0, 1, 2, 3], n_exec=2, dt=0.03), obs_tick=0, now_tick=0, chunk_id=1, executable_only=True)
    got = [s.take(k, k * P, k * P) for k in range(7)]
    assert [None if e is None else float(e.action[0]) for e in got] == [0, 0, 0, 1, 1, 1, None]


def test_faster_chunk_rate_is_subsampled():
    s = ActionScheduler(P)
    s.merge(_chunk(list(range(8)), dt=0.005), obs_tick=0, now_tick=0, chunk_id=1)
    assert [float(s.take(k, k * P, k * P).action[0]) for k in range(4)] == [0, 2, 4, 6]
