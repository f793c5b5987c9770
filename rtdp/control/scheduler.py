"""Timestamped action scheduling: chunks are laid onto the control tick grid, newest chunk wins, and an
action whose tick has passed is dropped, never executed late."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from rtdp.types import ActionChunk


@dataclass
class ScheduledAction:
    """One action bound to the control tick it must be executed in."""

    action: np.ndarray
    tick: int
    chunk_id: int
    index: int  # index of the action inside its chunk


class ActionScheduler:
    """Actions keyed by control tick; tick k may be executed only inside its slot [due(k), due(k+1))."""

    def __init__(self, period_ns: int):
        self.period_ns = int(period_ns)
        self._queue: dict[int, ScheduledAction] = {}
        self.counts: Counter[str] = Counter()

    def clear(self) -> None:
        self._queue.clear()

    def merge(self, chunk: ActionChunk, obs_tick: int, now_tick: int, chunk_id: int,
              executable_only: bool = False, batch_index: int = 0) -> int:
        """Lay `chunk` (computed from the observation of tick `obs_tick`) onto the grid; returns how many of
        its actions are still in the future.

        Action `start + i` targets `obs time + i * dt`; tick j executes the action whose interval
        [target, target + dt) contains tick j's time, so a chunk at another rate than the loop is held or
        subsampled. Ticks before `now_tick` have passed: their actions are dropped on arrival. A tick that
        already holds an action from an older chunk takes the newer one.
        """
        actions = np.asarray(chunk.actions)[batch_index]
        stop = chunk.start + chunk.n_exec if executable_only else actions.shape[0]
        stop = min(stop, actions.shape[0])
        if stop <= chunk.start:
            return 0
        dt_ns = max(chunk.dt, 1e-9) * 1e9
        span_ticks = math.ceil((stop - chunk.start) * dt_ns / self.period_ns - 1e-9)
        scheduled = 0
        for j in range(obs_tick, obs_tick + span_ticks):
            i = chunk.start + math.floor((j - obs_tick) * self.period_ns / dt_ns + 1e-9)
            if i >= stop:
                break
            if j < now_tick:
                self.counts["dropped_on_arrival"] += 1
                continue
            if j in self._queue:
                self.counts["replaced"] += 1
            self._queue[j] = ScheduledAction(actions[i], j, chunk_id, i)
            scheduled += 1
        self.counts["scheduled"] += scheduled
        return scheduled

    def take(self, tick: int, now_ns: int, due_ns: int) -> ScheduledAction | None:
        """The action for `tick` if it is still inside its slot; every action for an earlier tick is dropped."""
        for j in [j for j in self._queue if j < tick]:
            del self._queue[j]
            self.counts["dropped_late"] += 1
        entry = self._queue.pop(tick, None)
        if entry is not None and now_ns >= due_ns + self.period_ns:
            self.counts["dropped_late"] += 1  # its slot is over: executing it now would be late
            return None
        return entry

    def remaining(self, from_tick: int) -> int:
        """How many actions are scheduled at or after `from_tick`."""
        return sum(1 for j in self._queue if j >= from_tick)
