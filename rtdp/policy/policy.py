"""The diffusion policy: normaliser + observation encoder + denoiser + noise schedule + sampler.

`DiffusionPolicy` is an `rtdp.types.Agent`: `act(obs, ctx)` takes raw observation windows `[B, To, ...]` and a
`PlanContext`, and returns unnormalised actions `[B, T, Da]` in an `ActionChunk` whose executable part is what
the sampler's plan says (from To - 1, `n_action_steps` long for DDPM/DDIM). The policy keeps the previous plan
(normalised) and hands it to the sampler with the number of its actions executed since, so warm-starting and
streaming samplers continue from it; one `DenoiserCall` per plan carries the encoded observation to the
denoiser, with the hooks attached to the policy (block or expert caching, counting).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtdp.policy.call import CallHook, DenoiserCall
from rtdp.policy.plan import Plan
from rtdp.types import ActionChunk, PlanContext


class DiffusionPolicy(nn.Module):
    """An Agent producing action chunks by iterative denoising conditioned on an observation window."""

    def __init__(self, encoder: nn.Module, denoiser: nn.Module, schedule: Any, sampler: Any, normalizer: Any,
                 action_dim: int, horizon: int = 16, n_obs_steps: int = 2, fps: float = 10.0,
                 action_key: str = "action", level_sampler: Any = None):
        super().__init__()
        self.encoder = encoder
        self.denoiser = denoiser
        self.schedule = schedule
        self.normalizer = normalizer
        self.action_dim, self.horizon, self.n_obs_steps = action_dim, horizon, n_obs_steps
        self.fps, self.action_key = fps, action_key
        self.level_sampler = level_sampler  # callable(batch, horizon, device, generator) -> levels [B] or [B, T]
        self.call_hooks: list[CallHook] = []  # attached to every plan's DenoiserCall
        self.backend: Any = None  # who evaluates the denoiser in each call (rtdp.policy.backends; None = eager)
        self.sampler = sampler
        self.plan: Plan | None = None  # the previous plan (normalised), for warm starts

    @property
    def sampler(self) -> Any:
        return self._sampler

    @sampler.setter
    def sampler(self, sampler: Any) -> None:
        """Swap the sampler (e.g. to compare samplers on the same weights); its executed actions must fit T."""
        end = sampler.start + sampler.n_action_steps
        if end > self.horizon:
            raise ValueError(f"sampler {sampler.label!r} executes actions {sampler.start}..{end - 1} "
                             f"(n_obs_steps - 1 + n_action_steps = {end}), beyond the horizon {self.horizon}; "
                             "lower sampler.n_action_steps")
        self._sampler = sampler
        self.plan = None

    # ----------------------------------------------------------------------------------------- inference
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def obs_keys(self) -> list[str]:
        return list(self.encoder.obs_shapes)

    @property
    def n_action_steps(self) -> int:
        """Actions executed per plan (the sampler's)."""
        return self.sampler.n_action_steps

    def reset(self) -> None:
        """Forget the episode: the previous plan, the sampler's buffers and what the call hooks keep."""
        self.sampler.reset()
        for hook in self.call_hooks:
            hook.reset()
        self.plan = None

    def prepare_obs(self, obs: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw observation windows -> normalised float tensors on the policy's device (images CHW in [0, 1])."""
        out = {}
        for key, shape in self.encoder.obs_shapes.items():
            if key not in obs:
                raise KeyError(f"observation has no key {key!r}; the policy needs {self.obs_keys}, got {list(obs)}")
            x = torch.as_tensor(np.asarray(obs[key]) if not torch.is_tensor(obs[key]) else obs[key])
            if x.ndim < 2 or x.shape[1] != self.n_obs_steps:
                raise ValueError(f"observation {key!r} must be [B, {self.n_obs_steps}, ...], got {tuple(x.shape)}")
            if len(shape) == 3:
                if tuple(x.shape[2:]) != shape and tuple(x.shape[-1:]) == shape[:1]:
                    x = x.movedim(-1, 2)  # HWC -> CHW
                x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            else:
                x = x.float().reshape(*x.shape[:2], *shape)
            out[key] = x.to(self.device)
        if self.normalizer is not None:
            out = {k: self.normalizer.normalize(k, v) if k in self.normalizer else v for k, v in out.items()}
        return out

    def denoiser_call(self, cond: torch.Tensor) -> DenoiserCall:
        """The call object of one plan conditioned on encoded observations `cond`, served by the policy's
        backend where it can (it leaves a call that needs gradients eager)."""
        call = DenoiserCall(self.denoiser, self.schedule, cond, hooks=self.call_hooks, grad=self.sampler.needs_grad)
        if self.backend is not None:
            self.backend.bind(call, self.sampler.label)
        return call

    @torch.no_grad()
    def plan_chunk(self, nobs: Mapping[str, torch.Tensor], ctx: PlanContext | None = None) -> Plan:
        """Normalised observations -> the next plan (normalised); it becomes the policy's previous plan."""
        ctx = ctx or PlanContext()
        previous = self.plan
        n_executed = ctx.n_executed if ctx.n_executed is not None else (previous.n_exec if previous else 0)
        ctx = dataclasses.replace(ctx, n_executed=int(n_executed))
        cond = self.encoder(nobs)
        call = self.denoiser_call(cond)
        plan = self.sampler.sample(call, (cond.shape[0], self.horizon, self.action_dim), ctx, previous)
        if call.info:  # the hooks' report on this plan (e.g. block evaluations of a block cache)
            plan.info = {**plan.info, **call.info}
        self.plan = plan
        return plan

    def act(self, obs: Mapping[str, np.ndarray], ctx: PlanContext | None = None) -> ActionChunk:
        """Observation windows `[B, To, ...]` -> unnormalised action chunk (see the module docstring)."""
        # switching modes walks every submodule (milliseconds at batch 1, a whole evaluation's worth on a fast
        # backend), so a policy already in eval mode (its top level and direct children) is left as it is
        was_training = self.training
        switch = was_training or any(m.training for m in self.children())
        if switch:
            self.eval()
        try:
            plan = self.plan_chunk(self.prepare_obs(obs), ctx)
            actions = self.unnormalize_action(plan.actions)
        finally:
            if switch:
                self.train(was_training)
        return ActionChunk(actions=actions.cpu().numpy(), start=int(plan.start), n_exec=int(plan.n_exec),
                           dt=1.0 / self.fps, nfe=int(plan.nfe), info=dict(plan.info))

    def unnormalize_action(self, naction: torch.Tensor) -> torch.Tensor:
        if self.normalizer is None:
            return naction
        return self.normalizer.unnormalize(self.action_key, naction)

    # ------------------------------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Denoising loss (plus the denoiser's auxiliary losses) on a normalised batch
        `{"obs": {key: [B, To, ...]}, "action": [B, T, Da]}`; returns `(loss, logs)`, every log a scalar tensor."""
        action = batch["action"]
        bsz, horizon = action.shape[:2]
        cond = self.encoder(batch["obs"])
        if self.level_sampler is not None:
            levels = self.level_sampler(bsz, horizon, action.device, generator)
        else:
            levels = self.schedule.sample_training_levels((bsz,), generator=generator, device=action.device)
        noise = torch.randn(action.shape, generator=generator, device=action.device, dtype=action.dtype)
        noisy = self.schedule.add_noise(action, noise, levels)
        out = self.denoiser.denoise(*self.schedule.model_input(noisy, levels), cond)
        target = self.schedule.training_target(action, noise, levels)
        denoise_loss = F.mse_loss(out.prediction, target)
        loss = denoise_loss + sum(out.aux_losses.values()) if out.aux_losses else denoise_loss
        logs = {"denoise_loss": denoise_loss.detach(), **{k: v.detach() for k, v in out.aux_losses.items()}}
        return loss, logs

    def forward(self, batch: Mapping[str, Any], generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss and its logs (so DistributedDataParallel, which wraps `forward`, sees the whole step)."""
        return self.compute_loss(batch, generator=generator)
