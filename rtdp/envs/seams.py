"""The seam metric: how much the executed actions jump where one chunk hands over to the next, against inside
chunks, and their jerk; plus the plot of one episode's executed actions around its seams.

A seam is the step at which a plan after the episode's first starts to act (its arrival; for blending and
ensembling the step it first enters the average). |a_t − a_{t−1}| is the Euclidean norm over action
dimensions, in the env's action units; jerk is the norm of the third difference a_t − 3a_{t−1} + 3a_{t−2} − a_{t−3}
(per control step cubed), over every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtdp import metrics


def step_changes(actions: np.ndarray, boundaries: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one episode's executed actions `[L, Da]`: |a_t − a_{t−1}| at the seams, inside chunks (t = 1 … L−1),
    and the jerk norms."""
    a = np.asarray(actions, dtype=np.float64).reshape(len(actions), -1)
    diffs = np.linalg.norm(np.diff(a, axis=0), axis=-1)  # diffs[t - 1] = |a_t - a_{t-1}|
    seam = np.zeros(diffs.shape[0], dtype=bool)
    for t in boundaries:
        if 1 <= t < len(a):
            seam[t - 1] = True
    jerk = np.linalg.norm(np.diff(a, n=3, axis=0), axis=-1) if len(a) > 3 else np.zeros(0)
    return diffs[seam], diffs[~seam], jerk


def _stats(x: np.ndarray) -> tuple[float, float]:
    return (float(x.max()), float(x.mean())) if x.size else (0.0, 0.0)


def seam_summary(episodes: Sequence[tuple[np.ndarray, Sequence[int]]]) -> dict[str, Any]:
    """Max and mean |a_t − a_{t−1}| at the seams and inside chunks, and jerk, pooled over the episodes'
    `(actions [L, Da], seam steps)`."""
    parts = [step_changes(a, b) for a, b in episodes]
    seam, inside, jerk = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0) for i in range(3))
    out: dict[str, Any] = {"n_seams": int(seam.size), "n_inside": int(inside.size)}
    for name, x in (("seam", seam), ("inside", inside), ("jerk", jerk)):
        out[f"{name}_max"], out[f"{name}_mean"] = _stats(x)
    out["units"] = "env action units; L2 norm over action dimensions"
    return out


def plot_seams(actions: np.ndarray, boundaries: Sequence[int], png: str | Path, data: dict[str, Any],
               title: str = "") -> Path:
    """`seams.png` (+ `seams.json` beside it): one episode's executed actions per dimension with its seams
    marked, and |a_t − a_{t−1}| per step with the seam steps in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = np.asarray(actions, dtype=np.float64).reshape(len(actions), -1)
    dims = a.shape[1]
    fig, axes = plt.subplots(dims + 1, 1, figsize=(9, 1.6 * (dims + 1) + 0.8), sharex=True, squeeze=False)
    steps = np.arange(len(a))
    seams = [t for t in boundaries if 1 <= t < len(a)]
    for i in range(dims):
        ax = axes[i, 0]
        ax.plot(steps, a[:, i], ".-", lw=0.8, ms=3, color="tab:blue")
        for t in seams:
            ax.axvline(t - 0.5, color="tab:red", lw=0.6, alpha=0.5)
        ax.set_ylabel(f"a[{i}]")
    ax = axes[dims, 0]
    if len(a) > 1:
        diffs = np.linalg.norm(np.diff(a, axis=0), axis=-1)
        ax.plot(steps[1:], diffs, ".-", lw=0.8, ms=3, color="tab:gray", label="inside chunks")
        idx = [t for t in seams]
        ax.plot(idx, diffs[np.array(idx, dtype=int) - 1] if idx else [], "o", color="tab:red", ms=4, label="seams")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_ylabel("|a_t - a_t-1|")
    ax.set_xlabel("control step (red lines: a new chunk takes over)")
    fig.suptitle(title or "executed actions around the seams")
    fig.tight_layout()
    png_path, _ = metrics.save_figure(fig, png, data)
    plt.close(fig)
    return png_path
