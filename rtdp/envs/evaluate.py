"""Vectorised, seeded evaluation of any `Agent` (policy or scripted expert) on a task.

Episodes run in waves of `n_envs`: batch row b is env b for the whole run, `agent.reset()` starts every
wave, and episode i always uses seed `seed + i`, so the figures do not depend on `n_envs`. An env whose
episode ends before the others' is reset (so it stays steppable) and masked: its row keeps receiving its
last observation, its actions are executed but ignored, until the wave ends. A stateful agent therefore
sees one uninterrupted stream per row and is reset only between waves.

`delay=d` makes the evaluation latency-faithful: every plan after the first arrives d control steps after its
observation, and the env keeps executing the earlier plans meanwhile, as an asynchronous robot does; `execution`
picks how overlapping plans are merged (naive switching, LeRobot's blending, ACT's temporal ensembling; see
`rtdp.envs.execution`). d = 0 with naive switching is synchronous evaluation. Every run reports the seam metric
(`rtdp.envs.seams`): how much the executed actions jump where a chunk hands over, against inside chunks.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rtdp import metrics
from rtdp.envs.execution import DelayedExecutor, check_delay, make_execution
from rtdp.envs.seams import plot_seams, seam_summary
from rtdp.obs_window import ObsWindow
from rtdp.types import Agent


def _make_env(task_id: str, obs_mode: str | None, render_mode: str | None, max_steps: int | None,
              env_kwargs: dict[str, Any]) -> gym.Env:
    from rtdp.envs import make

    kw = dict(env_kwargs)
    if max_steps is not None:
        kw["max_episode_steps"] = max_steps
    return make(task_id, obs_mode=obs_mode, render_mode=render_mode, **kw)


def make_vector_env(task_id: str, n_envs: int = 2, obs_mode: str | None = None, render_mode: str | None = None,
                    max_steps: int | None = None, context: str | None = None, **env_kwargs) -> gym.vector.VectorEnv:
    """`n_envs` copies of a task: AsyncVectorEnv (one process each) or SyncVectorEnv for a single env.

    Workers that never render are forked (fast, and scripts need no `if __name__ == "__main__"` guard);
    they run simulator code only, never torch. Workers that render (image observations, videos) are
    spawned: a forked child inherits the parent's EGL state and hangs in its first render if the parent
    has rendered before. Autoreset is off: the caller resets finished envs.
    """
    if context is None:
        renders = render_mode is not None or obs_mode == "image"
        context = "spawn" if renders else "fork"
    fns = [functools.partial(_make_env, task_id, obs_mode, render_mode, max_steps, env_kwargs)
           for _ in range(n_envs)]
    mode = gym.vector.AutoresetMode.DISABLED
    if n_envs == 1 or env_kwargs.get("address"):  # a served env's copies are clients, with no process of their own
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    return gym.vector.AsyncVectorEnv(fns, context=context, autoreset_mode=mode)


def evaluate(agent: Agent, task_id: str, n_episodes: int = 50, seed: int = 0, n_envs: int = 2,
             obs_mode: str | None = None, max_steps: int | None = None, video_dir: str | Path | None = None,
             n_videos: int = 0, progress: bool | Callable[[int], None] = True, env_kwargs: dict[str, Any] | None = None,
             out_dir: str | Path | None = None, delay: int = 0, execution: str = "naive",
             timing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run `agent` on episodes `seed … seed+n_episodes-1`; success rate, coverage (PushT), lengths, seams, videos.

    `delay` (control steps) and `execution` (naive | blend | ensemble) as in the module docstring; `timing`, the
    timing run a measured delay came from (`rtdp.envs.timing.time_inference`), is kept in the summary. Returns a
    `rtdp.metrics.record("eval", ...)` dict; with `out_dir` it is also written as `eval.json` beside a plot of
    per-episode results and `seams.png` (the first episode's executed actions around its seams), and videos
    (the first `n_videos` episodes) go to `video_dir` (default `out_dir/videos`).
    """
    from rtdp.envs import check_obs_mode

    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    make_execution(execution)  # an unknown scheme fails before any env starts
    check_delay(agent, delay)
    obs_mode = check_obs_mode(task_id, obs_mode)
    n_envs = max(1, min(n_envs, n_episodes))
    if video_dir is None and out_dir is not None and n_videos > 0:
        video_dir = Path(out_dir) / "videos"
    n_videos = n_videos if video_dir is not None else 0
    envs = make_vector_env(task_id, n_envs, obs_mode, "rgb_array" if n_videos else None, max_steps,
                           **(env_kwargs or {}))
    episodes: list[dict[str, Any]] = []
    videos: list[str] = []
    try:
        check_observations(agent, envs.single_observation_space, task_id)
    except ValueError:
        envs.close()
        raise
    t0 = time.perf_counter()
    n_steps = 0
    nfe_total, n_actions, vjp_total, calls = 0, 0, 0, 0
    block_evals, block_evals_uncached = 0, 0
    traces: list[tuple[np.ndarray, list[int]]] = []
    executor = DelayedExecutor(_Timed(agent), delay, execution)
    try:
        with _progress(progress, n_episodes, task_id) as bar:
            for first in range(0, n_episodes, n_envs):
                ids = np.arange(first, min(first + n_envs, n_episodes))
                result, steps, frames, wave_traces = _run_wave(agent, envs, ids, seed, n_videos, executor)
                episodes += result
                traces += wave_traces
                n_steps += steps
                nfe_total += executor.nfe
                n_actions += executor.planned
                vjp_total += executor.vjp
                block_evals += executor.block_evals
                block_evals_uncached += executor.block_evals_uncached
                calls += executor.calls
                for i, fr in frames.items():
                    videos.append(str(_write_video(Path(video_dir) / f"episode_{i:03d}.mp4", fr,
                                                   envs.metadata.get("render_fps", 10))))
                bar(len(ids))
    finally:
        envs.close()
    wall = time.perf_counter() - t0
    success = np.array([e["success"] for e in episodes], dtype=bool)
    lengths = np.array([e["length"] for e in episodes])
    summary: dict[str, Any] = {
        "task": task_id, "obs_mode": obs_mode, "n_episodes": n_episodes, "seed": seed, "n_envs": n_envs,
        "success_rate": float(success.mean()), "mean_length": float(lengths.mean()),
        "steps_per_s": n_steps / wall, "wall_s": wall,
        "nfe_per_action": nfe_total / max(n_actions, 1),
        "agent": type(agent).__name__, "n_obs_steps": int(agent.n_obs_steps),
        "delay": int(delay), "execution": str(execution),
        "actions_per_plan": n_actions / max(calls, 1), "plans": calls,
        "act_s_per_plan": executor.agent.seconds / max(calls, 1),  # batched over the wave's envs: not a robot's latency
        "seams": seam_summary(traces),
    }
    if vjp_total:
        summary["vjp_per_action"] = vjp_total / max(n_actions, 1)
    if block_evals_uncached:  # a block cache: transformer blocks evaluated per plan, and without the cache
        summary["block_evals_per_plan"] = block_evals / max(calls, 1)
        summary["block_evals_uncached_per_plan"] = block_evals_uncached / max(calls, 1)
    if timing is not None:
        summary["delay_timing"] = timing
    if all("max_coverage" in e for e in episodes):
        summary["mean_max_coverage"] = float(np.mean([e["max_coverage"] for e in episodes]))
    tasks = sorted({e["task"] for e in episodes if "task" in e})
    if len(tasks) > 1:
        summary["success_per_task"] = {t: float(np.mean([e["success"] for e in episodes if e.get("task") == t]))
                                       for t in tasks}
        summary["episodes_per_task"] = {t: sum(e.get("task") == t for e in episodes) for t in tasks}
        summary["success_task_mean"] = float(np.mean(list(summary["success_per_task"].values())))
    trace = {"episode": episodes[0]["episode"], "actions": traces[0][0], "seams": traces[0][1]}
    rec = metrics.record("eval", summary=summary, episodes=episodes, videos=videos, seam_trace=trace)
    if out_dir is not None:
        write_report(rec, out_dir)
    return rec


