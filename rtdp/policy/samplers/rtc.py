"""Real-time chunking (RTC; Black, Galliker, Levine 2025) for DDPM/DDIM policies: while a chunk is computed the
robot keeps executing the previous one, so the new chunk must agree with the actions that run during the delay
and blend into its own after them. Inference only, on any DDPM-trained policy (ε- or x0-prediction).

Y is the previous plan shifted by the control steps since its observation (`carry_forward` by `ctx.n_executed`);
position i of the new chunk holds Y_i where the previous plan reaches it, and W_i = 0 where it does not (never a
padded value). Over the H = T − (To − 1) positions from the current step (j = i − (To − 1)) the prefix weights are
W_j = 1 for j < d, a ramp down to 0, and 0 for j ≥ H − s (`prefix_weights`); positions before the current step
(the past of the window) are committed and count as frozen (W = 1). d is `ctx.delay` clamped to the previous
plan's actions left; s is the execution horizon, `n_action_steps`.

- `guided` (the paper's method: Black, Galliker, Levine 2025; `Physical-Intelligence/real-time-chunking-kinetix`):
  at every step the iterate is read as a flow iterate, y = x_k/(α+σ), τ = α/(α+σ) with α = √ᾱ_k,
  σ = √(1−ᾱ_k), so that y = τ·x0 + (1−τ)·ε and x̂1 = y + (1−τ)·v with
  v = x̂0 − ε̂ is x̂0. One vector–Jacobian product g = (∂x̂1/∂y)ᵀ (W ⊙ (Y − x̂1)) and the weight
  w = min(β, (1−τ)/τ · (τ² + (1−τ)²)/(1−τ)²) give v' = v + w·g, read back as x̂0' = y + (1−τ)·v', ε' = y − τ·v',
  and the base sampler's DDIM step (or DDPM posterior step) runs on (x̂0', ε').
- `inpaint` (no backward pass): every step's x̂0 is replaced on the frozen prefix (W = 1: the committed past
  and the d actions that run during the delay) by Y, x̂0' = x̂0 + M ⊙ (Y − x̂0), before the base step, so the
  iterate's prefix becomes Y noised to the next level (along ε̂ for DDIM, by the DDPM posterior given Y for
  DDPM) and ends exactly at Y; the rest is the model's own. `inpaint_mask=soft` uses M = W instead, pulling the
  whole overlap toward Y by its ramp.

Neither draws noise of its own, so with W = 0 both are the base sampler exactly, noise for noise. The first call
of an episode (no previous plan) is an ordinary base sample. Gradients are enabled only around the VJP; the
policy's `torch.no_grad` holds everywhere else (`torch.inference_mode` cannot give gradients and is refused).
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor

from rtdp.policy.call import DenoiserCall
from rtdp.policy.plan import Plan, carry_forward
from rtdp.policy.samplers.base import Sampler, batch_level
from rtdp.policy.samplers.diffusion import DDIMSampler, DDPMSampler
from rtdp.policy.schedules import DDPMSchedule, NoiseSchedule
from rtdp.types import PlanContext

VARIANTS = ("guided", "inpaint")
INPAINT_MASKS = ("frozen", "soft")  # inpaint where W = 1 only | by the soft prefix weights W
PREFIX_WEIGHTS = ("linear", "exp")
BASES = {"ddim": DDIMSampler, "ddpm": DDPMSampler}
# why the other registered samplers cannot be RTC's base (sampler.base=...)
NOT_A_BASE = {
    "sdp": "a streaming sampler: its buffer holds a different noise level at every position and keeps its own "
           "commitments, so there is no single flow time to guide at",
    "rti": "a warm-start sampler: it starts from the previous plan itself, not from noise",
    "rti_renoise": "a warm-start sampler: it starts from the previous plan re-noised, not from the full grid",
    "rtc": "RTC itself",
}


def prefix_weights(horizon: int, delay: int, s: int, schedule: str = "exp") -> Tensor:
    """RTC's soft mask over the `horizon` positions from the current step: 1 for j < d, then
    clip((d − 1 − j)/(H − s − d + 1) + 1, 0, 1) (`exp` multiplies it by expm1(W)/(e − 1)), and 0 for j ≥ H − s.
    When d > H − s the zeros win (d is lowered to H − s), as in the reference."""
    if schedule not in PREFIX_WEIGHTS:
        raise ValueError(f"prefix weights must be one of {', '.join(PREFIX_WEIGHTS)}, got {schedule!r}")
    end = horizon - s
    d = max(0, min(int(delay), end))
    j = torch.arange(horizon, dtype=torch.float64)
    w = ((d - 1 - j) / (end - d + 1) + 1).clamp(0, 1) if end > 0 else torch.zeros(horizon, dtype=torch.float64)
    if schedule == "exp":
        w = w * torch.expm1(w) / (math.e - 1)
    w = torch.where(j < d, torch.ones_like(w), w)  # exactly 1 on the frozen actions (exp rounds to 1 + 2e-16)
    return torch.where(j >= end, torch.zeros_like(w), w)


def to_flow(x: Tensor, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A DDPM iterate `x = α·x0 + σ·ε` and its prediction (x̂0, ε̂) as a flow iterate and velocity:
    (y = x/(α+σ), τ = α/(α+σ), v = x̂0 − ε̂), so that y = τ·x0 + (1−τ)·ε and y + (1−τ)·v = x̂0."""
    return x / (alpha + sigma), alpha / (alpha + sigma), x0 - eps


