"""Samples/s of rtdp's SequenceDataset vs LeRobotDataset on the same PushT episodes, Diffusion Policy windows.

Both sides: To=2 observation frames, horizon T=16 actions, shuffled torch DataLoader, batch 256, 2 workers.
State windows: obs keypoint (9,2) + agent position, action. Image windows: obs 96×96 RGB + agent position,
action. The PushT episodes are exported to LeRobot v3.0 in a temporary directory with rtdp's exporter (state
without video; images as LeRobot's default AV1 video); LeRobot reads them with its own delta_timestamps
windows. rtdp reads the zarr data loaded in memory (uint8 images), which is how training uses it; the
zarr-on-disk figure is reported too. Prints one JSON record (rtdp.metrics schema); `--out` also writes it
with a bar chart beside it.

    .venv/bin/python benchmarks/data_throughput.py [--image-episodes 30] [--seconds 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtdp.datasets import ReplayBuffer, SequenceDataset
from rtdp.datasets.lerobot_io import export_lerobot
from rtdp.metrics import record, save_figure

PUSHT = REPO.parent / "shared" / "data" / "pusht_cchi_v7_replay.zarr"
TO, HORIZON, TA, FPS = 2, 16, 8, 10
STATE_OBS = {"keypoint": {"source": "keypoint"}, "agent_pos": {"source": "state", "columns": [0, 2]}}
IMAGE_OBS = {"image": {"source": "img"}, "agent_pos": {"source": "state", "columns": [0, 2]}}


def measure(loader, seconds: float, min_batches: int = 4) -> dict[str, float]:
    """Samples/s over whole batches after the first (worker start-up is not throughput), across epochs."""
    def batches():
        while True:
            yield from loader
    it = batches()
    batch_size = len(next(it)["action"])
    n, t0 = 0, time.perf_counter()
    for batch in it:
        n += len(batch["action"])
        if time.perf_counter() - t0 >= seconds and n >= min_batches * batch_size:
            break
    elapsed = time.perf_counter() - t0
    return {"samples_per_s": n / elapsed, "samples": n, "seconds": elapsed}


def rtdp_loader(ds, batch_size: int, workers: int, batched: bool) -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(0)
    if batched:  # the dataset gathers whole batches itself: one index array per key per batch
        sampler = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(ds, generator=gen), batch_size,
                                                drop_last=True)
        return torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=None, num_workers=workers,
                                           persistent_workers=workers > 0)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       generator=gen, drop_last=True, persistent_workers=workers > 0)


def lerobot_loader(root: Path, keys: dict[str, str], batch_size: int, workers: int):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    obs_dt = [(i - (TO - 1)) / FPS for i in range(TO)]
    delta = {name: obs_dt for name in keys.values() if name != "action"}
    delta["action"] = [(i - (TO - 1)) / FPS for i in range(HORIZON)]
    ds = LeRobotDataset(f"local/{root.name}", root=root, delta_timestamps=delta, video_backend="pyav")
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         generator=torch.Generator().manual_seed(0), drop_last=True,
                                         persistent_workers=workers > 0)
    return ds, loader


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8.0, help="measuring time per loader (after warm-up)")
    p.add_argument("--state-episodes", type=int, default=206, help="PushT episodes for state windows")
    p.add_argument("--image-episodes", type=int, default=30,
                   help="PushT episodes for image windows (AV1 encoding of all 25k frames takes many minutes)")
    p.add_argument("--out", type=Path, help="directory for data_throughput.json and .png")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 encoder: errors only
    import datasets
    datasets.disable_progress_bars()
    torch.manual_seed(0)

    src = ReplayBuffer.open(PUSHT)
    mem = ReplayBuffer.copy_to_memory(src, keys=["keypoint", "state", "action", "img"])
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rtdp_bench_") as tmp:
        tmp = Path(tmp)
        for kind, obs, n_ep, keys in [
            ("state", STATE_OBS, args.state_episodes, ["keypoint", "state", "action"]),
            ("image", IMAGE_OBS, args.image_episodes, ["img", "state", "action"]),
        ]:
            n_ep = min(n_ep, src.n_episodes)
            mask = np.zeros(src.n_episodes, bool)
            mask[:n_ep] = True
            t = time.perf_counter()
            lr_src = ReplayBuffer.in_memory()  # LeRobot's own PushT layout: keypoints as a flat vector
            for i in range(n_ep):
                ep = mem.get_episode(i, keys)
                if "keypoint" in ep:
                    ep["keypoint"] = ep["keypoint"].reshape(len(ep["keypoint"]), -1)
                lr_src.add_episode(ep)
            lr_root = export_lerobot(lr_src, tmp / f"lerobot_{kind}", fps=FPS, task="push the T")
            export_s = time.perf_counter() - t
            names = {"keypoint": "observation.keypoint", "state": "observation.state", "action": "action",
                     "img": "observation.images.img"}
            lr_keys = {k: names[k] for k in keys}

            ours = SequenceDataset(mem, obs, {"source": "action"}, horizon=HORIZON, n_obs_steps=TO,
                                   n_action_steps=TA, episode_mask=mask)
            ours.normalizer = ours.get_normalizer()
            disk = SequenceDataset(src, obs, {"source": "action"}, horizon=HORIZON, n_obs_steps=TO,
                                   n_action_steps=TA, episode_mask=mask, normalizer=ours.normalizer)
            lr_ds, lr_loader = lerobot_loader(lr_root, lr_keys, args.batch_size, args.workers)
            row = {"episodes": n_ep, "frames": int(src.episode_lengths[:n_ep].sum()),
                   "rtdp_windows": len(ours), "lerobot_frames": len(lr_ds), "lerobot_export_s": export_s}
            row["lerobot"] = measure(lr_loader, args.seconds)
            row["rtdp_memory"] = measure(rtdp_loader(ours, args.batch_size, args.workers, False), args.seconds)
            row["rtdp_memory_batched"] = measure(rtdp_loader(ours, args.batch_size, args.workers, True),
                                                 args.seconds)
            row["rtdp_zarr"] = measure(rtdp_loader(disk, args.batch_size, args.workers, False), args.seconds)
            gen = np.random.default_rng(0)
            t, n = time.perf_counter(), 0
            while time.perf_counter() - t < min(args.seconds, 3.0):
                ours.sample_batch(gen.integers(0, len(ours), args.batch_size))
                n += args.batch_size
            row["rtdp_in_process"] = {"samples_per_s": n / (time.perf_counter() - t), "samples": n,
                                      "seconds": time.perf_counter() - t}
            base = row["lerobot"]["samples_per_s"]
            row["speedup_vs_lerobot"] = {k: row[k]["samples_per_s"] / base for k in
                                         ("rtdp_memory", "rtdp_memory_batched", "rtdp_zarr", "rtdp_in_process")}
            results[kind] = row
            del lr_loader, lr_ds

    rec = record("benchmark.data_throughput",
                 setup={"batch_size": args.batch_size, "workers": args.workers, "n_obs_steps": TO,
                        "horizon": HORIZON, "n_action_steps": TA, "fps": FPS,
                        "lerobot_video": "AV1 via LeRobot's default encoder, decoded with PyAV",
                        "lerobot_layout": "keypoints exported flat (18,) as in LeRobot's PushT; rtdp reads (9, 2)",
                        "normalisation": "rtdp batches are normalised (minmax) in the loader; LeRobot's are raw",
                        "state_episodes": results["state"]["episodes"],
                        "image_episodes": results["image"]["episodes"],
                        "subset_note": "image windows use the first --image-episodes PushT episodes on both sides",
                        "cpu_note": "2 shared CPU cores; other jobs may be running, figures are noisy",
                        "load_avg_1m": os.getloadavg()[0]},
                 targets={"state_speedup": 10.0, "image_speedup": 2.0},
                 met={"state": results["state"]["speedup_vs_lerobot"]["rtdp_memory"] >= 10.0,
                      "image": results["image"]["speedup_vs_lerobot"]["rtdp_memory"] >= 2.0},
                 results=results)
    print(json.dumps(rec, indent=2))
    if args.out is not None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        labels = ["lerobot", "rtdp_memory", "rtdp_memory_batched", "rtdp_zarr"]
        for ax, kind in zip(axes, ("state", "image")):
            values = [results[kind][k]["samples_per_s"] for k in labels]
            bars = ax.bar(range(len(labels)), values, color=["tab:gray"] + ["tab:blue"] * 3)
            ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
            ax.set_xticks(range(len(labels)), ["LeRobot", "rtdp\nmemory", "rtdp memory\nbatched", "rtdp\nzarr"])
            ax.set_yscale("log")
            ax.set_title(f"PushT {kind} windows ({results[kind]['episodes']} episodes)")
        axes[0].set_ylabel(f"samples/s (batch {args.batch_size}, {args.workers} workers)")
        fig.tight_layout()
        save_figure(fig, args.out / "data_throughput.png", rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
