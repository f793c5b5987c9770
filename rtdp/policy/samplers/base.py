"""The `Sampler` contract: how a chunk of (normalised) actions is produced from noise with a denoiser."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from rtdp.policy.schedules import ModelFn, NoiseSchedule


class Sampler(ABC):
    """Turns noise into a normalised action chunk `[B, T, Da]`, counting denoiser evaluations (`last_nfe`).

    `denoise_fn(x_in, level_in)` is the denoiser closed over the encoded observation; the sampler reads its
    output through the schedule. Stateful samplers (streaming, warm start) keep what they need between calls;
    `reset()` forgets it at an episode boundary. A sampler that decides how many actions of each chunk are
    executed (streaming) sets `n_exec`, and one that moves the first executed action sets `start`; `None` leaves
them to the policy (`n_action_steps`, and `n_obs_steps - 1`).
    """

    name: str = "sampler"
    stateful: bool = False

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule
        self.last_nfe = 0
        self.n_exec: int | None = None
        self.start: int | None = None

    def reset(self) -> None:
        """Forget state carried between calls (a new episode)."""

    def sample(self, denoise_fn: ModelFn, shape: tuple[int, int, int], *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
               n_executed: int | None = None) -> Tensor:
        """A chunk of shape `shape`; `n_executed` = actions executed since the previous call (warm starts)."""
        self.last_nfe = 0
        with torch.no_grad():
            return self._sample(denoise_fn, tuple(shape), generator, device, dtype, n_executed)

    @abstractmethod
    def _sample(self, denoise_fn: ModelFn, shape: tuple[int, int, int], generator: torch.Generator | None,
                device, dtype: torch.dtype, n_executed: int | None) -> Tensor: ...

    def predict(self, denoise_fn: ModelFn, x: Tensor, level: Tensor) -> tuple[Tensor, Tensor]:
        """One counted denoiser evaluation → (x̂0, ε̂)."""
        self.last_nfe += 1
        return self.schedule.predict(denoise_fn, x, level)

    def describe(self) -> dict:
        """What the sampler is, for metrics JSON."""
        return {"name": self.name}


def batch_level(level: Tensor | float, batch: int, device) -> Tensor:
    """A level shared by every position, as a `[B]` tensor."""
    return torch.as_tensor(level, device=device).reshape(1).expand(batch).clone()