def from_flow(y: Tensor, tau: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """A flow iterate and velocity back as (x̂0 = y + (1−τ)·v, ε̂ = y − τ·v); the inverse of `to_flow`."""
    return y + (1 - tau) * v, y - tau * v


def guidance_weight(tau: Tensor, beta: float) -> Tensor:
    """min(β, (1−τ)/τ · (τ² + (1−τ)²)/(1−τ)²): the paper's weight, β where it diverges (τ → 0 or 1)."""
    t = tau.double()
    w = (1 - t) / t * (t**2 + (1 - t) ** 2) / (1 - t) ** 2
    w = torch.nan_to_num(w, nan=beta, posinf=beta).clamp(max=beta)
    return w.to(tau.dtype)


class RTCSampler(Sampler):
    """RTC around DDIM or DDPM (`base`, `num_steps`): `guided` (VJP guidance, needs gradients) or `inpaint`;
    prefix weights `linear` | `exp`, execution horizon s = `n_action_steps`, maximum guidance weight `beta`."""

    name = "rtc"

    def __init__(self, schedule: NoiseSchedule, base: str = "ddim", num_steps: int | None = 10,
                 variant: str = "guided", prefix_weights: str = "exp", beta: float = 10.0, n_action_steps: int = 8,
                 eta: float = 0.0, n_obs_steps: int = 2, inpaint_mask: str = "frozen"):
        if base not in BASES:
            why = NOT_A_BASE.get(base, "not a sampler RTC knows")
            raise ValueError(f"sampler=rtc wraps ddim or ddpm (sampler.base=ddim|ddpm); {base!r} cannot take "
                             f"RTC's guidance: {why}")
        if not isinstance(schedule, DDPMSchedule):
            raise ValueError(  # noqa: TRY004 - a configuration error, reported like the others
                f"sampler=rtc needs a discrete DDPM schedule (its flow reparametrisation reads ᾱ of the levels); this "
                f"policy has the {getattr(schedule, 'name', type(schedule).__name__)!r} schedule, which cannot take "
                "RTC's guidance; use sampler=ddim")
        if variant not in VARIANTS:
            raise ValueError(f"rtc: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if inpaint_mask not in INPAINT_MASKS:
            raise ValueError(f"rtc: inpaint_mask must be one of {', '.join(INPAINT_MASKS)}, got {inpaint_mask!r}")
        if prefix_weights not in PREFIX_WEIGHTS:
            raise ValueError(f"rtc: prefix_weights must be one of {', '.join(PREFIX_WEIGHTS)}, got {prefix_weights!r}")
        if not float(beta) >= 0:
            raise ValueError(f"rtc: beta (the maximum guidance weight) must be >= 0, got {beta}")
        super().__init__(schedule, n_action_steps, n_obs_steps)
        if base == "ddim":
            self.base = DDIMSampler(schedule, num_steps or 10, eta=eta, n_action_steps=n_action_steps,
                                    n_obs_steps=n_obs_steps)
        else:
            if eta:
                raise ValueError("rtc: eta is a DDIM option; base=ddpm takes ancestral steps")
            self.base = DDPMSampler(schedule, num_steps, n_action_steps=n_action_steps, n_obs_steps=n_obs_steps)
        self.variant, self.prefix_schedule, self.beta = variant, prefix_weights, float(beta)
        self.inpaint_mask = inpaint_mask
        self.needs_grad = variant == "guided"  # per instance: inpainting needs no backward pass

    @property
    def s(self) -> int:
        """The execution horizon: actions executed per plan."""
        return self.n_action_steps

    def check_delay(self, delay: int, horizon: int) -> None:
        """Refuse a delay and execution horizon outside d ≤ s ≤ H − d for chunks of `horizon` actions."""
        H = horizon - self.start
        if not 0 <= delay < H:
            raise ValueError(f"delay={delay} is not below the horizon: sampler=rtc plans H = {H} actions from the "
                             f"current step (T={horizon}, the first executed index {self.start}); with "
                             f"s = sampler.n_action_steps = {self.s} use delay in [0, {max(min(self.s, H - self.s), 0)}]")
        if not delay <= self.s <= H - delay:
            raise ValueError(f"sampler=rtc needs d <= s <= H - d: with delay d={delay} and H={H} actions from the "
                             f"current step, s = sampler.n_action_steps must be in [{delay}, {H - delay}], "
                             f"got {self.s}")

    def prefix(self, shape: tuple[int, int, int], ctx: PlanContext, previous: Plan | None
               ) -> tuple[Tensor, Tensor, int] | None:
        """(Y [B, T, Da], W [1, T, 1], d): the previous plan aligned to the new chunk, its weights and the clamped
        delay; None when there is nothing to agree with (the first call of an episode, another shape)."""
        if previous is None or previous.actions.shape != torch.Size(shape):
            return None
        T, n = shape[1], max(int(ctx.n_executed or 0), 0)
        target = carry_forward(previous.actions, n)
        left = max(T - self.start - n, 0)  # the previous plan's actions at or after the current step
        d = max(0, min(int(ctx.delay), left))
        w = torch.cat([torch.ones(self.start, dtype=torch.float64),
                       prefix_weights(T - self.start, d, self.s, self.prefix_schedule)])
        covered = torch.arange(T) + n < T  # position i holds the previous plan's action i + n
        w = torch.where(covered, w, torch.zeros_like(w))
        return target, w.to(target).reshape(1, T, 1), d

    def sample(self, call: DenoiserCall, shape, ctx: PlanContext, previous: Plan | None) -> Plan:
        levels = self.schedule.inference_levels(self.base.num_steps).tolist()
        x = self.schedule.prior(shape, generator=ctx.generator, device=call.device, dtype=torch.float32)
        prefix = self.prefix(shape, ctx, previous)
        info: dict[str, Any] = {"warm": prefix is not None, "delay_requested": int(ctx.delay)}
        if prefix is None or not bool(prefix[1].any()):  # nothing to agree with: the base sampler itself
            info.update(delay=0, vjp=0)
            return self.plan(self.base.denoise(call, x, levels, ctx.generator), call, info=info)
        target, weights, d = prefix
        x, vjp = self.denoise(call, x, levels, target, weights, ctx.generator)
        info.update(delay=d, vjp=vjp)
        return self.plan(x, call, info=info)

    def denoise(self, call: DenoiserCall, x: Tensor, levels: list, target: Tensor, weights: Tensor,
                generator) -> tuple[Tensor, int]:
        """The base sampler's reverse process through `levels` from `x`, every step's (x̂0, ε̂) pulled toward
        `target` where `weights` > 0; returns the result and the number of VJPs taken."""
        if self.variant == "guided" and torch.is_inference_mode_enabled():
            raise RuntimeError("sampler=rtc (guided) needs gradients through the denoiser, which "
                               "torch.inference_mode forbids: call the policy under torch.no_grad (as act() does), "
                               "or use sampler.variant=inpaint")
        vjp = 0
        mask = weights if self.inpaint_mask == "soft" else (weights >= 1).to(weights)  # inpaint only
        call.begin(levels[:-1])
        try:
            for k, k_next in pairwise(levels):
                k_t, k_next_t = batch_level(k, x.shape[0], x.device), batch_level(k_next, x.shape[0], x.device)
                if self.variant == "guided":
                    x0, eps = self.guided_prediction(call, x, k_t, target, weights)
                    vjp += 1
                else:
                    x0, eps = call.predict(x, k_t)
                    x0 = x0 + mask * (target - x0)
                x = self.base.step(x, k_t, k_next_t, x0, eps, generator)
        finally:
            call.end()
        return x, vjp

    def guided_prediction(self, call: DenoiserCall, x: Tensor, level: Tensor, target: Tensor,
                          weights: Tensor) -> tuple[Tensor, Tensor]:
        """One evaluation with RTC's guidance: (x̂0', ε') from the flow velocity v' = v + w·g (module docstring)."""
        ab = self.schedule.abar(level, x)
        alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0, eps = call.predict(xg, level)
            # x̂0 before the schedule's clip: the clip's zero gradient would switch guidance off at the range's edge
            x0_raw = (xg - sigma * eps) / alpha
            error = weights * (target - x0.detach())
            (grad_x,) = torch.autograd.grad(x0_raw, xg, grad_outputs=error)
        x0, eps = x0.detach(), eps.detach()
        tau = alpha / (alpha + sigma)  # the flow time of y = x/(α+σ) (`to_flow`)
        g = (alpha + sigma) * grad_x  # ∂x̂1/∂y = (α+σ)·∂x̂0/∂x, since x = (α+σ)·y
        correction = guidance_weight(tau, self.beta) * g  # v' − v
        # x̂0' = y + (1−τ)·v', ε' = y − τ·v' written as the change v' − v makes to the sampler's own (x̂0, ε̂): equal
        # when y + (1−τ)·v = x̂0, and bit for bit the unguided pair when the correction is 0 (a clipped x̂0 included)
        x0 = x0 + (1 - tau) * correction
        eps = eps - tau * correction
        if self.schedule.clip_sample:
            x0 = x0.clamp(-self.schedule.clip_range, self.schedule.clip_range)
        return x0, eps

    def describe(self) -> dict:
        return {**super().describe(), "base": self.base.describe(), "variant": self.variant,
                "prefix_weights": self.prefix_schedule, "beta": self.beta, "s": self.s,
                **({"inpaint_mask": self.inpaint_mask} if self.variant == "inpaint" else {})}
