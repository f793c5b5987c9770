"""Expert caching for MoDE: the routes of a fixed sampler are known before it runs, so route once, fuse, reuse.

`ExpertCache` is the `CallHook` a MoDE denoiser contributes to its policy. At `begin(grid)` it takes every level
of the sampler's grid that is one σ for the whole batch, runs the router once for it and fuses each layer's k
chosen experts into one feed-forward (`MoDEDenoiser.fuse`); then it replaces `call.forward`, so the plan's
evaluations at those levels run no router and only the k experts' weights. Fusions are kept between plans (a
sampler visits the same grid every chunk) and dropped when the weights change (`weights_stamp`).

It stays out of the way (the routed forward runs) in training mode, when the call needs gradients, when
`denoiser.expert_cache` is false (`policy.denoiser.expert_cache=false`), and for any evaluation whose level is
not the grid's level for that step or differs between rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rtdp.policy.call import CallHook, DenoiserCall

if TYPE_CHECKING:
    from rtdp.policy.mode import MoDEDenoiser
    from rtdp.policy.moe import FusedFeedForward


class ExpertCache(CallHook):
    """Serves a MoDE denoiser's evaluations from fused feed-forwards of the routes of the sampler's grid."""

    def __init__(self, denoiser: MoDEDenoiser):
        self.denoiser = denoiser
        self._fused: dict[float, list[FusedFeedForward]] = {}  # schedule level σ -> one fused feed-forward per layer
        self._stamp: tuple | None = None
        self._steps: list[tuple[Tensor, list[FusedFeedForward]] | None] = []
        self._current: list[FusedFeedForward] | None = None
        self.cached_evaluations = 0  # evaluations served from fusions (for tests and benchmarks)
        self.fusions = 0  # routes fused since the hook was made

    def active(self, call: DenoiserCall) -> bool:
        """Whether this plan can use fusions: inference (eval mode, no gradients) with caching switched on."""
        return self.denoiser.expert_cache and not self.denoiser.training and not call.grad and call.grid is not None

    def begin(self, call: DenoiserCall) -> None:
        self._steps, self._current = [], None
        if not self.active(call):
            return
        stamp = self.denoiser.weights_stamp()
        if stamp != self._stamp:  # new weights: fusions of the old ones must not be used
            self._fused.clear()
            self._stamp = stamp
        probe = torch.zeros(1, 1, 1, device=call.device)
        for level in call.grid:
            flat = level.flatten()
            if flat.numel() == 0 or not bool((flat == flat[0]).all()):
                self._steps.append(None)  # rows at different σ: routed as usual
                continue
            sigma = float(flat[0])
            if sigma not in self._fused:
                model_level = call.schedule.model_input(probe, flat[:1].to(call.device))[1]
                self._fused[sigma] = self.denoiser.fuse(model_level)
                self.fusions += 1
            self._steps.append((flat[0], self._fused[sigma]))
        if any(s is not None for s in self._steps):
            routed = call.forward
            call.forward = lambda x_in, level_in: self._forward(routed, call, x_in, level_in)

    def before_step(self, call: DenoiserCall, x: Tensor, level: Tensor) -> None:
        step = self._steps[call.step] if call.step < len(self._steps) else None
        same = step is not None and bool((torch.as_tensor(level).to(step[0].device) == step[0]).all())
        self._current = step[1] if same else None

    def _forward(self, routed, call: DenoiserCall, x_in: Tensor, level_in: Tensor) -> Tensor:
        if self._current is None:
            return routed(x_in, level_in)
        self.cached_evaluations += 1
        return self.denoiser.run(x_in, level_in, call.cond, fused=self._current)[0]

    def end(self, call: DenoiserCall) -> None:
        self._current = None
