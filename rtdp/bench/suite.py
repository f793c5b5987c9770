"""A benchmark suite as data: rows of (checkpoint or training preset, sampler overrides, backend, delay, seeds),
read from YAML and checked before anything runs, so a typo fails in one line instead of an hour in."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rtdp.cli.args import BACKENDS
from rtdp.envs.execution import EXECUTIONS
from rtdp.envs.remote import is_address

ROW_KEYS = {"name", "checkpoint", "train", "overrides", "task", "obs_mode", "backend", "cache", "delay", "execution",
            "episodes", "seed", "seed_role", "n_envs", "max_steps", "only_task", "timing_calls", "group",
            "baseline", "target_reference", "env"}
SUITE_KEYS = {"name", "results", "workers", "on_missing", "executor", "ray_address", "defaults", "rows"}
SEED_ROLES = ("report", "tuning")
# row keys that change how a row is labelled, made or reached, not its figures: left out of its result's key
SETTINGS_NOT_FIGURES = ("group", "baseline", "target_reference", "train", "env")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SuiteError(ValueError):
    """A suite that cannot run as written: the message names the file, the row and the key."""


@dataclass(frozen=True)
class Row:
    """One evaluation: a checkpoint under a sampler and its overrides, on `episodes` seeds from `seed`."""

    name: str
    checkpoint: str
    train: tuple[str, ...] = ()     # `rtdp train` overrides that make `checkpoint` when it is missing
    overrides: tuple[str, ...] = ()  # policy overrides, as `rtdp eval checkpoint=... KEY=VALUE` takes them
    task: str | None = None          # default: the checkpoint's (a `lerobot:` checkpoint names none: required)
    obs_mode: str | None = None      # with task: the env's observation mode (default: the env's own)
    backend: str = "auto"
    cache: str | None = None
    delay: int = 0
    execution: str = "naive"
    episodes: int = 50
    seed: int = 0
    seed_role: str = "report"        # report | tuning: the report says which seeds each figure comes from
    n_envs: int = 2
    max_steps: int | None = None
    only_task: str | None = None
    env: str | None = None           # the address of an `rtdp serve-env` running the task (robosuite's own venv)
    timing_calls: int = 20           # batch-1 plans timed after the episodes (0: no timing)
    group: str | None = None         # the report's table (default: the task)
    baseline: bool = False           # the row the group's ratios are taken against
    target_reference: bool = False   # the row the fast-sampler target is read against (default: the baseline)

    def key(self) -> str:
        """A hash of everything that decides the row's figures: a stored result with another key is stale."""
        spec = {k: v for k, v in asdict(self).items() if k not in SETTINGS_NOT_FIGURES}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Suite:
    name: str
    path: Path
    results: Path
    workers: int
    on_missing: str                  # train | report
    rows: list[Row] = field(default_factory=list)
    executor: str = "local"          # local: worker processes here | ray: Ray tasks (pip install 'rtdp[ray]')
    ray_address: str | None = None   # executor ray: the cluster (None: a local Ray started for the run)

    def select(self, only: list[str] | None) -> list[Row]:
        """The rows named in `only` (all when None); an unknown name lists the suite's rows."""
        if not only:
            return list(self.rows)
        names = {r.name for r in self.rows}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise SuiteError(f"{self.path}: no row named {', '.join(unknown)}; its rows: {', '.join(sorted(names))}")
        return [r for r in self.rows if r.name in only]


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file; relative paths in it are relative to the current directory, as on the CLI."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SuiteError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite is a mapping with 'name' and 'rows'")
    _unknown(raw, SUITE_KEYS, f"{path}")
    name = raw.get("name") or path.stem
    if not _NAME.match(str(name)):
        raise SuiteError(f"{path}: name {name!r} must be letters, digits, '_', '.', '-'")
    on_missing = raw.get("on_missing", "report")
    if on_missing not in ("train", "report"):
        raise SuiteError(f"{path}: on_missing must be 'train' or 'report', got {on_missing!r}")
    workers = raw.get("workers", "auto")
    if workers == "auto":
        workers = os.cpu_count() or 1
    if not isinstance(workers, int) or workers < 1:
        raise SuiteError(f"{path}: workers must be a positive integer or 'auto', got {workers!r}")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise SuiteError(f"{path}: defaults must be a mapping of row keys")
    _unknown(defaults, ROW_KEYS - {"name"}, f"{path}: defaults")
    rows_raw = raw.get("rows")
    if not isinstance(rows_raw, list) or not rows_raw:
        raise SuiteError(f"{path}: 'rows' must be a non-empty list")
    rows = [_row({**defaults, **r} if isinstance(r, dict) else r, i, path) for i, r in enumerate(rows_raw)]
    seen: set[str] = set()
    for r in rows:
        if r.name in seen:
            raise SuiteError(f"{path}: two rows are named {r.name!r}; row names must be unique")
        seen.add(r.name)
    executor = raw.get("executor", "local")
    if executor not in ("local", "ray"):
        raise SuiteError(f"{path}: executor must be 'local' or 'ray', got {executor!r}")
    results = Path(raw.get("results") or f"runs/bench/{name}")
    return Suite(str(name), path, results, int(workers), on_missing, rows, executor, raw.get("ray_address"))


