"""One process of the DDP test (run under torchrun): train a few steps, then dump this rank's weights."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch.distributed as dist
from safetensors.torch import save_file
from tiny_task import compose, tiny_overrides

from rtdp.train.distributed import shutdown_distributed
from rtdp.train.trainer import Trainer

if __name__ == "__main__":
    data, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    trainer = Trainer(compose(tiny_overrides(data, out / "run", f"training.num_steps={steps}")))
    rank = dist.get_rank()
    first_batch = trainer.data.sample(4, trainer.generator.clone_state())["action"].contiguous()
    init = {f"_init.{k}": v.clone().contiguous() for k, v in trainer.policy.state_dict().items()}
    trainer.fit()
    save_file({**{k: v.contiguous() for k, v in trainer.policy.state_dict().items()}, "_first_batch": first_batch,
               **init},
              str(out / f"rank{rank}.safetensors"))
    print(f"rank {rank}/{os.environ['WORLD_SIZE']} done at step {trainer.step}", flush=True)
    shutdown_distributed()
