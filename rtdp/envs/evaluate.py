"""Vectorised, seeded evaluation of any `Agent` (policy or scripted expert) on a task.

Episodes run in waves of `n_envs`: batch row b is env b for the whole run, `agent.reset()` starts every
wave, and episode i always uses seed `seed + i`, so the figures do not depend on `n_envs`. An env whose
episode ends before the others' is reset (so it stays steppable) and masked: its row keeps receiving its
last observation, its actions are executed but ignored, until the wave ends. A stateful agent therefore
sees one uninterrupted stream per row and is reset only between waves.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rtdp import metrics
from rtdp.obs_window import ObsWindow
from rtdp.types import Agent, PlanContext


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
    if n_envs == 1:
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    return gym.vector.AsyncVectorEnv(fns, context=context, autoreset_mode=mode)


def evaluate(agent: Agent, task_id: str, n_episodes: int = 50, seed: int = 0, n_envs: int = 2,
             obs_mode: str | None = None, max_steps: int | None = None, video_dir: str | Path | None = None,
             n_videos: int = 0, progress: bool = True, env_kwargs: dict[str, Any] | None = None,
             out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run `agent` on episodes `seed … seed+n_episodes-1`; success rate, coverage (PushT), lengths, videos.

    Returns a `rtdp.metrics.record("eval", ...)` dict; with `out_dir` it is also written as `eval.json`
    beside a plot of per-episode results, and videos (the first `n_videos` episodes) go to `video_dir`
    (default `out_dir/videos`).
    """
    from rtdp.envs import check_obs_mode

    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    obs_mode = check_obs_mode(task_id, obs_mode)
    n_envs = max(1, min(n_envs, n_episodes))
    if video_dir is None and out_dir is not None and n_videos > 0:
        video_dir = Path(out_dir) / "videos"
    n_videos = n_videos if video_dir is not None else 0
    envs = make_vector_env(task_id, n_envs, obs_mode, "rgb_array" if n_videos else None, max_steps,
                           **(env_kwargs or {}))
    episodes: list[dict[str, Any]] = []
    videos: list[str] = []
    t0 = time.perf_counter()
    n_steps = 0
    nfe_total, n_actions = 0, 0
    try:
        with _progress(progress, n_episodes, task_id) as bar:
            for first in range(0, n_episodes, n_envs):
                ids = np.arange(first, min(first + n_envs, n_episodes))
                result, steps, nfe, acts, frames = _run_wave(agent, envs, ids, seed, n_videos)
                episodes += result
                n_steps += steps
                nfe_total += nfe
                n_actions += acts
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
    }
    if all("max_coverage" in e for e in episodes):
        summary["mean_max_coverage"] = float(np.mean([e["max_coverage"] for e in episodes]))
    tasks = sorted({e["task"] for e in episodes if "task" in e})
    if len(tasks) > 1:
        summary["success_per_task"] = {t: float(np.mean([e["success"] for e in episodes if e.get("task") == t]))
                                       for t in tasks}
    rec = metrics.record("eval", summary=summary, episodes=episodes, videos=videos)
    if out_dir is not None:
        write_report(rec, out_dir)
    return rec


def _run_wave(agent: Agent, envs: gym.vector.VectorEnv, ids: np.ndarray, seed: int, n_videos: int):
    """One episode per env row (rows beyond `len(ids)` run a throw-away episode and are ignored)."""
    n = envs.num_envs
    seeds = [int(seed + i) for i in ids] + [int(seed + ids[-1])] * (n - len(ids))
    obs, info = envs.reset(seed=seeds)
    agent.reset()
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
    steps = nfe = acts = 0
    ctx = PlanContext()
    while active.any():
        chunk = agent.act(win.window(), ctx)
        nfe += int(chunk.nfe)
        acts += int(chunk.n_exec)
        exe = np.asarray(chunk.executable)
        ctx = PlanContext(n_executed=exe.shape[1])  # the whole executable part runs before the next plan
        for j in range(exe.shape[1]):
            obs, _, terminated, truncated, info = envs.step(exe[:, j])
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
            if not active.any():
                break
            if done.any():
                # reset finished envs so every env stays steppable; their rows stay masked until the wave ends
                envs.reset(seed=seeds, options={"reset_mask": done})
        if not active.any():
            break
    out = []
    for b, i in enumerate(ids):
        ep = {"episode": int(i), "seed": int(seeds[b]), "success": bool(success[b]), "length": int(lengths[b])}
        if has_cov:
            ep["max_coverage"] = float(max_cov[b])
        if task[b] is not None:
            ep["task"] = task[b]
        out.append(ep)
    return out, steps, nfe, acts, frames


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
    return metrics.write_json(out_dir / "eval.json", rec)


class _progress:
    """A rich progress bar over episodes (or nothing), used as `with _progress(...) as advance:`."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled, self.total, self.label = enabled, total, label

    def __enter__(self):
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
