"""A fixed-rate clock on `perf_counter_ns`: sleep until just before the deadline, then spin to it."""

from __future__ import annotations

import time

NS = 1_000_000_000


def wait_until(deadline_ns: int, spin_ns: int = 1_000_000) -> int:
    """Block until `deadline_ns` (perf_counter_ns clock) and return the wake time.

    `time.sleep` overshoots by the kernel's timer slack plus scheduling delay (tens of µs idle, milliseconds
    on a busy machine), so it sleeps until `spin_ns` before the deadline and busy-waits the rest.
    """
    now = time.perf_counter_ns()
    if deadline_ns - now > spin_ns:
        time.sleep((deadline_ns - now - spin_ns) / NS)
    now = time.perf_counter_ns()
    while now < deadline_ns:
        now = time.perf_counter_ns()
    return now


class RateClock:
    """Ticks at `hz` from a start time; tick k is due at `t0 + k * period`."""

    def __init__(self, hz: float, spin_s: float = 0.001):
        if not 0 < hz <= 1000:
            raise ValueError(f"rate {hz} Hz is out of range (0, 1000]")
        self.hz = float(hz)
        self.period_ns = round(NS / self.hz)
        self.spin_ns = int(spin_s * NS)
        self.t0_ns = time.perf_counter_ns()

    def start(self, t0_ns: int | None = None) -> int:
        self.t0_ns = time.perf_counter_ns() if t0_ns is None else int(t0_ns)
        return self.t0_ns

    def due(self, k: int) -> int:
        """When tick k is due (ns)."""
        return self.t0_ns + k * self.period_ns

    def tick_at(self, t_ns: int) -> int:
        """The tick whose slot [due(k), due(k+1)) contains `t_ns`."""
        return (t_ns - self.t0_ns) // self.period_ns

    def wait(self, k: int) -> int:
        """Wait for tick k; returns the wake time."""
        return wait_until(self.due(k), self.spin_ns)
