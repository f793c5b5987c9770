"""Real-time chunking (Black, Galliker, Levine 2025) around DDIM and DDPM: the prefix weights, the flow reparametrisation,
W = 0 as the unguided sampler, the frozen prefix under a large β, inpainting without a backward pass, the guided
variant under the policy's no_grad, and the bad-input rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sampler_runner import Runner

from rtdp.policy.call import DenoiserCall
from rtdp.policy.factory import make_policy
from rtdp.policy.plan import Plan, carry_forward
from rtdp.policy.samplers import DDIMSampler, DDPMSampler
from rtdp.policy.samplers.rtc import RTCSampler, from_flow, guidance_weight, prefix_weights, to_flow
from rtdp.policy.schedules import DDPMSchedule, EDMSchedule
from rtdp.types import PlanContext

B, T, DA, TO = 3, 16, 2, 2
START = TO - 1
SCHEDULE = DDPMSchedule()
_t = torch.arange(T, dtype=torch.float64)
COV = 0.25 * torch.exp(-(((_t[:, None] - _t[None]) / 4.0) ** 2)) + 1e-3 * torch.eye(T, dtype=torch.float64)


def gaussian_eps(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """The exact ε-denoiser of smooth zero-mean Gaussian trajectories (covariance COV over time, per dimension)."""
    ab = SCHEDULE.abar(level, x)[:, 0, 0].double()
    out = []
    for b in range(x.shape[0]):
        a, s = ab[b].sqrt(), (1 - ab[b]).sqrt()
        x0 = a * COV @ torch.linalg.solve(a**2 * COV + s**2 * torch.eye(T, dtype=torch.float64), x[b].double())
        out.append((x[b].double() - a * x0) / s)
    return torch.stack(out).to(x.dtype)


def toy_model(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    lv = level.reshape(level.shape[0], -1, 1)
    return 0.5 * torch.tanh(x) + 0.002 * lv * torch.cos(x) + 0.1 * torch.roll(x, 1, dims=1)


def _call(fn, grad=False) -> DenoiserCall:
    return DenoiserCall(lambda x, level, cond: fn(x, level), SCHEDULE, grad=grad)


# ----------------------------------------------------------------------------------------------- the maths
def test_prefix_weights_are_one_over_the_delay_then_ramp_to_zero_at_h_minus_s():
    w = prefix_weights(10, 2, 4, "linear")  # the reference's example: start 2, end 6, total 10
    np.testing.assert_allclose(w.numpy(), [1, 1, 0.8, 0.6, 0.4, 0.2, 0, 0, 0, 0], atol=1e-12)
    e = prefix_weights(10, 2, 4, "exp")
    np.testing.assert_allclose(e.numpy(), w.numpy() * np.expm1(w.numpy()) / (math.e - 1), atol=1e-12)
    assert e[:2].tolist() == [1.0, 1.0] and e[6:].abs().sum() == 0
    # a delay past H - s is lowered to it: the zeros win
    np.testing.assert_array_equal(prefix_weights(10, 8, 4, "linear").numpy(), [1] * 6 + [0] * 4)


def test_the_flow_reparametrisation_round_trips_x0_and_eps_exactly_when_the_velocity_is_unchanged():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, T, DA, generator=g, dtype=torch.float64)
    eps = torch.randn(4, T, DA, generator=g, dtype=torch.float64)
    ab = SCHEDULE.abar(torch.tensor([0, 30, 70, 99]), x0).double()
    alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
    x = alpha * x0 + sigma * eps
    y, tau, v = to_flow(x, x0, eps, alpha, sigma)
    torch.testing.assert_close(y, tau * x0 + (1 - tau) * eps, rtol=0, atol=1e-12)  # a flow iterate
    torch.testing.assert_close(y + (1 - tau) * v, x0, rtol=0, atol=1e-12)  # x̂1 is x̂0
    back_x0, back_eps = from_flow(y, tau, v)
    torch.testing.assert_close(back_x0, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(back_eps, eps, rtol=0, atol=1e-12)
    # a changed velocity still describes the same iterate: α·x̂0' + σ·ε' = x
    g0, g1 = from_flow(y, tau, v + torch.randn_like(v))
    torch.testing.assert_close(alpha * g0 + sigma * g1, x, rtol=0, atol=1e-12)


def test_the_guidance_weight_is_the_papers_and_capped_at_beta():
    tau = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
    w = guidance_weight(tau, 5.0)
    assert w[0] == 5.0 and w[-1] == 5.0
    assert w[2] == pytest.approx(min(5.0, 1.0 * (0.25 + 0.25) / 0.25))  # (1-τ)/τ · (τ²+(1-τ)²)/(1-τ)² at τ=½
    assert w[1] == pytest.approx(3 * (0.0625 + 0.5625) / 0.5625)
    assert w[3] == 5.0  # 0.9: the formula gives 9.1, capped


# ------------------------------------------------------------------------------------------- the sampler
@pytest.mark.parametrize("variant", ["guided", "inpaint"])
@pytest.mark.parametrize("base,steps", [("ddim", 10), ("ddpm", 20)])
def test_zero_weights_are_the_unguided_sampler_exactly_noise_for_noise(variant, base, steps):
    rtc = RTCSampler(SCHEDULE, base=base, num_steps=steps, variant=variant)
    plain = (DDIMSampler if base == "ddim" else DDPMSampler)(SCHEDULE, steps)
    levels = SCHEDULE.inference_levels(steps).tolist()
    x = torch.randn(B, T, DA, generator=torch.Generator().manual_seed(3))
    target = torch.randn(B, T, DA, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, vjp = rtc.denoise(_call(toy_model, rtc.needs_grad), x, levels, target, torch.zeros(1, T, 1),
                                torch.Generator().manual_seed(5))
        theirs = plain.denoise(_call(toy_model), x, levels, torch.Generator().manual_seed(5))
    assert torch.equal(ours, theirs)
    assert vjp == (steps if variant == "guided" else 0)  # the guided path ran, with its VJPs


def test_the_first_call_of_an_episode_is_the_base_sample():
    rtc, ddim = Runner(RTCSampler(SCHEDULE, num_steps=10)), Runner(DDIMSampler(SCHEDULE, 10))
    a = rtc(toy_model, (B, T, DA), generator=torch.Generator().manual_seed(1), delay=3)
    b = ddim(toy_model, (B, T, DA), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and rtc.plan.info["warm"] is False and rtc.plan.info["vjp"] == 0


def _previous_then_next(variant: str, beta: float, delay: int, base: str = "ddim"):
    """A plan of the Gaussian denoiser, then the next one 8 steps later told `delay`: (next, Y aligned, info)."""
    run = Runner(RTCSampler(SCHEDULE, base=base, num_steps=10 if base == "ddim" else 50, variant=variant, beta=beta,
                            n_action_steps=8))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        prev = run(gaussian_eps, (B, T, DA), generator=g).clone()
        new = run(gaussian_eps, (B, T, DA), generator=g, n_executed=8, delay=delay)
    return new, carry_forward(prev, 8), run.plan.info


@pytest.mark.parametrize("base", ["ddim", "ddpm"])
def test_with_d_frozen_and_a_large_beta_the_first_d_actions_match_the_previous_plan(base):
    d = 3
    new, y, info = _previous_then_next("guided", 100.0, d, base)
    assert info["delay"] == d and info["vjp"] > 0
    frozen = slice(START, START + d)
    assert float((new[:, frozen] - y[:, frozen]).abs().max()) < 0.05
    unguided, _, _ = _previous_then_next("guided", 0.0, d, base)  # β = 0: no guidance at all
    assert float((unguided[:, frozen] - y[:, frozen]).abs().max()) > 0.5


def test_inpainting_puts_the_previous_plan_on_the_frozen_prefix_without_a_backward_pass():
    def forward_without_grad(x, level):
        assert not torch.is_grad_enabled(), "inpainting evaluated the denoiser with gradients"
        return gaussian_eps(x, level)

    rtc = RTCSampler(SCHEDULE, num_steps=10, variant="inpaint", n_action_steps=8)
    assert rtc.needs_grad is False
    run = Runner(rtc)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        prev = run(forward_without_grad, (B, T, DA), generator=g).clone()
        new = run(forward_without_grad, (B, T, DA), generator=g, n_executed=8, delay=3)
    y = carry_forward(prev, 8)
    torch.testing.assert_close(new[:, : START + 3], y[:, : START + 3], rtol=0, atol=1e-6)  # W = 1 there
    assert run.plan.info["vjp"] == 0


def test_frozen_inpainting_replaces_only_the_frozen_prefix_and_soft_inpainting_pulls_the_ramp():
    def plans(mask: str):
        run = Runner(RTCSampler(SCHEDULE, num_steps=10, variant="inpaint", n_action_steps=8, inpaint_mask=mask))
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            prev = run(gaussian_eps, (B, T, DA), generator=g).clone()
            new = run(gaussian_eps, (B, T, DA), generator=g, n_executed=8, delay=3)
        return new, carry_forward(prev, 8)

    frozen, y = plans("frozen")
    soft, y_soft = plans("soft")
    assert torch.equal(y, y_soft)
    for new in (frozen, soft):  # both end exactly at Y where W = 1
        torch.testing.assert_close(new[:, : START + 3], y[:, : START + 3], rtol=0, atol=1e-6)
    ramp = slice(START + 3, START + 6)  # 0 < W < 1 there
    frozen_gap = float((frozen[:, ramp] - y[:, ramp]).abs().mean())
    soft_gap = float((soft[:, ramp] - y[:, ramp]).abs().mean())
    assert soft_gap < 0.5 * frozen_gap, (soft_gap, frozen_gap)


def test_an_unknown_inpaint_mask_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="inpaint_mask must be one of frozen, soft"):
        RTCSampler(SCHEDULE, variant="inpaint", inpaint_mask="hard")


def test_the_delay_is_clamped_to_the_actions_left_and_uncovered_positions_get_no_weight():
    rtc = RTCSampler(SCHEDULE, num_steps=10, n_action_steps=2)
    previous = Plan(torch.randn(1, T, DA), START, 2, 0)
    n = 12  # the previous plan reaches 3 positions from the current step (T - START - n)
    target, w, d = rtc.prefix((1, T, DA), PlanContext(n_executed=n, delay=5), previous)
    assert d == 3
    assert torch.equal(target[:, : T - n], previous.actions[:, n:])
    assert w[0, T - n :].abs().sum() == 0  # never a padded prefix
    assert w[0, : START + d].eq(1).all()


def test_guided_rtc_runs_under_the_policys_no_grad_and_refuses_inference_mode():
    pcfg = {"name": "t", "horizon": T, "n_obs_steps": TO,
            "denoiser": {"type": "unet1d", "down_dims": [16, 32], "level_embed_dim": 16, "n_groups": 4},
            "schedule": {"name": "ddpm", "num_train_steps": 100}}
    policy = make_policy(pcfg, {"name": "rtc", "num_steps": 4, "n_action_steps": 4}, {"state": (4,)}, DA).eval()
    assert policy.sampler.needs_grad and policy.denoiser_call(torch.zeros(1, 1)).grad
    obs = {"state": np.zeros((2, TO, 4), np.float32)}
    policy.act(obs, PlanContext(generator=torch.Generator().manual_seed(0)))
    chunk = policy.act(obs, PlanContext(n_executed=4, delay=2, generator=torch.Generator().manual_seed(1)))
    assert chunk.info["warm"] and chunk.info["delay"] == 2 and chunk.info["vjp"] == 4 and chunk.nfe == 4
    assert all(p.grad is None for p in policy.parameters())  # the VJP accumulates nothing into the weights
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        policy.act(obs, PlanContext(n_executed=4, delay=2))


def test_zero_weights_on_the_unet_are_the_unguided_ddim_exactly():
    """The U-Net evaluated with gradients (the guided path) gives the same numbers as without."""
    pcfg = {"name": "t", "horizon": T, "n_obs_steps": TO,
            "denoiser": {"type": "unet1d", "down_dims": [16, 32], "level_embed_dim": 16, "n_groups": 4},
            "schedule": {"name": "ddpm", "num_train_steps": 100}}
    policy = make_policy(pcfg, {"name": "rtc", "num_steps": 5}, {"state": (4,)}, DA).eval()
    cond = policy.encoder({"state": torch.randn(2, TO, 4, generator=torch.Generator().manual_seed(2))})
    levels = SCHEDULE.inference_levels(5).tolist()
    x = torch.randn(2, T, DA, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, _ = policy.sampler.denoise(policy.denoiser_call(cond), x, levels, torch.randn_like(x),
                                         torch.zeros(1, T, 1), None)
        theirs = DDIMSampler(SCHEDULE, 5).denoise(policy.denoiser_call(cond), x, levels, None)
    assert torch.equal(ours, theirs)


# ------------------------------------------------------------------------------------------- bad input
def test_a_base_that_cannot_take_guidance_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="streaming sampler"):
        RTCSampler(SCHEDULE, base="sdp")
    with pytest.raises(ValueError, match="warm-start"):
        RTCSampler(SCHEDULE, base="rti")
    with pytest.raises(ValueError, match="DDPM schedule.*'edm'"):
        RTCSampler(EDMSchedule())


def test_delays_and_execution_horizons_outside_d_le_s_le_h_minus_d_are_refused_with_the_valid_range():
    rtc = RTCSampler(SCHEDULE, n_action_steps=8)  # H = 15 from the current step
    rtc.check_delay(7, T)
    with pytest.raises(ValueError, match=r"not below the horizon.*\[0, 7\]"):
        rtc.check_delay(15, T)
    with pytest.raises(ValueError, match=r"must be in \[3, 12\], got 2"):
        RTCSampler(SCHEDULE, n_action_steps=2).check_delay(3, T)
    with pytest.raises(ValueError, match=r"must be in \[5, 10\], got 12"):
        RTCSampler(SCHEDULE, n_action_steps=12).check_delay(5, T)