def _unknown(d: dict, allowed: set[str], where: str) -> None:
    bad = sorted(set(d) - allowed)
    if bad:
        raise SuiteError(f"{where}: unknown key {', '.join(map(repr, bad))}; known: {', '.join(sorted(allowed))}")


def _row(raw: Any, i: int, path: Path) -> Row:
    where = f"{path}: row {i + 1}"
    if not isinstance(raw, dict):
        raise SuiteError(f"{where} is not a mapping")
    _unknown(raw, ROW_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SuiteError(f"{where}: needs a name of letters, digits, '_', '.', '-' (got {name!r})")
    where = f"{path}: row {name!r}"
    if not isinstance(raw.get("checkpoint"), str):
        raise SuiteError(f"{where}: needs checkpoint: PATH (a run directory written by `rtdp train`, or "
                         "lerobot:DIR for a policy saved by LeRobot)")
    if raw["checkpoint"].startswith("lerobot:") and not raw.get("task"):
        raise SuiteError(f"{where}: a LeRobot checkpoint does not say which env it was trained for: add task: "
                         "(and obs_mode:, e.g. task: pusht, obs_mode: keypoints)")
    if raw.get("obs_mode") is not None and not raw.get("task"):
        raise SuiteError(f"{where}: obs_mode: goes with task: (without it the checkpoint's own env is used)")
    kw: dict[str, Any] = {"name": name, "checkpoint": raw["checkpoint"]}
    for key in ("train", "overrides"):
        value = raw.get(key, [])
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
            raise SuiteError(f"{where}: {key} must be a list of KEY=VALUE overrides, got {value!r}")
        kw[key] = tuple(value)
    ints = {"delay": 0, "episodes": 1, "seed": 0, "n_envs": 1, "max_steps": 1, "timing_calls": 0}
    for key, low in ints.items():
        if key in raw and raw[key] is not None:
            if not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < low:
                raise SuiteError(f"{where}: {key} must be an integer >= {low}, got {raw[key]!r}")
            kw[key] = raw[key]
    for key in ("task", "obs_mode", "cache", "only_task", "group", "execution", "backend", "seed_role", "env"):
        if raw.get(key) is not None:
            kw[key] = str(raw[key])
    if kw.get("backend", "auto") not in BACKENDS:
        raise SuiteError(f"{where}: backend must be one of {', '.join(BACKENDS)}, got {kw['backend']!r}")
    if kw.get("seed_role", "report") not in SEED_ROLES:
        raise SuiteError(f"{where}: seed_role must be 'report' or 'tuning', got {kw['seed_role']!r}")
    if kw.get("execution", "naive") not in EXECUTIONS:
        raise SuiteError(f"{where}: execution must be one of {', '.join(EXECUTIONS)}, got {kw['execution']!r}")
    if kw.get("env") is not None and not is_address(kw["env"]):
        raise SuiteError(f"{where}: env must be the address of an `rtdp serve-env` (tcp://HOST:PORT or ipc://PATH), "
                         f"got {kw['env']!r}")
    kw["baseline"] = bool(raw.get("baseline", False))
    kw["target_reference"] = bool(raw.get("target_reference", False))
    return Row(**kw)
