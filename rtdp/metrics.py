"""One schema for every reported figure: latency summaries, JSON records and the plots written beside them."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "rtdp.metrics/1"


def summarize_latencies(samples_s: np.ndarray | list[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of a latency sample in milliseconds (empty → all NaN-free zeros with n=0)."""
    x = np.asarray(samples_s, dtype=np.float64) * 1e3
    if x.size == 0:
        return {"n": 0, "p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "mean_ms": 0.0}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"n": int(x.size), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "max_ms": float(x.max()), "mean_ms": float(x.mean())}


def _default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def record(kind: str, **fields: Any) -> dict[str, Any]:
    """A metrics record: what was measured (`kind`), on what machine, when, and the figures."""
    return {"schema": SCHEMA, "kind": kind,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, **fields}


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write JSON atomically (temp file, fsync, rename) so a crash never leaves half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def save_figure(fig, png_path: str | Path, data: dict[str, Any]) -> tuple[Path, Path]:
    """Save a matplotlib figure and the JSON of the figures it shows beside it (same stem)."""
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120, bbox_inches="tight")
    return png_path, write_json(png_path.with_suffix(".json"), data)
