"""rtdp's RTI variant (`sampler=rti_renoise`): the previous plan, shifted by the actions executed since and
padded with its last action, re-noised to an intermediate level τ with fresh noise and denoised with the DDIM
grid levels ≤ τ, replanning every 2 steps. A variant of RTI-DP (Duan, Yin, Kragic 2025), not the paper's
method (that is `rti.py`): a carried gripper sign can be weighed as so many log-odds of evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from rtdp.policy.call import DenoiserCall
from rtdp.policy.plan import Plan, carry_forward
from rtdp.policy.samplers.base import batch_level
from rtdp.policy.samplers.diffusion import DDIMSampler
from rtdp.policy.samplers.discrete import build_with_discrete_dims, level_pair, snap_discrete
from rtdp.policy.schedules import NoiseSchedule
from rtdp.policy.spec import PolicySpec
from rtdp.types import PlanContext

DISCRETE_MODES = ("reinit", "keep", "noiseless")
DEFAULT_DISCRETE_MODE = "noiseless"  # rti_renoise's default for discrete dims, with DEFAULT_HYSTERESIS
DEFAULT_HYSTERESIS = 1.6  # log-odds a carried-over discrete sign counts for (rti_renoise); docs/streaming.md
UNSCALED_HALF_RANGE = 0.75  # a carried discrete value wider than ±this (normalised) cannot flip in a warm start


def warm_steps_for_tau(grid: Sequence[float], tau: float) -> int:
    """Warm steps that use the grid levels ≤ τ (a level of the training schedule); τ at or above the grid's top
    level is the whole grid (a cold start)."""
    below = [level for level in grid[:-1] if level <= tau]  # grid[-1] is the clean level
    if not below:
        raise ValueError(f"rti_renoise: tau={tau} is below every level of the DDIM grid {grid[:-1]}; "
                         f"use tau >= {min(grid[:-1])}")
    return len(below)



class RTIRenoiseSampler(DDIMSampler):
    """rtdp's RTI variant: the shifted plan re-noised to τ with fresh noise, then the DDIM grid levels ≤ τ
    (`warm_steps` of the `num_steps`-step grid); replans every `n_action_steps` (2) control steps.

    `warm_steps == num_steps` (or τ at the grid's top level) is the cold DDIM sampler exactly; `tau` selects the
    grid levels ≤ τ instead of counting steps. The first call of an episode (no previous chunk) is a cold start.

    Discrete dimensions (a gripper's open/close) resist the flip a warm start implies: re-noised to a small τ, the
    carried-over sign is evidence worth 2ᾱ_τs²/(1 − ᾱ_τ) log-odds per position for values ±s (58.1 at s = 1 and
    5.2 at s = 0.3 for τ = 10 on the squaredcos schedule), which no observation overturns at ±1. `discrete_mode`
    says what the warm start does with them:
    - `reinit`: one extra evaluation from pure noise at the grid's top level re-decides their sign first;
    - `keep`: warm-start them like the rest (carried sign + fresh noise);
    - `noiseless`: carried sign without noise, so it is fixed evidence rather than a fresh draw every call.
    `discrete_hysteresis` (log-odds; None = the sign as carried) weighs the carried sign so that it counts that
    much: the observation must be more than that sure to flip it. It needs the dimensions trained at a smaller ±s
    (RTI-DP's scaling, `task.action.discrete_scale`): at ±1 a weakly carried value lies outside the data the
    denoiser saw (measurements: docs/streaming.md).
    Outputs are snapped to the data's two values (`discrete_levels`, from the policy's normaliser; ±1 default).
    """

    name = "rti_renoise"
    unscaled_remedy = "use sampler.discrete_mode=reinit"

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 10, warm_steps: int = 2, eta: float = 0.0,
                 n_action_steps: int = 2, n_obs_steps: int = 2, discrete_dims: Sequence[int] = (),
                 discrete_mode: str = DEFAULT_DISCRETE_MODE, tau: float | None = None,
                 discrete_hysteresis: float | None = DEFAULT_HYSTERESIS):
        super().__init__(schedule, num_steps, eta, n_action_steps, n_obs_steps)
        if discrete_mode not in DISCRETE_MODES:
            raise ValueError(f"rti_renoise: discrete_mode must be one of {', '.join(DISCRETE_MODES)}, got {discrete_mode!r}")
        grid = schedule.inference_levels(num_steps).tolist()
        if tau is not None:
            warm_steps = warm_steps_for_tau(grid, tau)
        if not 1 <= warm_steps <= num_steps:
            raise ValueError(f"rti_renoise: warm_steps must be in [1, num_steps={num_steps}], got {warm_steps}")
        if discrete_hysteresis is not None and not float(discrete_hysteresis) >= 0:
            raise ValueError(f"rti_renoise: discrete_hysteresis must be >= 0 log-odds (or null), got {discrete_hysteresis}")
        self.warm_steps = warm_steps
        self.warm_levels = grid[-(warm_steps + 1):]
        self.tau = self.warm_levels[0]
        self.discrete_dims = list(discrete_dims)
        self.discrete_mode = discrete_mode
        self.discrete_hysteresis = None if discrete_hysteresis is None else float(discrete_hysteresis)
        self.discrete_levels: tuple[Tensor, Tensor] | None = None  # normalised (low, high) per discrete dim

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], spec: PolicySpec) -> RTIRenoiseSampler:
        return build_with_discrete_dims(cls, cfg, spec)

    def carried_half_range(self) -> float | None:
        """Half the range (normalised) at which discrete dims enter the warm start; None if re-decided from noise."""
        if self.discrete_levels is None or self.discrete_mode == "reinit":
            return None
        lo, hi = self.discrete_levels
        return float(((hi - lo) / 2).max())

    def sample(self, call: DenoiserCall, shape, ctx: PlanContext, previous: Plan | None) -> Plan:
        generator = ctx.generator
        cold = previous is None or previous.carried.shape != torch.Size(shape) or self.warm_steps == self.num_steps
        if cold:
            x = super().sample(call, shape, ctx, None).actions
        else:
            guess = carry_forward(previous.carried, ctx.n_executed)
            tau = batch_level(self.tau, shape[0], guess.device)
            idx = self.discrete_dims
            levels = self.warm_levels
            if idx and self.discrete_mode == "reinit":
                levels = [self.schedule.inference_levels(self.num_steps)[0].item(), *levels]
            call.begin(levels[:-1])
            if idx and self.discrete_mode == "reinit":
                top = batch_level(levels[0], shape[0], guess.device)
                prior = self.schedule.prior(shape, generator=generator, device=guess.device, dtype=guess.dtype)
                decided, _ = call.predict(prior, top)
                guess[..., idx] = snap_discrete(decided, idx, self.discrete_levels)[..., idx]
            if idx and self.discrete_hysteresis is not None:
                lo, hi = level_pair(self.discrete_levels, len(idx), guess)
                mid = (lo + hi) / 2
                guess[..., idx] = mid + self._carry((hi - lo) / 2, guess) * (guess[..., idx] - mid)
            noise = torch.randn(shape, generator=generator, device=guess.device, dtype=guess.dtype)
            if idx and self.discrete_mode == "noiseless":
                noise[..., idx] = 0.0
            try:
                x = self._steps(call, self.schedule.add_noise(guess, noise, tau), self.warm_levels, generator)
            finally:
                call.end()
        x = snap_discrete(x, self.discrete_dims, self.discrete_levels)
        return self.plan(x, call, info={"warm": not cold})

    def _carry(self, half: Tensor, like: Tensor) -> Tensor:
        """The factor on a carried-over value ±`half` about its midpoint that makes it worth `discrete_hysteresis`
        log-odds at τ: with x_τ = a·x0 + b·ε and data at ±s, a carried c·s counts 2a²s²c/b², so c = h·b²/(2a²s²)."""
        one = torch.ones(1, 1, 1, device=like.device, dtype=like.dtype)
        tau = batch_level(self.tau, 1, like.device)
        a = self.schedule.add_noise(one, torch.zeros_like(one), tau).reshape(())
        b = self.schedule.add_noise(torch.zeros_like(one), one, tau).reshape(())
        return self.discrete_hysteresis * b**2 / (2 * a**2 * half**2)

    def describe(self) -> dict:
        return {**super().describe(), "scheme": "renoise", "warm_steps": self.warm_steps, "tau": self.tau,
                "discrete_dims": self.discrete_dims, "discrete_mode": self.discrete_mode,
                "discrete_hysteresis": self.discrete_hysteresis}
