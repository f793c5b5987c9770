"""A plan: what a sampler returns for one observation window, in normalised action units.

The policy keeps the previous plan; samplers that warm-start (RTI) or stream (SDP) carry it forward by the
actions executed since with `carry_forward`, the one shift both share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Plan:
    """A normalised chunk `actions [B, T, Da]`; execute `n_exec` of them from index `start`. `nfe` counts the
    denoiser evaluations it cost. `carry` is what a warm start continues from next time (default: `actions`;
    a sampler that post-processes its output, such as snapping a gripper, keeps its raw iterate here)."""

    actions: Tensor
    start: int
    n_exec: int
    nfe: int
    carry: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def carried(self) -> Tensor:
        return self.actions if self.carry is None else self.carry


def carry_forward(chunk: Tensor, n: int, pad: Tensor | None = None) -> Tensor:
    """`chunk [B, T, Da]` advanced by `n` control steps: `[chunk[n:], pad]`, where `pad [B, n, Da]` defaults to
    the last action repeated (RTI's shift-and-pad); `n` is clamped to [0, T]."""
    T = chunk.shape[1]
    n = max(0, min(int(n), T))
    if pad is None:
        pad = chunk[:, -1:].expand(-1, n, -1)
    elif pad.shape[1] != n:
        raise ValueError(f"carry_forward: pad covers {pad.shape[1]} steps, the chunk moved {n}")
    return torch.cat([chunk[:, n:], pad], dim=1)
