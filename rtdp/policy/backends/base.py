"""What every inference backend shares: how it takes over a `DenoiserCall`, when it leaves the call eager, and
how it is checked against eager on the same inputs.

A backend is built once for one denoiser at the policy's fixed shapes (horizon T, action size Da, observation
window `[To, Dc]`; the batch is dynamic) and attached to the policy (`policy.backend`). For every plan the
policy hands it the plan's `DenoiserCall`; `bind` replaces `call.forward` with the backend's evaluation of the
plan's conditioning, or leaves it eager with a one-line notice where the backend cannot serve the call (a
sampler that needs gradients, tensors on another device). Hooks are untouched: `call.predict` still runs them
around every evaluation, whoever serves `forward`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rtdp.policy.call import DenoiserCall
from rtdp.policy.embeddings import per_position_levels

log = logging.getLogger("rtdp.policy.backends")

Forward = Callable[[Tensor, Tensor], Tensor]


class BackendError(ValueError):
    """A backend that cannot be used as asked (runtime missing, graph misses eager, wrong device)."""


@dataclass(frozen=True)
class Tolerance:
    """Elementwise `|backend - eager| <= atol + rtol * |eager|` on the denoiser's raw (normalised) output."""

    atol: float
    rtol: float

    def excess(self, out: Tensor, ref: Tensor) -> float:
        """The worst ratio of the difference to what the tolerance allows (<= 1 passes)."""
        diff = (out.float() - ref.float()).abs()
        return float((diff / (self.atol + self.rtol * ref.float().abs())).max())

    def __str__(self) -> str:
        return f"|diff| <= {self.atol:g} + {self.rtol:g}·|eager|"


@dataclass(frozen=True)
class GraphShapes:
    """The fixed shapes a backend is built for: horizon T, action size Da, observation window `[To, Dc]`."""

    horizon: int
    action_dim: int
    cond_shape: tuple[int, ...]
    level_range: tuple[float, float] = (0.0, 100.0)  # the denoiser's level input over the schedule (probes)
    per_position: bool = True  # whether the denoiser takes a level per action position (else one per row)

    def probes(self, batches: Sequence[int] = (1, 3, 10), device: torch.device | str = "cpu",
               seed: int = 0) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Seeded inputs `(x, level [B, T], cond)` for the check against eager: per-position levels at batch 1
        and 10, one level per row at batch 3 (how `[B]` levels reach a graph), and at every batch for a denoiser that
        takes one level per row."""
        gen = torch.Generator().manual_seed(seed)
        lo, hi = self.level_range
        out = []
        for b in batches:
            x = torch.randn(b, self.horizon, self.action_dim, generator=gen)
            if b == 3 or not self.per_position:
                level = (lo + (hi - lo) * torch.rand(b, 1, generator=gen)).expand(b, self.horizon)
            else:
                level = lo + (hi - lo) * torch.rand(b, self.horizon, generator=gen)
            cond = torch.randn(b, *self.cond_shape, generator=gen)
            out.append((x.to(device), level.contiguous().to(device), cond.to(device)))
        return out


class WeightsWatch:
    """Notices when a module's parameters or buffers are written in place (loading weights, an optimiser step)
    from torch's tensor version counters; the tensors are listed once, so a check costs microseconds."""

    def __init__(self, module: nn.Module):
        self.tensors = [*module.parameters(), *module.buffers()]
        self.version = self._sum()

    def _sum(self) -> int:
        return sum(t._version for t in self.tensors)

    def changed(self) -> bool:
        """Whether any tensor was written since this watch was made."""
        return self._sum() != self.version


class Backend(ABC):
    """Serves a denoiser's evaluations for a plan's `DenoiserCall` (`bind`), built for one denoiser."""

    name: str = ""
    tolerance: Tolerance

    def __init__(self, denoiser: nn.Module, shapes: GraphShapes):
        self.denoiser, self.shapes = denoiser, shapes
        self._noticed: set[str] = set()

    def notice_once(self, key: str, message: str) -> None:
        """Log `message` (one line) the first time `key` comes up for this backend."""
        if key not in self._noticed:
            self._noticed.add(key)
            log.warning("rtdp: backend=%s: %s", self.name, message)

    def bind(self, call: DenoiserCall, sampler: str = "the sampler") -> None:
        """Serve `call`'s evaluations (replace `call.forward`), or leave it eager with a one-line notice."""
        if call.grad:
            self.notice_once(f"grad:{sampler}", f"sampler {sampler!r} needs gradients through the denoiser; its "
                                                "plans run eager")
            return
        reason = self.unsupported(call)
        if reason:
            self.notice_once(f"skip:{reason}", f"{reason}; those plans run eager")
            return
        call.forward = self.forward_for(call)

    def unsupported(self, call: DenoiserCall) -> str | None:
        """Why this backend cannot serve `call` (None when it can)."""
        return None

    @abstractmethod
    def forward_for(self, call: DenoiserCall) -> Forward:
        """The evaluation `(x_in, level_in) -> prediction` of `call`'s conditioning."""

    def describe(self) -> dict:
        """What the backend is, for metrics JSON."""
        return {"name": self.name, "tolerance": {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol}}


def as_position_levels(level: Tensor | float, x: Tensor) -> Tensor:
    """The level input of a graph: a float `[B, T]` contiguous tensor from a scalar, `[B]` or `[B, T]` level."""
    if isinstance(level, Tensor) and level.ndim == 2 and level.dtype == torch.float32 and level.is_contiguous():
        return level
    return per_position_levels(level, x.shape[0], x.shape[1], x.device).contiguous()
