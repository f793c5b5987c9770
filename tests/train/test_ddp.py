"""Two CPU processes under torchrun (gloo) train one DDP model: their weights stay identical."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_keeps_weights_identical(tiny_data, tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(worker), str(tiny_data), str(tmp_path), "4"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    # each rank drew its own batches ...
    assert not torch.equal(r0.pop("_first_batch"), r1.pop("_first_batch"))
    init = {k[len("_init."):]: r0.pop(k) for k in list(r0) if k.startswith("_init.")}
    for k in [k for k in r1 if k.startswith("_init.")]:
        r1.pop(k)
    # ... yet all-reduced gradients keep every weight identical, and the weights did move
    assert r0.keys() == r1.keys()
    for name in r0:
        assert torch.equal(r0[name], r1[name]), name
    assert any(not torch.equal(init[n], r0[n]) for n in r0 if n in init), "training moved the weights"
    ckpt = load_file(str(tmp_path / "run" / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.equal(ckpt[f"model.{n}"], r0[n]) for n in r0), "rank 0 saved the weights it ended with"
    assert "rank 0/2 done at step 4" in proc.stdout and "rank 1/2 done at step 4" in proc.stdout
