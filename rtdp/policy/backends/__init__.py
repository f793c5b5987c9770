"""Inference backends: who evaluates the denoiser inside a plan's `DenoiserCall`.

    eager        torch, as the module is (the reference every other backend is checked against)
    onnx         the denoiser exported to ONNX, run by ONNX Runtime on the CPU (onnx.py)
    cuda_graph   the fixed-shape denoiser call captured as CUDA graphs, bf16 where it passes the check (cuda_graph.py)
    auto         cuda_graph when the policy is on a CUDA device, else eager

`use_backend(policy, name)` builds one for the policy's denoiser at its shapes and attaches it
(`policy.backend`); the policy then hands it every plan's call. docs/backends.md says when to choose which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rtdp.policy.backends.base import Backend, BackendError, GraphShapes, Tolerance, log

NAMES = ("auto", "eager", "onnx", "cuda_graph")

__all__ = ["NAMES", "Backend", "BackendError", "GraphShapes", "Tolerance", "graph_shapes", "make_backend",
           "resolve", "use_backend"]


def resolve(name: str, device: torch.device | str) -> str:
    """The backend `name` stands for on `device` (`auto`: cuda_graph on CUDA, eager elsewhere)."""
    if name not in NAMES:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    if name == "auto":
        return "cuda_graph" if torch.device(device).type == "cuda" else "eager"
    return name


def level_range(schedule: Any, horizon: int, action_dim: int) -> tuple[float, float]:
    """The span of the denoiser's level input over the schedule's levels (where the eager check probes)."""
    try:
        grid = torch.as_tensor(schedule.inference_levels(50)).float()
        x = torch.zeros(grid.shape[0], horizon, action_dim)
        _, level_in = schedule.model_input(x, grid)
        return float(level_in.min()), float(level_in.max())
    except Exception:  # noqa: BLE001 - a schedule without a grid: DDPM's 0..100 timesteps
        return (0.0, 100.0)


def graph_shapes(policy: Any) -> GraphShapes:
    """The fixed shapes of a policy's denoiser call: horizon, action size, `[To, Dc]`, the level span."""
    return GraphShapes(horizon=int(policy.horizon), action_dim=int(policy.action_dim),
                       cond_shape=(int(policy.n_obs_steps), int(policy.encoder.out_dim)),
                       level_range=level_range(policy.schedule, int(policy.horizon), int(policy.action_dim)),
                       per_position=bool(getattr(policy.denoiser, "per_position_levels", True)))


def make_backend(name: str, policy: Any, cache_dir: str | Path | None = None, **options: Any) -> Backend | None:
    """The backend `name` for `policy`'s denoiser (None for eager). ONNX graphs are cached in `cache_dir`
    (default `<checkpoint>/backends` for a loaded policy, else the user cache). `auto` never fails: where the
    backend it picks cannot be built it says why in one line and leaves the policy eager."""
    chosen = resolve(name, policy.device)
    if chosen == "eager":
        return None
    if name == "auto":
        try:
            return _build(chosen, policy, cache_dir, options)
        except BackendError as err:
            log.warning("rtdp: backend=auto: %s; running eager", err)
            return None
    return _build(chosen, policy, cache_dir, options)


def _build(name: str, policy: Any, cache_dir: str | Path | None, options: dict[str, Any]) -> Backend:
    shapes = graph_shapes(policy)
    if name == "onnx":
        from rtdp.policy.backends.onnx import OnnxBackend

        if cache_dir is None and getattr(policy, "checkpoint_path", None) is not None:
            cache_dir = Path(policy.checkpoint_path) / "backends"
        return OnnxBackend(policy.denoiser, shapes, cache_dir=cache_dir, **options)
    from rtdp.policy.backends.cuda_graph import CudaGraphBackend

    return CudaGraphBackend(policy.denoiser, shapes, **options)


def use_backend(policy: Any, name: str = "auto", cache_dir: str | Path | None = None,
                **options: Any) -> Backend | None:
    """Build the backend `name` for `policy` and attach it (`policy.backend`); returns it (None for eager)."""
    backend = make_backend(name, policy, cache_dir=cache_dir, **options)
    policy.backend = backend
    return backend
