"""What a denoiser costs: total and active parameters, and FLOPs per denoiser evaluation, counted.

Parameters are read off the modules: a mixture-of-experts layer (`rtdp.policy.moe.MixtureOfExperts`) holds E
experts and a router but runs k experts per step, and with expert caching no router, so a MoDE denoiser's
active count (what one cached evaluation touches) is its total less E-k experts and the router of every layer;
`routed` keeps the routers (uncached inference). A dense denoiser's counts are all its total.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products and attention, 2 per
multiply-add) over whole plans through the policy's own path (its call hooks, so expert caching is measured as
it runs), divided by the plan's evaluations (the observation encoder, run once per plan, is in the plan's FLOPs: nothing
for low-dimensional observations without an MLP). One plan runs first uncounted, so routes fused once and kept
between plans are not charged to every plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rtdp.policy.moe import MixtureOfExperts
from rtdp.types import PlanContext


def parameter_counts(denoiser: nn.Module) -> dict[str, int]:
    """`total`, `routed` (total less the experts a step leaves idle) and `active` (also less the routers, which
    expert caching skips) parameters of a denoiser."""
    total = sum(p.numel() for p in denoiser.parameters())
    idle, routers = 0, 0
    for module in denoiser.modules():
        if isinstance(module, MixtureOfExperts):
            per_expert = sum(p.numel() for p in module.experts[0].parameters())
            idle += (module.n_experts - module.top_k) * per_expert
            routers += sum(p.numel() for p in module.router.parameters())
    return {"total": total, "routed": total - idle, "active": total - idle - routers}


def flops_per_evaluation(policy: Any, obs: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, float]:
    """Counted FLOPs of one denoiser evaluation (a plan's FLOPs over its NFE) for observation windows `obs`,
    through the policy's sampler and call hooks; also the plan's NFE and total FLOPs."""
    was_training = policy.training
    policy.eval()
    try:
        nobs = policy.prepare_obs(obs)
        ctx = lambda: PlanContext(generator=torch.Generator().manual_seed(seed))
        policy.reset()
        policy.plan_chunk(nobs, ctx())  # uncounted: fusions and other once-per-grid work happen here
        policy.reset()
        with FlopCounterMode(display=False) as counter:
            plan = policy.plan_chunk(nobs, ctx())
        flops = counter.get_total_flops()
    finally:
        policy.train(was_training)
        policy.reset()
    return {"flops_per_evaluation": flops / max(int(plan.nfe), 1), "flops_per_plan": float(flops),
            "nfe": int(plan.nfe)}
