"""RTI warm-start calibration: how far the warm start's executed actions land from the full sampler's, per τ.

RTI-DP (Duan, Yin, Kragic 2025) picks the warm start's cost from calibration data: here τ, the smallest level of
`sampler=rti_renoise` whose actions stay within a tolerance of the full sampler's.
On recorded observation pairs (the window at t and the window Ta steps later) the sweep emulates a rollout:
a full DDIM chunk at t, then at t + Ta the full sampler's chunk against RTI's warm start from the t chunk
(shifted by Ta), for every τ on the DDIM grid. The noise floor is two full samples at t + Ta with different
noise: a diffusion policy is a distribution, so that deviation is the one no τ can beat. Deviations are in
normalised action units (the policy's [-1, 1]), over the executed actions only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rtdp.policy.call import DenoiserCall
from rtdp.policy.plan import Plan
from rtdp.policy.samplers.diffusion import DDIMSampler
from rtdp.policy.samplers.discrete import discrete_levels, snap_discrete
from rtdp.policy.samplers.rti_renoise import DEFAULT_DISCRETE_MODE, DEFAULT_HYSTERESIS, RTIRenoiseSampler
from rtdp.types import PlanContext


def sample_with(sampler: Any, call: DenoiserCall, shape: tuple[int, int, int], generator: torch.Generator | None,
                previous: Plan | None = None, n_executed: int = 0) -> Plan:
    """One plan of `sampler` through `call` (a fresh call object per plan)."""
    return sampler.sample(call, shape, PlanContext(n_executed=n_executed, generator=generator), previous)


def executed_deviation(a: Tensor, b: Tensor, start: int, n_exec: int) -> Tensor:
    """Per-sample mean |a - b| over the executed actions `[start, start + n_exec)` and all action dims, `[B]`."""
    sl = slice(start, start + n_exec)
    return (a[:, sl] - b[:, sl]).abs().flatten(1).mean(dim=1)


def _stats(dev: Tensor) -> dict[str, float]:
    d = dev.double().cpu().numpy()
    return {"deviation_mean": float(d.mean()), "deviation_p95": float(np.percentile(d, 95)),
            "deviation_max": float(d.max())}


def sweep_rti(policy: Any, obs_now: Mapping[str, Tensor], obs_next: Mapping[str, Tensor], *, num_steps: int = 10,
              n_exec: int = 2, discrete_dims: Sequence[int] = (), discrete_mode: str = DEFAULT_DISCRETE_MODE,
              discrete_hysteresis: float | None = DEFAULT_HYSTERESIS, generator: torch.Generator | None = None, batch_size: int = 128,
              on_point: Callable[[], None] | None = None) -> dict[str, Any]:
    """The deviation-vs-τ curve of `policy` (a `DiffusionPolicy`) on normalised observation windows.

    `obs_now[k]` / `obs_next[k]` are `[N, To, ...]`, row i of `obs_next` being Ta = `n_exec` steps after row i
    of `obs_now`. Returns the noise floor and one point per τ on the `num_steps` DDIM grid (lowest first):
    warm steps, τ, NFE per warm call and per executed action, deviation mean/p95/max.
    """
    schedule = policy.schedule
    grid = schedule.inference_levels(num_steps).tolist()
    start = policy.n_obs_steps - 1
    if start + n_exec > policy.horizon:
        raise ValueError(f"n_exec {n_exec} does not fit the horizon {policy.horizon} after To-1 = {start}")
    shape_of = lambda n: (n, policy.horizon, policy.action_dim)
    n = next(iter(obs_now.values())).shape[0]
    full = DDIMSampler(schedule, num_steps)
    levels = discrete_levels(policy.normalizer, discrete_dims, policy.action_key)
    floor, devs, nfe = [], {w: [] for w in range(1, num_steps + 1)}, {}
    policy.eval()
    with torch.no_grad():
        for lo in range(0, n, batch_size):
            sl = slice(lo, min(lo + batch_size, n))
            cond_now = policy.encoder({k: v[sl] for k, v in obs_now.items()})
            cond_next = policy.encoder({k: v[sl] for k, v in obs_next.items()})
            now = lambda c=cond_now: policy.denoiser_call(c)
            nxt = lambda c=cond_next: policy.denoiser_call(c)
            shape = shape_of(sl.stop - sl.start)
            snap = lambda plan: snap_discrete(plan.actions, discrete_dims, levels)
            prev = snap(sample_with(full, now(), shape, generator))
            ref = snap(sample_with(full, nxt(), shape, generator))
            other = snap(sample_with(full, nxt(), shape, generator))
            floor.append(executed_deviation(other, ref, start, n_exec))
            for w, dev in devs.items():
                rti = RTIRenoiseSampler(schedule, num_steps=num_steps, warm_steps=w, n_action_steps=n_exec,
                                        n_obs_steps=policy.n_obs_steps, discrete_dims=discrete_dims,
                                        discrete_mode=discrete_mode, discrete_hysteresis=discrete_hysteresis)
                rti.discrete_levels = levels
                out = sample_with(rti, nxt(), shape, generator, Plan(prev, start, n_exec, 0), n_exec)
                nfe[w] = out.nfe
                dev.append(executed_deviation(out.actions, ref, start, n_exec))
            if on_point is not None:
                on_point()
    points = []
    for w, dev in devs.items():
        tau = grid[-(w + 1)]
        points.append({"warm_steps": w, "tau": tau, "cold": w == num_steps, "nfe_per_call": nfe[w],
                       "nfe_per_action": nfe[w] / n_exec, **_stats(torch.cat(dev))})
    return {"num_steps": num_steps, "grid": grid, "n_exec": n_exec, "n_windows": int(n),
            "discrete_dims": list(discrete_dims), "discrete_mode": discrete_mode,
            "full_nfe_per_action": num_steps / n_exec, "noise_floor": _stats(torch.cat(floor)), "points": points}


def pick_tau(points: Sequence[Mapping[str, Any]], tolerance: float) -> Mapping[str, Any] | None:
    """The point with the smallest τ whose mean deviation is within `tolerance`, or None if none is."""
    ok = [p for p in points if p["deviation_mean"] <= tolerance]
    return min(ok, key=lambda p: p["tau"]) if ok else None


def binary_denoiser(schedule: Any, value: float, p_high: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The exact ε-denoiser of one binary dimension whose data sit at ±`value` (normalised), +`value` with
    probability `p_high` given the observation: its x̂0 is the posterior mean E[x0 | x_k] (used to see how the
    discrete scale and τ decide whether a warm start follows a flip, independently of any training)."""
    prior_logit = float(np.log(p_high / (1.0 - p_high)))

    def fn(x: Tensor, level: Tensor) -> Tensor:
        ab = schedule.abar(level, x).double()
        xd = x.double()
        x0 = value * torch.tanh(0.5 * prior_logit + ab.sqrt() * value * xd / (1 - ab).clamp_min(1e-12))
        return ((xd - ab.sqrt() * x0) / (1 - ab).clamp_min(1e-12).sqrt()).to(x.dtype)

    return fn


