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


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a success rate (scipy's `binomtest`): honest at small n and near 0 or 1."""
    from scipy.stats import binomtest

    if n < 1:
        return (0.0, 1.0)
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def ratio_interval(k1: int, n1: int, k0: int, n0: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """The ratio of two success rates (k1/n1 over k0/n0) with its Katz log interval; a zero count takes the
    usual 0.5 correction so the interval stays finite. Returns (ratio, low, high)."""
    from scipy.stats import norm

    if n1 < 1 or n0 < 1:
        raise ValueError(f"a ratio of rates needs n >= 1 on both sides, got {n1} and {n0}")
    if k0 == 0 or k1 == 0:
        k1, k0, n1, n0 = k1 + 0.5, k0 + 0.5, n1 + 0.5, n0 + 0.5
    ratio = (k1 / n1) / (k0 / n0)
    se = float(np.sqrt(max(1 / k1 - 1 / n1 + 1 / k0 - 1 / n0, 0.0)))
    z = float(norm.ppf(0.5 + confidence / 2))
    return float(ratio), float(ratio * np.exp(-z * se)), float(ratio * np.exp(z * se))


def paired_ratio_interval(scores: np.ndarray | list[float], reference: np.ndarray | list[float],
                          confidence: float = 0.95, resamples: int = 9999, seed: int = 0,
                          paired: bool = True) -> tuple[float, float, float]:
    """The ratio of two mean scores measured on the same seeds (episode i of each ran seed i), with a paired
    bootstrap interval (scipy's `bootstrap`, BCa): the shared seed's difficulty cancels, so it is tighter than two
    independent intervals. `paired=False` resamples the two independently (different seeds, any lengths).
    Returns (ratio, low, high)."""
    from scipy.stats import bootstrap

    a, b = np.asarray(scores, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1 or min(a.size, b.size) < 2:
        raise ValueError(f"scores need two 1-D samples of length >= 2, got {a.shape} and {b.shape}")
    if paired and a.shape != b.shape:
        raise ValueError(f"paired scores need one length (one score per shared seed), got {a.shape} and {b.shape}")
    if not b.mean() > 0:
        raise ValueError("the reference's mean score is 0: the ratio is undefined")
    ratio = float(a.mean() / b.mean())
    if paired and np.array_equal(a, b):
        return ratio, ratio, ratio

    def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return x.mean(axis=axis) / np.maximum(y.mean(axis=axis), 1e-12)

    ci = bootstrap((a, b), stat, paired=paired, vectorized=True, confidence_level=confidence, n_resamples=resamples,
                   method="BCa", rng=np.random.default_rng(seed)).confidence_interval
    return ratio, float(ci.low), float(ci.high)


def mean_interval(values: np.ndarray | list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A Student-t interval of a mean (e.g. PushT's mean max-coverage over episodes)."""
    from scipy.stats import t

    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        m = float(x.mean()) if x.size else 0.0
        return (m, m)
    half = float(t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return (float(x.mean()) - half, float(x.mean()) + half)


def task_score(summary: dict[str, Any]) -> float:
    """The score a result is judged by: PushT's mean max-coverage where it has one (success is rare there), else
    the success rate."""
    return summary.get("mean_max_coverage", summary["success_rate"])


def episode_scores(episodes: list[dict[str, Any]]) -> list[float]:
    """Each episode's score (max coverage, else success as 0/1) in seed order, to pair two results seed by seed."""
    return [float(e.get("max_coverage", e["success"])) for e in sorted(episodes, key=lambda e: e["seed"])]


def score_summary(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Success rate with its Wilson 95% interval (and mean max-coverage with a t interval where episodes carry
    it), from per-episode records of `rtdp.envs.evaluate`."""
    n = len(episodes)
    k = sum(bool(e["success"]) for e in episodes)
    out: dict[str, Any] = {"n": n, "success_rate": k / max(n, 1), "success_ci95": wilson_interval(k, n)}
    if n and all("max_coverage" in e for e in episodes):
        cov = [e["max_coverage"] for e in episodes]
        out["mean_max_coverage"] = float(np.mean(cov))
        out["coverage_ci95"] = mean_interval(cov)
    return out


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two writers never share one
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
