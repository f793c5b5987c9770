"""MoDE, the Mixture of Denoising Experts (Reuss et al., ICLR 2025): a causal transformer denoiser whose
feed-forward layers are mixtures of experts routed by the noise level only (`denoiser.type: mode`).

The sequence is `[σ token, observation tokens (To), action tokens (T)]` under one causal self-attention, so an
action sees the noise level, every observation frame and the actions before it. The σ embedding (a linear map
of ln(σ)/4, then a second linear map) is the first token and is also added to every token before each
self-attention. Blocks are pre-norm with RMSNorm; attention normalises queries and keys per head (qk-norm);
each feed-forward is `rtdp.policy.moe.MixtureOfExperts` (E SwiGLU experts, top-k, router on the σ embedding).

The level it is given is the schedule's model input: for the EDM schedule that is 25·ln σ, so ln(σ)/4 is
`level / 100`. One σ per chunk: a per-position level must be the same along the chunk (MoDE has one σ token).

`denoise` returns the load-balancing loss (and the router z-loss when its weight is > 0), weighted, as
auxiliary losses. Expert caching (`rtdp.policy.expert_cache`) is the call hook this denoiser contributes: at
inference it routes each σ of the sampler's grid once and runs the fused k-expert feed-forwards of `fuse`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtdp.policy.denoiser import Denoiser, DenoiserOutput, DenoiserSpec
from rtdp.policy.embeddings import per_position_levels
from rtdp.policy.moe import (
    FusedFeedForward,
    MixtureOfExperts,
    Route,
    check_routing,
    load_balancing_loss,
    router_z_loss,
)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RMSNorm on each head's queries and keys (qk-norm)."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"policy.denoiser.dim={dim} must be divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim, self.dropout = n_heads, dim // n_heads, dropout
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim, bias=False)
        self.q_norm, self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6), nn.RMSNorm(self.head_dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        b, s, d = x.shape
        heads = lambda t: t.view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        q, k, v = self.q_norm(heads(self.query(x))), self.k_norm(heads(self.key(x))), heads(self.value(x))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, s, d))


class MoDEBlock(nn.Module):
    """`h += attn(rms(h) + c)`, then `h += moe(rms(h))`, with `c` the σ embedding added to every token."""

    def __init__(self, dim: int, n_heads: int, attn_dropout: float, mlp_dropout: float, n_experts: int, top_k: int,
                 hidden: int, router_hidden: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(dim, eps=1e-6)
        self.attn = CausalSelfAttention(dim, n_heads, attn_dropout)
        self.ff_norm = nn.RMSNorm(dim, eps=1e-6)
        self.moe = MixtureOfExperts(dim, n_experts, top_k, hidden, mlp_dropout, router_hidden)

    def forward(self, h: Tensor, c: Tensor, route: Route | None = None,
                fused: FusedFeedForward | None = None) -> Tensor:
        h = h + self.attn(self.attn_norm(h) + c)
        x = self.ff_norm(h)
        return h + (fused(x) if fused is not None else self.moe(x, route))


class MoDEDenoiser(Denoiser):
    """Denoiser `(x[B,T,Da], level[B] or [B,T] (one σ per chunk), cond[B,To,Dc]) -> [B,T,Da]`."""

    name = "mode"
    block_cache_refusal: ClassVar[str] = (
        "a MoDE denoiser does not take block caching (cache=bac): its feed-forward blocks switch experts with σ, "
        "so a block's output at one step is not its output at the next; it has expert caching instead, on by "
        "default (policy.denoiser.expert_cache=true)")

    def __init__(self, action_dim: int, cond_dim: int, n_obs_steps: int, horizon: int, n_layers: int = 6,
                 n_heads: int = 4, dim: int = 128, num_experts: int = 4, top_k: int = 2, expert_hidden_mult: int = 4,
                 router_hidden_mult: int = 4, attn_dropout: float = 0.3, mlp_dropout: float = 0.1,
                 emb_dropout: float = 0.0, load_balancing_weight: float = 0.01, router_z_weight: float = 0.0,
                 expert_cache: bool = True):
        super().__init__()
        check_routing(num_experts, top_k)
        if n_layers < 1:
            raise ValueError(f"policy.denoiser.n_layers must be >= 1, got {n_layers}")
        self.action_dim, self.n_obs_steps, self.horizon = action_dim, n_obs_steps, horizon
        self.num_experts, self.top_k = int(num_experts), int(top_k)
        self.load_balancing_weight, self.router_z_weight = float(load_balancing_weight), float(router_z_weight)
        self.expert_cache = bool(expert_cache)  # read by the expert-cache hook at every plan
        self.sigma_in = nn.Linear(1, dim)
        self.sigma_out = nn.Linear(dim, dim, bias=False)
        self.obs_proj = nn.Linear(cond_dim, dim)
        self.action_proj = nn.Linear(action_dim, dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, n_obs_steps + horizon, dim))
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.blocks = nn.ModuleList(
            MoDEBlock(dim, n_heads, attn_dropout, mlp_dropout, num_experts, top_k, expert_hidden_mult * dim,
                      router_hidden_mult * dim) for _ in range(n_layers))
        self.final_norm = nn.RMSNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, action_dim)
        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.pos_emb, std=0.02, a=-0.04, b=0.04)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # MoDE's "olmoe" initialisation: truncated normal (std 0.02) weights, zero biases; the router's small
        # logits start every layer near uniform routing
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], spec: DenoiserSpec) -> MoDEDenoiser:
        return cls(spec.action_dim, spec.cond_dim, spec.n_obs_steps, spec.horizon, **cfg)

    def call_hooks(self) -> list:
        """Expert caching, attached to every plan's denoiser call (it checks `expert_cache` and the mode itself)."""
        from rtdp.policy.expert_cache import ExpertCache

        return [ExpertCache(self)]

    # ------------------------------------------------------------------------------------------ pieces
    def chunk_level(self, level: Tensor | float, batch: int, horizon: int, device: torch.device) -> Tensor:
        """The one model level of each chunk, `[B]`, from a scalar, `[B]` or `[B, T]` level."""
        levels = per_position_levels(level, batch, horizon, device)
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()
        if not tracing and not bool((levels == levels[:, :1]).all()):
            raise ValueError("MoDE routes by one noise level per chunk; it got a level that changes along the "
                             "chunk (per-position levels, e.g. sampler=sdp): use a sampler with one level per "
                             "chunk (ddim, ddpm)")
        return levels[:, 0]

    def sigma_embedding(self, chunk_level: Tensor) -> Tensor:
        """`[B, D]` from the chunk's model level (25·ln σ under EDM): Linear(ln(σ)/4), then Linear."""
        return self.sigma_out(self.sigma_in((chunk_level / 100.0)[:, None].to(self.sigma_in.weight.dtype)))

    def routes(self, emb: Tensor) -> list[Route]:
        """Every layer's route from the σ embedding `[B, D]` (nothing else reaches a router)."""
        return [block.moe.route(emb) for block in self.blocks]

    def run(self, x: Tensor, level: Tensor | float, cond: Tensor,
            fused: Sequence[FusedFeedForward] | None = None) -> tuple[Tensor, list[Route]]:
        """The prediction and the routes taken; with `fused` (one feed-forward per layer) no router runs."""
        batch, horizon, _ = x.shape
        if horizon > self.horizon:
            raise ValueError(f"horizon {horizon} exceeds the MoDE denoiser's {self.horizon}")
        if cond.shape[1] != self.n_obs_steps:
            raise ValueError(f"expected {self.n_obs_steps} observation steps, got {cond.shape[1]}")
        emb = self.sigma_embedding(self.chunk_level(level, batch, horizon, x.device))  # [B, D]
        tokens = torch.cat([self.obs_proj(cond), self.action_proj(x)], dim=1)
        tokens = tokens + self.pos_emb[:, : self.n_obs_steps + horizon]
        h = self.emb_dropout(torch.cat([emb[:, None], tokens], dim=1))  # [B, 1 + To + T, D]
        c = emb[:, None]
        routes: list[Route] = [] if fused is not None else self.routes(emb)
        for i, block in enumerate(self.blocks):
            h = block(h, c, fused=fused[i]) if fused is not None else block(h, c, route=routes[i])
        return self.head(self.final_norm(h[:, -horizon:])), routes

    def forward(self, x: Tensor, level: Tensor, cond: Tensor) -> Tensor:
        return self.run(x, level, cond)[0]

    def denoise(self, x: Tensor, level: Tensor, cond: Tensor) -> DenoiserOutput:
        """The prediction, the weighted load-balancing loss (mean over layers) and, if weighted, the z-loss."""
        prediction, routes = self.run(x, level, cond)
        aux = {"load_balancing_loss": self.load_balancing_weight
               * torch.stack([load_balancing_loss(r) for r in routes]).mean()}
        if self.router_z_weight > 0:
            aux["router_z_loss"] = self.router_z_weight * torch.stack([router_z_loss(r) for r in routes]).mean()
        return DenoiserOutput(prediction, aux)

    def fuse(self, chunk_level: Tensor) -> list[FusedFeedForward]:
        """One fused feed-forward per layer for the σ of `chunk_level` (`[1]` model level): the router's top-k
        route, computed once (as a constant: no gradient reaches the router)."""
        with torch.no_grad():
            was_training = [b.moe.training for b in self.blocks]
            for b in self.blocks:
                b.moe.train(False)  # the evaluation route: top-k
            try:
                routes = self.routes(self.sigma_embedding(chunk_level.reshape(1)))
            finally:
                for b, mode in zip(self.blocks, was_training, strict=True):
                    b.moe.train(mode)
        return [block.moe.fuse(r.experts[0], r.weights[0].detach()) for block, r in zip(self.blocks, routes,
                                                                                        strict=True)]

    def weights_stamp(self) -> tuple:
        """Changes whenever a parameter is replaced or written in place (load_state_dict, an optimiser or EMA step,
        `.to(device)`), so cached fusions of older weights are never used."""
        return tuple((p.data_ptr(), p._version, p.dtype) for p in self.parameters())
