"""Normalizer: per-key affine maps y = x·scale + offset fitted from data, for numpy arrays and torch tensors.

Modes: `minmax` maps each dimension's [min, max] to [-1, 1] (Diffusion Policy's default for actions and
low-dim observations), `meanstd` to zero mean and unit variance, `identity` leaves values alone (images,
already in [0, 1]). A dimension that never changes (max == min, or std == 0) maps to 0 with scale 1, so
nothing divides by zero and `unnormalize` still returns the constant. Stats are per dimension of one frame
(the array's trailing shape), reduced over all leading axes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

MODES = ("identity", "minmax", "meanstd")
_FIELDS = ("scale", "offset", "min", "max", "mean", "std")
_EPS = 1e-8


class Normalizer:
    """Fitted per-key affine normalisation; `state_dict()` is flat `{"<key>.<field>": Tensor}` (safetensors-ready)."""

    def __init__(self) -> None:
        self._params: dict[str, dict[str, np.ndarray]] = {}
        self._modes: dict[str, str] = {}
        self._torch_cache: dict[tuple[str, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, data: Mapping[str, np.ndarray], modes: Mapping[str, str] | None = None,
            default_mode: str = "minmax") -> Normalizer:
        """Fit every key of `data` ([N, *frame] arrays) with its mode (missing keys use `default_mode`)."""
        norm = cls()
        modes = dict(modes or {})
        for key, value in data.items():
            norm.add(key, value, modes.get(key, default_mode))
        return norm

    def add(self, key: str, data: np.ndarray | torch.Tensor, mode: str) -> None:
        """Fit one key (replacing any previous fit of it)."""
        if mode not in MODES:
            raise ValueError(f"normalizer key {key!r}: mode must be one of {MODES}, got {mode!r}")
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
        x = np.asarray(data)
        if mode == "identity":
            one, zero = np.ones((), np.float32), np.zeros((), np.float32)
            self._set(key, mode, {"scale": one, "offset": zero, "min": zero, "max": one, "mean": zero, "std": one})
            return
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"normalizer key {key!r}: need at least one frame to fit, got shape {x.shape}")
        x = x.astype(np.float64, copy=False)
        lo, hi = x.min(axis=0), x.max(axis=0)
        mean, std = x.mean(axis=0), x.std(axis=0)
        if mode == "minmax":
            span = hi - lo
            const = span < _EPS
            scale = np.where(const, 1.0, 2.0 / np.where(const, 1.0, span))
            offset = np.where(const, -lo, -1.0 - lo * scale)
        else:
            const = std < _EPS
            scale = np.where(const, 1.0, 1.0 / np.where(const, 1.0, std))
            offset = -mean * scale
        stats = {"scale": scale, "offset": offset, "min": lo, "max": hi, "mean": mean, "std": std}
        self._set(key, mode, {k: np.asarray(v, np.float32) for k, v in stats.items()})

    def add_affine(self, key: str, mode: str, scale: Any, offset: Any, **stats: Any) -> None:
        """Set `key`'s map to `x·scale + offset` as another library fitted it (LeRobot's stats), with its
        min/max/mean/std for the record; the arrays broadcast against one frame."""
        if mode not in MODES:
            raise ValueError(f"normalizer key {key!r}: mode must be one of {MODES}, got {mode!r}")
        scale = np.asarray(scale, np.float32)
        if not np.all(np.isfinite(scale)) or np.any(scale == 0):
            raise ValueError(f"normalizer key {key!r}: every scale must be finite and non-zero")
        params = {"scale": scale, "offset": np.asarray(offset, np.float32)}
        params.update({f: np.asarray(stats.get(f, 0.0 if f in ("min", "mean") else 1.0), np.float32)
                       for f in ("min", "max", "mean", "std")})
        self._set(key, mode, params)

    def scale_dims(self, key: str, dims: list[int], factor: float) -> None:
        """Multiply the normalised values of `dims` of `key` by `factor` (its maps become y = f·(x·scale + offset)).

        RTI-DP's handling of binary dimensions: trained at ±0.1 instead of ±1, a gripper's sign carried over by a
        warm start is weak evidence at a small noise level, so the observation can flip it (docs/streaming.md).
        """
        p = self._params[self._check(key)]
        if not factor > 0:
            raise ValueError(f"normalizer key {key!r}: the scale factor must be > 0, got {factor}")
        n = int(np.size(p["scale"])) if np.ndim(p["scale"]) else 0
        bad = [d for d in dims if not 0 <= int(d) < n]
        if bad:
            raise ValueError(f"normalizer key {key!r}: dimension(s) {bad} out of range for its {n} dimension(s)")
        idx = [int(d) for d in dims]
        for field in ("scale", "offset"):
            p[field] = p[field].copy()
            p[field][idx] *= np.float32(factor)
        self._set(key, self._modes[key], p)

    def _set(self, key: str, mode: str, params: dict[str, np.ndarray]) -> None:
        self._params[key] = params
        self._modes[key] = mode
        self._torch_cache = {k: v for k, v in self._torch_cache.items() if k[0] != key}

    # ------------------------------------------------------------------ use
    def keys(self) -> list[str]:
        return list(self._params)

    def __contains__(self, key: str) -> bool:
        return key in self._params

    def mode(self, key: str) -> str:
        return self._modes[self._check(key)]

    def stats(self, key: str) -> dict[str, np.ndarray]:
        """The fitted min/max/mean/std (and scale/offset) of `key` as numpy arrays."""
        return {k: v.copy() for k, v in self._params[self._check(key)].items()}

    def normalize(self, key: str, x: Any) -> Any:
        """x·scale + offset, returned in the type, dtype and device of `x`."""
        scale, offset = self._coeffs(key, x)
        return x * scale + offset

    def unnormalize(self, key: str, x: Any) -> Any:
        """(x − offset) / scale, the inverse of `normalize` (scale is never 0)."""
        scale, offset = self._coeffs(key, x)
        return (x - offset) / scale

    def _coeffs(self, key: str, x: Any) -> tuple[Any, Any]:
        p = self._params[self._check(key)]
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            cache_key = (key, x.device, dtype)
            if cache_key not in self._torch_cache:
                self._torch_cache[cache_key] = (torch.as_tensor(p["scale"], dtype=dtype, device=x.device),
                                                torch.as_tensor(p["offset"], dtype=dtype, device=x.device))
            return self._torch_cache[cache_key]
        x = np.asarray(x)
        dtype = x.dtype if x.dtype.kind == "f" else np.float32
        return p["scale"].astype(dtype, copy=False), p["offset"].astype(dtype, copy=False)

    def _check(self, key: str) -> str:
        if key not in self._params:
            raise KeyError(f"normalizer has no key {key!r} (keys: {', '.join(self._params) or 'none'})")
        return key

    # ------------------------------------------------------------------ (de)serialisation
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat `{"<key>.<field>": Tensor}` including `<key>.mode` (0 identity, 1 minmax, 2 meanstd)."""
        out: dict[str, torch.Tensor] = {}
        for key, params in self._params.items():
            out[f"{key}.mode"] = torch.tensor(MODES.index(self._modes[key]), dtype=torch.int64)
            for field in _FIELDS:
                out[f"{key}.{field}"] = torch.from_numpy(np.ascontiguousarray(params[field])).clone()
        return out

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor | np.ndarray]) -> Normalizer:
        """Rebuild from `state_dict()` output (keys may contain dots; the field is after the last dot)."""
        norm = cls()
        grouped: dict[str, dict[str, np.ndarray]] = {}
        for name, value in state.items():
            key, _, field = name.rpartition(".")
            if not key or field not in (*_FIELDS, "mode"):
                raise ValueError(f"normalizer state: unexpected entry {name!r}")
            arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            grouped.setdefault(key, {})[field] = arr
        for key, fields in grouped.items():
            missing = [f for f in (*_FIELDS, "mode") if f not in fields]
            if missing:
                raise ValueError(f"normalizer state: key {key!r} lacks {missing}")
            mode = MODES[int(fields.pop("mode"))]
            norm._set(key, mode, {f: fields[f].astype(np.float32) for f in _FIELDS})
        return norm

    def __repr__(self) -> str:
        return f"Normalizer({', '.join(f'{k}: {m}' for k, m in self._modes.items())})"
