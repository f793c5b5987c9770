"""`executor: ray`: a suite's rows as Ray tasks (one CPU and one torch thread each) on a Ray cluster, with the
results folder written here exactly as the local executor writes it. Checkpoints and data must be at the same
paths on every node (a shared filesystem), as they would be for `rtdp eval` there."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rtdp.bench.suite import Row, Suite, SuiteError


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SuiteError("executor: ray needs Ray, which is not installed: pip install 'rtdp[ray]'") from None
    return ray


def _row_task(row: dict[str, Any], run_id: str, counter: Any) -> dict[str, Any]:
    """The body of one Ray task: the same evaluation the local worker process runs."""
    import os

    os.environ.setdefault("MUJOCO_GL", "egl")
    from rtdp.bench.worker import run_row

    rec = run_row(row, lambda done: counter.set.remote(row["name"], done))
    rec["run_id"] = run_id
    return rec


class _Counter:
    """Episodes finished per row, reported by the tasks and read by the driver's progress bar."""

    def __init__(self):
        self.done: dict[str, int] = {}

    def set(self, name: str, n: int) -> None:
        self.done[name] = n

    def total(self) -> int:
        return sum(self.done.values())


def run_rows(suite: Suite, todo: list[Row], run_id: str, bars: Any) -> dict[str, str]:
    """Run `todo` on the Ray cluster at `suite.ray_address` (None: start a local Ray); {row name: status}."""
    from rtdp.bench.runner import POLL_S, write_failure, write_result

    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=suite.ray_address, include_dashboard=False, log_to_driver=False)
    try:
        counter = ray.remote(num_cpus=0)(_Counter).remote()
        task = ray.remote(num_cpus=1, max_retries=0)(_row_task)
        refs = {task.remote(asdict(r), run_id, counter): r for r in todo}
        status: dict[str, str] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            for ref in ready:
                row = refs[ref]
                try:
                    write_result(suite.results, row, ray.get(ref))
                    status[row.name] = "done"
                except ray.exceptions.RayError as err:
                    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
                    write_failure(suite.results, row, run_id, lines[-1] if lines else type(err).__name__)
                    status[row.name] = "failed"
            bars.update((len(status), ray.get(counter.total.remote())))
        return status
    finally:
        if started_here:
            ray.shutdown()
