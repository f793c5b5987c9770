"""Scripted-expert demonstrations into a ReplayBuffer: seeded, successful episodes only by default, resumable.

Attempt k uses seed `seed + k`. Which seeds were tried and kept is written beside the data
(`<out>/collect.json`, atomically), so re-running the same command appends until the buffer holds N
episodes and reproduces exactly what one uninterrupted run would have written. The seed being added is
recorded as `pending` before its episode is appended and cleared after, so a crash between the two is
resolved on the next run by looking at the buffer's committed episode count.

`action_noise=σ` collects DART-style demonstrations (Laskey et al., 2017): the env executes the expert's
action plus Gaussian noise (σ × the action space's half range, clipped to it), the buffer records the
expert's clean action. The policy then sees states off the expert's nominal path, labelled with the
expert's correction, which is what a closed-loop expert can teach and a clean rollout never shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rtdp import metrics
from rtdp.obs_window import ObsWindow
from rtdp.types import PlanContext

STATE_FILE = "collect.json"


def rollout(env, agent, seed: int, max_steps: int | None = None,
            action_noise: float = 0.0) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One episode of `agent` (batch of 1) in `env`: observations before each action, the actions, outcome.

    With `action_noise` > 0 the env executes a perturbed action (seeded by `seed`) and the clean one is recorded.
    """
    obs, info = env.reset(seed=seed)
    perturb = _perturbation(env.action_space, action_noise, seed)
    agent.reset()
    frames: dict[str, list[np.ndarray]] = {k: [] for k in obs}
    actions: list[np.ndarray] = []
    window = ObsWindow(agent.n_obs_steps, batched=False)
    window.start(obs)
    success, max_cov, steps = bool(info.get("success", False)), info.get("coverage"), 0
    done, ctx = False, PlanContext()
    while not done:
        chunk = agent.act(window.window(), ctx)
        executable = np.asarray(chunk.executable)[0]
        ctx = PlanContext(n_executed=len(executable))
        for action in executable:
            for k, v in obs.items():
                frames[k].append(np.asarray(v))
            actions.append(np.asarray(action, dtype=np.float32))
            obs, _, terminated, truncated, info = env.step(perturb(action))
            steps += 1
            success |= bool(info.get("success", False))
            if "coverage" in info:
                max_cov = max(max_cov or 0.0, float(info["coverage"]))
            window.push(obs)
            done = terminated or truncated or (max_steps is not None and steps >= max_steps)
            if done:
                break
    episode = {k: np.stack(v) for k, v in frames.items()}
    episode["action"] = np.stack(actions)
    outcome = {"seed": seed, "success": success, "length": steps}
    if max_cov is not None:
        outcome["max_coverage"] = max_cov
    return episode, outcome


def _perturbation(space, sigma: float, seed: int):
    """`action -> executed action`: identity for sigma 0, else seeded Gaussian noise scaled to the Box's range."""
    if sigma == 0:
        return lambda action: action
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ValueError("action_noise needs a bounded Box action space (the noise is scaled to its range)")
    rng = np.random.default_rng([seed, 0xDA27])
    scale = sigma * (high - low) / 2.0
    return lambda action: np.clip(action + rng.normal(0.0, 1.0, low.shape) * scale, low, high).astype(np.float32)


def _load_state(out: Path, task_id: str, obs_mode: str, seed: int, keep_failed: bool,
                action_noise: float) -> dict[str, Any]:
    path = out / STATE_FILE
    fresh = {"task": task_id, "obs_mode": obs_mode, "seed": seed, "keep_failed": keep_failed,
             "action_noise": action_noise, "next_attempt": 0, "kept": [], "failed": [], "pending": None}
    if not path.exists():
        return fresh
    state = json.loads(path.read_text())
    state.setdefault("action_noise", 0.0)  # written before action_noise existed: clean demonstrations
    for key in ("task", "obs_mode", "seed", "keep_failed", "action_noise"):
        if state.get(key) != fresh[key]:
            raise ValueError(f"{out} was collected with {key}={state.get(key)!r}, not {fresh[key]!r}: "
                             f"use the same settings to resume, or a new out= path")
    return state


