"""GPU inference latency: eager torch vs `backend=cuda_graph` (float32 and bf16 where it passes the check), one
short run for a GPU machine (< 5 minutes).

Per model (the CPU-size U-Net 64/128/256, the paper-size U-Net 256/512/1024, the transformer 8x256; random
weights, PushT keypoint shapes): one denoiser evaluation at batch 1 and 10, a DDIM-10 chunk (`policy.act`) at
batch 1 and SDP's per-control-step call (U-Nets), each timed with CUDA synchronisation, interleaved; LeRobot
0.6.1's DiffusionPolicy DDIM-10 chunk at the CPU size when it is installed. Prints a table and the graphs'
differences from eager, and writes benchmarks/results/gpu_latency.json.

    .venv/bin/python benchmarks/gpu_latency.py                 # on a machine with a CUDA device
    .venv/bin/python benchmarks/gpu_latency.py --rounds 30 --models unet_cpu
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtdp import metrics
from rtdp.types import PlanContext

OBS = {"keypoint": (9, 2), "agent_pos": (2,)}
MODELS = {  # name -> train-config overrides
    "unet_cpu": ["policy=sdp_unet"],
    "unet_paper": ["policy=sdp_unet", "policy.denoiser.down_dims=[256,512,1024]", "policy.denoiser.level_embed_dim=256"],
    "transformer": ["policy=transformer"],
}
VARIANTS = {"eager": ("eager", {}), "graph_fp32": ("cuda_graph", {"precision": "fp32"}),
            "graph_auto": ("cuda_graph", {"precision": "auto"})}


def policies(model: str, sampler: dict[str, Any]) -> dict[str, Any]:
    """The model with each variant's backend attached (the same weights for all)."""
    from hydra import compose, initialize_config_module

    from rtdp.normalizer import Normalizer
    from rtdp.policy.backends import use_backend
    from rtdp.policy.factory import make_policy

    rng = np.random.default_rng(0)
    norm = Normalizer.fit({"keypoint": rng.uniform(0, 512, (256, 9, 2)), "agent_pos": rng.uniform(0, 512, (256, 2)),
                           "action": rng.uniform(0, 512, (256, 2))})
    with initialize_config_module("rtdp.configs", version_base=None):
        cfg = compose("train", overrides=[*MODELS[model], "task=pusht_keypoints"])
    torch.manual_seed(0)
    ref = make_policy(cfg.policy, sampler, OBS, 2, norm)
    out = {}
    for name, (backend, opts) in VARIANTS.items():
        p = make_policy(cfg.policy, sampler, OBS, 2, norm)
        p.load_state_dict(ref.state_dict())
        p = p.to("cuda").eval()
        if backend != "eager":
            use_backend(p, backend, batches=(1, 10), **opts)
        out[name] = p
    return out


def timed_cuda(fn: Callable[[], Any]) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def interleaved(cases: dict[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, float]]:
    names = list(cases)
    with torch.no_grad():
        for _ in range(3):
            for n in names:
                cases[n]()
        times = {n: [] for n in names}
        for r in range(rounds):
            shift = r % len(names)
            for n in names[shift:] + names[:shift]:
                times[n].append(timed_cuda(cases[n]))
    return {n: metrics.summarize_latencies(v) for n, v in times.items()}


def window(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"keypoint": rng.uniform(100, 400, (batch, 2, 9, 2)).astype(np.float32),
            "agent_pos": rng.uniform(100, 400, (batch, 2, 2)).astype(np.float32)}


def model_cases(model: str) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    cases: dict[str, Callable[[], Any]] = {}
    checks: dict[str, Any] = {}
    ddim = policies(model, {"name": "ddim", "num_steps": 10})
    for variant, p in ddim.items():
        if p.backend is not None:
            checks[variant] = p.backend.describe()
        for batch in (1, 10):
            gen = torch.Generator(device="cuda").manual_seed(batch)
            cond = torch.randn(batch, p.n_obs_steps, p.encoder.out_dim, device="cuda", generator=gen)
            x = torch.randn(batch, p.horizon, p.action_dim, device="cuda", generator=gen)
            call = p.denoiser_call(cond)
            level = torch.full((batch,), 50.0, device="cuda")
            cases[f"{model}/eval/b{batch}/{variant}"] = lambda call=call, x=x, level=level: call.forward(x, level)
        rng = np.random.default_rng(0)
        cases[f"{model}/ddim10_chunk/b1/{variant}"] = lambda p=p, rng=rng: p.act(window(1, rng))
    if model.startswith("unet"):
        for variant, p in policies(model, {"name": "sdp"}).items():
            rng = np.random.default_rng(0)
            p.act(window(1, rng))  # the first, full call fills the streaming buffer
            cases[f"{model}/sdp_step/b1/{variant}"] = (
                lambda p=p, rng=rng: p.act(window(1, rng), PlanContext(n_executed=1)))
    return cases, checks


def lerobot_case() -> Callable[[], Any] | None:
    try:
        from lerobot.configs.types import FeatureType, PolicyFeature
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
        from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    except ImportError:
        return None
    cfg = DiffusionConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (2,)),
                        "observation.environment_state": PolicyFeature(FeatureType.ENV, (18,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        horizon=16, n_obs_steps=2, n_action_steps=8, down_dims=(64, 128, 256), diffusion_step_embed_dim=128,
        pretrained_backbone_weights=None, noise_scheduler_type="DDIM", num_inference_steps=10, device="cuda")
    lr = DiffusionPolicy(cfg).to("cuda").eval()
    obs = {"observation.state": torch.randn(1, 2, 2, device="cuda"),
           "observation.environment_state": torch.randn(1, 2, 18, device="cuda")}

    def run() -> Any:
        lr.reset()
        return lr.predict_action_chunk(dict(obs))
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_latency.json"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_latency: no CUDA device visible; run this on a GPU machine", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    results, checks = {}, {}
    for model in args.models:
        cases, checks[model] = model_cases(model)
        results.update(interleaved(cases, args.rounds))
        print(f"[gpu_latency] {model} done at {time.perf_counter() - t_start:.0f} s", file=sys.stderr, flush=True)
    lr = lerobot_case()
    if lr is not None:
        results.update(interleaved({"lerobot/ddim10_chunk/b1": lr}, args.rounds))
    rec = metrics.record("gpu_latency", device=torch.cuda.get_device_name(0), torch=torch.__version__,
                         results=results, backend_checks=checks, rounds=args.rounds,
                         wall_s=time.perf_counter() - t_start, loadavg=list(os.getloadavg()),
                         notes=["random weights, PushT keypoint shapes; times synchronised per call"])
    metrics.write_json(args.out, rec)
    print(f"device {rec['device']}, torch {rec['torch']}")
    print(f"{'case':46s} {'p50 ms':>8s} {'p99 ms':>8s}  x eager p50")
    for name, s in results.items():
        eager = results.get(name.rsplit("/", 1)[0] + "/eager")
        ratio = f"{s['p50_ms'] / eager['p50_ms']:.2f}" if eager else ""
        print(f"{name:46s} {s['p50_ms']:8.3f} {s['p99_ms']:8.3f}  {ratio}")
    for model, c in checks.items():
        for variant, d in c.items():
            graphs = {b: f"{g['max_abs_diff']:.2g}" for b, g in d.get("graphs", {}).items()}
            print(f"{model}/{variant}: precision {d.get('precision')}, max abs diff vs eager per batch {graphs}"
                  + (f", bf16 probe diff {d['bf16_max_abs_diff']:.2g}" if "bf16_max_abs_diff" in d else ""))
    print(f"-> {args.out} ({rec['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
