"""Run a suite's rows in a pool of worker processes (one torch thread each), with a progress bar over rows and
episodes; each finished row writes `<results>/rows/<name>.json`, so a crashed run resumes where it stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rtdp import metrics
from rtdp.bench.suite import SETTINGS_NOT_FIGURES, Row, Suite, SuiteError

POLL_S = 0.5  # seconds between progress updates while rows run (both executors)


def row_paths(results: Path, name: str) -> dict[str, Path]:
    """Where a row's result, log, spec and episode counter live."""
    return {"result": results / "rows" / f"{name}.json", "log": results / "logs" / f"{name}.log",
            "spec": results / "work" / f"{name}.row.json", "progress": results / "work" / f"{name}.progress"}


def stored_result(results: Path, row: Row) -> dict[str, Any] | None:
    """A row's finished result when it was made with this row's settings (None: missing or stale)."""
    path = row_paths(results, row.name)["result"]
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    return rec if rec.get("key") == row.key() and rec.get("status") == "done" else None


def run_suite(suite: Suite, only: list[str] | None = None, resume: bool = False, progress: bool = True,
              python: str = sys.executable) -> dict[str, Any]:
    """Run the selected rows (skipping those already finished when `resume`) on the suite's executor (`local`:
    worker processes here; `ray`: Ray tasks on a cluster); returns {row name: status}."""
    rows = suite.select(only)
    results = suite.results
    stored = {r.name: rec for r in rows if (rec := stored_result(results, r)) is not None}
    if stored and not resume:
        raise SuiteError(f"{results} already holds finished rows ({', '.join(sorted(stored))}): pass --resume "
                         "to keep them and run the rest, or remove the folder to start over")
    todo = [r for r in rows if r.name not in stored]
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(3).hex()
    _write_run(suite, run_id, todo)
    status: dict[str, str] = {}
    for r in rows:
        if r.name in stored:
            _refresh_kept(results, r, stored[r.name])
            status[r.name] = "done (kept)"
    todo = _checkpoints(suite, todo, status, python)
    with _Bars(progress, todo) as bars:
        if suite.executor == "ray":
            from rtdp.bench.ray_executor import run_rows

            status.update(run_rows(suite, todo, run_id, bars))
        else:
            status.update(_run_local(suite, todo, run_id, bars, python))
    _finish_run(suite, run_id, status)
    return status


def _refresh_kept(results: Path, row: Row, rec: dict[str, Any]) -> None:
    """A kept row (its stored result `rec`) takes the suite's current presentation settings (group, baseline,
    target reference, ...): they change how the report reads the row, not its figures, so it is not rerun."""
    now = json.loads(json.dumps({k: v for k, v in asdict(row).items() if k in SETTINGS_NOT_FIGURES}))  # as stored
    if any(rec["row"].get(k) != v for k, v in now.items()):
        rec["row"].update(now)
        metrics.write_json(row_paths(results, row.name)["result"], rec)


def _run_local(suite: Suite, todo: list[Row], run_id: str, bars: _Bars, python: str) -> dict[str, str]:
    """Rows in worker processes on this machine, `suite.workers` at once."""
    with ThreadPoolExecutor(max_workers=suite.workers) as pool:
        futures = {r.name: pool.submit(_run_one, r, suite.results, run_id, python) for r in todo}
        while any(not f.done() for f in futures.values()):
            bars.update(_local_counts(suite.results, todo))
            time.sleep(POLL_S)
        bars.update(_local_counts(suite.results, todo))
        return {name: future.result() for name, future in futures.items()}


def _local_counts(results: Path, rows: list[Row]) -> tuple[int, int]:
    """(rows finished, episodes finished) from the workers' counters and results on disk."""
    episodes, done = 0, 0
    for r in rows:
        paths = row_paths(results, r.name)
        try:
            episodes += int(paths["progress"].read_text() or 0)
        except (OSError, ValueError):
            pass
        done += stored_result(results, r) is not None
    return done, episodes


def write_result(results: Path, row: Row, rec: dict[str, Any]) -> None:
    """A finished row's record, stamped with the row's settings key (what `--resume` compares)."""
    rec["key"] = row.key()
    metrics.write_json(row_paths(results, row.name)["result"], rec)


def write_failure(results: Path, row: Row, run_id: str, why: str, **extra: Any) -> None:
    metrics.write_json(row_paths(results, row.name)["result"], metrics.record(
        "bench_row", row=asdict(row), key=row.key(), status="failed", run_id=run_id, why=why, **extra))


def _write_run(suite: Suite, run_id: str, todo: list[Row]) -> None:
    """`<results>/runs/<run_id>.json`: the machine, the time and the load when this invocation started."""
    metrics.write_json(suite.results / "runs" / f"{run_id}.json", metrics.record(
        "bench_run", suite=suite.name, suite_file=str(suite.path), run_id=run_id, workers=suite.workers,
        rows=[r.name for r in todo], loadavg_start=list(os.getloadavg())))


