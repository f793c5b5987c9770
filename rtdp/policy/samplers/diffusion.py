"""The baseline samplers of Diffusion Policy: ancestral DDPM and DDIM, each with any number of steps."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor

from rtdp.policy.samplers.base import Sampler, batch_level
from rtdp.policy.schedules import DDPMSchedule, ModelFn, NoiseSchedule


class _GridSampler(Sampler):
    """Start from the prior at the noisiest level and run `denoise` down the schedule's `num_steps` grid."""

    num_steps: int

    def _sample(self, denoise_fn: ModelFn, shape, generator, device, dtype, n_executed) -> Tensor:
        levels = self.schedule.inference_levels(self.num_steps).tolist()
        x = self.schedule.prior(shape, generator=generator, device=device, dtype=dtype)
        return self.denoise(denoise_fn, x, levels, generator)

    def denoise(self, denoise_fn: ModelFn, x: Tensor, levels: list, generator) -> Tensor:
        """Run the reverse process through `levels` (noisiest first) from iterate `x`."""
        raise NotImplementedError


class DDPMSampler(_GridSampler):
    """Ancestral DDPM: the posterior q(x_{k'} | x_k, x̂0) at every step; `num_steps` < K skips levels."""

    name = "ddpm"

    def __init__(self, schedule: NoiseSchedule, num_steps: int | None = None):
        if not isinstance(schedule, DDPMSchedule):
            raise ValueError(  # noqa: TRY004 - a configuration error, reported like the others
                "the DDPM sampler needs a discrete DDPM schedule; use sampler=ddim with an EDM schedule")
        super().__init__(schedule)
        self.num_steps = num_steps or schedule.num_train_steps
        schedule.inference_levels(self.num_steps)  # validates num_steps early

    def denoise(self, denoise_fn: ModelFn, x: Tensor, levels: list[int], generator) -> Tensor:
        """Run the reverse process through `levels` (noisiest first) from iterate `x`."""
        for k, k_next in pairwise(levels):
            k_t, k_next_t = batch_level(k, x.shape[0], x.device), batch_level(k_next, x.shape[0], x.device)
            x0, _ = self.predict(denoise_fn, x, k_t)
            noise = (torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                     if k_next >= 0 else None)
            x = self.schedule.ddpm_step(x, k_t, k_next_t, x0, noise)
        return x

    def describe(self) -> dict:
        return {"name": self.name, "num_steps": self.num_steps}


class DDIMSampler(_GridSampler):
    """DDIM (deterministic for eta = 0): x̂0 re-noised along ε̂ to the next level; Euler on σ for EDM."""

    name = "ddim"

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 10, eta: float = 0.0):
        if eta and not isinstance(schedule, DDPMSchedule):
            raise ValueError("DDIM with eta > 0 needs a discrete DDPM schedule")
        super().__init__(schedule)
        self.num_steps, self.eta = num_steps, eta
        schedule.inference_levels(num_steps)

    def denoise(self, denoise_fn: ModelFn, x: Tensor, levels: list[float], generator) -> Tensor:
        """Run DDIM through `levels` (noisiest first) from iterate `x`."""
        for k, k_next in pairwise(levels):
            k_t, k_next_t = batch_level(k, x.shape[0], x.device), batch_level(k_next, x.shape[0], x.device)
            x0, eps = self.predict(denoise_fn, x, k_t)
            if self.eta:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = self.schedule.ddim_step_eta(x0, eps, k_t, k_next_t, self.eta, noise)
            else:
                x = self.schedule.ddim_step(x0, eps, k_next_t)
        return x

    def describe(self) -> dict:
        return {"name": self.name, "num_steps": self.num_steps, "eta": self.eta}
