"""A block-cache schedule: for each step grid a sampler visits, the steps at which every transformer block is
recomputed (its "update" steps); at the other steps the block's cached residual is added instead.

The schedule is data, written by `rtdp calibrate-cache` beside the checkpoint as versioned JSON and refused when
it was made for other weights or another step grid:

    <checkpoint>/cache/bac-<sampler>-<key>-m<budget>-bu<bubbling>.json
    {"format": "rtdp.bac_schedule", "version": 1,
     "weights_sha256": ...,                     # every parameter and buffer of the denoiser (names, shapes, bytes)
     "key": ...,                                # sha256 of the weights' hash and the grids (its first 12 hex digits
                                                # name the file)
     "blocks": ["layer0.self_attn", "layer0.cross_attn", "layer0.ffn", ...],
     "grids": [{"levels": [99, 98, ...], "budget": 5, "updates": {"layer0.self_attn": [0, 12, ...], ...},
                "bubbled": [...], "caching_error": {...}}, ...],
     "sampler": {...}, "overrides": [...], "budget": 5, "bubbling": 3, "observations": 256, ...}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtdp.policy.caching.grids import CacheError, Grid, describe_grid

FORMAT = "rtdp.bac_schedule"
VERSION = 1
KEY_DIGITS = 12  # hex digits of the key in file names


def schedule_key(weights_sha256: str, grids: Sequence[Sequence[float]]) -> str:
    """sha256 of the weights' hash and the step grids: what a schedule is valid for."""
    payload = {"weights": weights_sha256, "grids": sorted([float(v) for v in g] for g in grids)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class GridSchedule:
    """The update steps of every block on one step grid (`levels`, one per step); step 0 is always an update."""

    levels: Grid
    updates: Mapping[str, tuple[int, ...]]
    budget: int
    bubbled: tuple[str, ...] = ()
    caching_error: Mapping[str, float] = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return len(self.levels)

    def table(self, blocks: Sequence[str]) -> list[list[bool]]:
        """`table[step][block]`: whether the block is recomputed at that step, blocks in `blocks` order."""
        sets = [set(self.updates[b]) for b in blocks]
        return [[k in s for s in sets] for k in range(self.n_steps)]

    @property
    def predicted_block_evals(self) -> int:
        """Block evaluations of one pass over this grid (an uncached pass costs blocks × steps)."""
        return sum(len(u) for u in self.updates.values())

    def to_json(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "budget": self.budget,
                "updates": {b: list(u) for b, u in self.updates.items()}, "bubbled": list(self.bubbled),
                "caching_error": dict(self.caching_error), "predicted_block_evals": self.predicted_block_evals,
                "uncached_block_evals": len(self.updates) * self.n_steps}


@dataclass
class CacheSchedule:
    """Update steps per block for each grid a sampler visits, made for one denoiser's weights."""

    weights_sha256: str
    blocks: tuple[str, ...]
    grids: tuple[GridSchedule, ...]
    meta: dict[str, Any] = field(default_factory=dict)  # how it was made: sampler, budget, observations, ...
    path: Path | None = None  # the file it was read from or written to

    @property
    def key(self) -> str:
        return schedule_key(self.weights_sha256, [g.levels for g in self.grids])

    def for_grid(self, levels: Grid | None) -> GridSchedule | None:
        """The schedule of the grid `levels`, or None when it was not made for that grid."""
        return next((g for g in self.grids if levels is not None and g.levels == tuple(levels)), None)

    def label(self) -> str:
        """Where the schedule came from, for messages."""
        return str(self.path) if self.path is not None else "the block-cache schedule"

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "weights_sha256": self.weights_sha256, "key": self.key,
                "blocks": list(self.blocks), "grids": [g.to_json() for g in self.grids], **self.meta}

    def save(self, path: str | Path) -> Path:
        """Write the schedule atomically (temp file, fsync, rename); returns the path."""
        from rtdp.metrics import write_json

        self.path = write_json(Path(path), self.to_json())
        return self.path

    @classmethod
    def all_update(cls, blocks: Sequence[str], grids: Sequence[Sequence[float]], weights_sha256: str
                   ) -> CacheSchedule:
        """A schedule that recomputes every block at every step (it must reproduce the uncached output)."""
        return cls(weights_sha256, tuple(blocks), tuple(
            GridSchedule(tuple(float(v) for v in g), {b: tuple(range(len(g))) for b in blocks}, len(g)) for g in grids))


