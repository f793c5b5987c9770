"""MoDE benchmark: what expert caching buys and what a noise-routed mixture of experts costs against dense
denoisers, and (with trained checkpoints) multitask Meta-World MT10 success.

Models (`--models`, each a checkpoint of `rtdp train task=metaworld_mt10 ...`, docs/mode.md):
- `mode`: `policy=mode`, inferred with expert caching (`mode`) and without (`mode_uncached`, the same weights
  with `policy.denoiser.expert_cache` false);
- `dense_active`, `dense_total`: `policy=transformer` at the width whose parameters match MoDE's active or total
  count (`--match` prints those widths for a MoDE config);
- `unet`: `policy=unet1d`.

Per model: total and active parameters and counted FLOPs per denoiser evaluation (`rtdp.policy.accounting`),
per-chunk latency at batch 1 (p50/p99 over `--latency-calls` plans on a fixed observation, `rtdp.metrics`), and
MT10 success: `--episodes` seeds per task (10 tasks, `only_task` so each task gets its own seeds), each task's
rate and the pooled mean with Wilson 95% intervals (MoDE with caching on only: uncached gives the same actions).
The models loaded by one run are timed interleaved; a speed target is computed only between cells of one timing
run (`timing_run`), never across merged parts.
The JSON is rewritten after every cell and a rerun skips the cells already there with the same settings, so a
crash loses nothing.

    .venv/bin/python benchmarks/mode.py                                  # every model with a checkpoint
    .venv/bin/python benchmarks/mode.py --smoke --out /tmp/mode.json     # tiny untrained weights: accounting only
    .venv/bin/python benchmarks/mode.py --match                          # dense widths matching policy=mode
    .venv/bin/python benchmarks/mode.py --accounting-only --out benchmarks/results/mode_latency.json  # no episodes
    # every model at its trained size, untrained weights, all timed interleaved in one run (speed ratios):
    .venv/bin/python benchmarks/mode.py --untrained --out benchmarks/results/mode_latency_interleaved.json
    # two models at once on two cores (one thread each), then one record with both:
    .venv/bin/python benchmarks/mode.py --models dense_active --out /tmp/dense.json &
    .venv/bin/python benchmarks/mode.py --models mode; wait
    .venv/bin/python benchmarks/mode.py --models mode dense_active --merge /tmp/dense.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtdp import metrics
from rtdp.metrics import score_summary, summarize_latencies, wilson_interval

CHECKPOINTS = {  # model -> default checkpoint (trained by `rtdp train task=metaworld_mt10 ...`)
    "mode": "runs/bench/mt10_mode",
    "dense_active": "runs/bench/mt10_dense_active",
    "dense_total": "runs/bench/mt10_dense_total",
    "unet": "runs/bench/mt10_unet",
}
VARIANTS = {"mode": ["mode", "mode_uncached"]}  # a model's inference variants (default: the model itself)
MT10_OBS = {"state": (39,), "task_onehot": (10,)}
MT10_ACTION_DIM = 4
SMOKE = {  # tiny untrained policies for --smoke: policy config, denoiser overrides
    "mode": ("mode", {"n_layers": 2, "n_heads": 2, "dim": 32}),
    "dense_active": ("transformer", {"n_layers": 2, "n_heads": 2, "dim": 32}),
    "unet": ("unet1d", {"down_dims": [16, 32], "level_embed_dim": 16, "n_groups": 4}),
}


def fixed_obs(policy: Any) -> dict[str, np.ndarray]:
    """A batch-1 observation window of the policy's keys (a one-hot task id where it observes one)."""
    out = {}
    for key, shape in policy.encoder.obs_shapes.items():
        x = np.random.default_rng(0).uniform(-1, 1, size=(1, policy.n_obs_steps, *shape)).astype(np.float32)
        if key == "task_onehot":
            x = np.zeros_like(x)
            x[..., 0] = 1.0
        out[key] = x
    return out


def chunk_latencies(entries: dict[str, Any], n_calls: int) -> dict[str, dict[str, float]]:
    """Per-chunk `act` latency at batch 1 on a fixed observation for each `variant -> policy` entry (p50/p99 in
    ms), every entry's calls interleaved so a change in the machine's load reaches them alike; two warm-up rounds
    first."""
    from rtdp.types import PlanContext

    obs = {variant: fixed_obs(policy) for variant, policy in entries.items()}
    samples: dict[str, list[float]] = {v: [] for v in entries}
    for i in range(n_calls + 2):
        for variant, policy in entries.items():
            set_variant(policy, variant)
            policy.reset()
            t0 = time.perf_counter()
            policy.act(obs[variant], PlanContext(generator=torch.Generator().manual_seed(i)))
            if i >= 2:
                samples[variant].append(time.perf_counter() - t0)
    return {v: summarize_latencies(x) for v, x in samples.items()}