def collect(task_id: str, n_episodes: int, out: str | Path, seed: int = 0, obs_mode: str | None = None,
            keep_failed: bool = False, progress: bool = True, max_steps: int | None = None,
            max_attempts: int | None = None, env_kwargs: dict[str, Any] | None = None,
            expert_kwargs: dict[str, Any] | None = None, action_noise: float = 0.0) -> dict[str, Any]:
    """Run the task's scripted expert until `out` (a zarr ReplayBuffer) holds `n_episodes` episodes.

    Keys written: the env's observation keys + `action` (the expert's, clean even with `action_noise`).
    Returns a summary (also in `<out>/collect.json`).
    """
    from rtdp.envs import check_obs_mode, make
    from rtdp.envs.experts import make_expert

    if n_episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {n_episodes}")
    if not 0.0 <= action_noise <= 1.0:
        raise ValueError(f"action_noise is a fraction of the action range in [0, 1], got {action_noise}")
    obs_mode = check_obs_mode(task_id, obs_mode)
    agent = make_expert(task_id, **(expert_kwargs or {}))
    kw = dict(env_kwargs or {})
    if max_steps is not None:
        kw["max_episode_steps"] = max_steps
    env = make(task_id, obs_mode=obs_mode, **kw)  # before the store: a bad env option must leave nothing behind
    try:
        return _collect(env, agent, task_id, n_episodes, Path(out), seed, obs_mode, keep_failed, progress,
                        max_steps, max_attempts, action_noise)
    finally:
        env.close()


def _collect(env, agent, task_id: str, n_episodes: int, out: Path, seed: int, obs_mode: str | None,
             keep_failed: bool, progress: bool, max_steps: int | None, max_attempts: int | None,
             action_noise: float) -> dict[str, Any]:
    from rtdp.datasets.replay_buffer import ReplayBuffer

    buf = ReplayBuffer.open(out, mode="a") if out.exists() else ReplayBuffer.create(out)
    state = _load_state(out, task_id, obs_mode, seed, keep_failed, float(action_noise))
    if state["pending"] is not None:  # a crash between "about to add" and "added": the buffer decides
        if buf.n_episodes == len(state["kept"]) + 1:
            state["kept"].append(state["pending"])
            state["next_attempt"] = state["pending"]["seed"] - seed + 1
        state["pending"] = None
    if buf.n_episodes != len(state["kept"]):
        raise ValueError(f"{out} holds {buf.n_episodes} episodes but {STATE_FILE} lists {len(state['kept'])}: "
                         "it was written by something else; collect into a new out= path")
    max_attempts = max_attempts or 10 * n_episodes + 20
    with _Bar(progress, n_episodes, buf.n_episodes, task_id) as bar:
        while buf.n_episodes < n_episodes:
            if state["next_attempt"] >= max_attempts:
                raise RuntimeError(f"the {task_id} expert succeeded in only {len(state['kept'])} of "
                                   f"{state['next_attempt']} attempts; pass keep_failed=true or check the task")
            s = seed + state["next_attempt"]
            episode, outcome = rollout(env, agent, s, max_steps, action_noise)
            state["next_attempt"] += 1
            if outcome["success"] or keep_failed:
                state["pending"] = outcome
                metrics.write_json(out / STATE_FILE, state)
                buf.add_episode(episode)
                state["kept"].append(outcome)
                state["pending"] = None
                bar.advance()
            else:
                state["failed"].append(outcome)
            metrics.write_json(out / STATE_FILE, state)
    n_tried = state["next_attempt"]
    n_success = sum(o["success"] for o in state["kept"] + state["failed"])
    return {"task": task_id, "obs_mode": obs_mode, "out": str(out), "n_episodes": buf.n_episodes,
            "n_steps": buf.n_steps, "attempts": n_tried, "expert_success_rate": n_success / max(n_tried, 1),
            "action_noise": action_noise, "keys": buf.keys()}


class _Bar:
    """A rich progress bar over kept episodes (resumed runs start at the count already there)."""

    def __init__(self, enabled: bool, total: int, done: int, label: str):
        self.enabled, self.total, self.done, self.label = enabled, total, done, label

    def __enter__(self):
        if self.enabled:
            from rich.progress import Progress

            self.p = Progress()
            self.p.start()
            self.task = self.p.add_task(f"collect {self.label}", total=self.total, completed=self.done)
        return self

    def advance(self) -> None:
        if self.enabled:
            self.p.advance(self.task)

    def __exit__(self, *exc):
        if self.enabled:
            self.p.stop()
        return False