def check_observations(agent: Agent, space: Any, task_id: str) -> None:
    """Refuse an agent that observes keys the task's env does not give (a ValueError saying what to run); a
    multitask policy needs its task id (`task_onehot`), which a single-task env lacks."""
    wanted = list(getattr(agent, "obs_keys", None) or [])
    given = set(getattr(space, "spaces", {}) or {})
    missing = [k for k in wanted if k not in given]
    if not missing:
        return
    if "task_onehot" in missing:
        raise ValueError(f"this policy is multitask (it observes its task id, task_onehot) and task {task_id!r} "
                         "gives no task id: evaluate it on task=metaworld/mt10, or on one of its tasks with "
                         "task=metaworld/mt10 only_task=<name>-v3")
    raise ValueError(f"this policy observes {missing}, which task {task_id!r} does not give (it gives "
                     f"{sorted(given)}): evaluate it on the task it was trained on")


def _run_wave(agent: Agent, envs: gym.vector.VectorEnv, ids: np.ndarray, seed: int, n_videos: int,
              executor: DelayedExecutor):
    """One episode per env row (rows beyond `len(ids)` run a throw-away episode and are ignored); every step's
    action comes from `executor`. Returns the episodes, env steps, video frames and per-episode
    (executed actions, seam steps)."""
    n = envs.num_envs
    seeds = [int(seed + i) for i in ids] + [int(seed + ids[-1])] * (n - len(ids))
    obs, info = envs.reset(seed=seeds)
    agent.reset()
    executor.reset()
    win = ObsWindow(agent.n_obs_steps)
    win.start(obs)
    active = np.zeros(n, dtype=bool)
    active[:len(ids)] = True
    success = np.zeros(n, dtype=bool)
    max_cov = np.full(n, -np.inf)
    has_cov = "coverage" in info
    if has_cov:
        max_cov = np.maximum(max_cov, np.asarray(info["coverage"], dtype=float))
    lengths = np.zeros(n, dtype=int)
    task = [None] * n
    if "task" in info:
        task = [str(t) for t in info["task"]]
    record = [i < n_videos for i in ids] + [False] * (n - len(ids))
    frames: dict[int, list[np.ndarray]] = {int(ids[b]): [] for b in range(len(ids)) if record[b]}
    if frames:
        _grab(envs, frames, ids, active, record)
    steps = 0
    executed: list[np.ndarray] = []  # every step's actions [B, Da]; row b's episode is its first lengths[b]
    t = 0
    while active.any():
        action = np.asarray(executor.action(t, win.window))
        executed.append(action)
        obs, _, terminated, truncated, info = envs.step(action)
        t += 1
        steps += int(active.sum())
        lengths[active] += 1
        success[active] |= np.asarray(info.get("success", np.zeros(n, bool)), dtype=bool)[active]
        if has_cov:
            cov = np.asarray(info["coverage"], dtype=float)
            max_cov[active] = np.maximum(max_cov[active], cov[active])
        if frames:
            _grab(envs, frames, ids, active, record)
        win.push(obs, active)
        done = np.asarray(terminated) | np.asarray(truncated)
        active &= ~done
        if active.any() and done.any():
            # reset finished envs so every env stays steppable; their rows stay masked until the wave ends
            envs.reset(seed=seeds, options={"reset_mask": done})
    out, traces = [], []
    acts = np.stack(executed, axis=1) if executed else np.zeros((n, 0, 0))
    for b, i in enumerate(ids):
        ep = {"episode": int(i), "seed": int(seeds[b]), "success": bool(success[b]), "length": int(lengths[b])}
        if has_cov:
            ep["max_coverage"] = float(max_cov[b])
        if task[b] is not None:
            ep["task"] = task[b]
        out.append(ep)
        traces.append((acts[b, : lengths[b]], [s for s in executor.boundaries if s < lengths[b]]))
    return out, steps, frames, traces


