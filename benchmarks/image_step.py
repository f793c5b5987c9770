"""Where a PushT-image training step goes on this CPU: the full step at batch 64, the ResNet-18 encoder's forward
and backward alone (contiguous and `channels_last`), its counted FLOPs and the share the convolutions take.

    .venv/bin/python benchmarks/image_step.py [--threads 2] [--out benchmarks/results/image_step.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from train_bench import calibrate_steps_per_s, compose

from rtdp import metrics
from rtdp.policy.encoders import ResNet18Encoder


def encoder_step_s(channels_last: bool, images: torch.Tensor, rounds: int) -> float:
    """Median seconds of one forward + backward + AdamW step of the encoder on `images`."""
    torch.manual_seed(0)
    enc = ResNet18Encoder((3, 96, 96), (84, 84))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    enc = enc.to(memory_format=fmt)
    opt = torch.optim.AdamW(enc.parameters())
    times = []
    for i in range(rounds + 2):
        t0 = time.perf_counter()
        enc(images.contiguous(memory_format=fmt)).sum().backward()
        opt.step()
        opt.zero_grad()
        if i >= 2:  # the first two warm the allocator and oneDNN's kernels
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results/image_step.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = torch.rand(args.batch * 2, 3, 96, 96)  # two observation frames per window

    from torch.utils.flop_counter import FlopCounterMode

    enc = ResNet18Encoder((3, 96, 96), (84, 84))
    with FlopCounterMode(display=False) as flops:
        enc(images).sum().backward()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        enc(images).sum().backward()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)

    enc_s = {fmt: encoder_step_s(fmt == "channels_last", images, args.rounds) for fmt in ("contiguous", "channels_last")}
    cfg = compose(["task=pusht_image", "policy=sdp_unet", f"training.batch_size={args.batch}",
                   f"num_threads={args.threads}"])
    step_s = 1 / calibrate_steps_per_s(cfg, n=args.rounds)
    gflop = flops.get_total_flops() / 1e9
    rec = metrics.record(
        "image_step", threads=args.threads, batch=args.batch, images_per_step=int(images.shape[0]),
        full_step_s=step_s, encoder_step_s=enc_s, encoder_gflop_fwd_bwd=gflop,
        encoder_gflops_per_s=gflop / enc_s["contiguous"], convolution_share_of_encoder=conv / total,
        channels_last_speedup=enc_s["contiguous"] / enc_s["channels_last"],
        note="full step: sdp_unet on pusht_image, data in memory, median of rounds after warm-up")
    metrics.write_json(args.out, rec)
    print(f"full step {step_s:.2f} s; encoder fwd+bwd {enc_s['contiguous']:.2f} s contiguous, "
          f"{enc_s['channels_last']:.2f} s channels_last; {gflop:.0f} GFLOP counted "
          f"({gflop / enc_s['contiguous']:.0f} GFLOP/s); convolutions {conv / total:.0%} of the encoder's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
