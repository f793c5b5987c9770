"""Drive a sampler the way `DiffusionPolicy.plan_chunk` does, on a bare model function `fn(x, level)`: one
`DenoiserCall` per plan, the previous plan handed back, `n_executed` defaulting to what the plan executed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rtdp.policy.call import CallHook, DenoiserCall
from rtdp.policy.plan import Plan
from rtdp.types import PlanContext


class Runner:
    def __init__(self, sampler, fn: Callable | None = None, hooks: Sequence[CallHook] = ()):
        self.sampler, self.fn, self.hooks = sampler, fn, list(hooks)
        self.plan: Plan | None = None

    def __call__(self, fn: Callable | None, shape, generator: torch.Generator | None = None,
                 n_executed: int | None = None, delay: int = 0) -> torch.Tensor:
        """The next plan's normalised actions (the plan itself is `self.plan`)."""
        fn = fn or self.fn
        call = DenoiserCall(lambda x, level, cond: fn(x, level), self.sampler.schedule, hooks=self.hooks,
                            grad=self.sampler.needs_grad)
        if n_executed is None:
            n_executed = self.plan.n_exec if self.plan is not None else 0
        ctx = PlanContext(n_executed=n_executed, delay=delay, generator=generator)
        self.plan = self.sampler.sample(call, tuple(shape), ctx, self.plan)
        return self.plan.actions

    def set_previous(self, actions: torch.Tensor) -> None:
        """Warm-start the next plan from `actions` (a previous plan that executed `n_action_steps`)."""
        self.plan = Plan(actions.clone(), self.sampler.start, self.sampler.n_action_steps, 0)

    def reset(self) -> None:
        self.sampler.reset()
        self.plan = None

    @property
    def last_nfe(self) -> int:
        return self.plan.nfe

    @property
    def last_warm(self) -> bool:
        return bool(self.plan.info.get("warm"))


def sample(sampler, fn: Callable, shape, generator: torch.Generator | None = None) -> torch.Tensor:
    """One cold plan of a stateless sampler."""
    return Runner(sampler)(fn, shape, generator)
