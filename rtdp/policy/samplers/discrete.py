"""Binary action dimensions (a gripper's open/close) in warm-starting samplers: their two normalised values, read
off the policy's normaliser; snapping to them; and the warning when a carried value is too wide to flip."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from rtdp.policy.spec import PolicySpec

UNSCALED_HALF_RANGE = 0.75  # a carried discrete value wider than ±this (normalised) cannot flip in a warm start


def snap_discrete(x: Tensor, dims: Sequence[int], levels: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """`x` with its `dims` snapped to the nearer of their two normalised values (`levels` = (low, high) per dim;
    default ±1). A copy: `x` is left alone."""
    x = x.clone()
    if dims:
        idx = list(dims)
        lo, hi = level_pair(levels, len(idx), x)
        x[..., idx] = torch.where(x[..., idx] >= (lo + hi) / 2, hi, lo)
    return x


def level_pair(levels: tuple[Tensor, Tensor] | None, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """(low, high) of `n` binary dimensions on `like`'s device and dtype; ±1 when `levels` is None."""
    lo, hi = levels if levels is not None else (torch.full((n,), -1.0), torch.ones(n))
    return lo.to(like.device, like.dtype), hi.to(like.device, like.dtype)


def discrete_levels(normalizer: Any, dims: Sequence[int], key: str = "action") -> tuple[Tensor, Tensor] | None:
    """The normalised values of the data's min and max on `dims` of `key` (±1 for minmax, ±f with the task's
    `action.discrete_scale` f), or None without a fitted normaliser for `key`."""
    if not dims or normalizer is None or key not in normalizer:
        return None
    stats = normalizer.stats(key)
    lo = normalizer.normalize(key, torch.as_tensor(stats["min"], dtype=torch.float32))
    hi = normalizer.normalize(key, torch.as_tensor(stats["max"], dtype=torch.float32))
    idx = list(dims)
    return lo.reshape(-1)[idx].clone(), hi.reshape(-1)[idx].clone()


def warn_if_unscaled(sampler: Any) -> None:
    """Warn when an RTI sampler carries binary dimensions at about ±1 into its warm start: the carried sign then
    never flips (or, shrunk by `discrete_hysteresis`, lies outside the data the denoiser saw)."""
    half = sampler.carried_half_range()
    if half is not None and half > UNSCALED_HALF_RANGE:
        warnings.warn(f"sampler={sampler.name}: discrete_dims {sampler.discrete_dims} are carried at ±{half:.2g} "
                      "after normalisation, so a warm start cannot flip them (docs/streaming.md); train with "
                      f"task.action.discrete_scale=0.5 (or smaller) or {sampler.unscaled_remedy}", UserWarning,
                      stacklevel=3)


def build_with_discrete_dims(cls, cfg: Mapping[str, Any], spec: PolicySpec) -> Any:
    """`cls` built from `cfg`, its `discrete_dims` reading their two values off the policy's normaliser."""
    sampler = cls(spec.schedule, n_obs_steps=spec.n_obs_steps, **cfg)
    bad = [d for d in sampler.discrete_dims if not 0 <= int(d) < spec.action_dim]
    if bad:
        raise ValueError(f"sampler.discrete_dims {bad} out of range for {spec.action_dim} action dimensions")
    sampler.discrete_levels = discrete_levels(spec.normalizer, sampler.discrete_dims, spec.action_key)
    warn_if_unscaled(sampler)
    return sampler
