"""The `Denoiser` contract: a network that reads a noisy action chunk, its noise level and the encoded
observations, and predicts what its noise schedule trains it to (ε, x0 or EDM's F).

`forward` returns the prediction only (what samplers, compiled backends and caches call). `denoise` returns the
prediction with the auxiliary training losses of that pass (a mixture of experts' load balancing), already
weighted; the policy's loss adds them and the trainer logs each. A subclass sets `name` to register itself, so
a config picks it with `denoiser.type: <name>`.

A denoiser may contribute `call_hooks()` (MoDE's expert caching), which the policy attaches to every plan's
`DenoiserCall`, and says in `block_cache_refusal` why it cannot take block caching (BAC), if it cannot; the
block cache (`rtdp/policy/caching/`) refuses such a denoiser with that reason.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from rtdp.policy.call import CallHook
from rtdp.policy.registry import Registry, register_subclass

DENOISERS: Registry[Denoiser] = Registry("denoiser")


@dataclass(frozen=True)
class DenoiserSpec:
    """What a denoiser is built for: action size, per-frame observation feature size, window and horizon."""

    action_dim: int
    cond_dim: int
    n_obs_steps: int
    horizon: int


@dataclass
class DenoiserOutput:
    """A prediction `[B, T, Da]` and the auxiliary training losses of the pass that made it (weighted)."""

    prediction: Tensor
    aux_losses: dict[str, Tensor] = field(default_factory=dict)


class Denoiser(nn.Module, ABC):
    """`(x[B,T,Da], level[B] or [B,T], cond[B,To,Dc]) -> [B,T,Da]`; levels are the schedule's model input."""

    name: ClassVar[str]
    block_cache_refusal: ClassVar[str] = ""  # why block caching cannot serve this denoiser ("" = no objection)
    per_position_levels: ClassVar[bool] = True  # False: one level per row only (a backend's checks probe so)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_subclass(DENOISERS, cls)

    @abstractmethod
    def forward(self, x: Tensor, level: Tensor, cond: Tensor) -> Tensor:
        """The prediction for noisy chunk `x` at `level` given the observation features `cond`."""

    def denoise(self, x: Tensor, level: Tensor, cond: Tensor) -> DenoiserOutput:
        """The prediction and the auxiliary losses of this pass (none by default)."""
        return DenoiserOutput(self(x, level, cond))

    def call_hooks(self) -> list[CallHook]:
        """Hooks the policy attaches to every plan's denoiser call (none by default)."""
        return []

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: Mapping[str, Any], spec: DenoiserSpec) -> Denoiser:
        """An instance from the `denoiser:` config node (without `type`) and the policy's shapes."""


def load_builtin_denoisers() -> None:
    """Import the built-in denoiser modules, which register their classes."""
    import rtdp.policy.mode
    import rtdp.policy.transformer
    import rtdp.policy.unet1d  # noqa: F401


def make_denoiser(cfg: Mapping[str, Any], spec: DenoiserSpec) -> Denoiser:
    """The denoiser `cfg["type"]` names (default `unet1d`), built from the rest of `cfg`."""
    load_builtin_denoisers()
    cfg = dict(cfg)
    return DENOISERS.get(cfg.pop("type", "unet1d")).from_config(cfg, spec)