def _finish_run(suite: Suite, run_id: str, status: dict[str, str]) -> None:
    path = suite.results / "runs" / f"{run_id}.json"
    rec = json.loads(path.read_text())
    rec.update(status=status, loadavg_end=list(os.getloadavg()), finished=time.strftime("%Y-%m-%dT%H:%M:%SZ"))
    metrics.write_json(path, rec)


def _checkpoints(suite: Suite, todo: list[Row], status: dict[str, str], python: str) -> list[Row]:
    """Rows whose checkpoint exists; missing ones are trained (`on_missing: train`, a row with `train:`) or
    recorded as missing, which the report shows."""
    from rtdp.policy.loading import resolve_checkpoint

    def present(path: str) -> bool:
        try:
            if path.startswith("lerobot:"):  # a LeRobot policy: present if its directory holds one
                from rtdp.policy.lerobot_policy import resolve_pretrained

                resolve_pretrained(path)
            else:
                resolve_checkpoint(path)
            return True
        except (FileNotFoundError, ValueError):
            return False

    missing = {r.checkpoint: r for r in todo if not present(r.checkpoint)}
    trainable = {c: r for c, r in missing.items() if suite.on_missing == "train" and r.train}
    with ThreadPoolExecutor(max_workers=suite.workers) as pool:
        trained = dict(zip(trainable, pool.map(lambda c: _train(trainable[c], suite.results, python), trainable)))
    keep = []
    for r in todo:
        if r.checkpoint not in missing or trained.get(r.checkpoint):
            keep.append(r)
            continue
        why = ("training failed: see " + str(row_paths(suite.results, f"train-{_slug(r.checkpoint)}")["log"])
               if r.checkpoint in trainable else
               f"checkpoint {r.checkpoint} is missing" + ("" if r.train else " and the row has no train: preset"))
        status[r.name] = "missing"
        metrics.write_json(row_paths(suite.results, r.name)["result"],
                           metrics.record("bench_row", row=asdict(r), key=r.key(), status="missing", why=why))
    return keep


def _slug(path: str) -> str:
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in path.strip("/"))


def _train(row: Row, results: Path, python: str) -> bool:
    """`rtdp train <row.train> out_dir=<row.checkpoint> num_threads=1`, logged beside the rows' logs."""
    log = row_paths(results, f"train-{_slug(row.checkpoint)}")["log"]
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", "rtdp.cli.main", "train", *row.train, f"out_dir={row.checkpoint}", "num_threads=1"]
    with open(log, "w") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), check=False).returncode == 0


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MUJOCO_GL":
            os.environ.get("MUJOCO_GL", "egl")}


def _run_one(row: Row, results: Path, run_id: str, python: str) -> str:
    """One row in a worker process; its result is written by the worker only when the row is complete."""
    paths = row_paths(results, row.name)
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    paths["result"].unlink(missing_ok=True)  # a stale or failed result of an earlier run
    paths["progress"].write_text("0")
    metrics.write_json(paths["spec"], asdict(row))
    cmd = [python, "-m", "rtdp.bench.worker", str(paths["spec"]), str(paths["result"]) + ".part",
           str(paths["progress"])]
    with open(paths["log"], "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False,
                            env={**_env(), "RTDP_BENCH_RUN_ID": run_id}).returncode
    part = Path(str(paths["result"]) + ".part")
    if rc != 0 or not part.is_file():
        tail = paths["log"].read_text().strip().splitlines()[-1:] if paths["log"].is_file() else []
        write_failure(results, row, run_id, tail[0] if tail else f"exit {rc}", returncode=rc, log=str(paths["log"]))
        return "failed"
    write_result(results, row, json.loads(part.read_text()))
    part.unlink()
    return "done"


class _Bars:
    """Two rich bars: rows finished, and episodes finished over all rows (read from the workers' counters)."""

    def __init__(self, enabled: bool, rows: list[Row]):
        self.enabled, self.rows = enabled, rows

    def __enter__(self):
        if self.enabled and self.rows:
            from rich.progress import Progress

            self.p = Progress()
            self.p.start()
            self.row_bar = self.p.add_task("rows", total=len(self.rows))
            self.ep_bar = self.p.add_task("episodes", total=sum(r.episodes for r in self.rows))
        return self

    def update(self, counts: tuple[int, int]) -> None:
        """Show (rows finished, episodes finished)."""
        if self.enabled and self.rows:
            self.p.update(self.row_bar, completed=counts[0])
            self.p.update(self.ep_bar, completed=counts[1])

    def __exit__(self, *exc):
        if self.enabled and self.rows:
            self.p.stop()
        return False
