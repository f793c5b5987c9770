"""Exponential moving average of model weights with Diffusion Policy's warm-up (power 0.75, max 0.9999).

The decay grows as `1 - (1 + step / inv_gamma) ** -power`, so early weights are forgotten fast and the
average settles as training does. (torch.optim.swa_utils.AveragedModel has no such warm-up.)
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMAModel:
    """Holds an averaged copy of a module; `step(model)` after every optimiser step."""

    def __init__(self, model: nn.Module, power: float = 0.75, inv_gamma: float = 1.0, min_value: float = 0.0,
                 max_value: float = 0.9999, update_after_step: int = 0):
        self.averaged = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.inv_gamma = power, inv_gamma
        self.min_value, self.max_value = min_value, max_value
        self.update_after_step = update_after_step
        self.optimization_step = 0
        self.decay = 0.0

    def get_decay(self, step: int) -> float:
        step = max(0, step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return max(self.min_value, min(value, self.max_value))

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        self.decay = self.get_decay(self.optimization_step)
        for ema_p, p in zip(self.averaged.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)  # ema = decay * ema + (1 - decay) * p
        for ema_b, b in zip(self.averaged.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
        self.optimization_step += 1
