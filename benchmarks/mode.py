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
The JSON is rewritten after every cell and a rerun skips the cells already there with the same settings, so a
crash loses nothing.

    .venv/bin/python benchmarks/mode.py                                  # every model with a checkpoint
    .venv/bin/python benchmarks/mode.py --smoke --out /tmp/mode.json     # tiny untrained weights: accounting only
    .venv/bin/python benchmarks/mode.py --match                          # dense widths matching policy=mode
    .venv/bin/python benchmarks/mode.py --accounting-only --out benchmarks/results/mode_latency.json  # no episodes
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


def chunk_latencies(policy: Any, variants: list[str], n_calls: int) -> dict[str, dict[str, float]]:
    """Per-chunk `act` latency at batch 1 on a fixed observation for each inference variant of one policy (p50/p99
    in ms), the variants' calls interleaved so a change in the machine's load reaches them alike; two warm-up
    rounds first."""
    from rtdp.types import PlanContext

    obs = fixed_obs(policy)
    samples: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(n_calls + 2):
        for variant in variants:
            set_variant(policy, variant)
            policy.reset()
            t0 = time.perf_counter()
            policy.act(obs, PlanContext(generator=torch.Generator().manual_seed(i)))
            if i >= 2:
                samples[variant].append(time.perf_counter() - t0)
    set_variant(policy, variants[0])
    return {v: summarize_latencies(x) for v, x in samples.items()}


def set_variant(policy: Any, variant: str) -> None:
    """Switch a MoDE policy's expert caching for `mode` / `mode_uncached` (other variants: nothing to switch)."""
    if hasattr(policy.denoiser, "expert_cache"):
        policy.denoiser.expert_cache = not variant.endswith("_uncached")


def accounting_cells(policy: Any, variants: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Parameters, counted FLOPs per denoiser evaluation and chunk latency of each inference variant."""
    from rtdp.policy.accounting import flops_per_evaluation, parameter_counts

    counts = parameter_counts(policy.denoiser)
    latency = chunk_latencies(policy, variants, args.latency_calls)
    cells = {}
    for variant in variants:
        set_variant(policy, variant)
        cells[variant] = {"parameters": counts, "active_share": counts["active"] / counts["total"],
                          **flops_per_evaluation(policy, fixed_obs(policy)), "latency": latency[variant],
                          "sampler": policy.sampler.describe(), "threads": args.threads,
                          "loadavg": list(os.getloadavg())}
    set_variant(policy, variants[0])
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


def preset_accounting() -> dict[str, Any]:
    """Untrained `policy=mode` at its configured size (cached and uncached) and the dense transformers matching
    its active and total parameters: parameters and counted FLOPs per denoiser evaluation (MT10 observations)."""
    from omegaconf import OmegaConf

    from rtdp.policy.accounting import flops_per_evaluation, parameter_counts
    from rtdp.policy.factory import make_policy

    widths = matching_widths()
    mode = smoke_policy_full()
    out: dict[str, Any] = {"widths": widths}
    for variant in ("mode", "mode_uncached"):
        set_variant(mode, variant)
        out[variant] = {"parameters": parameter_counts(mode.denoiser), **flops_per_evaluation(mode, fixed_obs(mode))}
    sampler = OmegaConf.load(REPO / "rtdp" / "configs" / "sampler" / "ddim.yaml")
    for key in ("dense_active", "dense_total"):
        cfg = OmegaConf.load(REPO / "rtdp" / "configs" / "policy" / "transformer.yaml")
        for item in widths[key]["override"].split()[1:]:  # policy.denoiser.KEY=VALUE
            name, value = item.removeprefix("policy.denoiser.").split("=")
            cfg.denoiser[name] = int(value)
        torch.manual_seed(0)
        dense = make_policy(cfg, sampler, MT10_OBS, MT10_ACTION_DIM).eval()
        out[key] = {"parameters": parameter_counts(dense.denoiser), **flops_per_evaluation(dense, fixed_obs(dense))}
    return out


def smoke_policy_full() -> Any:
    """`policy=mode` at its configured size for MT10's observations (untrained)."""
    from omegaconf import OmegaConf

    from rtdp.policy.factory import make_policy

    cfg = OmegaConf.load(REPO / "rtdp" / "configs" / "policy" / "mode.yaml")
    sampler = OmegaConf.load(REPO / "rtdp" / "configs" / "sampler" / "ddim.yaml")
    return make_policy(cfg, sampler, MT10_OBS, MT10_ACTION_DIM).eval()


def targets(rec: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets from what has been measured (a target whose cells are missing is left out)."""
    acc, out = rec["accounting"], {}
    if "mode" in acc:
        out["active_le_60pct_of_total"] = acc["mode"]["active_share"] <= 0.6
    if "mode" in acc and "mode_uncached" in acc:
        out["cached_speedup_vs_uncached"] = (acc["mode_uncached"]["latency"]["p50_ms"]
                                             / acc["mode"]["latency"]["p50_ms"])
        out["cached_ge_1_5x_faster"] = out["cached_speedup_vs_uncached"] >= 1.5
    if "mode" in acc and "dense_total" in acc:
        out["speedup_vs_dense_total"] = acc["dense_total"]["latency"]["p50_ms"] / acc["mode"]["latency"]["p50_ms"]
        out["ge_2x_faster_than_dense_total"] = out["speedup_vs_dense_total"] >= 2.0
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
    if (args.smoke or args.accounting_only) and \
            Path(args.out).resolve() == (REPO / "benchmarks" / "results" / "mode.json").resolve():
        ap.error("--smoke and --accounting-only write partial records: give --out elsewhere than "
                 "benchmarks/results/mode.json (which holds the MT10 cells)")
    from rtdp.envs.metaworld import MT10_TASKS

    out = Path(args.out)
    rec = metrics.record("mode_benchmark", accounting={}, cells={}, mt10={}, settings={})
    if out.is_file() and not args.fresh:
        import json

        rec.update({k: v for k, v in json.loads(out.read_text()).items() if k in ("accounting", "cells", "mt10",
                                                                                 "settings")})
    settings = {"episodes": args.episodes, "seed": args.seed, "max_steps": args.max_steps, "smoke": args.smoke,
                "latency_calls": args.latency_calls, "threads": args.threads}
    if args.accounting_only:
        settings["accounting_only"] = True
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
        rec.setdefault("merged_from", []).append(str(part))
    models = [m for m in args.models if not args.smoke or m in SMOKE]
    for model in models:
        variants = VARIANTS.get(model, [model])
        policy = None
        if any(v not in rec["accounting"] for v in variants) or not args.smoke:
            policy = load_model(model, args)
            if policy is None:
                print(f"mode benchmark: no checkpoint for {model} at {getattr(args, f'{model}_ckpt')}; skipped",
                      file=sys.stderr)
                continue
        if any(v not in rec["accounting"] for v in variants):
            rec["accounting"].update(accounting_cells(policy, variants, args))
            metrics.write_json(out, rec)
        if args.smoke or args.accounting_only:
            continue
        # Success runs for the first variant only: cached and uncached MoDE give the same actions (to float32
        # rounding; tests/policy/test_mode.py), so a second 500 episodes would measure nothing new.
        variant = variants[0]
        set_variant(policy, variant)
        for task in MT10_TASKS:
            key = f"{variant}/{task}"
            if key not in rec["cells"]:
                rec["cells"][key] = task_cell(policy, task, args)
                metrics.write_json(out, rec)
        rec["mt10"][variant] = mt10_summary(rec["cells"], variant)
    rec["targets"] = targets(rec)
    metrics.write_json(out, rec)
    print(f"mode benchmark: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
