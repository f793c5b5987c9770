"""Real-time-iteration warm start (RTI-DP; Duan, Yin, Kragic 2025) as its authors run it (`RTI-DP/rti-dp`,
`rti_sample`): the previous plan, shifted by the actions executed since and padded with its last action, is a
good first guess for the next one, so a few denoising steps conditioned on the new observation suffice. It is
used as the iterate itself, with no noise added, and a short list of ancestral DDPM steps runs on it
(`[2, 1, 0]`), replanning every control step; the first call of an episode is a full cold sample. Inference
only: any DDPM-trained policy. rtdp's re-noising variant is `rti_renoise.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor

from rtdp.policy.call import DenoiserCall
from rtdp.policy.plan import Plan, carry_forward
from rtdp.policy.samplers.base import Sampler
from rtdp.policy.samplers.diffusion import DDIMSampler, DDPMSampler
from rtdp.policy.samplers.discrete import build_with_discrete_dims, level_pair, snap_discrete
from rtdp.policy.schedules import DDPMSchedule, NoiseSchedule
from rtdp.policy.spec import PolicySpec
from rtdp.types import PlanContext

DISCRETE_HANDLING = ("scale", "clip")


class RTISampler(Sampler):
    """The authors' RTI: `[A_prev[n:], A_prev[-1]]` as the iterate at level `steps[0]`, then ancestral DDPM steps
    down `steps` to clean, replanning every `n_action_steps` (1) control steps; a cold sample first.

    Discrete dims: `scale` carries them as sampled (train them at a small scale, `task.action.discrete_scale`,
    so the observation can override a carried sign); `clip` carries their snapped sign at 1/`clip_factor` of
    its half-range. Either way the executed values are snapped to the data's two values.
    """

    name = "rti"

    def __init__(self, schedule: NoiseSchedule, steps: Sequence[int] = (2, 1, 0), n_action_steps: int = 1,
                 n_obs_steps: int = 2, cold: str = "ddpm", cold_steps: int | None = None,
                 discrete_dims: Sequence[int] = (), discrete: str = "scale", clip_factor: float = 1.0):
        if not isinstance(schedule, DDPMSchedule):
            raise ValueError("sampler=rti runs ancestral DDPM steps and needs a DDPM schedule; use sampler=ddim "  # noqa: TRY004
                             "with an EDM schedule")
        super().__init__(schedule, n_action_steps, n_obs_steps)
        steps = [int(k) for k in steps]
        K = schedule.num_train_steps
        if not steps or any(a <= b for a, b in pairwise(steps)) or steps[-1] < 0 or steps[0] >= K:
            raise ValueError(f"rti: steps must be strictly decreasing training levels in [0, {K - 1}] (e.g. [2, 1, 0]), "
                             f"got {steps}")
        if cold not in ("ddpm", "ddim"):
            raise ValueError(f"rti: cold must be 'ddpm' (the authors' full sample) or 'ddim', got {cold!r}")
        if discrete not in DISCRETE_HANDLING:
            raise ValueError(f"rti: discrete must be one of {', '.join(DISCRETE_HANDLING)}, got {discrete!r}")
        if not float(clip_factor) > 0:
            raise ValueError(f"rti: clip_factor must be > 0, got {clip_factor}")
        self.steps = steps
        cold_cls = DDPMSampler if cold == "ddpm" else DDIMSampler
        self.cold = cold_cls(schedule, cold_steps or (K if cold == "ddpm" else 10), n_action_steps=n_action_steps,
                             n_obs_steps=n_obs_steps)
        self._ancestral = DDPMSampler(schedule, n_action_steps=n_action_steps, n_obs_steps=n_obs_steps)
        self.discrete_dims = [int(d) for d in discrete_dims]
        self.discrete, self.clip_factor = discrete, float(clip_factor)
        self.discrete_levels: tuple[Tensor, Tensor] | None = None  # normalised (low, high) per discrete dim

    unscaled_remedy = "carry them clipped: sampler.discrete=clip sampler.clip_factor=10"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], spec: PolicySpec) -> RTISampler:
        return build_with_discrete_dims(cls, cfg, spec)

    def carried_half_range(self) -> float | None:
        """Half the range (normalised) at which discrete dims enter the warm start."""
        if self.discrete_levels is None:
            return None
        lo, hi = self.discrete_levels
        half = float(((hi - lo) / 2).max())
        return half / self.clip_factor if self.discrete == "clip" else half

    def sample(self, call: DenoiserCall, shape, ctx: PlanContext, previous: Plan | None) -> Plan:
        warm = previous is not None and previous.carried.shape == torch.Size(shape)
        if not warm:
            x = self.cold.sample(call, shape, ctx, None).actions
        else:
            guess = carry_forward(previous.carried, ctx.n_executed).clone()
            idx = self.discrete_dims
            if idx and self.discrete == "clip":
                lo, hi = level_pair(self.discrete_levels, len(idx), guess)
                mid, half = (lo + hi) / 2, (hi - lo) / 2
                guess[..., idx] = mid + torch.where(guess[..., idx] >= mid, half, -half) / self.clip_factor
            x = self._ancestral.denoise(call, guess, [*self.steps, -1], ctx.generator)
        out = snap_discrete(x, self.discrete_dims, self.discrete_levels)
        return self.plan(out, call, carry=x, info={"warm": warm})

    def describe(self) -> dict:
        return {**super().describe(), "scheme": "authors", "steps": self.steps, "cold": self.cold.describe(),
                "discrete_dims": self.discrete_dims, "discrete": self.discrete, "clip_factor": self.clip_factor}