def parse_schedule(data: Any, source: str = "the schedule") -> CacheSchedule:
    """A `CacheSchedule` from its JSON form, or a CacheError naming what is wrong with it."""
    def bad(reason: str) -> CacheError:
        return CacheError(f"{source} is not a valid block-cache schedule ({reason}); recalibrate it: "
                          "rtdp calibrate-cache checkpoint=RUN budget=M")

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise bad(f"format {found!r}, expected {FORMAT!r}")
    if data.get("version") != VERSION:
        raise bad(f"version {data.get('version')!r}; this rtdp reads version {VERSION}")
    weights, blocks, grids = data.get("weights_sha256"), data.get("blocks"), data.get("grids")
    if not isinstance(weights, str) or len(weights) != 64:
        raise bad("no weights_sha256")
    if not isinstance(blocks, list) or not blocks or not all(isinstance(b, str) for b in blocks):
        raise bad("no block names")
    if not isinstance(grids, list) or not grids:
        raise bad("no grids")
    parsed = []
    for i, g in enumerate(grids):
        try:
            levels = tuple(float(v) for v in g["levels"])
            updates_raw = g["updates"]
            budget = int(g["budget"])
            bubbled = tuple(str(b) for b in g.get("bubbled", ()))
            errors = {str(k): float(v) for k, v in dict(g.get("caching_error", {})).items()}
        except (KeyError, TypeError, ValueError) as err:
            raise bad(f"grid {i}: {type(err).__name__} {err}") from None
        if not levels:
            raise bad(f"grid {i} has no steps")
        if not isinstance(updates_raw, dict) or set(updates_raw) != set(blocks):
            raise bad(f"grid {i}'s updates do not name exactly the schedule's {len(blocks)} blocks")
        updates = {}
        for b in blocks:
            steps = updates_raw[b]
            if not isinstance(steps, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in steps):
                raise bad(f"grid {i}, block {b}: update steps must be a list of integers")
            if not steps or steps[0] != 0 or sorted(set(steps)) != steps or steps[-1] >= len(levels):
                raise bad(f"grid {i}, block {b}: update steps must be increasing, start at 0 and stay below "
                          f"{len(levels)}")
            updates[b] = tuple(steps)
        parsed.append(GridSchedule(levels, updates, budget, bubbled, errors))
    meta = {k: v for k, v in data.items() if k not in ("format", "version", "weights_sha256", "key", "blocks", "grids")}
    return CacheSchedule(weights, tuple(blocks), tuple(parsed), meta)


def load_schedule(path: str | Path) -> CacheSchedule:
    """The schedule at `path`; a CacheError (one line) when it is missing, not JSON or not a valid schedule."""
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"cache={path}: no such schedule file; calibrate one with rtdp calibrate-cache "
                         "checkpoint=RUN budget=M (it prints the cache= to use)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        first = " ".join(str(err).split())
        raise CacheError(f"{path} is not a valid block-cache schedule (not JSON: {first}); recalibrate it: "
                         "rtdp calibrate-cache checkpoint=RUN budget=M") from None
    schedule = parse_schedule(data, str(path))
    schedule.path = path
    return schedule


def check_schedule(schedule: CacheSchedule, weights_sha256: str, blocks: Sequence[str],
                   grids: Sequence[Grid], sampler: str) -> None:
    """Refuse (CacheError, one line naming both) a schedule made for other weights, other blocks or without a
    schedule for one of the grids the sampler visits."""
    where = schedule.label()
    if schedule.weights_sha256 != weights_sha256:
        made = schedule.meta.get("checkpoint")
        made = f" ({made})" if made else ""
        raise CacheError(f"{where} was made for other weights: sha256 {schedule.weights_sha256[:12]}{made}, this "
                         f"policy's are {weights_sha256[:12]}; recalibrate: rtdp calibrate-cache checkpoint=RUN "
                         "budget=M")
    if tuple(schedule.blocks) != tuple(blocks):
        raise CacheError(f"{where} names {len(schedule.blocks)} blocks ({schedule.blocks[0]} …), this denoiser has "
                         f"{len(blocks)} ({blocks[0]} …); recalibrate it for this checkpoint")
    for grid in grids:
        if schedule.for_grid(grid) is None:
            made = "; ".join(describe_grid(g.levels) for g in schedule.grids)
            by = schedule.meta.get("sampler", {}).get("name") if isinstance(schedule.meta.get("sampler"), dict) else None
            by = f" (sampler {by})" if by else ""
            raise CacheError(f"{where} was made for the step grid {made}{by}, sampler {sampler!r} visits "
                             f"{describe_grid(grid)}; calibrate for this sampler: rtdp calibrate-cache "
                             "checkpoint=RUN budget=M with the same sampler overrides")
