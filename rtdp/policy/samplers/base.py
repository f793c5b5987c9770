"""The `Sampler` contract: how a plan (a normalised action chunk and which of it to execute) is made from noise,
evaluating the denoiser through a `DenoiserCall`.

A sampler is built from its config node by its own `from_config` (its defaults live in its class), registers
itself by the `name` it sets, and returns a `Plan`. The previous plan is the policy's, handed in; a sampler that
keeps more between calls (the streaming buffer) forgets it in `reset()`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from rtdp.policy.call import DenoiserCall
from rtdp.policy.plan import Plan
from rtdp.policy.registry import Registry, register_subclass
from rtdp.policy.schedules import NoiseSchedule
from rtdp.policy.spec import PolicySpec
from rtdp.types import PlanContext

SAMPLERS: Registry[Sampler] = Registry("sampler")


class Sampler(ABC):
    """Makes plans: `sample(call, shape, ctx, previous) -> Plan`, executing `n_action_steps` actions from
    `start` = To - 1 (the action for the step of the latest observation) unless the method says otherwise."""

    name: ClassVar[str] = ""  # set by every registered sampler; a test-only subclass may leave it empty
    needs_grad: ClassVar[bool] = False  # the sampler differentiates through the denoiser (guidance)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_subclass(SAMPLERS, cls)

    def __init__(self, schedule: NoiseSchedule, n_action_steps: int = 8, n_obs_steps: int = 2):
        if int(n_action_steps) < 1:
            raise ValueError(f"{self.label}: n_action_steps must be >= 1, got {n_action_steps}")
        self.schedule = schedule
        self.n_action_steps = int(n_action_steps)
        self.start = int(n_obs_steps) - 1

    @property
    def label(self) -> str:
        return self.name or type(self).__name__

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], spec: PolicySpec) -> Sampler:
        """An instance from the `sampler:` config node (without `name`) for the policy `spec` describes."""
        return cls(spec.schedule, n_obs_steps=spec.n_obs_steps, **cfg)

    @classmethod
    def options(cls) -> list[str]:
        """The config keys this sampler takes (its constructor's keyword arguments the policy does not fill in)."""
        params = inspect.signature(cls.__init__).parameters
        return [p for p in params if p not in ("self", "schedule", "n_obs_steps", "horizon")]

    def reset(self) -> None:
        """Forget state kept between calls (a new episode)."""

    @abstractmethod
    def sample(self, call: DenoiserCall, shape: tuple[int, int, int], ctx: PlanContext,
               previous: Plan | None) -> Plan:
        """A plan of `shape [B, T, Da]`. `ctx.n_executed` is an int here: the actions of `previous` executed since
        it was made (0 when there is none)."""

    def plan(self, actions: Tensor, call: DenoiserCall, **kw: Any) -> Plan:
        """The plan of `actions`, executing this sampler's `n_action_steps` from `start`."""
        return Plan(actions, self.start, self.n_action_steps, call.nfe, **kw)

    def describe(self) -> dict[str, Any]:
        """What the sampler is, for metrics JSON."""
        return {"name": self.name, "n_action_steps": self.n_action_steps}


def batch_level(level: Tensor | float, batch: int, device) -> Tensor:
    """A level shared by every position, as a `[B]` tensor."""
    return torch.as_tensor(level, device=device).reshape(1).expand(batch).clone()


def make_sampler(cfg: Mapping[str, Any] | None, spec: PolicySpec) -> Sampler:
    """The sampler a config node `{name: ..., ...}` describes (default DDPM), for the policy `spec` describes."""
    import rtdp.policy.samplers  # noqa: F401 - the built-in samplers register on import

    cfg = dict(cfg or {"name": "ddpm"})
    cls = SAMPLERS.get(cfg.pop("name", "ddpm"))
    try:
        return cls.from_config(cfg, spec)
    except TypeError as err:  # an unknown option: say which sampler and what it was
        raise ValueError(f"sampler {cls.name!r}: {err}; its options: {', '.join(cls.options())}") from None
