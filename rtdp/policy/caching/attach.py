"""Attaching a block cache to a policy: `use_cache(policy, "bac" | PATH | "across_calls[:R]" | None)`.

- `bac`: the newest schedule in `<checkpoint>/cache/` made for these weights and the grids this sampler visits;
- a path: that schedule file, checked against the weights and the sampler's grids;
- `across_calls` / `across_calls:R`: the SDP experiment (reuse block outputs across consecutive plans);
- None / `none` / `off`: no cache.

Every refusal is a `CacheError` with one line: a denoiser that is not a transformer, a backend that serves the
whole denoiser as one graph (ONNX, CUDA graphs: a block cache must run the network block by block), a sampler
with per-position levels (SDP: one evaluation per plan), a missing, corrupt or stale schedule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rtdp.policy.caching.across_calls import AcrossCallsHook
from rtdp.policy.caching.grids import CacheError, Grid, describe_grid, probe_grids
from rtdp.policy.caching.hook import BlockCacheHook, require_transformer
from rtdp.policy.caching.schedule import (
    KEY_DIGITS,
    CacheSchedule,
    check_schedule,
    load_schedule,
    schedule_key,
)
from rtdp.policy.call import CallHook

OFF = (None, "", "none", "off", "false")
CACHE_DIR = "cache"  # beside the checkpoint's weights
GRAPH_BACKENDS = ("onnx", "cuda_graph")


def weights_sha256(policy: Any) -> str:
    """sha256 of every parameter and buffer of the policy's networks (observation encoder and denoiser: names,
    dtypes, shapes, bytes), the weights a schedule is valid for."""
    from rtdp.policy.backends.graph_cache import weights_digest

    return weights_digest(policy)


def is_off(cache: Any) -> bool:
    """Whether `cache` asks for no cache."""
    return cache is None or (isinstance(cache, str) and cache.strip().lower() in OFF)


def check_backend(cache: Any, backend: str | None) -> str:
    """The backend to build for a policy with `cache`: a whole-denoiser graph backend is refused (the cache runs
    the network block by block, so it would serve nothing), `auto` becomes `eager`."""
    if is_off(cache):
        return backend or "auto"
    if backend in GRAPH_BACKENDS:
        raise CacheError(f"cache={cache} runs the transformer block by block, which backend={backend} cannot (it "
                         "serves the whole denoiser as one graph); use backend=eager (or auto) with the cache, or "
                         "drop cache= to run the graph (docs/caching.md, docs/backends.md)")
    return "eager"


def grids_for(policy: Any) -> list[Grid]:
    """The grids the policy's sampler visits, each with one level per step; a CacheError for per-position levels."""
    grids = probe_grids(policy)
    if any(g is None for g in grids):
        name = policy.sampler.label
        raise CacheError(f"cache=bac caches across the denoising steps of one plan, and sampler {name!r} steps "
                         "every position at its own level (SDP evaluates once per plan: within-plan caching cannot "
                         "help it); try the experiment cache=across_calls (docs/caching.md)")
    return [g for g in grids if g is not None]


def schedule_name(sampler: str, key: str, budget: int, bubbling: int) -> str:
    """`bac-<sampler>-<key>-m<budget>-bu<bubbling>.json`: a schedule's file name in `<checkpoint>/cache/`."""
    return f"bac-{sampler}-{key[:KEY_DIGITS]}-m{budget}-bu{bubbling}.json"


def find_schedule(directory: Path, key: str) -> Path | None:
    """The newest schedule file in `directory` made for `key` (by its `created` stamp), or None."""
    found: list[tuple[str, str, Path]] = []
    for path in directory.glob(f"bac-*-{key[:KEY_DIGITS]}-*.json"):
        if path.name.endswith(".similarity.json"):
            continue  # the plot's figures
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if isinstance(data, dict) and data.get("key") == key:
            found.append((str(data.get("created", "")), path.name, path))
    return max(found)[2] if found else None


def resolve_schedule(policy: Any, cache: str | Path | CacheSchedule, grids: list[Grid], digest: str
                     ) -> CacheSchedule:
    """The schedule `cache` names for this policy (see the module docstring), checked against its weights/grids."""
    sampler = policy.sampler.label
    if isinstance(cache, CacheSchedule):
        schedule = cache
    elif str(cache).strip().lower() == "bac":
        ckpt = getattr(policy, "checkpoint_path", None)
        if ckpt is None:
            raise CacheError("cache=bac looks for the schedule beside the checkpoint, and this policy was not loaded "
                             "from one; pass the schedule's path (cache=PATH)")
        directory = Path(ckpt) / CACHE_DIR
        path = find_schedule(directory, schedule_key(digest, grids)) if directory.is_dir() else None
        if path is None:
            raise CacheError(f"cache=bac: no schedule in {directory} for these weights and sampler {sampler!r} "
                             f"({'; '.join(describe_grid(g) for g in grids)}); calibrate one: rtdp calibrate-cache "
                             f"checkpoint={ckpt} budget=M with the same sampler overrides")
        schedule = load_schedule(path)
    else:
        schedule = load_schedule(cache)
    check_schedule(schedule, digest, policy.denoiser.block_names(), grids, sampler)
    return schedule


def _across_calls(policy: Any, spec: str) -> AcrossCallsHook:
    from rtdp.policy.samplers.streaming import StreamingSampler

    _, _, refresh = spec.partition(":")
    try:
        r = int(refresh) if refresh else 2
    except ValueError:
        raise CacheError(f"cache={spec}: R in across_calls:R is a number of plans >= 2, got {refresh!r}") from None
    if r < 2:
        raise CacheError(f"cache={spec}: R in across_calls:R is a number of plans >= 2 (every R-th recomputes)")
    if not isinstance(policy.sampler, StreamingSampler):
        raise CacheError(f"cache=across_calls is the streaming experiment (SDP's buffer only shifts between "
                         f"plans); sampler {policy.sampler.label!r} starts each plan afresh: use cache=bac, or "
                         "sampler=sdp")
    return AcrossCallsHook(policy.denoiser, shift=policy.sampler.n_action_steps, refresh=r)


def use_cache(policy: Any, cache: str | Path | CacheSchedule | None) -> CallHook | None:
    """Attach the block cache `cache` names to `policy.call_hooks` (replacing any cache attached before) and
    return its hook; None detaches. A CacheError (one line) when it cannot be used."""
    policy.call_hooks[:] = [h for h in policy.call_hooks if not isinstance(h, (BlockCacheHook, AcrossCallsHook))]
    if is_off(cache):
        return None
    require_transformer(policy.denoiser, f"cache={cache if not isinstance(cache, CacheSchedule) else 'bac'}")
    backend = getattr(policy, "backend", None)
    if backend is not None:
        raise CacheError(f"cache= runs the transformer block by block, which backend={backend.name} cannot (it "
                         "serves the whole denoiser as one graph); use_backend(policy, 'eager') first")
    if isinstance(cache, str) and cache.strip().lower().startswith("across_calls"):
        hook: CallHook = _across_calls(policy, cache.strip().lower())
    else:
        grids = grids_for(policy)
        schedule = resolve_schedule(policy, cache, grids, weights_sha256(policy))
        hook = BlockCacheHook(policy.denoiser, schedule)
    policy.call_hooks.append(hook)
    return hook


def cache_hook(policy: Any) -> CallHook | None:
    """The block cache attached to `policy`, if any."""
    return next((h for h in policy.call_hooks if isinstance(h, (BlockCacheHook, AcrossCallsHook))), None)
