"""Real-time-iteration warm start (RTI-DP, Duan et al. 2025): the previous chunk, shifted by the actions
executed since and padded with its last action, re-noised to an intermediate level τ and denoised from
there with a few DDIM steps. Inference only: works with any DDPM/DDIM-trained policy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rtdp.policy.samplers.base import batch_level
from rtdp.policy.samplers.diffusion import DDIMSampler
from rtdp.policy.schedules import ModelFn, NoiseSchedule


def shift_and_pad(chunk: Tensor, m: int) -> Tensor:
    """`[A[m:], A[-1] repeated m times]` along the time axis of `[B, T, Da]`."""
    T = chunk.shape[1]
    m = max(0, min(int(m), T))
    return torch.cat([chunk[:, m:], chunk[:, -1:].expand(-1, m, -1)], dim=1)


def warm_steps_for_tau(grid: Sequence[float], tau: float) -> int:
    """Warm steps that use the grid levels ≤ τ (a level of the training schedule); τ at or above the grid's top
    level is the whole grid (a cold start)."""
    below = [level for level in grid[:-1] if level <= tau]  # grid[-1] is the clean level
    if not below:
        raise ValueError(f"rti: tau={tau} is below every level of the DDIM grid {grid[:-1]}; "
                         f"use tau >= {min(grid[:-1])}")
    return len(below)


class RTISampler(DDIMSampler):
    """DDIM with a warm start: `warm_steps` of the `num_steps`-step DDIM grid, from τ = its level there.

    `warm_steps == num_steps` (or τ at the grid's top level) is the cold DDIM sampler exactly; `tau` selects the
    grid levels ≤ τ instead of counting steps. The first call of an episode (no previous
    chunk) is a cold start. Discrete dimensions (a gripper's open/close, ±1 after normalisation) resist the flip
    a warm start implies: near the data a denoiser trusts its input, so the old sign survives re-noising to a
    small τ. With `discrete_mode="reinit"` they are re-initialised from noise: one extra evaluation at the top
    level of the grid, from pure noise, reads their sign off the observation alone; that sign replaces the
    guess before re-noising, and the outputs are thresholded back to ±1 (`"keep"`: warm-start them too, only
    thresholding). The paper's alternative, training with those dimensions scaled by a factor > 1, changes
    the trained weights and is not offered here.
    """

    name = "rti"
    stateful = True

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 10, warm_steps: int = 2, eta: float = 0.0,
                 n_action_steps: int | None = 8, discrete_dims: Sequence[int] = (), discrete_mode: str = "reinit",
                 tau: float | None = None):
        super().__init__(schedule, num_steps, eta)
        if discrete_mode not in ("reinit", "keep"):
            raise ValueError(f"rti: discrete_mode must be 'reinit' or 'keep', got {discrete_mode!r}")
        grid = schedule.inference_levels(num_steps).tolist()
        if tau is not None:
            warm_steps = warm_steps_for_tau(grid, tau)
        if not 1 <= warm_steps <= num_steps:
            raise ValueError(f"rti: warm_steps must be in [1, num_steps={num_steps}], got {warm_steps}")
        if n_action_steps is not None and int(n_action_steps) < 1:
            raise ValueError(f"rti: n_action_steps must be >= 1 (or null for the policy's), got {n_action_steps}")
        self.warm_steps = warm_steps
        self.warm_levels = grid[-(warm_steps + 1):]
        self.tau = self.warm_levels[0]
        # Executed actions per call: set here (replan every n steps) or None to leave it to the policy.
        self.n_exec = None if n_action_steps is None else int(n_action_steps)
        self.default_shift = self.n_exec or 1
        self.discrete_dims = list(discrete_dims)
        self.discrete_mode = discrete_mode
        self.prev: Tensor | None = None
        self.last_warm = False

    def reset(self) -> None:
        self.prev = None

    def set_previous(self, chunk: Tensor) -> None:
        """Warm-start the next call from `chunk` (normalised, `[B, T, Da]`), e.g. to calibrate τ offline."""
        self.prev = chunk.detach().clone()

    def _sample(self, denoise_fn: ModelFn, shape, generator, device, dtype, n_executed) -> Tensor:
        cold = self.prev is None or self.prev.shape != torch.Size(shape) or self.warm_steps == self.num_steps
        if cold:
            x = super()._sample(denoise_fn, shape, generator, device, dtype, n_executed)
        else:
            guess = shift_and_pad(self.prev, self.default_shift if n_executed is None else n_executed)
            if self.discrete_dims and self.discrete_mode == "reinit":
                top = batch_level(self.schedule.inference_levels(self.num_steps)[0], shape[0], guess.device)
                prior = self.schedule.prior(shape, generator=generator, device=guess.device, dtype=guess.dtype)
                decided, _ = self.predict(denoise_fn, prior, top)
                guess[..., self.discrete_dims] = torch.where(decided[..., self.discrete_dims] >= 0, 1.0, -1.0)
            noise = torch.randn(shape, generator=generator, device=guess.device, dtype=guess.dtype)
            x_tau = self.schedule.add_noise(guess, noise, batch_level(self.tau, shape[0], guess.device))
            x = self.denoise(denoise_fn, x_tau, self.warm_levels, generator)
        if self.discrete_dims:
            x[..., self.discrete_dims] = torch.where(x[..., self.discrete_dims] >= 0, 1.0, -1.0).to(x.dtype)
        self.last_warm = not cold
        self.prev = x.clone()
        return x

    def describe(self) -> dict:
        return {"name": self.name, "num_steps": self.num_steps, "warm_steps": self.warm_steps, "tau": self.tau,
                "n_action_steps": self.n_exec,
                "discrete_dims": self.discrete_dims, "discrete_mode": self.discrete_mode}
