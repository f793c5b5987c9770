"""The Diffusion Policy temporal U-Net (Chi et al. 2023) with per-position noise levels.

Observation features reach every residual block through FiLM (a per-channel scale and bias), as in the
paper. The noise level is given per action position (`[B, T]`; a `[B]` level broadcasts), embedded
sinusoidally and added to the features of every residual block at that block's temporal resolution, so a
chunk whose noise rises along the horizon (streaming diffusion) is a first-class input. The embedding is
computed once per distinct level and looked up per position (`level_table`), so per-position levels cost a
training step no more than one timestep per sample does.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rtdp.policy.denoiser import Denoiser, DenoiserSpec
from rtdp.policy.embeddings import SinusoidalLevelEmbedding, per_position_levels


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks; FiLM from the observation features and the per-position level embedding between."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, level_dim: int,
                 kernel_size: int = 5, n_groups: int = 8):
        super().__init__()
        self.blocks = nn.ModuleList([
            Conv1dBlock(in_channels, out_channels, kernel_size, n_groups),
            Conv1dBlock(out_channels, out_channels, kernel_size, n_groups),
        ])
        self.out_channels = out_channels
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.level_proj = nn.Sequential(nn.Mish(), nn.Linear(level_dim, out_channels))
        self.residual_conv = (nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels
                              else nn.Identity())

    def forward(self, x: torch.Tensor, cond: torch.Tensor,
                levels: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        """x `[B, C, L]`, cond `[B, Dc]`, levels from `ConditionalUnet1D.level_table` at full horizon (pooled
        to L here); a table of distinct levels is projected once, then each position looks its row up."""
        out = self.blocks[0](x)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        level = self._level(levels, out.shape[-1])
        if self.training:  # one fused pass over the features (bias + level is [B, C, 1] for per-sample levels)
            out = torch.addcmul(bias + level, out, scale)
        else:  # the order the golden plans were written in
            out = out * scale + bias + level
        out = self.blocks[1](out)
        return out + self.residual_conv(x)

    def _level(self, levels: tuple[torch.Tensor, torch.Tensor | None], length: int) -> torch.Tensor:
        """This block's level features `[B, C, L]` (or `[B, C, 1]`, broadcast) at resolution `length`."""
        table, index = levels
        proj = self.level_proj(table)
        if index is not None:  # a table of distinct levels [U, C], looked up per position
            level = F.embedding(index, proj)  # [B, T, C]
            batch, horizon, _ = level.shape
            if horizon != length:  # this block's resolution: the mean over each window of T / L positions
                level = level.view(batch, length, horizon // length, -1).mean(dim=2)
            level = level.transpose(1, 2)
        else:  # [B, T or 1, C]: per position, or one level per sample (broadcast)
            level = proj.transpose(1, 2)
            if level.shape[-1] not in (1, length):
                level = F.adaptive_avg_pool1d(level, length)
        return level


class ConditionalUnet1D(Denoiser):
    """Denoiser `(x[B,T,Da], level[B] or [B,T], cond[B,To,Dc]) -> [B,T,Da]` (epsilon or x0 prediction)."""

    name = "unet1d"

    def __init__(self, action_dim: int, cond_dim: int, n_obs_steps: int,
                 down_dims: tuple[int, ...] = (256, 512, 1024), level_embed_dim: int = 256,
                 kernel_size: int = 5, n_groups: int = 8):
        super().__init__()
        down_dims = list(down_dims)
        self.action_dim = action_dim
        self.n_obs_steps = n_obs_steps
        self.n_down = len(down_dims) - 1
        global_cond = cond_dim * n_obs_steps
        self.level_encoder = nn.Sequential(
            SinusoidalLevelEmbedding(level_embed_dim),
            nn.Linear(level_embed_dim, 4 * level_embed_dim),
            nn.Mish(),
            nn.Linear(4 * level_embed_dim, level_embed_dim),
        )

        def block(cin: int, cout: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(cin, cout, global_cond, level_embed_dim, kernel_size, n_groups)

        dims = [action_dim] + down_dims
        in_out = list(itertools.pairwise(dims))
        self.down_modules = nn.ModuleList()
        for i, (cin, cout) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.down_modules.append(nn.ModuleList([
                block(cin, cout), block(cout, cout),
                nn.Conv1d(cout, cout, 3, 2, 1) if not last else nn.Identity(),
            ]))
        mid = down_dims[-1]
        self.mid_modules = nn.ModuleList([block(mid, mid), block(mid, mid)])
        self.up_modules = nn.ModuleList()
        for cin, cout in reversed(in_out[1:]):  # as in the paper's code: every up level upsamples
            self.up_modules.append(nn.ModuleList([
                block(2 * cout, cin), block(cin, cin), nn.ConvTranspose1d(cin, cin, 4, 2, 1),
            ]))
        self.final_conv = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], spec: DenoiserSpec) -> ConditionalUnet1D:
        cfg = dict(cfg)
        cfg["down_dims"] = tuple(cfg.get("down_dims", (256, 512, 1024)))
        return cls(spec.action_dim, spec.cond_dim, spec.n_obs_steps, **cfg)

    def level_table(self, level: torch.Tensor | float, batch: int, horizon: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The level embedding every block projects: `(table [U, Dl], index [B, T])` in training, else
        `([B, T, Dl], None)` per position.

        In training the table holds the distinct levels of the batch (at most the schedule's step count,
        against 256 x 16 positions) and a `[B]` level one row per sample (`[B, 1, Dl]`), so per-position
        levels cost a step no more than one timestep per sample does. In eval each position keeps its own
        row: fixed shapes for the exported and CUDA-graph backends, and the same numbers as the golden plans.
        """
        level = torch.as_tensor(level, device=device)
        if not self.training:
            return self.level_encoder(per_position_levels(level, batch, horizon, device)), None
        if level.ndim <= 1:
            return self.level_encoder(per_position_levels(level, batch, 1, device)), None
        distinct, index = torch.unique(per_position_levels(level, batch, horizon, device), return_inverse=True)
        return self.level_encoder(distinct), index

    def forward(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        batch, horizon, _ = x.shape
        if horizon % (2 ** self.n_down):
            raise ValueError(f"horizon {horizon} must be divisible by {2 ** self.n_down} for this U-Net "
                             f"({self.n_down} downsamplings); change horizon or down_dims")
        levels = self.level_table(level, batch, horizon, x.device)
        global_cond = cond.reshape(batch, -1)
        h = x.transpose(1, 2)
        skips = []
        for res1, res2, down in self.down_modules:
            h = res2(res1(h, global_cond, levels), global_cond, levels)
            skips.append(h)
            h = down(h)
        for res in self.mid_modules:
            h = res(h, global_cond, levels)
        for res1, res2, up in self.up_modules:
            h = torch.cat([h, skips.pop()], dim=1)
            h = res2(res1(h, global_cond, levels), global_cond, levels)
            h = up(h)
        return self.final_conv(h).transpose(1, 2)
