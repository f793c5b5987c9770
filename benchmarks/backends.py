"""CPU inference backends: eager torch vs ONNX Runtime (`backend=onnx`), side by side with LeRobot 0.6.1's
DiffusionPolicy at the same size, with the physical floor beside every ratio.

One run, interleaved (every round times each case once, in a rotating order, at each thread count), batch 1
unless said otherwise, PushT keypoint sizes (state 2 + env state 18 -> action 2, T=16, To=2), the CPU-size
U-Net (64/128/256, level embedding 128; random weights: latency only):
- per denoiser evaluation: rtdp eager, rtdp onnx, LeRobot's U-Net (batch 1 and 10); the transformer
  (8 layers, dim 256, T=10) eager vs onnx;
- a DDIM-10 chunk: `policy.act` (normalise, encode, 10 evaluations) vs LeRobot's `predict_action_chunk`;
- SDP's per-control-step latency (one evaluation per call, streaming) eager vs onnx;
- the floor: FLOPs per evaluation (torch.utils.flop_counter) over this CPU's measured float32 GEMM throughput
  (a 1024^3 matmul) at the same thread count;
- with `--compare-runtimes`, the U-Net evaluation at batch 1 in the runtimes considered for the backend
  (TorchScript freeze, ONNX Runtime, OpenVINO if installed, torch.compile with `--with-compile`: minutes).

    .venv/bin/python benchmarks/backends.py                           # ~3-6 min (first run exports the graphs)
    .venv/bin/python benchmarks/backends.py --threads 1 --rounds 20 --compare-runtimes

Targets (issue 18): DDIM-10 chunk at batch 1 <= 0.35x LeRobot's (1 and 2 threads); SDP per-step p99 <= 1/3 of
eager. Writes benchmarks/results/backends.json (+ .png) through rtdp.metrics, with the load average: timings on
a shared 2-core machine drift several-fold between runs, so only ratios within one run are compared.
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
STATE_DIM, ENV_DIM, ACTION_DIM = 2, 18, 2
CACHE = REPO / "runs" / "bench" / "backends_cache"


# ------------------------------------------------------------------------------------------------ models
def rtdp_policies(cache: Path, backends: list[str], transformer: bool) -> dict[str, Any]:
    """rtdp's CPU-size sdp_unet (the same weights serve DDIM-10 and SDP) and the transformer, each with its
    backends attached to its own policy object."""
    from hydra import compose, initialize_config_module

    from rtdp.normalizer import Normalizer
    from rtdp.policy.backends import use_backend
    from rtdp.policy.factory import make_policy

    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit({"keypoint": rng.uniform(0, 512, (256, 9, 2)),
                                 "agent_pos": rng.uniform(0, 512, (256, 2)), "action": rng.uniform(0, 512, (256, 2))})
    out: dict[str, Any] = {}
    with initialize_config_module("rtdp.configs", version_base=None):
        unet_cfg = compose("train", overrides=["policy=sdp_unet", "task=pusht_keypoints"])
        tf_cfg = compose("train", overrides=["policy=transformer", "task=pusht_keypoints"])
    torch.manual_seed(0)
    ref = make_policy(unet_cfg.policy, {"name": "ddim", "num_steps": 10}, OBS, ACTION_DIM, normalizer).eval()
    for sampler in ("ddim", "sdp"):
        for backend in backends:
            scfg = {"name": "ddim", "num_steps": 10} if sampler == "ddim" else {"name": "sdp"}
            policy = make_policy(unet_cfg.policy, scfg, OBS, ACTION_DIM, normalizer).eval()
            policy.load_state_dict(ref.state_dict())
            use_backend(policy, backend, cache_dir=cache)
            out[f"unet/{sampler}/{backend}"] = policy
    if transformer:
        torch.manual_seed(0)
        tf = make_policy(tf_cfg.policy, {"name": "ddim", "num_steps": 10}, OBS, ACTION_DIM, normalizer).eval()
        for backend in backends:
            policy = make_policy(tf_cfg.policy, {"name": "ddim", "num_steps": 10}, OBS, ACTION_DIM, normalizer).eval()
            policy.load_state_dict(tf.state_dict())
            use_backend(policy, backend, cache_dir=cache)
            out[f"transformer/ddim/{backend}"] = policy
    return out


def lerobot_policy() -> Any:
    """LeRobot 0.6.1's DiffusionPolicy at the same size (U-Net 64/128/256, step embedding 128), DDIM-10."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    cfg = DiffusionConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
                        "observation.environment_state": PolicyFeature(FeatureType.ENV, (ENV_DIM,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        horizon=16, n_obs_steps=2, n_action_steps=8, down_dims=(64, 128, 256), diffusion_step_embed_dim=128,
        pretrained_backbone_weights=None, noise_scheduler_type="DDIM", num_inference_steps=10, device="cpu")
    return DiffusionPolicy(cfg).eval()


# ------------------------------------------------------------------------------------------------ floors
def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call, as torch's FlopCounterMode counts them (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def gemm_flops_per_s(threads: int, n: int = 1024, reps: int = 12) -> float:
    """This CPU's float32 GEMM throughput at `threads` torch threads: the best of `reps` n^3 matmuls."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------- cases
def eval_case(policy: Any, batch: int, seed: int = 0) -> Callable[[], Any]:
    """One denoiser evaluation through the policy's call (its backend's forward, or eager) at `batch`."""
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, policy.n_obs_steps, policy.encoder.out_dim, generator=gen)
    x = torch.randn(batch, policy.horizon, policy.action_dim, generator=gen)
    level = torch.full((batch,), 50.0)
    call = policy.denoiser_call(cond)
    return lambda: call.forward(x, level)


def lerobot_eval_case(lr: Any, batch: int, seed: int = 0) -> Callable[[], Any]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, ACTION_DIM, generator=gen)
    t = torch.full((batch,), 50, dtype=torch.long)
    cond = torch.randn(batch, 2 * (STATE_DIM + ENV_DIM), generator=gen)
    return lambda: lr.diffusion.unet(x, t, global_cond=cond)


def obs_window(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"keypoint": rng.uniform(100, 400, (batch, 2, 9, 2)).astype(np.float32),
            "agent_pos": rng.uniform(100, 400, (batch, 2, 2)).astype(np.float32)}


def chunk_case(policy: Any, batch: int = 1) -> Callable[[], Any]:
    """One DDIM-10 plan from a fresh observation window (`policy.act`)."""
    rng = np.random.default_rng(0)
    return lambda: policy.act(obs_window(batch, rng))


def lerobot_chunk_case(lr: Any, batch: int = 1) -> Callable[[], Any]:
    gen = torch.Generator().manual_seed(0)
    obs = {"observation.state": torch.randn(batch, 2, STATE_DIM, generator=gen),
           "observation.environment_state": torch.randn(batch, 2, ENV_DIM, generator=gen)}

    def run() -> Any:
        lr.reset()
        return lr.predict_action_chunk(dict(obs))
    return run


def sdp_step_case(policy: Any) -> Callable[[], Any]:
    """One SDP control step: a call that executes one action and makes one evaluation (after a first, full
    call that fills the streaming buffer, made here)."""
    rng = np.random.default_rng(0)
    policy.reset()
    policy.act(obs_window(1, rng))

    def step() -> Any:
        return policy.act(obs_window(1, rng), PlanContext(n_executed=1))
    return step


# ------------------------------------------------------------------------------------------------ runner
def interleaved(cases: dict[str, Callable[[], Any]], threads: list[int], rounds: int,
                warmup: int = 3, grad: bool = False) -> dict[int, dict[str, list[float]]]:
    """Wall time of every case once per round at each thread count, the order rotating between rounds
    (`grad`: with autograd on, for training steps)."""
    names = list(cases)
    out = {t: {n: [] for n in names} for t in threads}
    with torch.enable_grad() if grad else torch.no_grad():
        for t in threads:
            torch.set_num_threads(t)
            for _ in range(warmup):
                for n in names:
                    cases[n]()
        for r in range(rounds):
            for t in threads:
                torch.set_num_threads(t)
                shift = r % len(names)
                for n in names[shift:] + names[:shift]:
                    out[t][n].append(_timed(cases[n]))
    return out


def compare_runtimes(policy: Any, onnx_path: Path | None, rounds: int, with_compile: bool) -> dict[str, Any]:
    """The U-Net evaluation at batch 1, 1 thread, in each runtime considered for the CPU backend."""
    torch.set_num_threads(1)
    den = policy.denoiser
    gen = torch.Generator().manual_seed(0)
    x, level = torch.randn(1, 16, ACTION_DIM, generator=gen), torch.full((1, 16), 50.0)
    cond = torch.randn(1, 2, STATE_DIM + ENV_DIM, generator=gen)
    cases: dict[str, Callable[[], Any]] = {"eager": lambda: den(x, level, cond)}
    notes = {}
    with torch.no_grad():
        ref = den(x, level, cond)
        frozen = torch.jit.freeze(torch.jit.trace(den, (x, level, cond)).eval())
        cases["torchscript_freeze"] = lambda: frozen(x, level, cond)
        if onnx_path is not None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
            sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
            feeds = {"x": x.numpy(), "level": level.numpy(), "cond": cond.numpy()}
            cases["onnxruntime"] = lambda: sess.run(None, feeds)
            try:
                import openvino as ov

                compiled = ov.Core().compile_model(str(onnx_path), "CPU", {
                    "INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
                req = compiled.create_infer_request()
                ov_out = next(iter(req.infer(feeds).values()))
                notes["openvino_max_abs_diff"] = float(np.abs(ov_out - ref.numpy()).max())
                cases["openvino"] = lambda: req.infer(feeds)
            except ImportError:
                notes["openvino"] = "not installed"
        if with_compile:
            compiled_den = torch.compile(den, dynamic=False)
            t0 = time.perf_counter()
            compiled_den(x, level, cond)
            notes["torch_compile_s"] = time.perf_counter() - t0
            cases["torch_compile"] = lambda: compiled_den(x, level, cond)
    times = interleaved(cases, [1], rounds)[1]
    summary = {n: metrics.summarize_latencies(v) for n, v in times.items()}
    eager = summary["eager"]["p50_ms"]
    return {"batch": 1, "threads": 1, "per_evaluation": summary,
            "ratio_to_eager_p50": {n: s["p50_ms"] / eager for n, s in summary.items()}, **notes}


# ------------------------------------------------------------------------------------------------ report
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch and ONNX Runtime threads")
    ap.add_argument("--rounds", type=int, default=30, help="timed calls of every case per thread count")
    ap.add_argument("--backends", nargs="+", default=["eager", "onnx"], choices=["eager", "onnx"])
    ap.add_argument("--no-transformer", action="store_true", help="skip the transformer's evaluations")
    ap.add_argument("--no-lerobot", action="store_true", help="skip LeRobot's DiffusionPolicy")
    ap.add_argument("--compare-runtimes", action="store_true",
                    help="also time the U-Net evaluation in TorchScript, ONNX Runtime and OpenVINO (1 thread)")
    ap.add_argument("--with-compile", action="store_true", help="... and torch.compile (compiling takes minutes)")
    ap.add_argument("--cache", default=str(CACHE), help="where the ONNX graphs are cached")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "backends.json"))
    args = ap.parse_args(argv)
    load_before = list(os.getloadavg())
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads[0])
    policies = rtdp_policies(Path(args.cache), args.backends, not args.no_transformer)
    lr = None if args.no_lerobot else lerobot_policy()
    print(f"[backends] built in {time.perf_counter() - t_start:.0f} s; timing {args.rounds} rounds at "
          f"{args.threads} threads ...", file=sys.stderr, flush=True)

    cases: dict[str, Callable[[], Any]] = {}
    for b in args.backends:
        for batch in (1, 10):
            cases[f"eval/unet/b{batch}/{b}"] = eval_case(policies[f"unet/ddim/{b}"], batch)
            if not args.no_transformer:
                cases[f"eval/transformer/b{batch}/{b}"] = eval_case(policies[f"transformer/ddim/{b}"], batch)
        cases[f"chunk/ddim10/{b}"] = chunk_case(policies[f"unet/ddim/{b}"])
        cases[f"sdp_step/{b}"] = sdp_step_case(policies[f"unet/sdp/{b}"])
    if lr is not None:
        for batch in (1, 10):
            cases[f"eval/unet/b{batch}/lerobot"] = lerobot_eval_case(lr, batch)
        cases["chunk/ddim10/lerobot"] = lerobot_chunk_case(lr)
    times = interleaved(cases, args.threads, args.rounds)

    # the floor: counted FLOPs per evaluation over measured GEMM throughput
    unet = policies["unet/ddim/eager"] if "eager" in args.backends else policies[f"unet/ddim/{args.backends[0]}"]
    flops = {"unet_b1": count_flops(lambda: unet.denoiser(torch.zeros(1, 16, 2), torch.zeros(1), torch.zeros(1, 2, 20)))}
    if lr is not None:
        flops["lerobot_unet_b1"] = count_flops(lerobot_eval_case(lr, 1))
    if not args.no_transformer:
        tf = policies[f"transformer/ddim/{args.backends[0]}"]
        flops["transformer_b1"] = count_flops(lambda: tf.denoiser(torch.zeros(1, 10, 2), torch.zeros(1),
                                                                  torch.zeros(1, 2, 20)))
    gemm = {t: gemm_flops_per_s(t) for t in args.threads}

    results: dict[str, Any] = {}
    for t in args.threads:
        s = {n: metrics.summarize_latencies(v) for n, v in times[t].items()}
        floor_ms = flops["unet_b1"] / gemm[t] * 1e3
        entry: dict[str, Any] = {"latency": s, "gemm_gflop_per_s": gemm[t] / 1e9,
                                 "floor_ms": {"unet_eval_b1": floor_ms, "unet_ddim10_b1": 10 * floor_ms}}
        if not args.no_transformer:
            entry["floor_ms"]["transformer_eval_b1"] = flops["transformer_b1"] / gemm[t] * 1e3
        ratios: dict[str, float] = {}

        def ratio(a: str, b: str, key: str = "p50_ms", s: dict = s) -> float | None:
            return s[a][key] / s[b][key] if a in s and b in s and s[b][key] > 0 else None

        for what in ("eval/unet/b1", "eval/unet/b10", "eval/transformer/b1", "eval/transformer/b10", "chunk/ddim10"):
            ratios[f"{what}: onnx/eager"] = ratio(f"{what}/onnx", f"{what}/eager")
            ratios[f"{what}: eager/lerobot"] = ratio(f"{what}/eager", f"{what}/lerobot")
            ratios[f"{what}: onnx/lerobot"] = ratio(f"{what}/onnx", f"{what}/lerobot")
        ratios["sdp_step p99: onnx/eager"] = ratio("sdp_step/onnx", "sdp_step/eager", "p99_ms")
        ratios["sdp_step p50: onnx/eager"] = ratio("sdp_step/onnx", "sdp_step/eager")
        ratios = {k: v for k, v in ratios.items() if v is not None}
        entry["ratios"] = ratios
        entry["floor_over_measured"] = {
            n: entry["floor_ms"]["unet_eval_b1"] / s[n]["p50_ms"] for n in s if n.startswith("eval/unet/b1/")}
        entry["targets"] = {
            "ddim10_chunk_le_0.35x_lerobot": (None if "chunk/ddim10: onnx/lerobot" not in ratios
                                              else ratios["chunk/ddim10: onnx/lerobot"] <= 0.35),
            "sdp_step_p99_le_third_of_eager": (None if "sdp_step p99: onnx/eager" not in ratios
                                               else ratios["sdp_step p99: onnx/eager"] <= 1 / 3)}
        results[f"{t}_threads"] = entry

    rec = metrics.record(
        "backends_benchmark", results=results, flops_per_evaluation=flops,
        config={"threads": args.threads, "rounds": args.rounds, "backends": args.backends,
                "shapes": "PushT keypoints: state 2 + env state 18 -> action 2, T=16 (transformer T=10), To=2",
                "unet": "sdp_unet CPU size 64/128/256, level embedding 128 (random weights)",
                "transformer": "8 layers, dim 256, 4 heads", "lerobot": "DiffusionPolicy 0.6.1, 64/128/256, "
                "diffusion_step_embed_dim 128, DDIM-10"},
        backend=(policies.get("unet/ddim/onnx").backend.describe() if "unet/ddim/onnx" in policies else None),
        loadavg_before=load_before, loadavg_after=list(os.getloadavg()),
        notes=["p50/p99 over interleaved rounds; ratios compare cases of the same run only",
               "floor = counted FLOPs per evaluation / best float32 1024^3 GEMM throughput at that thread count",
               "chunk = policy.act (normalise + encode + 10 evaluations) vs LeRobot predict_action_chunk",
               "sdp_step = one SDP policy.act per control step at batch 1 (one evaluation)"])
    if args.compare_runtimes and "unet/ddim/onnx" in policies:
        rec["runtime_comparison"] = compare_runtimes(policies["unet/ddim/eager"] if "eager" in args.backends
                                                     else policies["unet/ddim/onnx"],
                                                     policies["unet/ddim/onnx"].backend.graph_path,
                                                     args.rounds, args.with_compile)
    rec["wall_s"] = time.perf_counter() - t_start
    out = Path(args.out)
    metrics.write_json(out, rec)  # first: a plotting error must not lose the measurements
    plot(rec, out.with_suffix(".png"))
    print_table(rec)
    return 0


def print_table(rec: dict[str, Any]) -> None:
    print(f"load average before {rec['loadavg_before']}, after {rec['loadavg_after']}")
    print("FLOPs per evaluation (batch 1): " + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in
                                                           rec["flops_per_evaluation"].items()))
    for key, entry in rec["results"].items():
        s = entry["latency"]
        print(f"\n== {key}: GEMM {entry['gemm_gflop_per_s']:.1f} GFLOP/s; floor per U-Net evaluation "
              f"{entry['floor_ms']['unet_eval_b1']:.2f} ms, DDIM-10 {entry['floor_ms']['unet_ddim10_b1']:.1f} ms")
        print(f"{'case':32s} {'p50 ms':>9s} {'p99 ms':>9s}")
        for name, v in s.items():
            print(f"{name:32s} {v['p50_ms']:9.2f} {v['p99_ms']:9.2f}")
        for name, v in entry["ratios"].items():
            print(f"  {name:38s} {v:6.3f}")
        for name, v in entry["floor_over_measured"].items():
            print(f"  floor / {name:30s} {v:6.3f}")
        print(f"  targets: {entry['targets']}")
    if "runtime_comparison" in rec:
        rc = rec["runtime_comparison"]
        print("\n== runtimes, U-Net evaluation, batch 1, 1 thread (p50 ms, ratio to eager)")
        for name, v in rc["per_evaluation"].items():
            print(f"  {name:20s} {v['p50_ms']:8.2f}  {rc['ratio_to_eager_p50'][name]:.2f}")


def plot(rec: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(rec["results"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    width = 0.8 / max(len(keys), 1)
    panels = [("per evaluation, batch 1 (ms)", "eval/unet/b1/", "unet_eval_b1"),
              ("DDIM-10 chunk, batch 1 (ms)", "chunk/ddim10/", "unet_ddim10_b1")]
    for ax, (title, prefix, floor) in zip(axes[:2], panels):
        names = sorted({n[len(prefix):] for k in keys for n in rec["results"][k]["latency"] if n.startswith(prefix)})
        x = np.arange(len(names))
        for i, k in enumerate(keys):
            lat = rec["results"][k]["latency"]
            ax.bar(x + i * width, [lat[prefix + n]["p50_ms"] for n in names], width, label=f"{k} p50")
            ax.axhline(rec["results"][k]["floor_ms"][floor], ls=":", color=f"C{i}", label=f"floor ({k})")
        ax.set_xticks(x + width * (len(keys) - 1) / 2, names)
        ax.set_yscale("log")  # a thrashing 2-thread torch and a floor of ~1 ms share the axis
        ax.set_title(title)
        ax.legend(fontsize=7)
    ax = axes[2]
    names = [n for n in ("sdp_step/eager", "sdp_step/onnx") if n in rec["results"][keys[0]]["latency"]]
    x = np.arange(len(names))
    for i, k in enumerate(keys):
        lat = rec["results"][k]["latency"]
        ax.bar(x + i * width, [lat[n]["p99_ms"] for n in names], width, label=f"{k} p99")
    ax.set_xticks(x + width * (len(keys) - 1) / 2, [n.split("/")[1] for n in names])
    ax.set_yscale("log")
    ax.set_title("SDP per control step, batch 1: p99 (ms)")
    ax.legend(fontsize=7)
    fig.suptitle(f"CPU inference backends (load average {rec['loadavg_after'][0]:.1f} on "
                 f"{rec['machine']['cpus']} cores; ratios within this run only)")
    fig.tight_layout()
    metrics.save_figure(fig, png, rec)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
