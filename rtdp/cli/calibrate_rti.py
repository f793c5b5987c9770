"""`rtdp calibrate-rti checkpoint=PATH [episodes=N] [windows=256] [tolerance=1.1x] [seed=0] [out=DIR]
[sampler.num_steps=10 sampler.n_action_steps=2 sampler.discrete_dims=[4] ...]`: sweep the warm-start level τ of
`sampler=rti_renoise` on recorded observations of the checkpoint's task (its validation episodes) and pick the
smallest τ whose executed actions stay within `tolerance` of the full sampler's.

`tolerance` is in normalised action units (`tolerance=0.05`) or relative to the noise floor, the deviation
between two full samples (`tolerance=1.1x`, the default; docs/streaming.md says how it was chosen). Writes
`rti_calibration.json` + `.png` to `out` (default: `<run>/rti_calibration`) and prints the override to use
(`sampler=rti_renoise sampler.tau=...`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rtdp.cli.args import Key, parse_keys
from rtdp.cli.main import CLIError

USAGE = ("rtdp calibrate-rti checkpoint=PATH [episodes=N] [windows=256] [tolerance=1.1x|ABS] [seed=0] "
         "[out=DIR] [threads=N] [progress=true] [sampler.KEY=VALUE ...]")
KEYS = {
    "checkpoint": Key("str", required=True, help="a run or checkpoint directory written by `rtdp train`"),
    "episodes": Key("int", None, min=1, help="validation episodes to take windows from (default: all)"),
    "windows": Key("int", 256, min=1, help="observation-window pairs to calibrate on"),
    "tolerance": Key("str", "1.1x", help="normalised action units (0.05) or a multiple of the noise floor (1.1x)"),
    "seed": Key("int", 0, min=0, help="window choice and sampler noise"),
    "out": Key("str", help="directory for rti_calibration.json and .png (default <run>/rti_calibration)"),
    "threads": Key("int", None, min=1, help="torch intra-op threads"),
    "progress": Key("bool", True, help="show a progress bar"),
}


def _is_override(key: str) -> bool:
    return "." in key or key.lstrip("+") in ("sampler", "task")


def parse_tolerance(text: str) -> tuple[float, bool]:
    """`0.05` -> (0.05, absolute); `1.25x` -> (1.25, relative to the noise floor)."""
    relative = text.lower().endswith("x")
    try:
        value = float(text[:-1] if relative else text)
    except ValueError:
        raise CLIError(f"tolerance must be a number (normalised action units, e.g. 0.05) or a multiple of the "
                       f"noise floor (e.g. 1.25x), got {text!r}") from None
    if not value > 0 or not np.isfinite(value):
        raise CLIError(f"tolerance must be positive, got {text!r}")
    return value, relative


def observation_pairs(policy: Any, cfg: Any, n_exec: int, episodes: int | None, windows: int,
                      seed: int) -> tuple[dict, dict, dict[str, Any]]:
    """Normalised observation windows `(at t, at t + n_exec)` from the validation episodes of the checkpoint's
    task (the training split's held-out episodes; all episodes if it held none out)."""
    import torch
    from omegaconf import OmegaConf

    from rtdp.datasets import ReplayBuffer
    from rtdp.datasets.dataset import SequenceDataset
    from rtdp.train.trainer import resolve_data_path

    path = resolve_data_path(cfg.task.dataset.path)
    if not path.exists():
        raise CLIError(f"the checkpoint's dataset {str(path)!r} does not exist; calibration replays its recorded "
                       "observations: create it (rtdp collect) or pass task.dataset.path=...")
    obs_spec = OmegaConf.to_container(cfg.task.obs, resolve=True)
    action_spec = OmegaConf.to_container(cfg.task.action, resolve=True)
    keys = sorted({spec["source"] for spec in [*obs_spec.values(), action_spec]})
    buffer = ReplayBuffer.copy_to_memory(ReplayBuffer.open(path, "r"), keys)  # zarr chunk reads per batch are slow
    common = {"horizon": policy.horizon, "n_obs_steps": policy.n_obs_steps, "n_action_steps": 1}
    split = SequenceDataset(buffer, obs_spec, action_spec, val_ratio=float(cfg.training.get("val_ratio", 0.0)),
                            seed=int(cfg.get("seed", 0)), **common)
    mask = split.val_mask if split.val_mask.any() else np.ones(buffer.n_episodes, dtype=bool)
    chosen = np.flatnonzero(mask)
    note = "validation episodes" if split.val_mask.any() else "all episodes (the run held none out)"
    if episodes is not None:
        if episodes > len(chosen):
            note += f"; asked for {episodes}, only {len(chosen)} exist"
        chosen = chosen[:episodes]
    ep_mask = np.zeros(buffer.n_episodes, dtype=bool)
    ep_mask[chosen] = True
    ds = SequenceDataset(buffer, obs_spec, action_spec, episode_mask=ep_mask, normalizer=policy.normalizer, **common)
    rows = ds.sampler.indices
    virtual_start = rows[:, 0].astype(np.int64) - rows[:, 2].astype(np.int64)  # episode start + t (padding < 0)
    episode = np.searchsorted(np.asarray(buffer.episode_ends), rows[:, 0], side="right")
    i = np.arange(len(rows) - n_exec)
    ok = (episode[i] == episode[i + n_exec]) & (virtual_start[i + n_exec] - virtual_start[i] == n_exec)
    pairs = i[ok]
    if pairs.size == 0:
        raise CLIError(f"the chosen episodes hold no pair of windows {n_exec} steps apart; use more episodes")
    if pairs.size > windows:
        pairs = np.sort(np.random.default_rng(seed).choice(pairs, windows, replace=False))
    now, nxt = ds.sample_batch(pairs)["obs"], ds.sample_batch(pairs + n_exec)["obs"]
    dev = policy.device
    to = lambda d: {k: torch.as_tensor(v).to(dev) for k, v in d.items()}
    return to(now), to(nxt), {"dataset": str(path), "episodes": [int(e) for e in chosen], "source": note}


def main(argv: list[str]) -> int:
    opts, overrides = parse_keys(argv, KEYS, USAGE, __doc__, rest=_is_override,
                                 tail="sampler.KEY=VALUE (and task.KEY=VALUE) override the checkpoint's config.")
    tolerance_arg = opts["tolerance"]
    tol_value, tol_relative = parse_tolerance(tolerance_arg)
    episodes, windows, seed, threads, progress = (opts[k] for k in ("episodes", "windows", "seed", "threads",
                                                                      "progress"))
    ckpt_arg = Path(opts["checkpoint"])
    if not ckpt_arg.exists():
        raise CLIError(f"checkpoint={ckpt_arg} does not exist; pass a run directory or checkpoints/step_* "
                       "written by `rtdp train`")

    import torch

    if threads:
        torch.set_num_threads(threads)
    from rtdp import metrics
    from rtdp.policy.calibration import pick_tau, plot_sweep, sweep_rti
    from rtdp.policy.loading import load_policy

    try:  # the policy with the variant, so the user's sampler.* overrides are checked by the sampler itself
        policy = load_policy(ckpt_arg, ["sampler=rti_renoise", *overrides])
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise CLIError(f"cannot load {ckpt_arg}: {err}") from None
    rti = policy.sampler
    n_exec = rti.n_action_steps
    out = Path(opts["out"]) if opts["out"] is not None else _default_out(policy.checkpoint_path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"out={out} is a file; give a directory for rti_calibration.json and .png")
    now, nxt, source = observation_pairs(policy, policy.config, n_exec, episodes, windows, seed)
    n = next(iter(now.values())).shape[0]
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"RTI sweep over {n} windows", total=-(-n // 128))
        result = sweep_rti(policy, now, nxt, num_steps=rti.num_steps, n_exec=n_exec,
                           discrete_dims=rti.discrete_dims, discrete_mode=rti.discrete_mode,
                           discrete_hysteresis=rti.discrete_hysteresis, generator=gen,
                           on_point=lambda: bar.advance(task))
    floor = result["noise_floor"]["deviation_mean"]
    tolerance = tol_value * floor if tol_relative else tol_value
    chosen = pick_tau(result["points"], tolerance)
    if chosen is None:
        best = min(result["points"], key=lambda p: p["deviation_mean"])
        raise CLIError(f"no tau is within tolerance {tolerance:.4g} (normalised units) of the full sampler: the best "
                       f"is tau={best['tau']:g} at {best['deviation_mean']:.4g}, the noise floor is {floor:.4g}; "
                       f"raise tolerance (e.g. tolerance={best['deviation_mean'] / max(floor, 1e-12) * 1.05:.2f}x) "
                       "or calibrate with more windows")
    variant = {k: v for k, v in rti.describe().items() if k.startswith("discrete") or k in ("num_steps", "n_action_steps")}
    rec = metrics.record("rti_calibration", checkpoint=str(policy.checkpoint_path), **source, rti=variant,
                         tolerance=tolerance, tolerance_arg=tolerance_arg,
                         chosen={**chosen, "override": f"sampler=rti_renoise sampler.tau={chosen['tau']:g}"}, **result)
    fig = plot_sweep(result, tolerance, chosen)
    png, js = metrics.save_figure(fig, out / "rti_calibration.png", rec)
    print(json.dumps({"chosen_tau": chosen["tau"], "warm_steps": chosen["warm_steps"],
                      "nfe_per_action": chosen["nfe_per_action"], "deviation_mean": chosen["deviation_mean"],
                      "noise_floor": floor, "tolerance": tolerance, "json": str(js), "plot": str(png)}))
    print(f"use: sampler=rti_renoise sampler.tau={chosen['tau']:g}")
    return 0


def _default_out(ckpt: Path) -> Path:
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt
    return run / "rti_calibration"
