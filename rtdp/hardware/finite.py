"""Find non-finite numbers before they reach a simulator or robot (NaN and inf poison an episode silently).

A float beyond float32's range counts as non-finite too: most envs and drivers compute in float32, where
float64 1e300 becomes inf.
"""

from __future__ import annotations

from typing import Any

import numpy as np

F32_MAX = float(np.finfo(np.float32).max)


SMALL = 64  # arrays up to this many elements are checked in Python: numpy's per-call cost dominates there


def _bad_array(a: np.ndarray) -> int | None:
    """Flat index of the first non-finite (or beyond-float32) element of a float array, else None."""
    if a.dtype.kind not in "fc" or a.size == 0:
        return None
    if a.size <= SMALL and a.dtype.kind == "f":  # an action or a state: cheaper than three numpy calls
        for i, v in enumerate(a.ravel().tolist()):
            if not -F32_MAX <= v <= F32_MAX:  # False for NaN and for ±inf
                return i
        return None
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.isfinite(a) & (np.abs(a) <= F32_MAX)
    if ok.all():
        return None
    return int(np.flatnonzero(~ok.reshape(-1))[0])


def find_non_finite(value: Any, where: str = "value") -> str | None:
    """Where the first NaN/inf/out-of-float32 number in `value` is (`"options['x'][2] = nan"`), or None.

    Walks dicts, lists, tuples, numpy arrays and scalars (wire data is bounded in depth by the decoder).
    """
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, bool) or v is None or isinstance(v, (str, bytes, int)):
            continue
        if isinstance(v, (float, np.floating)):
            if not (np.isfinite(v) and abs(float(v)) <= F32_MAX):
                return f"{path} = {float(v)!r}"
        elif isinstance(v, np.ndarray):
            i = _bad_array(v)
            if i is not None:
                index = np.unravel_index(i, v.shape) if v.ndim else ()
                return f"{path}[{', '.join(map(str, index))}] = {float(v.reshape(-1)[i].real)!r}"
        elif isinstance(v, np.generic):
            if np.asarray(v).dtype.kind in "fc":
                stack.append((path, np.asarray(v)))
        elif isinstance(v, dict):
            stack.extend(reversed([(f"{path}[{k!r}]", x) for k, x in v.items()]))
        elif isinstance(v, (list, tuple)):
            stack.extend(reversed([(f"{path}[{i}]", x) for i, x in enumerate(v)]))
    return None
