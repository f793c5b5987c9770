"""The denoiser call: how a sampler evaluates the denoiser while it makes one plan.

The policy builds one `DenoiserCall` per plan from the encoded observation; the sampler announces its level
grid (`begin`), evaluates through `predict` (each evaluation gets the next step index) and closes with `end`.
Whatever must know where in the sampler loop an evaluation falls attaches here, not in the samplers: hooks see
the grid before the first step and each step's index (block caching, expert caching, counting), and
`forward`, the raw model call, is what a compiled backend or a cache replaces. `grad` says whether the sampler
needs gradients through the denoiser (guidance); everything else runs under `torch.no_grad`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from rtdp.policy.schedules import NoiseSchedule


class CallHook:
    """Observes (and may reconfigure) a denoiser call; every method is optional."""

    def begin(self, call: DenoiserCall) -> None:
        """Before the first evaluation; `call.grid` holds the levels the sampler will visit."""

    def before_step(self, call: DenoiserCall, x: Tensor, level: Tensor) -> None:
        """Before evaluation number `call.step` at schedule level `level`."""

    def end(self, call: DenoiserCall) -> None:
        """After the last evaluation of the plan."""

    def reset(self) -> None:
        """A new episode (`DiffusionPolicy.reset`): forget whatever the hook keeps from one plan to the next."""


class DenoiserCall:
    """One plan's evaluations of `denoiser(x_in, level_in, cond)`, counted and indexed, with hooks attached."""

    def __init__(self, denoiser: Callable[[Tensor, Tensor, Any], Tensor], schedule: NoiseSchedule, cond: Any = None,
                 *, hooks: Sequence[CallHook] = (), grad: bool = False):
        self.denoiser, self.schedule, self.cond = denoiser, schedule, cond
        self.hooks = list(hooks)
        self.grad = grad
        self.forward: Callable[[Tensor, Tensor], Tensor] = self._eager
        self.grid: list[Tensor] | None = None
        self.step = -1  # index of the evaluation in progress (or last finished) within this plan
        self.nfe = 0
        self.info: dict[str, Any] = {}  # what hooks report about the plan (block evaluations); joins the plan's info
        self._open = False

    @property
    def device(self) -> torch.device:
        """Where the plan's tensors live: the conditioning's device (the CPU for a bare function)."""
        return self.cond.device if isinstance(self.cond, Tensor) else torch.device("cpu")

    def _eager(self, x: Tensor, level: Tensor) -> Tensor:
        return self.denoiser(x, level, self.cond)

    def begin(self, grid: Sequence[Tensor | float | int]) -> None:
        """Announce the schedule levels of the evaluations to come (scalars, `[B]` or `[B, T]`), in order."""
        self.grid = [torch.as_tensor(level) for level in grid]
        self._open = True
        for hook in self.hooks:
            hook.begin(self)

    def predict(self, x: Tensor, level: Tensor) -> tuple[Tensor, Tensor]:
        """One counted evaluation at iterate `x`, schedule level `level` → (x̂0, ε̂)."""
        if not self._open:
            raise RuntimeError("DenoiserCall.predict before begin(grid): a sampler announces its level grid first")
        self.step += 1
        self.nfe += 1
        for hook in self.hooks:
            hook.before_step(self, x, level)
        return self.schedule.predict(self.forward, x, level)

    def end(self) -> None:
        """Close the plan's evaluations."""
        self._open = False
        for hook in self.hooks:
            hook.end(self)
