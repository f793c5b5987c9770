"""The Diffusion Policy transformer denoiser as a stack of named blocks.

Action tokens attend causally to each other (self-attention) and to a memory of one noise-level token plus
the observation tokens (cross-attention, observation `s` visible from action `s` on, as in the paper's
code). Every block is its own module whose `residual(h, ctx)` returns what it adds to the token stream,
so a sampler can cache a block's contribution across denoising steps (block-wise caching) and add it back
with `h + cached` instead of calling the block.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rtdp.policy.denoiser import Denoiser, DenoiserSpec
from rtdp.policy.embeddings import SinusoidalLevelEmbedding, per_position_levels


@dataclass
class BlockContext:
    """What the blocks of one forward pass share: the memory tokens and the attention masks."""

    memory: torch.Tensor  # [B, S, D]: noise-level token + observation tokens
    self_mask: torch.Tensor  # [T, T] bool, True = may not attend
    memory_mask: torch.Tensor  # [T, S] bool, True = may not attend


class SelfAttentionBlock(nn.Module):
    """Pre-norm causal self-attention over the action tokens."""

    def __init__(self, dim: int, n_heads: int, attn_dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, n_heads, dropout=attn_dropout, batch_first=True)
        self.dropout = nn.Dropout(attn_dropout)

    def residual(self, h: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        x = self.norm(h)
        out, _ = self.attn(x, x, x, attn_mask=ctx.self_mask, need_weights=False)
        return self.dropout(out)

    def residual_tail(self, h: torch.Tensor, ctx: BlockContext, n: int) -> torch.Tensor:
        """`residual(h, ctx)[:, -n:]` computed for the last `n` tokens only (keys and values from every token),
        for a cache that reuses the other tokens' residuals."""
        x = self.norm(h)
        out, _ = self.attn(x[:, -n:], x, x, attn_mask=ctx.self_mask[-n:], need_weights=False)
        return self.dropout(out)

    def forward(self, h: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        return h + self.residual(h, ctx)


class CrossAttentionBlock(SelfAttentionBlock):
    """Pre-norm cross-attention from the action tokens to the noise-level and observation tokens (the same
    layers as self-attention, so the same parameter names; only what the tokens attend to differs)."""

    def residual(self, h: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        out, _ = self.attn(self.norm(h), ctx.memory, ctx.memory, attn_mask=ctx.memory_mask, need_weights=False)
        return self.dropout(out)

    def residual_tail(self, h: torch.Tensor, ctx: BlockContext, n: int) -> torch.Tensor:
        """`residual(h, ctx)[:, -n:]` computed for the last `n` tokens only."""
        out, _ = self.attn(self.norm(h[:, -n:]), ctx.memory, ctx.memory, attn_mask=ctx.memory_mask[-n:],
                           need_weights=False)
        return self.dropout(out)


class FeedForwardBlock(nn.Module):
    """Pre-norm position-wise MLP (GELU, 4x width)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim),
                                 nn.Dropout(dropout))

    def residual(self, h: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        return self.mlp(self.norm(h))

    def residual_tail(self, h: torch.Tensor, ctx: BlockContext, n: int) -> torch.Tensor:
        """`residual(h, ctx)[:, -n:]` computed for the last `n` tokens only."""
        return self.mlp(self.norm(h[:, -n:]))

    def forward(self, h: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        return h + self.residual(h, ctx)


class TransformerDenoiser(Denoiser):
    """Denoiser `(x[B,T,Da], level[B] or [B,T], cond[B,To,Dc]) -> [B,T,Da]`.

    `blocks` is the flat list self-attention, cross-attention, feed-forward, ... (`n_layers` of each);
    `forward` is `head(run(blocks, embed(...)))`, and the three steps are public for block caching.
    """

    name = "transformer"

    def __init__(self, action_dim: int, cond_dim: int, n_obs_steps: int, horizon: int, n_layers: int = 8,
                 n_heads: int = 4, dim: int = 256, attn_dropout: float = 0.3, emb_dropout: float = 0.0,
                 causal: bool = True):
        super().__init__()
        self.action_dim, self.n_obs_steps, self.horizon, self.causal = action_dim, n_obs_steps, horizon, causal
        self.input_proj = nn.Linear(action_dim, dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, horizon, dim))
        self.level_emb = SinusoidalLevelEmbedding(dim)
        self.level_proj = nn.Linear(dim, dim)
        self.cond_proj = nn.Linear(cond_dim, dim)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, 1 + n_obs_steps, dim))
        self.cond_encoder = nn.Sequential(nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))
        self.emb_dropout = nn.Dropout(emb_dropout)
        blocks: list[nn.Module] = []
        for _ in range(n_layers):
            blocks += [SelfAttentionBlock(dim, n_heads, attn_dropout), CrossAttentionBlock(dim, n_heads, attn_dropout),
                       FeedForwardBlock(dim, attn_dropout)]
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, action_dim)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.cond_pos_emb, std=0.02)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], spec: DenoiserSpec) -> TransformerDenoiser:
        return cls(spec.action_dim, spec.cond_dim, spec.n_obs_steps, spec.horizon, **cfg)

    def block_names(self) -> list[str]:
        """`layer{i}.{self_attn|cross_attn|ffn}` for every block, in execution order."""
        kinds = {SelfAttentionBlock: "self_attn", CrossAttentionBlock: "cross_attn", FeedForwardBlock: "ffn"}
        return [f"layer{i // 3}.{kinds[type(b)]}" for i, b in enumerate(self.blocks)]

    def embed(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, BlockContext]:
        """Input tokens and the shared context (memory, masks) of one forward pass."""
        batch, horizon, _ = x.shape
        if horizon > self.horizon:
            raise ValueError(f"horizon {horizon} exceeds the transformer's {self.horizon}")
        if cond.shape[1] != self.n_obs_steps:
            raise ValueError(f"expected {self.n_obs_steps} observation steps, got {cond.shape[1]}")
        levels = per_position_levels(level, batch, horizon, x.device)
        level_tokens = self.level_proj(self.level_emb(levels))  # [B, T, D]
        h = self.emb_dropout(self.input_proj(x) + self.pos_emb[:, :horizon] + level_tokens)
        noise_token = self.level_proj(self.level_emb(levels.mean(dim=1)))[:, None]  # [B, 1, D]
        memory = torch.cat([noise_token, self.cond_proj(cond)], dim=1) + self.cond_pos_emb
        memory = self.cond_encoder(self.emb_dropout(memory))
        device = x.device
        t = torch.arange(horizon, device=device)
        s = torch.arange(memory.shape[1], device=device)
        if self.causal:
            self_mask = t[None, :] > t[:, None]
            memory_mask = (s[None, :] - 1) > t[:, None]  # obs token s-1 visible from action s-1 on
        else:
            self_mask = torch.zeros(horizon, horizon, dtype=torch.bool, device=device)
            memory_mask = torch.zeros(horizon, memory.shape[1], dtype=torch.bool, device=device)
        return h, BlockContext(memory, self_mask, memory_mask)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.final_norm(h))

    def forward(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h, ctx = self.embed(x, level, cond)
        for block in self.blocks:
            h = block(h, ctx)
        return self.output(h)
