"""Latency-faithful execution of action chunks: which action runs at every control step when each plan takes
`delay` steps to compute, as on an asynchronous robot, with the ways of merging overlapping chunks to compare.

Plan k is computed from the observation of step o_k and arrives at o_k + d (the first plan of an episode at o_0:
the world waits for it, as the control loop's warm-up does). Until it arrives the steps keep running what the
earlier plans said. The next observation is taken s = max(n_exec, d) steps after the last one (n_exec: the
plan's executed actions; one inference at a time, so never sooner than the delay), so every plan supplies s
actions and the previous plan must reach s + d steps past its observation. With d = 0 and naive switching this
is synchronous evaluation exactly.

Execution schemes (how the step's action is chosen from the plans that have arrived):
- `naive`: asynchronous switching; the newest plan replaces the old one the step it arrives.
- `blend`: LeRobot's asynchronous client; when a plan arrives, every queued future action it also predicts
  becomes `(1 − w)·old + w·new` (its default `weighted_average`, w = 0.7), the rest are taken from it.
- `ensemble`: ACT's temporal ensembling; the step's action is the average of every arrived plan's prediction
  for it, weighted exp(−m·i) with i = 0 the oldest (m = 0.01, ACT's).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rtdp.types import Agent, PlanContext

EXECUTIONS = ("naive", "blend", "ensemble")


@dataclass
class ArrivedPlan:
    """A plan's actions from its first executable index on, `[B, H, Da]` (index j is for step `obs_step + j`)."""

    actions: np.ndarray
    obs_step: int
    arrival: int

    def covers(self, t: int) -> bool:
        return 0 <= t - self.obs_step < self.actions.shape[1]

    def at(self, t: int) -> np.ndarray:
        return self.actions[:, t - self.obs_step]


class Execution(ABC):
    """Chooses each step's action from the plans that have arrived; `action(t)` is asked for t = 0, 1, 2, …"""

    name = ""

    def __init__(self) -> None:
        self.plans: list[ArrivedPlan] = []

    def reset(self) -> None:
        self.plans = []

    def add(self, plan: ArrivedPlan) -> None:
        self.plans.append(plan)

    def arrived(self, t: int) -> list[ArrivedPlan]:
        """The plans that have arrived by step `t`, oldest first (dropping those that end before it)."""
        self.plans = [p for p in self.plans if t - p.obs_step < p.actions.shape[1] or p.arrival > t]
        return [p for p in self.plans if p.arrival <= t]

    @abstractmethod
    def action(self, t: int) -> np.ndarray | None:
        """The action `[B, Da]` of step `t`, or None when no arrived plan reaches it."""


class NaiveSwitching(Execution):
    """The newest arrived plan's action for the step (the new chunk replaces the old one at the delay)."""

    name = "naive"

    def action(self, t: int) -> np.ndarray | None:
        arrived = self.arrived(t)
        return arrived[-1].at(t) if arrived and arrived[-1].covers(t) else None


class Blending(Execution):
    """LeRobot-style blending: on arrival a plan is averaged into the queue of future actions, `weight` on it."""

    name = "blend"

    def __init__(self, weight: float = 0.7):
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"the blending weight of a new plan must be in [0, 1], got {weight}")
        self.weight = float(weight)
        self.queue: dict[int, np.ndarray] = {}

    def reset(self) -> None:
        super().reset()
        self.queue = {}

    def action(self, t: int) -> np.ndarray | None:
        while self.plans and self.plans[0].arrival <= t:  # merge each plan, oldest first, the step it arrives
            plan = self.plans.pop(0)
            for j in range(max(t - plan.obs_step, 0), plan.actions.shape[1]):  # the steps still to come
                new, old = plan.actions[:, j], self.queue.get(plan.obs_step + j)
                self.queue[plan.obs_step + j] = new if old is None else (1 - self.weight) * old + self.weight * new
        self.queue = {k: v for k, v in self.queue.items() if k >= t}
        return self.queue.get(t)


class TemporalEnsemble(Execution):
    """ACT's temporal ensembling: a weighted average of every arrived plan's action for the step, weights
    exp(−coeff·i) with i = 0 the oldest of them."""

    name = "ensemble"

    def __init__(self, coeff: float = 0.01):
        super().__init__()
        self.coeff = float(coeff)

    def action(self, t: int) -> np.ndarray | None:
        votes = [p.at(t) for p in self.arrived(t) if p.covers(t)]
        if not votes:
            return None
        w = np.exp(-self.coeff * np.arange(len(votes)))
        return np.tensordot(w / w.sum(), np.stack(votes), axes=1).astype(votes[0].dtype, copy=False)


