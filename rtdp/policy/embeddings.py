"""Embeddings of noise levels: the sinusoidal map Diffusion Policy uses, applied per action position."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalLevelEmbedding(nn.Module):
    """Sinusoidal features of a continuous noise level, any leading shape: `[...] -> [..., dim]`."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        args = level.to(self.freqs.dtype)[..., None] * self.freqs
        return torch.cat([args.sin(), args.cos()], dim=-1)


def per_position_levels(level: torch.Tensor | float, batch: int, horizon: int,
                        device: torch.device) -> torch.Tensor:
    """Broadcast a noise level given as a scalar, `[B]` or `[B, T]` to a float `[B, T]` tensor."""
    level = torch.as_tensor(level, device=device)
    if level.ndim == 0:
        level = level.expand(batch)
    if level.ndim == 1:
        if level.shape[0] != batch:
            raise ValueError(f"noise level of shape {tuple(level.shape)} does not match batch {batch}")
        level = level[:, None].expand(batch, horizon)
    if level.shape != (batch, horizon):
        raise ValueError(f"noise level must be [B] or [B, T] = [{batch}, {horizon}], got {tuple(level.shape)}")
    return level.float()