def set_variant(policy: Any, variant: str) -> None:
    """Switch a MoDE policy's expert caching for `mode` / `mode_uncached` (other variants: nothing to switch)."""
    if hasattr(policy.denoiser, "expert_cache"):
        policy.denoiser.expert_cache = not variant.endswith("_uncached")


def accounting_cells(entries: dict[str, Any], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Parameters, counted FLOPs per denoiser evaluation and chunk latency of each `variant -> policy` entry, the
    latencies timed interleaved in one run (`timing_run` names it: only cells of one run give speed ratios)."""
    from rtdp.policy.accounting import flops_per_evaluation, parameter_counts

    run = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    latency = chunk_latencies(entries, args.latency_calls)
    cells = {}
    for variant, policy in entries.items():
        set_variant(policy, variant)
        counts = parameter_counts(policy.denoiser)
        cells[variant] = {"parameters": counts, "active_share": counts["active"] / counts["total"],
                          **flops_per_evaluation(policy, fixed_obs(policy)), "latency": latency[variant],
                          "timing_run": run, "sampler": policy.sampler.describe(), "threads": args.threads,
                          "loadavg": list(os.getloadavg())}
    for policy in entries.values():
        set_variant(policy, "mode")  # expert caching back on, its default at inference
    return cells


def task_cell(policy: Any, task: str, args: argparse.Namespace) -> dict[str, Any]:
    """One MT10 task: `--episodes` seeded episodes with the task's one-hot id."""
    from rtdp.envs.evaluate import evaluate

    torch.manual_seed(args.seed)
    rec = evaluate(policy, "metaworld/mt10", n_episodes=args.episodes, seed=args.seed, n_envs=args.n_envs,
                   max_steps=args.max_steps, progress=False, env_kwargs={"only_task": task})
    return {**score_summary(rec["episodes"]), "nfe_per_action": rec["summary"]["nfe_per_action"],
            "eval_wall_s": rec["summary"]["wall_s"], "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def mt10_summary(cells: dict[str, Any], variant: str) -> dict[str, Any] | None:
    """Mean success over the 10 tasks and the pooled Wilson 95% interval (None until every task is in)."""
    from rtdp.envs.metaworld import MT10_TASKS

    per_task = [cells.get(f"{variant}/{t}") for t in MT10_TASKS]
    if any(c is None for c in per_task):
        return None
    n = sum(c["n"] for c in per_task)
    k = sum(round(c["success_rate"] * c["n"]) for c in per_task)
    return {"mean_success": float(np.mean([c["success_rate"] for c in per_task])), "n": n,
            "pooled_ci95": wilson_interval(k, n)}


def smoke_policy(name: str) -> Any:
    """A tiny untrained policy for MT10's observations (accounting and latency only)."""
    from omegaconf import OmegaConf

    from rtdp.policy.factory import make_policy

    config, denoiser = SMOKE[name]
    cfg = OmegaConf.load(REPO / "rtdp" / "configs" / "policy" / f"{config}.yaml")
    cfg.denoiser = OmegaConf.merge(cfg.denoiser, denoiser)
    sampler = OmegaConf.load(REPO / "rtdp" / "configs" / "sampler" / "ddim.yaml")
    torch.manual_seed(0)
    return make_policy(cfg, sampler, MT10_OBS, MT10_ACTION_DIM).eval()


def load_model(model: str, args: argparse.Namespace) -> Any | None:
    """A model's policy (None: its checkpoint is not there)."""
    if args.smoke:
        return smoke_policy(model)
    from rtdp.policy.loading import load_policy

    ckpt = Path(getattr(args, f"{model}_ckpt"))
    if not ckpt.exists():
        return None
    return load_policy(ckpt, backend="eager")


def matching_widths(n_layers: int = 8, n_heads: int = 4) -> dict[str, Any]:
    """`policy=transformer` widths whose total parameters come closest to `policy=mode`'s active and total."""
    from rtdp.policy.accounting import parameter_counts
    from rtdp.policy.denoiser import DenoiserSpec, make_denoiser

    mode = smoke_policy_full()
    counts = parameter_counts(mode.denoiser)
    spec = DenoiserSpec(MT10_ACTION_DIM, mode.encoder.out_dim, mode.n_obs_steps, mode.horizon)
    sizes = {}
    for dim in range(16 * n_heads, 1024 + 1, 4 * n_heads):
        den = make_denoiser({"type": "transformer", "n_layers": n_layers, "n_heads": n_heads, "dim": dim}, spec)
        sizes[dim] = sum(p.numel() for p in den.parameters())
        if sizes[dim] > 1.5 * counts["total"]:  # past both targets
            break
    pick = lambda target: min(sizes, key=lambda d: abs(sizes[d] - target))
    return {"mode": counts, **{f"dense_{k}": {"override": f"policy=transformer policy.denoiser.n_layers={n_layers} "
                                                          f"policy.denoiser.dim={pick(counts[k])}",
                                              "parameters": sizes[pick(counts[k])]}
                               for k in ("active", "total")}}


def smoke_policy_full() -> Any:
    """`policy=mode` at its configured size for MT10's observations (untrained)."""
    from omegaconf import OmegaConf

    from rtdp.policy.factory import make_policy

    cfg = OmegaConf.load(REPO / "rtdp" / "configs" / "policy" / "mode.yaml")
    sampler = OmegaConf.load(REPO / "rtdp" / "configs" / "sampler" / "ddim.yaml")
    return make_policy(cfg, sampler, MT10_OBS, MT10_ACTION_DIM).eval()


def untrained_policy(model: str, widths: dict[str, Any] | None = None) -> Any:
    """`model` at the configuration it is trained with (`policy=mode` at its preset size, the dense transformers at
    `--match`'s widths, `policy=unet1d`), with untrained weights, for MT10's observations."""
    from omegaconf import OmegaConf

    from rtdp.policy.factory import make_policy

    if model == "mode":
        return smoke_policy_full()
    cfg = OmegaConf.load(REPO / "rtdp" / "configs" / "policy" / ("unet1d.yaml" if model == "unet" else "transformer.yaml"))
    if model != "unet":
        for item in (widths or matching_widths())[model]["override"].split()[1:]:  # policy.denoiser.KEY=VALUE
            name, value = item.removeprefix("policy.denoiser.").split("=")
            cfg.denoiser[name] = int(value)
    sampler = OmegaConf.load(REPO / "rtdp" / "configs" / "sampler" / "ddim.yaml")
    torch.manual_seed(0)
    return make_policy(cfg, sampler, MT10_OBS, MT10_ACTION_DIM).eval()


def preset_accounting() -> dict[str, Any]:
    """Untrained `policy=mode` at its configured size (cached and uncached) and the dense transformers matching
    its active and total parameters: parameters and counted FLOPs per denoiser evaluation (MT10 observations)."""
    from rtdp.policy.accounting import flops_per_evaluation, parameter_counts

    widths = matching_widths()
    mode = smoke_policy_full()
    out: dict[str, Any] = {"widths": widths}
    for variant in ("mode", "mode_uncached"):
        set_variant(mode, variant)
        out[variant] = {"parameters": parameter_counts(mode.denoiser), **flops_per_evaluation(mode, fixed_obs(mode))}
    for key in ("dense_active", "dense_total"):
        dense = untrained_policy(key, widths)
        out[key] = {"parameters": parameter_counts(dense.denoiser), **flops_per_evaluation(dense, fixed_obs(dense))}
    return out


def same_timing_run(acc: dict[str, Any], a: str, b: str) -> bool:
    """Whether two accounting cells were timed interleaved in one run, so their latency ratio means something
    (cells written before `timing_run` was recorded: only one model's variants, which were timed together)."""
    ra, rb = acc[a].get("timing_run"), acc[b].get("timing_run")
    if ra is None and rb is None:
        return any(a in group and b in group for group in VARIANTS.values())
    return ra == rb


def targets(rec: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets from what has been measured (a target whose cells are missing, or whose latencies come
    from different runs, is left out)."""
    acc, out = rec["accounting"], {}
    if "mode" in acc:
        out["active_le_60pct_of_total"] = acc["mode"]["active_share"] <= 0.6
    for other, key, bar in (("mode_uncached", "cached_speedup_vs_uncached", 1.5),
                            ("dense_total", "speedup_vs_dense_total", 2.0)):
        if "mode" in acc and other in acc and same_timing_run(acc, "mode", other):
            out[key] = acc[other]["latency"]["p50_ms"] / acc["mode"]["latency"]["p50_ms"]
            out[f"{key}_meets_{bar}x"] = out[key] >= bar
    mt10 = rec.get("mt10", {})
    if mt10.get("mode") and mt10.get("dense_active"):
        out["mt10_mode_ge_dense_active"] = mt10["mode"]["mean_success"] >= mt10["dense_active"]["mean_success"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(CHECKPOINTS), choices=list(CHECKPOINTS))
    for model, path in CHECKPOINTS.items():
        ap.add_argument(f"--{model.replace('_', '-')}-ckpt", dest=f"{model}_ckpt", default=path)
    ap.add_argument("--episodes", type=int, default=50, help="seeded episodes per MT10 task")
    ap.add_argument("--seed", type=int, default=100000)
    ap.add_argument("--n-envs", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=None, help="episode limit (default: the task's 500)")
    ap.add_argument("--latency-calls", type=int, default=50, help="plans timed per variant at batch 1")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--smoke", action="store_true", help="tiny untrained policies: accounting and latency only")
    ap.add_argument("--accounting-only", action="store_true",
                    help="trained checkpoints, parameters, FLOPs and latency only (no MT10 episodes)")
    ap.add_argument("--untrained", action="store_true",
                    help="each model at its trained configuration with untrained weights: parameters, FLOPs and "
                         "latency only, every model timed interleaved in one run (speed ratios across models)")
    ap.add_argument("--match", action="store_true", help="print the dense widths matching policy=mode and exit")
    ap.add_argument("--fresh", action="store_true", help="rerun cells already in --out")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "mode.json"))
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="fold the cells of these results (runs of --models in parallel, same settings) into --out")
    args = ap.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    torch.set_num_threads(args.threads)
    if args.match:
        import json

        rec = metrics.record("mode_accounting", **preset_accounting())
        metrics.write_json(REPO / "benchmarks" / "results" / "mode_accounting.json", rec)
        print(json.dumps(rec, indent=2))
        return 0
    timing_only = args.smoke or args.accounting_only or args.untrained
    if timing_only and Path(args.out).resolve() == (REPO / "benchmarks" / "results" / "mode.json").resolve():
        ap.error("--smoke, --untrained and --accounting-only write partial records: give --out elsewhere than "
                 "benchmarks/results/mode.json (which holds the MT10 cells)")
    from rtdp.envs.metaworld import MT10_TASKS

    out = Path(args.out)
    rec = metrics.record("mode_benchmark", accounting={}, cells={}, mt10={}, settings={})
    if out.is_file() and not args.fresh:
        import json

        kept = ("accounting", "cells", "mt10", "settings", "merged_from")
        rec.update({k: v for k, v in json.loads(out.read_text()).items() if k in kept})
    settings = {"episodes": args.episodes, "seed": args.seed, "max_steps": args.max_steps, "smoke": args.smoke,
                "latency_calls": args.latency_calls, "threads": args.threads}
    if args.accounting_only or args.untrained:
        settings["accounting_only" if args.accounting_only else "untrained"] = True
    if rec["settings"] and rec["settings"] != settings:
        rec.update(accounting={}, cells={}, mt10={})  # other settings: the stored figures do not compare
    rec["settings"] = settings
    for part in args.merge or []:  # parallel runs, one model each: one record with every model's cells
        import json

        other = json.loads(Path(part).read_text())
        if other.get("settings") != settings:
            ap.error(f"--merge {part} was run with other settings ({other.get('settings')}); rerun it with these")
        for key in ("accounting", "cells"):
            rec[key].update(other.get(key, {}))
        if str(part) not in rec.setdefault("merged_from", []):
            rec["merged_from"].append(str(part))
    models = [m for m in args.models if not args.smoke or m in SMOKE]
    policies = {}
    for model in models:
        variants = VARIANTS.get(model, [model])
        if timing_only and all(v in rec["accounting"] for v in variants):
            continue
        policies[model] = untrained_policy(model) if args.untrained else load_model(model, args)
        if policies[model] is None:
            print(f"mode benchmark: no checkpoint for {model} at {getattr(args, f'{model}_ckpt')}; skipped",
                  file=sys.stderr)
            del policies[model]
    entries = {v: policy for model, policy in policies.items() for v in VARIANTS.get(model, [model])
               if v not in rec["accounting"]}
    if entries:  # every model loaded here is timed in one interleaved run
        rec["accounting"].update(accounting_cells(entries, args))
        metrics.write_json(out, rec)
    for model, policy in ([] if timing_only else policies.items()):
        # Success runs for the first variant only: cached and uncached MoDE give the same actions (to float32
        # rounding; tests/policy/test_mode.py), so a second 500 episodes would measure nothing new.
        variant = VARIANTS.get(model, [model])[0]
        set_variant(policy, variant)
        for task in MT10_TASKS:
            key = f"{variant}/{task}"
            if key not in rec["cells"]:
                rec["cells"][key] = task_cell(policy, task, args)
                metrics.write_json(out, rec)
    for variant in sorted({key.split("/")[0] for key in rec["cells"]}):  # merged parts' models too
        if (summary := mt10_summary(rec["cells"], variant)) is not None:
            rec["mt10"][variant] = summary
    rec["targets"] = targets(rec)
    metrics.write_json(out, rec)
    print(f"mode benchmark: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
