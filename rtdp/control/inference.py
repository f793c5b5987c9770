"""Run an `Agent` in a worker thread so the control loop keeps executing while a new chunk is computed.

The loop stays numpy-only: torch (if the agent uses it) runs inside `agent.act`, which releases the GIL
during its kernels, so the loop thread wakes on time while the worker infers.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from rtdp.types import ActionChunk, Agent, PlanContext


@dataclass
class InferenceResult:
    """A chunk and when it was computed: from the observation of tick `obs_tick` captured at `obs_ns`."""

    chunk: ActionChunk | None
    obs_tick: int
    obs_ns: int
    submit_ns: int
    start_ns: int
    end_ns: int
    error: BaseException | None = None

    @property
    def latency_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def infer(agent: Agent, window: dict[str, np.ndarray], obs_tick: int, obs_ns: int,
          ctx: PlanContext | None = None) -> InferenceResult:
    """One timed inference on the calling thread (synchronous mode)."""
    t0 = time.perf_counter_ns()
    chunk = agent.act(window, ctx)
    return InferenceResult(chunk, obs_tick, obs_ns, t0, t0, time.perf_counter_ns())


class LatencyEstimate:
    """A robust recent estimate of inference latency: the `q`-th percentile of the last `n` inferences (the
    median until `min_samples` have been seen), never a running maximum, so one slow call (a start-up spike, a
    page fault) does not inflate the delay for the whole episode. It sets when asynchronous inference starts
    and the delay a plan is told to expect."""

    def __init__(self, n: int = 20, q: float = 95.0, min_samples: int = 5):
        self._samples: deque[float] = deque(maxlen=n)
        self.q, self.min_samples = q, min_samples

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    @property
    def seconds(self) -> float:
        if not self._samples:
            return 0.0
        q = self.q if len(self._samples) >= self.min_samples else 50.0
        return float(np.percentile(self._samples, q, method="lower"))

    def steps(self, period_ns: int) -> int:
        """The estimate in control steps of `period_ns` (rounded up)."""
        return math.ceil(self.seconds * 1e9 / period_ns - 1e-9)


class InferenceWorker:
    """One background thread, at most one inference in flight; `poll()` hands back the finished one."""

    def __init__(self, agent: Agent):
        self.agent = agent
        self._request: tuple[Any, ...] | None = None
        self._result: InferenceResult | None = None
        self._cv = threading.Condition()
        self._closed = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="rtdp-inference", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """True while a request is queued or running, or its result has not been collected."""
        return self._busy

    def submit(self, window: dict[str, np.ndarray], obs_tick: int, obs_ns: int,
               ctx: PlanContext | None = None) -> bool:
        """Start an inference unless one is in flight; returns whether it was started."""
        with self._cv:
            if self._busy or self._closed:
                return False
            self._busy = True
            self._request = (window, obs_tick, obs_ns, time.perf_counter_ns(), ctx)
            self._cv.notify()
        return True

    def poll(self) -> InferenceResult | None:
        """The finished result, once (None while running or idle)."""
        with self._cv:
            result, self._result = self._result, None
            if result is not None:
                self._busy = False
        return result

    def wait(self, timeout_s: float | None = None) -> InferenceResult | None:
        """Block until the in-flight inference finishes (start-up, tests)."""
        with self._cv:
            self._cv.wait_for(lambda: self._result is not None or not self._busy, timeout_s)
        return self.poll()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._request is not None or self._closed)
                if self._closed:
                    return
                window, obs_tick, obs_ns, submit_ns, ctx = self._request
                self._request = None
            t0 = time.perf_counter_ns()
            try:
                chunk, error = self.agent.act(window, ctx), None
            except BaseException as err:  # noqa: BLE001 - handed to the loop, which re-raises it on its own thread
                chunk, error = None, err
            result = InferenceResult(chunk, obs_tick, obs_ns, submit_ns, t0, time.perf_counter_ns(), error)
            with self._cv:
                self._result = result
                self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=10)
