"""Mixture-of-experts feed-forward layers routed by the noise level (MoDE, Reuss et al. 2024).

Each layer holds E SwiGLU experts and a router that reads the σ embedding only, never the tokens, so every
token of a sample takes the same route and a fixed sampler's routes are known before it runs. Training samples
the k experts of each sample from the router's probabilities (without replacement); evaluation takes the top
k. The chosen probabilities are renormalised to sum to one and weight the experts' outputs.

`fuse` turns one route into a single feed-forward (`FusedFeedForward`: the k experts' weights concatenated, the
output projections pre-scaled by their route weights), which is what expert caching runs at inference.
The losses are the Switch-Transformer load-balancing term `E · Σ_i P_i · f_i` (P_i the mean router probability
of expert i, f_i the fraction of the batch's k·B assignments that went to it; 1 at uniform routing, its minimum
when the assignments follow the probabilities) and the router z-loss `mean(logsumexp(logits)²)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_routing(n_experts: int, top_k: int) -> None:
    """Refuse a layer that cannot route: k < 1 or more experts chosen than there are (E < k)."""
    if int(top_k) < 1 or int(n_experts) < int(top_k):
        raise ValueError(f"a mixture of experts needs 1 <= top_k <= num_experts, got num_experts={n_experts} and "
                         f"top_k={top_k}: set policy.denoiser.num_experts >= policy.denoiser.top_k >= 1")


class SwiGLUExpert(nn.Module):
    """One expert: `out(value ⊙ silu(gate))` with `[value | gate] = proj(x)` (hidden width H, as in MoDE)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, out_dim: int | None = None, bias: bool = False):
        super().__init__()
        self.hidden = hidden
        self.proj = nn.Linear(dim, 2 * hidden)
        self.out = nn.Linear(hidden, out_dim or dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(self.dropout(value * F.silu(gate)))


class NoiseRouter(nn.Module):
    """Router logits `[B, E]` from the σ embedding `[B, D]`: a SwiGLU MLP of hidden width `hidden` (the authors'
    router is one) or, with `hidden=0`, one linear map (`W_r · emb(σ)`)."""

    def __init__(self, dim: int, n_experts: int, hidden: int = 0):
        super().__init__()
        self.mlp = SwiGLUExpert(dim, hidden, out_dim=n_experts, bias=True) if hidden else None
        self.linear = None if hidden else nn.Linear(dim, n_experts)

    def forward(self, emb: Tensor) -> Tensor:
        return self.mlp(emb) if self.mlp is not None else self.linear(emb)


@dataclass
class Route:
    """The experts one layer uses for each sample: logits and probabilities `[B, E]`, the chosen experts `[B, k]`
    and their renormalised weights `[B, k]`."""

    logits: Tensor
    probs: Tensor
    experts: Tensor
    weights: Tensor


def choose_experts(logits: Tensor, top_k: int, sample: bool) -> Route:
    """The k experts per row of `logits`: drawn from softmax(logits) without replacement (`sample`, training) or
    the k most probable (evaluation); their probabilities renormalised to sum to one."""
    probs = logits.float().softmax(dim=-1)
    if sample:
        experts = torch.multinomial(probs.detach(), top_k, replacement=False)
    else:
        experts = probs.detach().topk(top_k, dim=-1).indices
    chosen = probs.gather(1, experts)
    return Route(logits, probs, experts, chosen / chosen.sum(dim=-1, keepdim=True))


def load_balancing_loss(route: Route) -> Tensor:
    """`E · Σ_i P_i · f_i`: P_i the batch-mean router probability of expert i, f_i the share of the batch's k·B
    assignments that went to i (every token of a sample shares its route, so per sample equals per token)."""
    n_experts = route.probs.shape[-1]
    counts = torch.zeros(n_experts, device=route.probs.device, dtype=route.probs.dtype)
    counts = counts.index_add(0, route.experts.flatten(), torch.ones_like(route.experts.flatten(), dtype=counts.dtype))
    share = counts / route.experts.numel()
    return n_experts * (route.probs.mean(dim=0) * share).sum()


def router_z_loss(route: Route) -> Tensor:
    """`mean(logsumexp(logits)²)`: keeps the router's logits small (ST-MoE's z-loss)."""
    return route.logits.float().logsumexp(dim=-1).square().mean()


class FusedFeedForward:
    """The k experts of one route as one SwiGLU feed-forward: `[value | gate]` projections of all k experts in one
    matrix, output projections concatenated and pre-scaled by the route weights (no router, one matmul each)."""

    def __init__(self, proj_weight: Tensor, proj_bias: Tensor, out_weight: Tensor, experts: tuple[int, ...],
                 weights: tuple[float, ...]):
        self.proj_weight, self.proj_bias, self.out_weight = proj_weight, proj_bias, out_weight
        self.experts, self.weights = experts, weights

    @property
    def hidden(self) -> int:
        """The fused hidden width: k times an expert's."""
        return self.out_weight.shape[1]

    def __call__(self, x: Tensor) -> Tensor:
        value, gate = F.linear(x, self.proj_weight, self.proj_bias).chunk(2, dim=-1)
        return F.linear(value * F.silu(gate), self.out_weight)


class MixtureOfExperts(nn.Module):
    """E SwiGLU experts and a σ router; `forward(x, route)` runs each chosen expert on the samples that chose it."""

    def __init__(self, dim: int, n_experts: int = 4, top_k: int = 2, hidden: int | None = None,
                 dropout: float = 0.0, router_hidden: int = 0):
        super().__init__()
        check_routing(n_experts, top_k)
        self.n_experts, self.top_k = int(n_experts), int(top_k)
        self.router = NoiseRouter(dim, self.n_experts, router_hidden)
        self.experts = nn.ModuleList(SwiGLUExpert(dim, hidden or 4 * dim, dropout) for _ in range(self.n_experts))

    def route(self, emb: Tensor) -> Route:
        """The route of every sample from its σ embedding `[B, D]` (sampled in training, top-k in evaluation)."""
        return choose_experts(self.router(emb), self.top_k, sample=self.training)

    def forward(self, x: Tensor, route: Route) -> Tensor:
        """`Σ_j w_j · expert_j(x)` over each sample's chosen experts; `x` is `[B, S, D]`."""
        out = torch.zeros_like(x)
        batch = x.shape[0]
        for e, expert in enumerate(self.experts):
            hit = route.experts == e  # [B, k]
            rows = hit.any(dim=-1).nonzero().flatten()
            if rows.numel() == 0:
                continue
            weight = (route.weights * hit).sum(dim=-1).to(x.dtype)
            if rows.numel() == batch:  # every sample chose it (a shared σ): no gather
                out = out + weight[:, None, None] * expert(x)
            else:
                out = out.index_add(0, rows, weight[rows, None, None] * expert(x[rows]))
        return out

    def fuse(self, experts: Tensor, weights: Tensor) -> FusedFeedForward:
        """One feed-forward equal to `Σ_j weights[j] · expert_{experts[j]}` (1-D `[k]` tensors of one route)."""
        chosen = [self.experts[int(e)] for e in experts.tolist()]
        h = chosen[0].hidden
        values = [ex.proj.weight[:h] for ex in chosen]
        gates = [ex.proj.weight[h:] for ex in chosen]
        bias = torch.cat([ex.proj.bias[:h] for ex in chosen] + [ex.proj.bias[h:] for ex in chosen])
        out = torch.cat([w.to(ex.out.weight.dtype) * ex.out.weight for w, ex in zip(weights, chosen, strict=True)],
                        dim=1)
        return FusedFeedForward(torch.cat(values + gates), bias, out, tuple(int(e) for e in experts.tolist()),
                                tuple(float(w) for w in weights.tolist()))
