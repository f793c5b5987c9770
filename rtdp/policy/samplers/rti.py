"""Real-time-iteration warm start (RTI-DP, Duan et al. 2025): the previous chunk, shifted by the actions
executed since and padded with its last action, re-noised to an intermediate level τ and denoised from
there with a few DDIM steps. Inference only: works with any DDPM/DDIM-trained policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def snap_discrete(x: Tensor, dims: Sequence[int], levels: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """`x` with its `dims` snapped to the nearer of their two normalised values (`levels` = (low, high) per dim;
    default ±1). A copy: `x` is left alone."""
    x = x.clone()
    if dims:
        idx = list(dims)
        lo, hi = levels if levels is not None else (torch.full((len(idx),), -1.0), torch.ones(len(idx)))
        lo, hi = lo.to(x.device, x.dtype), hi.to(x.device, x.dtype)
        x[..., idx] = torch.where(x[..., idx] >= (lo + hi) / 2, hi, lo)
    return x


def discrete_levels(normalizer: Any, dims: Sequence[int], key: str = "action") -> tuple[Tensor, Tensor] | None:
    """The normalised values of the data's min and max on `dims` of `key` (±1 for minmax, ±f with the task's
    `action.discrete_scale` f), or None without a fitted normaliser for `key`."""
    if not dims or normalizer is None or key not in normalizer:
        return None
    stats = normalizer.stats(key)
    lo = normalizer.normalize(key, torch.as_tensor(stats["min"], dtype=torch.float32))
    hi = normalizer.normalize(key, torch.as_tensor(stats["max"], dtype=torch.float32))
    idx = list(dims)
    return lo.reshape(-1)[idx].clone(), hi.reshape(-1)[idx].clone()


def warm_steps_for_tau(grid: Sequence[float], tau: float) -> int:
    """Warm steps that use the grid levels ≤ τ (a level of the training schedule); τ at or above the grid's top
    level is the whole grid (a cold start)."""
    below = [level for level in grid[:-1] if level <= tau]  # grid[-1] is the clean level
    if not below:
        raise ValueError(f"rti: tau={tau} is below every level of the DDIM grid {grid[:-1]}; "
                         f"use tau >= {min(grid[:-1])}")
    return len(below)


DISCRETE_MODES = ("reinit", "keep", "noiseless")


class RTISampler(DDIMSampler):
    """DDIM with a warm start: `warm_steps` of the `num_steps`-step DDIM grid, from τ = its level there.

    `warm_steps == num_steps` (or τ at the grid's top level) is the cold DDIM sampler exactly; `tau` selects the
    grid levels ≤ τ instead of counting steps. The first call of an episode (no previous
    chunk) is a cold start. Discrete dimensions (a gripper's open/close) resist the flip a warm start implies:
    near the data a denoiser trusts its input, so the old sign survives re-noising to a small τ. Two remedies:
    - `discrete_mode="reinit"`: one extra evaluation at the top level of the grid, from pure noise, reads their
      sign off the observation alone; that sign replaces the guess before re-noising.
    - scaling (RTI-DP's own): train with those dimensions at ±0.1 instead of ±1 after normalisation
      (`task.action.discrete_scale=0.1`) and warm-start them like the rest (`discrete_mode="keep"`). At a small τ
      the noise then swamps the carried-over sign, so the observation decides it; but every call is then a
      fresh draw, and a 2 % chance of the wrong sign per call adds up over an episode.
    - `discrete_mode="noiseless"` (with scaling): re-noise those dimensions without noise, x_τ = √ᾱ_τ·guess.
      The carried-over sign is then fixed evidence (log-odds 2ᾱ_τs²/(1 − ᾱ_τ), 0.7 at s = 0.1, τ = 10), so the
      sign flips only when the observation outweighs it: hysteresis instead of random flips.
    Either way the outputs are snapped back to the two values of the data (`discrete_levels`, set from the
    policy's normaliser; ±1 by default).
    """

    name = "rti"
    stateful = True

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 10, warm_steps: int = 2, eta: float = 0.0,
                 n_action_steps: int | None = 8, discrete_dims: Sequence[int] = (), discrete_mode: str = "reinit",
                 tau: float | None = None, noise_scale: float = 1.0):
        super().__init__(schedule, num_steps, eta)
        if discrete_mode not in DISCRETE_MODES:
            raise ValueError(f"rti: discrete_mode must be one of {', '.join(DISCRETE_MODES)}, got {discrete_mode!r}")
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
        self.discrete_levels: tuple[Tensor, Tensor] | None = None  # normalised (low, high) per discrete dim
        if not noise_scale >= 0:
            raise ValueError(f"rti: noise_scale must be >= 0, got {noise_scale}")
        self.noise_scale = float(noise_scale)
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
                guess[..., self.discrete_dims] = snap_discrete(decided, self.discrete_dims,
                                                               self.discrete_levels)[..., self.discrete_dims]
            noise = torch.randn(shape, generator=generator, device=guess.device, dtype=guess.dtype) * self.noise_scale
            if self.discrete_dims and self.discrete_mode == "noiseless":
                noise[..., self.discrete_dims] = 0.0
            x_tau = self.schedule.add_noise(guess, noise, batch_level(self.tau, shape[0], guess.device))
            x = self.denoise(denoise_fn, x_tau, self.warm_levels, generator)
        x = snap_discrete(x, self.discrete_dims, self.discrete_levels)
        self.last_warm = not cold
        self.prev = x.clone()
        return x

    def describe(self) -> dict:
        return {"name": self.name, "num_steps": self.num_steps, "warm_steps": self.warm_steps, "tau": self.tau,
                "n_action_steps": self.n_exec,
                "discrete_dims": self.discrete_dims, "discrete_mode": self.discrete_mode}