def flip_rate(schedule: Any, value: float, warm_steps: int, confidence: float = 0.98, n: int = 1024,
              num_steps: int = 10, horizon: int = 16, n_obs_steps: int = 2, seed: int = 0) -> dict[str, float]:
    """With the exact `binary_denoiser`: RTI (`keep`) warm-started for 3 calls on an observation that says "high"
    with `confidence`, then one call on an observation that says "low" as surely. Returns the fraction of the
    `n` samples whose executed gripper is high before and low after that one call, and the τ used."""
    high_fn = binary_denoiser(schedule, value, confidence)
    low_fn = binary_denoiser(schedule, value, 1.0 - confidence)
    rti = RTIRenoiseSampler(schedule, num_steps=num_steps, warm_steps=warm_steps, n_action_steps=1,
                            n_obs_steps=n_obs_steps, discrete_dims=[0], discrete_mode="keep", discrete_hysteresis=None)
    rti.discrete_levels = (torch.tensor([-value]), torch.tensor([value]))
    g = torch.Generator().manual_seed(seed)
    shape, head = (n, horizon, 1), n_obs_steps - 1
    call = lambda fn: DenoiserCall(lambda x, k, _c: fn(x, k), schedule)
    plan = None
    for _ in range(3):
        plan = sample_with(rti, call(high_fn), shape, g, plan, 1 if plan else 0)
    before = (plan.actions[:, head, 0] > 0).double().mean().item()
    plan = sample_with(rti, call(low_fn), shape, g, plan, 1)
    return {"tau": rti.tau, "warm_steps": warm_steps, "held_before": before,
            "followed": (plan.actions[:, head, 0] < 0).double().mean().item()}


def plot_sweep(result: Mapping[str, Any], tolerance: float | None = None, chosen: Mapping[str, Any] | None = None):
    """Deviation from the full sampler vs τ (mean and max), the noise floor, the tolerance, and NFE per action."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    tau = [p["tau"] for p in pts]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(tau, [p["deviation_mean"] for p in pts], "o-", label="RTI vs full: mean")
    ax.plot(tau, [p["deviation_max"] for p in pts], "x--", alpha=0.6, label="RTI vs full: max")
    ax.axhline(result["noise_floor"]["deviation_mean"], color="k", ls=":", label="noise floor (full vs full)")
    if tolerance is not None:
        ax.axhline(tolerance, color="tab:red", ls="-.", lw=1, label=f"tolerance {tolerance:.3g}")
    if chosen is not None:
        ax.axvline(chosen["tau"], color="tab:green", lw=1, label=f"chosen τ = {chosen['tau']:g}")
    ax.set_xlabel("τ (training level the warm start is re-noised to)")
    ax.set_ylabel("executed-action deviation (normalised units)")
    ax2 = ax.twinx()
    ax2.step(tau, [p["nfe_per_action"] for p in pts], where="mid", color="tab:purple", alpha=0.5)
    ax2.set_ylabel("NFE per executed action", color="tab:purple")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"RTI calibration: {result['n_windows']} windows, Ta={result['n_exec']}, "
                 f"DDIM-{result['num_steps']} grid")
    fig.tight_layout()
    return fig
