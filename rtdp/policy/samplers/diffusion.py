"""The baseline samplers of Diffusion Policy: ancestral DDPM and DDIM, each with any number of steps."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor

from rtdp.policy.call import DenoiserCall
from rtdp.policy.plan import Plan
from rtdp.policy.samplers.base import Sampler, batch_level
from rtdp.policy.schedules import DDPMSchedule, NoiseSchedule
from rtdp.types import PlanContext


class _GridSampler(Sampler):
    """Start from the prior at the noisiest level and run `denoise` down the schedule's `num_steps` grid."""

    num_steps: int

    def sample(self, call: DenoiserCall, shape, ctx: PlanContext, previous: Plan | None) -> Plan:
        levels = self.schedule.inference_levels(self.num_steps).tolist()
        x = self.schedule.prior(shape, generator=ctx.generator, device=call.device, dtype=torch.float32)
        return self.plan(self.denoise(call, x, levels, ctx.generator), call)

    def denoise(self, call: DenoiserCall, x: Tensor, levels: list, generator) -> Tensor:
        """Run the reverse process through `levels` (noisiest first, ending clean) from iterate `x`; announces
        the grid to `call` and closes it."""
        call.begin(levels[:-1])
        try:
            return self._steps(call, x, levels, generator)
        finally:
            call.end()

    def _steps(self, call: DenoiserCall, x: Tensor, levels: list, generator) -> Tensor:
        for k, k_next in pairwise(levels):
            k_t, k_next_t = batch_level(k, x.shape[0], x.device), batch_level(k_next, x.shape[0], x.device)
            x0, eps = call.predict(x, k_t)
            x = self.step(x, k_t, k_next_t, x0, eps, generator)
        return x

    def step(self, x: Tensor, level: Tensor, level_next: Tensor, x0: Tensor, eps: Tensor, generator) -> Tensor:
        """The iterate at `level_next` from `x` at `level` and the evaluation's (x̂0, ε̂); a sampler that edits
        (x̂0, ε̂) between evaluation and step (RTC's guidance and inpainting) calls this."""
        raise NotImplementedError


class DDPMSampler(_GridSampler):
    """Ancestral DDPM: the posterior q(x_{k'} | x_k, x̂0) at every step; `num_steps` < K skips levels."""

    name = "ddpm"

    def __init__(self, schedule: NoiseSchedule, num_steps: int | None = None, n_action_steps: int = 8,
                 n_obs_steps: int = 2):
        if not isinstance(schedule, DDPMSchedule):
            raise ValueError(  # noqa: TRY004 - a configuration error, reported like the others
                "the DDPM sampler needs a discrete DDPM schedule; use sampler=ddim with an EDM schedule")
        super().__init__(schedule, n_action_steps, n_obs_steps)
        self.num_steps = num_steps or schedule.num_train_steps
        schedule.inference_levels(self.num_steps)  # validates num_steps early

    def step(self, x: Tensor, level: Tensor, level_next: Tensor, x0: Tensor, eps: Tensor, generator) -> Tensor:
        """The posterior sample given x̂0 (ε̂ is implied by x and x̂0); fresh noise unless the next level is clean."""
        noise = (torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                 if int(level_next.max()) >= 0 else None)
        return self.schedule.ddpm_step(x, level, level_next, x0, noise)

    def describe(self) -> dict:
        return {**super().describe(), "num_steps": self.num_steps}


class DDIMSampler(_GridSampler):
    """DDIM (deterministic for eta = 0): x̂0 re-noised along ε̂ to the next level; Euler on σ for EDM."""

    name = "ddim"

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 10, eta: float = 0.0, n_action_steps: int = 8,
                 n_obs_steps: int = 2):
        if eta and not isinstance(schedule, DDPMSchedule):
            raise ValueError("DDIM with eta > 0 needs a discrete DDPM schedule")
        super().__init__(schedule, n_action_steps, n_obs_steps)
        self.num_steps, self.eta = num_steps, eta
        schedule.inference_levels(num_steps)

    def step(self, x: Tensor, level: Tensor, level_next: Tensor, x0: Tensor, eps: Tensor, generator) -> Tensor:
        """x̂0 re-noised along ε̂ to the next level (plus fresh noise for eta > 0)."""
        if self.eta:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return self.schedule.ddim_step_eta(x0, eps, level, level_next, self.eta, noise)
        return self.schedule.ddim_step(x0, eps, level_next)

    def describe(self) -> dict:
        return {**super().describe(), "num_steps": self.num_steps, "eta": self.eta}
