"""Run metrics from loop records (through `rtdp.metrics`): period error, deadline misses, latencies, NFE."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rtdp import metrics
from rtdp.control.loop import EpisodeResult


def _period_errors(ep: EpisodeResult) -> np.ndarray:
    """|actual - nominal| period between consecutive ticks' wake-ups (seconds)."""
    ticks = np.array([s.tick for s in ep.steps])
    wake = np.array([s.wake_ns for s in ep.steps], dtype=np.int64)
    if ticks.size < 2:
        return np.zeros(0)
    consecutive = np.diff(ticks) == 1
    period_ns = 1e9 / ep.hz
    return np.abs(np.diff(wake)[consecutive] - period_ns) / 1e9


def summarize(episodes: list[EpisodeResult]) -> dict[str, Any]:
    """The figures of a run (all episodes pooled), in the shared metrics schema's units (ms)."""
    if not episodes:
        return {"episodes": 0}
    period_err = np.concatenate([_period_errors(e) for e in episodes])
    lateness = np.array([(s.wake_ns - s.due_ns) / 1e9 for e in episodes for s in e.steps])
    executed = [s for e in episodes for s in e.steps if s.executed]
    obs_to_action = np.array([(s.step_start_ns - s.obs_ns) / 1e9 for s in executed])
    # the first chunk of an episode is the warm-up (computed before the clock starts): not a loop latency
    chunks = [c for e in episodes for c in e.chunks[1:]]
    infer_lat = np.array([(c.end_ns - c.start_ns) / 1e9 for c in chunks])
    nfe = sum(c.nfe for e in episodes for c in e.chunks)
    misses = sum(int(s.missed) for e in episodes for s in e.steps) + sum(e.skipped_ticks for e in episodes)
    counts: dict[str, int] = {}
    for e in episodes:
        for k, v in e.scheduler_counts.items():
            counts[k] = counts.get(k, 0) + v
    return {
        "hz": episodes[0].hz, "mode": episodes[0].mode, "realtime": episodes[0].realtime,
        "episodes": len(episodes),
        "ticks": int(sum(len(e.steps) for e in episodes)), "executed_actions": len(executed),
        "held_ticks": int(sum(1 for e in episodes for s in e.steps if not s.executed)),
        "deadline_misses": int(misses),
        "skipped_ticks": int(sum(e.skipped_ticks for e in episodes)),
        "period_error": metrics.summarize_latencies(period_err),
        "wake_lateness": metrics.summarize_latencies(lateness),
        "inference_latency": metrics.summarize_latencies(infer_lat),
        "warmup_inference_s": [e.warmup_s for e in episodes],
        "obs_to_action_latency": metrics.summarize_latencies(obs_to_action),
        "nfe_total": int(nfe), "nfe_per_executed_action": float(nfe / max(len(executed), 1)),
        "chunks": int(sum(len(e.chunks) for e in episodes)),
        "actions_dropped_late": int(counts.get("dropped_late", 0)),
        "actions_dropped_on_arrival": int(counts.get("dropped_on_arrival", 0)),
        "success_rate": float(np.mean([e.success for e in episodes])),
        "successes": [bool(e.success) for e in episodes],
        "returns": [e.total_reward for e in episodes],
        "env_steps": [e.n_env_steps for e in episodes],
        "loadavg": list(os.getloadavg()),
    }


def plot_timing(ep: EpisodeResult, png_path: str | Path, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Timing of one episode: wake lateness per tick, inference intervals, observation-to-action latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = ep.steps[0].due_ns if ep.steps else 0
    ms = lambda ns: (np.asarray(ns, dtype=np.float64) - t0) / 1e6
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    due = ms([s.due_ns for s in ep.steps])
    late = np.array([(s.wake_ns - s.due_ns) / 1e3 for s in ep.steps])
    missed = np.array([s.missed for s in ep.steps], dtype=bool)
    axes[0].plot(due, late, ".", ms=3, label="wake lateness")
    if missed.any():
        axes[0].plot(due[missed], late[missed], "rx", label="deadline miss")
    axes[0].set_ylabel("wake − due (µs)")
    axes[0].legend(loc="upper right")
    for c in ep.chunks[1:]:
        axes[1].plot(ms([c.start_ns, c.end_ns]), [c.chunk_id, c.chunk_id], "-", lw=3, color="tab:orange")
        axes[1].plot(ms([c.obs_ns]), [c.chunk_id], "|", color="k")
    axes[1].set_ylabel("chunk (| = obs, bar = inference)")
    ex = [s for s in ep.steps if s.executed]
    axes[2].plot(ms([s.step_start_ns for s in ex]), [(s.step_start_ns - s.obs_ns) / 1e6 for s in ex], ".", ms=3)
    axes[2].set_ylabel("obs → action (ms)")
    axes[2].set_xlabel("time since first tick (ms)")
    fig.suptitle(f"{ep.mode} @ {ep.hz:g} Hz: period error p99 {summary['period_error']['p99_ms']:.3f} ms, "
                 f"{summary['deadline_misses']} deadline misses")
    out = metrics.save_figure(fig, png_path, metrics.record("control_timing_plot", **summary))
    plt.close(fig)
    return out
