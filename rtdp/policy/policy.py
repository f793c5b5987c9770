"""The diffusion policy: normaliser + observation encoder + denoiser + noise schedule + sampler.

`DiffusionPolicy` is an `rtdp.types.Agent`: `act(obs)` takes raw observation windows `[B, To, ...]`, returns
unnormalised actions `[B, T, Da]` in an `ActionChunk` whose executable part starts at `To - 1` (the action for
the step of the latest observation) and spans `Ta` actions. The sampler is told how many actions of the
previous chunk were executed since its last call (`n_executed`), so stateful samplers (streaming, warm
start) can shift their buffers; a sampler may also choose which part of its chunk to execute.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtdp.types import ActionChunk


class DiffusionPolicy(nn.Module):
    """An Agent producing action chunks by iterative denoising conditioned on an observation window."""

    def __init__(self, encoder: nn.Module, denoiser: nn.Module, schedule: Any, sampler: Any, normalizer: Any,
                 action_dim: int, horizon: int = 16, n_obs_steps: int = 2, n_action_steps: int = 8,
                 fps: float = 10.0, action_key: str = "action"):
        super().__init__()
        if n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(f"n_obs_steps - 1 + n_action_steps = {n_obs_steps - 1 + n_action_steps} exceeds "
                             f"horizon {horizon}: the executed actions must lie inside the predicted chunk")
        self.encoder = encoder
        self.denoiser = denoiser
        self.schedule = schedule
        self.sampler = sampler
        self.normalizer = normalizer
        self.action_dim, self.horizon = action_dim, horizon
        self.n_obs_steps, self.n_action_steps = n_obs_steps, n_action_steps
        self.fps, self.action_key = fps, action_key
        self.level_sampler = None  # optional callable(batch, horizon, device, generator) -> levels [B] or [B, T]
        self._executed_since_last: int = 0

    # ----------------------------------------------------------------------------------------- inference
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def obs_keys(self) -> list[str]:
        return list(self.encoder.obs_shapes)

    def reset(self) -> None:
        """Forget the episode: stateful samplers drop their buffers."""
        self.sampler.reset()
        self._executed_since_last = 0

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

    @torch.no_grad()
    def predict(self, nobs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None,
                n_executed: int = 0) -> torch.Tensor:
        """Normalised observations -> normalised action chunk `[B, T, Da]`."""
        cond = self.encoder(nobs)
        batch = cond.shape[0]

        def denoise_fn(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
            return self.denoiser(x, level, cond)

        return self.sampler.sample(denoise_fn, (batch, self.horizon, self.action_dim), generator=generator,
                                   device=cond.device, n_executed=n_executed)

    @torch.no_grad()
    def act(self, obs: Mapping[str, np.ndarray], generator: torch.Generator | None = None,
            n_executed: int | None = None) -> ActionChunk:
        """Observation windows `[B, To, ...]` -> unnormalised action chunk; assumes the previous chunk's
        `n_exec` actions were executed unless `n_executed` says otherwise."""
        was_training = self.training
        self.eval()
        try:
            n_exec_before = self._executed_since_last if n_executed is None else int(n_executed)
            naction = self.predict(self.prepare_obs(obs), generator=generator, n_executed=n_exec_before)
            actions = self.unnormalize_action(naction)
        finally:
            self.train(was_training)
        # A stateful sampler may execute another part of its chunk (streaming diffusion: Ta = 1..2).
        start = getattr(self.sampler, "start", None)
        start = self.n_obs_steps - 1 if start is None else start
        n_exec = getattr(self.sampler, "n_exec", None) or self.n_action_steps
        self._executed_since_last = n_exec
        return ActionChunk(actions=actions.cpu().numpy(), start=int(start), n_exec=int(n_exec), dt=1.0 / self.fps,
                           nfe=int(getattr(self.sampler, "last_nfe", 0)))

    def unnormalize_action(self, naction: torch.Tensor) -> torch.Tensor:
        if self.normalizer is None:
            return naction
        return self.normalizer.unnormalize(self.action_key, naction)

    # ------------------------------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoising loss on a normalised batch `{"obs": {key: [B, To, ...]}, "action": [B, T, Da]}`."""
        action = batch["action"]
        bsz, horizon = action.shape[:2]
        cond = self.encoder(batch["obs"])
        if self.level_sampler is not None:
            levels = self.level_sampler(bsz, horizon, action.device, generator)
        else:
            levels = self.schedule.sample_training_levels((bsz,), generator=generator, device=action.device)
        noise = torch.randn(action.shape, generator=generator, device=action.device, dtype=action.dtype)
        noisy = self.schedule.add_noise(action, noise, levels)
        pred = self.denoiser(*self.schedule.model_input(noisy, levels), cond)
        target = self.schedule.training_target(action, noise, levels)
        return F.mse_loss(pred, target)

    def forward(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss (so DistributedDataParallel, which wraps `forward`, sees the whole step)."""
        return self.compute_loss(batch, generator=generator)