class _Timed:
    """An agent whose `act` calls are timed (the evaluator's inference seconds)."""

    def __init__(self, agent: Agent):
        self.inner, self.seconds = agent, 0.0

    @property
    def n_obs_steps(self) -> int:
        return self.inner.n_obs_steps

    def reset(self) -> None:
        self.inner.reset()

    def act(self, obs, ctx=None):
        t0 = time.perf_counter()
        try:
            return self.inner.act(obs, ctx)
        finally:
            self.seconds += time.perf_counter() - t0


def _grab(envs, frames, ids, active, record) -> None:
    images = envs.call("render")
    for b in range(len(ids)):
        if record[b] and active[b]:
            frames[int(ids[b])].append(np.asarray(images[b]))


def _write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """MP4 (H.264 via imageio-ffmpeg), written to a temp name and renamed so no half video is left."""
    import os

    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1) as w:
        for f in frames:
            w.append_data(f)
    os.replace(tmp, path)
    return path


def write_report(rec: dict[str, Any], out_dir: str | Path) -> Path:
    """`eval.json` plus `eval.png`: per-episode success (and max coverage where defined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    eps = rec["episodes"]
    s = rec["summary"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    idx = [e["episode"] for e in eps]
    if "mean_max_coverage" in s:
        cov = [e["max_coverage"] for e in eps]
        ax.bar(idx, cov, color=["tab:green" if e["success"] else "tab:gray" for e in eps])
        ax.axhline(0.95, ls="--", lw=0.8, color="k")
        ax.set_ylabel("max coverage")
        title = f"success {s['success_rate']:.2f}, mean max coverage {s['mean_max_coverage']:.3f}"
    else:
        ax.bar(idx, [e["length"] for e in eps], color=["tab:green" if e["success"] else "tab:red" for e in eps])
        ax.set_ylabel("episode length (green = success)")
        title = f"success {s['success_rate']:.2f}, mean length {s['mean_length']:.1f}"
    ax.set_xlabel("episode")
    ax.set_title(f"{s['task']} ({s['obs_mode']}): {title}")
    metrics.save_figure(fig, out_dir / "eval.png", rec)
    plt.close(fig)
    trace = rec.get("seam_trace")
    if trace is not None:
        seams = s.get("seams", {})
        plot_seams(trace["actions"], trace["seams"], out_dir / "seams.png",
                   metrics.record("seams", summary=seams, delay=s.get("delay"), execution=s.get("execution"),
                                  trace=trace),
                   title=f"{s['task']}, episode {trace['episode']}: delay {s.get('delay', 0)}, "
                         f"{s.get('execution', 'naive')} execution; seam max/mean "
                         f"{seams.get('seam_max', 0):.3g}/{seams.get('seam_mean', 0):.3g}, inside "
                         f"{seams.get('inside_max', 0):.3g}/{seams.get('inside_mean', 0):.3g}")
    return metrics.write_json(out_dir / "eval.json", rec)


class _progress:
    """A rich progress bar over episodes, nothing, or the caller's `advance(n)` (`rtdp bench` counts a row's
    episodes in its parent process), used as `with _progress(...) as advance:`."""

    def __init__(self, enabled: bool | Callable[[int], None], total: int, label: str):
        self.callback = enabled if callable(enabled) else None
        self.enabled, self.total, self.label = bool(enabled) and self.callback is None, total, label

    def __enter__(self):
        if self.callback is not None:
            return self.callback
        if not self.enabled:
            return lambda n: None
        from rich.progress import Progress

        self.p = Progress(transient=False)
        self.p.start()
        task = self.p.add_task(f"eval {self.label}", total=self.total)
        return lambda n: self.p.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self.p.stop()
        return False