def make_execution(name: str, blend_weight: float = 0.7, ensemble_coeff: float = 0.01) -> Execution:
    """The execution scheme called `name` (naive | blend | ensemble)."""
    if name == "naive":
        return NaiveSwitching()
    if name == "blend":
        return Blending(blend_weight)
    if name == "ensemble":
        return TemporalEnsemble(ensemble_coeff)
    raise ValueError(f"execution={name!r} is not a scheme: use one of {', '.join(EXECUTIONS)}")


def max_delay(horizon: int, n_exec: int) -> int:
    """The longest delay plans of `horizon` actions from the current step, executing `n_exec`, can cover:
    the previous plan must reach max(n_exec, d) + d steps."""
    return max(min(horizon - n_exec, horizon // 2), 0)


def check_delay(agent: Agent, delay: int) -> None:
    """Refuse a delay the agent's plans cannot cover, before anything runs (a diffusion policy knows its horizon
    and executed actions; a sampler with rules of its own, RTC's d ≤ s ≤ H − d, checks them too). Other agents
    are checked as their plans arrive."""
    if isinstance(delay, bool) or not isinstance(delay, (int, np.integer)):
        raise ValueError(  # noqa: TRY004 - a bad argument value, reported like the others
            f"delay={delay!r}: a delay is a number of control steps; for the measured one, time the "
            "policy first (rtdp.envs.timing.time_inference) and pass its delay_steps")
    if int(delay) < 0:
        raise ValueError(f"delay={delay}: a delay is a number of control steps >= 0")
    horizon, sampler = getattr(agent, "horizon", None), getattr(agent, "sampler", None)
    if horizon is None or sampler is None:
        return
    H, s = int(horizon) - int(sampler.start), int(sampler.n_action_steps)
    dmax = max_delay(H, s)
    if delay >= H:
        raise ValueError(f"delay={delay} is not below the horizon: this policy plans H = {H} actions from the current "
                         f"step (T={horizon}); executing s = {s} per plan, use delay in [0, {dmax}]")
    if delay > dmax:
        raise ValueError(f"delay={delay} is longer than this policy's plans can cover: H = {H} actions from the "
                         f"current step, s = {s} executed per plan, and the previous plan must reach max(s, d) + d "
                         f"<= H; use delay in [0, {dmax}] (or a smaller sampler.n_action_steps)")
    check = getattr(sampler, "check_delay", None)
    if check is not None:
        check(int(delay), int(horizon))


class DelayedExecutor:
    """Runs an agent against a step clock: observes when the next plan is due, lets it arrive `delay` steps
    later, and answers each step's action through the execution scheme (module docstring)."""

    def __init__(self, agent: Agent, delay: int = 0, execution: str | Execution = "naive"):
        if int(delay) < 0:
            raise ValueError(f"delay={delay}: a delay is a number of control steps >= 0")
        self.agent, self.delay = agent, int(delay)
        self.scheme = make_execution(execution) if isinstance(execution, str) else execution
        self.reset()

    def reset(self) -> None:
        """A new episode (or wave): no plans, the next observation at step 0."""
        self.scheme.reset()
        self.next_obs, self.last_obs = 0, None
        self.boundaries: list[int] = []  # steps at which a plan after the first starts to act
        self.nfe = self.planned = self.calls = 0
        self.vjp = 0
        self.block_evals = self.block_evals_uncached = 0  # a block cache's report (plan info), 0 without one

    def action(self, t: int, window: Callable[[], dict[str, np.ndarray]]) -> np.ndarray:
        """The action `[B, Da]` of step `t` (asked for t = 0, 1, 2, …); `window()` is the observation window now."""
        if t == self.next_obs:
            first = self.last_obs is None
            ctx = PlanContext(n_executed=None if first else t - self.last_obs, delay=0 if first else self.delay)
            chunk = self.agent.act(window(), ctx)
            arrival = t if first else t + self.delay
            spacing = max(int(chunk.n_exec), self.delay, 1)
            actions = np.asarray(chunk.actions)[:, int(chunk.start):]
            self.scheme.add(ArrivedPlan(actions, t, arrival))
            self._reach, self._spacing = actions.shape[1], spacing
            if not first:
                self.boundaries.append(arrival)
            self.last_obs, self.next_obs = t, t + spacing
            self.nfe += int(chunk.nfe)
            self.vjp += int(chunk.info.get("vjp", 0))
            self.block_evals += int(chunk.info.get("block_evals", 0))
            self.block_evals_uncached += int(chunk.info.get("block_evals_uncached", 0))
            self.planned += spacing
            self.calls += 1
        a = self.scheme.action(t)
        if a is None:
            raise ValueError(f"step {t} has no action: with delay={self.delay} the previous plan must reach "
                             f"max(n_exec, d) + d = {self._spacing + self.delay} steps past its observation, and "
                             f"these plans hold {self._reach} from it; use delay in "
                             f"[0, {max_delay(self._reach, self._spacing if self._spacing > self.delay else 1)}]")
        return a
