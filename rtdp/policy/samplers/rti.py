"""Real-time-iteration warm start (RTI-DP, Duan et al. 2025): the previous chunk, shifted by the actions
executed since and padded with its last action, re-noised to an intermediate level τ and denoised from
there with a few DDIM steps. Inference only: works with any DDPM/DDIM-trained policy."""

from __future__ import annotations

import warnings
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
        lo, hi = level_pair(levels, len(idx), x)
        x[..., idx] = torch.where(x[..., idx] >= (lo + hi) / 2, hi, lo)
    return x


def level_pair(levels: tuple[Tensor, Tensor] | None, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """(low, high) of `n` binary dimensions on `like`'s device and dtype; ±1 when `levels` is None."""
    lo, hi = levels if levels is not None else (torch.full((n,), -1.0), torch.ones(n))
    return lo.to(like.device, like.dtype), hi.to(like.device, like.dtype)


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
DEFAULT_DISCRETE_MODE = "noiseless"  # with DEFAULT_HYSTERESIS: best on the arm's ±0.5 gripper (docs/streaming.md)
DEFAULT_HYSTERESIS = 1.6  # log-odds a carried-over discrete sign counts for
UNSCALED_HALF_RANGE = 0.75  # discrete dims wider than ±this after normalisation cannot flip in a warm start


def warn_if_unscaled(sampler: Any) -> None:
    """Warn when an RTI sampler warm-starts binary dimensions trained at about ±1: the carried sign then never
    flips, or, weighed down by `discrete_hysteresis`, lies outside the data the denoiser saw. Every such
    setting failed on the arm."""
    if sampler.discrete_levels is None or getattr(sampler, "discrete_mode", None) in (None, "reinit"):
        return
    lo, hi = sampler.discrete_levels
    half = float(((hi - lo) / 2).max())
    if half > UNSCALED_HALF_RANGE:
        warnings.warn(f"sampler=rti: discrete_dims {sampler.discrete_dims} span ±{half:.2g} after normalisation, "
                      "so a warm start cannot flip them (docs/streaming.md); train with task.action.discrete_scale=0.5 "
                      "or use sampler.discrete_mode=reinit", UserWarning, stacklevel=3)


class RTISampler(DDIMSampler):
    """DDIM with a warm start: `warm_steps` of the `num_steps`-step DDIM grid, from τ = its level there.

    `warm_steps == num_steps` (or τ at the grid's top level) is the cold DDIM sampler exactly; `tau` selects the
    grid levels ≤ τ instead of counting steps. The first call of an episode (no previous chunk) is a cold start.

    Discrete dimensions (a gripper's open/close) resist the flip a warm start implies: re-noised to a small τ, the
    carried-over sign is evidence worth 2ᾱ_τs²/(1 − ᾱ_τ) log-odds for values ±s (~69 at s = 1, τ = 10), which no
    observation overturns. `discrete_mode` says what the warm start does with them:
    - `reinit`: one extra evaluation from pure noise at the grid's top level re-decides their sign first;
    - `keep`: warm-start them like the rest (carried sign + fresh noise);
    - `noiseless`: carried sign without noise, so it is fixed evidence rather than a fresh draw every call.
    `discrete_hysteresis` (log-odds; None = the sign as carried) weighs the carried sign so that it counts that
    much: the observation must be more than that sure to flip it. It needs the dimensions trained at a smaller ±s
    (RTI-DP's scaling, `task.action.discrete_scale`): at ±1 a weakly carried value lies outside the data the
    denoiser saw. On the arm (gripper at ±0.5) `noiseless` with 1–2.5 log-odds matches DDIM-10 (docs/streaming.md).
    Outputs are snapped to the data's two values (`discrete_levels`, from the policy's normaliser; ±1 default).
    """

    name = "rti"
    stateful = True

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 10, warm_steps: int = 2, eta: float = 0.0,
                 n_action_steps: int | None = 8, discrete_dims: Sequence[int] = (), discrete_mode: str = DEFAULT_DISCRETE_MODE,
                 tau: float | None = None, discrete_hysteresis: float | None = DEFAULT_HYSTERESIS):
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
        if discrete_hysteresis is not None and not float(discrete_hysteresis) >= 0:
            raise ValueError(f"rti: discrete_hysteresis must be >= 0 log-odds (or null), got {discrete_hysteresis}")
        self.warm_steps = warm_steps
        self.warm_levels = grid[-(warm_steps + 1):]
        self.tau = self.warm_levels[0]
        # Executed actions per call: set here (replan every n steps) or None to leave it to the policy.
        self.n_exec = None if n_action_steps is None else int(n_action_steps)
        self.default_shift = self.n_exec or 1
        self.discrete_dims = list(discrete_dims)
        self.discrete_mode = discrete_mode
        self.discrete_hysteresis = None if discrete_hysteresis is None else float(discrete_hysteresis)
        self.discrete_levels: tuple[Tensor, Tensor] | None = None  # normalised (low, high) per discrete dim
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
            tau = batch_level(self.tau, shape[0], guess.device)
            idx = self.discrete_dims
            if idx and self.discrete_mode == "reinit":
                top = batch_level(self.schedule.inference_levels(self.num_steps)[0], shape[0], guess.device)
                prior = self.schedule.prior(shape, generator=generator, device=guess.device, dtype=guess.dtype)
                decided, _ = self.predict(denoise_fn, prior, top)
                guess[..., idx] = snap_discrete(decided, idx, self.discrete_levels)[..., idx]
            if idx and self.discrete_hysteresis is not None:
                lo, hi = level_pair(self.discrete_levels, len(idx), guess)
                mid = (lo + hi) / 2
                guess[..., idx] = mid + self._carry((hi - lo) / 2, guess) * (guess[..., idx] - mid)
            noise = torch.randn(shape, generator=generator, device=guess.device, dtype=guess.dtype)
            if idx and self.discrete_mode == "noiseless":
                noise[..., idx] = 0.0
            x = self.denoise(denoise_fn, self.schedule.add_noise(guess, noise, tau), self.warm_levels, generator)
        x = snap_discrete(x, self.discrete_dims, self.discrete_levels)
        self.last_warm = not cold
        self.prev = x.clone()
        return x

    def _carry(self, half: Tensor, like: Tensor) -> Tensor:
        """The factor on a carried-over value ±`half` about its midpoint that makes it worth `discrete_hysteresis`
        log-odds at τ: with x_τ = a·x0 + b·ε and data at ±s, a carried c·s counts 2a²s²c/b², so c = h·b²/(2a²s²)."""
        one = torch.ones(1, 1, 1, device=like.device, dtype=like.dtype)
        tau = batch_level(self.tau, 1, like.device)
        a = self.schedule.add_noise(one, torch.zeros_like(one), tau).reshape(())
        b = self.schedule.add_noise(torch.zeros_like(one), one, tau).reshape(())
        return self.discrete_hysteresis * b**2 / (2 * a**2 * half**2)

    def describe(self) -> dict:
        return {"name": self.name, "num_steps": self.num_steps, "warm_steps": self.warm_steps, "tau": self.tau,
                "n_action_steps": self.n_exec,
                "discrete_dims": self.discrete_dims, "discrete_mode": self.discrete_mode,
                "discrete_hysteresis": self.discrete_hysteresis}
