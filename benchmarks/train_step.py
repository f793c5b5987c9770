"""Model-only training step at equal size: rtdp's U-Net against LeRobot 0.6.1's DiffusionPolicy, interleaved.

One step = the policy's loss on a batch already in memory (PushT keypoint shapes: 2 observation steps of an
18-dim keypoint vector and a 2-dim agent position, 16 actions), backward, and one AdamW update. Cases:
- `rtdp/unet1d`: `policy=unet1d` (one timestep per sample, DDPM training, like LeRobot's);
- `rtdp/sdp_unet`: `policy=sdp_unet` (per-position levels from the streaming mixture, what SDP needs);
- `lerobot`: LeRobot's DiffusionPolicy, U-Net 64/128/256, step embedding 128, `compute_loss` via `forward`;
- `rtdp/sdp_unet_dense_levels` (`--dense-levels`): the ablation, each position's level embedded on its own.
Every case runs once per round, the order rotating, at each thread count; ratios are of medians in this run.
Target: rtdp / LeRobot <= 1.0 (1 and 2 threads).

    .venv/bin/python benchmarks/train_step.py [--batch 256] [--rounds 12] [--threads 1 2] [--no-lerobot] [--dense-levels]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backends import interleaved  # benchmarks/backends.py: the same rotating, interleaved rounds

from rtdp import metrics

OBS = {"keypoint": (9, 2), "agent_pos": (2,)}
STATE_DIM, ENV_DIM, ACTION_DIM, HORIZON, N_OBS = 2, 18, 2, 16, 2


def dense_level_table(unet: Any, level: torch.Tensor, batch: int, horizon: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The ablation: every position embedded and projected on its own (a B x T table), as rtdp did before
    `ConditionalUnet1D.level_table` embedded each distinct level once."""
    from rtdp.policy.embeddings import per_position_levels

    levels = per_position_levels(level, batch, horizon, device)
    return unet.level_encoder(levels.reshape(-1)), torch.arange(batch * horizon, device=device).view(batch, horizon)


def rtdp_case(policy_name: str, batch: int, dense_levels: bool = False) -> Callable[[], float]:
    """One training step of rtdp's `policy_name` on a fixed normalised batch (`dense_levels`: the ablation)."""
    from hydra import compose, initialize_config_module

    from rtdp.normalizer import Normalizer
    from rtdp.policy.factory import make_policy

    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit({"keypoint": rng.uniform(0, 512, (256, 9, 2)),
                                 "agent_pos": rng.uniform(0, 512, (256, 2)), "action": rng.uniform(0, 512, (256, 2))})
    with initialize_config_module("rtdp.configs", version_base=None):
        cfg = compose("train", overrides=[f"policy={policy_name}", "task=pusht_keypoints"])
    torch.manual_seed(0)
    policy = make_policy(cfg.policy, {"name": "ddim", "num_steps": 10}, OBS, ACTION_DIM, normalizer).train()
    if dense_levels:
        unet = policy.denoiser
        unet.level_table = lambda level, b, h, device: dense_level_table(unet, level, b, h, device)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    data = {"obs": {"keypoint": torch.randn(batch, N_OBS, 9, 2, generator=gen),
                    "agent_pos": torch.randn(batch, N_OBS, 2, generator=gen)},
            "action": torch.randn(batch, HORIZON, ACTION_DIM, generator=gen)}

    def step() -> float:
        loss, _ = policy.compute_loss(data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def lerobot_case(batch: int) -> Callable[[], float]:
    """One training step of LeRobot's DiffusionPolicy at the same size on a fixed (already normalised) batch."""
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    cfg = DiffusionConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
                        "observation.environment_state": PolicyFeature(FeatureType.ENV, (ENV_DIM,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        normalization_mapping={"STATE": NormalizationMode.IDENTITY, "ENV": NormalizationMode.IDENTITY,
                               "ACTION": NormalizationMode.IDENTITY},
        horizon=HORIZON, n_obs_steps=N_OBS, n_action_steps=8, down_dims=(64, 128, 256),
        diffusion_step_embed_dim=128, pretrained_backbone_weights=None, device="cpu")
    torch.manual_seed(0)
    policy = DiffusionPolicy(cfg).train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    data = {"observation.state": torch.randn(batch, N_OBS, STATE_DIM, generator=gen),
            "observation.environment_state": torch.randn(batch, N_OBS, ENV_DIM, generator=gen),
            "action": torch.randn(batch, HORIZON, ACTION_DIM, generator=gen),
            "action_is_pad": torch.zeros(batch, HORIZON, dtype=torch.bool)}

    def step() -> float:
        loss, _ = policy.forward(dict(data))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-lerobot", action="store_true")
    ap.add_argument("--dense-levels", action="store_true",
                    help="also time sdp_unet with every position's level embedded on its own (the ablation)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_step.json"))
    args = ap.parse_args(argv)
    if args.batch < 1 or args.rounds < 1 or min(args.threads) < 1:
        ap.error("--batch, --rounds and --threads must be >= 1")
    load_before = list(os.getloadavg())
    cases = {"rtdp/unet1d": rtdp_case("unet1d", args.batch), "rtdp/sdp_unet": rtdp_case("sdp_unet", args.batch)}
    if args.dense_levels:
        cases["rtdp/sdp_unet_dense_levels"] = rtdp_case("sdp_unet", args.batch, dense_levels=True)
    if not args.no_lerobot:
        cases["lerobot"] = lerobot_case(args.batch)
    times = interleaved(cases, args.threads, args.rounds, warmup=2, grad=True)
    results: dict[str, Any] = {}
    for t in args.threads:
        s = {n: metrics.summarize_latencies(v) for n, v in times[t].items()}
        entry: dict[str, Any] = {"step_s": {n: {k.replace("_ms", "_s"): v / 1e3 if k.endswith("_ms") else v
                                                for k, v in d.items()} for n, d in s.items()}}
        if "lerobot" in s:
            entry["ratio_p50_vs_lerobot"] = {n: s[n]["p50_ms"] / s["lerobot"]["p50_ms"] for n in s if n != "lerobot"}
        results[str(t)] = entry
    rec = metrics.record("train_step", batch=args.batch, rounds=args.rounds, threads=args.threads,
                         loadavg_before=load_before, loadavg_after=list(os.getloadavg()),
                         note="model-only step (loss, backward, AdamW) on a batch in memory, PushT keypoint shapes, "
                              "U-Net 64/128/256 with a 128-dim level embedding on both sides; interleaved rounds; "
                              "ratios of medians from this run only",
                         target={"ratio_p50_vs_lerobot": 1.0}, results=results)
    metrics.write_json(Path(args.out), rec)
    for t, entry in results.items():
        line = ", ".join(f"{n} {d['p50_s'] * 1e3:.0f} ms" for n, d in entry["step_s"].items())
        ratios = ", ".join(f"{n} {r:.2f}x" for n, r in entry.get("ratio_p50_vs_lerobot", {}).items())
        print(f"{t} thread(s): {line}" + (f"; vs LeRobot: {ratios}" if ratios else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
