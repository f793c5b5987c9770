"""Gymnasium spaces to and from plain data, so a client rebuilds the served env's spaces exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces


def space_to_dict(space: spaces.Space) -> dict[str, Any]:
    """A wire description of a space (arrays stay arrays; the protocol sends them as raw frames)."""
    if isinstance(space, spaces.Box):
        return {"kind": "box", "low": space.low, "high": space.high, "dtype": np.dtype(space.dtype).str}
    if isinstance(space, spaces.Discrete):
        return {"kind": "discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"kind": "multi_discrete", "nvec": np.asarray(space.nvec), "dtype": np.dtype(space.dtype).str}
    if isinstance(space, spaces.MultiBinary):
        return {"kind": "multi_binary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, spaces.Dict):
        return {"kind": "dict", "spaces": {k: space_to_dict(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Tuple):
        return {"kind": "tuple", "spaces": [space_to_dict(s) for s in space.spaces]}
    raise TypeError(f"cannot serve a {type(space).__name__} space: use Box, Discrete, MultiDiscrete, "
                    "MultiBinary, Dict or Tuple")


def space_from_dict(d: dict[str, Any]) -> spaces.Space:
    """Rebuild a space from `space_to_dict` output."""
    kind = d["kind"]
    if kind == "box":
        dtype = np.dtype(d["dtype"])
        return spaces.Box(low=np.array(d["low"], dtype=dtype), high=np.array(d["high"], dtype=dtype),
                          dtype=dtype)
    if kind == "discrete":
        return spaces.Discrete(d["n"], start=d.get("start", 0))
    if kind == "multi_discrete":
        return spaces.MultiDiscrete(np.array(d["nvec"]), dtype=np.dtype(d["dtype"]))
    if kind == "multi_binary":
        return spaces.MultiBinary(d["n"])
    if kind == "dict":
        return spaces.Dict({k: space_from_dict(s) for k, s in d["spaces"].items()})
    if kind == "tuple":
        return spaces.Tuple([space_from_dict(s) for s in d["spaces"]])
    raise ValueError(f"unknown space kind {kind!r}")


def check_action(space: spaces.Space, action: Any) -> Any:
    """The action as the space's dtype/shape, or ValueError saying what is wrong (wire input is untrusted)."""
    if isinstance(space, spaces.Box):
        a = np.asarray(action)
        if a.shape != space.shape:
            raise ValueError(f"action shape {list(a.shape)} does not match the action space {list(space.shape)}")
        if a.dtype.kind not in "biuf" or (a.dtype.kind == "f") != (np.dtype(space.dtype).kind == "f"):
            raise ValueError(f"action dtype {a.dtype} does not fit the action space dtype {space.dtype}")
        if a.dtype == space.dtype:
            return a
        with np.errstate(over="ignore", invalid="ignore"):  # float64 1e300 -> inf: the caller refuses it
            return a.astype(space.dtype)
    if isinstance(space, spaces.Discrete):
        a = np.asarray(action)
        if a.shape != () or a.dtype.kind not in "iu":
            raise ValueError(f"a Discrete action must be one integer, got {a.dtype}{list(a.shape)}")
        return int(a)
    if isinstance(space, (spaces.MultiDiscrete, spaces.MultiBinary)):
        a = np.asarray(action)
        if a.shape != space.shape or a.dtype.kind not in "iub":
            raise ValueError(f"action {a.dtype}{list(a.shape)} does not match {space}")
        return a.astype(space.dtype, copy=False)
    if isinstance(space, spaces.Dict):
        if not isinstance(action, dict) or set(action) != set(space.spaces):
            raise ValueError(f"a Dict action needs exactly the keys {sorted(space.spaces)}")
        return {k: check_action(s, action[k]) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        if not isinstance(action, (list, tuple)) or len(action) != len(space.spaces):
            raise ValueError(f"a Tuple action needs {len(space.spaces)} items")
        return tuple(check_action(s, a) for s, a in zip(space.spaces, action))
    raise ValueError(f"unsupported action space {type(space).__name__}")
