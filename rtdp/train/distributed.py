"""Multi-process training under `torchrun`: process-group setup from its environment variables.

`torchrun --nproc_per_node N -m rtdp.cli.main train ...` (or `--nnodes/--rdzv_endpoint` across machines)
sets RANK/WORLD_SIZE/LOCAL_RANK; each process trains a DistributedDataParallel replica on its own batches,
gradients are averaged by all-reduce (gloo on CPU, nccl on GPU), so every replica holds the same weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={device} but CUDA is not available; use device=cpu")
        return DistInfo(), dev
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = str(device).startswith("cuda")
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device} but CUDA is not available; use device=cpu")
        dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info, dev


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """The mean of a scalar over all processes (for logging the same loss everywhere)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size
