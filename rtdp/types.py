"""Types every layer shares, numpy only (the robot side of the wire imports no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class ActionChunk:
    """A batch of predicted action sequences and which of them to execute, with their timing.

    `actions[b, i]` is the action for control step `i - start` counted from the latest observation: index
    `start` (= To - 1 for a diffusion policy) is the action for the step the latest observation was taken
    at, so its target time is the observation time, and each later index is `dt` seconds later.
    """

    actions: np.ndarray  # [B, T, Da], unnormalised, in the env's action units
    start: int = 0  # index of the first action to execute
    n_exec: int = 1  # how many actions from `start` on are meant to be executed before replanning
    dt: float = 0.1  # control period (s) the actions are spaced by
    nfe: int = 0  # denoiser evaluations spent producing this chunk
    info: dict = field(default_factory=dict)

    @property
    def executable(self) -> np.ndarray:
        """The actions to execute, `[B, n_exec, Da]`."""
        return self.actions[:, self.start : self.start + self.n_exec]

    @property
    def offsets(self) -> np.ndarray:
        """Target time of every action relative to the latest observation, seconds, `[T]`."""
        return (np.arange(self.actions.shape[1]) - self.start) * self.dt

    @property
    def nfe_per_action(self) -> float:
        return self.nfe / max(self.n_exec, 1)


@dataclass(frozen=True)
class PlanContext:
    """What a caller tells an agent with each observation window, besides the observations.

    `n_executed`: actions of the previous chunk executed since it was planned (None: as many as it said to
    execute); a warm-starting sampler shifts its previous plan by this. `delay`: the expected inference delay in
    control steps (the actions that will still run from the previous chunk while this one is computed).
    `generator`: the torch.Generator the sampler draws its noise from (None: torch's global RNG).
    """

    n_executed: int | None = None
    delay: int = 0
    generator: Any = None


@runtime_checkable
class Agent(Protocol):
    """Anything that maps a window of observations to an action chunk: policies and scripted experts.

    `obs` holds, per key, an array `[B, n_obs_steps, ...]` (the oldest frame first; at the start of an
    episode the first frame is repeated to fill the window; `rtdp.obs_window.ObsWindow` builds it). `ctx` says
    what happened since the previous call (None: the previous chunk ran as planned, no delay, global RNG).
    """

    n_obs_steps: int

    def reset(self) -> None: ...

    def act(self, obs: dict[str, np.ndarray], ctx: PlanContext | None = None) -> ActionChunk: ...
