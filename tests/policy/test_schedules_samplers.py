"""Noise schedules and the baseline samplers, checked against diffusers (Diffusion Policy's settings)."""

import diffusers  # a dev dependency: these checks must run, never skip
import pytest
import torch
from sampler_runner import Runner, sample

from rtdp.policy.samplers import DDIMSampler, DDPMSampler, make_sampler
from rtdp.policy.schedules import DDPMSchedule, EDMSchedule, make_schedule, raise_level
from rtdp.policy.spec import PolicySpec

B, T, DA = 3, 16, 2


def toy_model(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """A fixed, level-dependent map standing in for a denoiser (same output for [B] and [B,T] levels)."""
    lv = level.reshape(level.shape[0], -1, 1) if level.ndim else level
    return 0.7 * torch.tanh(x) + 0.01 * lv * torch.sin(x)


def test_ddpm_alphas_match_diffusers_squaredcos():
    ref = diffusers.DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(DDPMSchedule().alphas_cumprod.float(), ref.alphas_cumprod.float())


def test_ddpm_sampler_matches_diffusers_loop_given_the_same_noise():
    ref = diffusers.DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                                  prediction_type="epsilon", variance_type="fixed_small")
    ref.set_timesteps(100)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, DA, generator=g)
    for t in ref.timesteps:
        x = ref.step(toy_model(x, torch.full((B,), float(t))), t, x, generator=g).prev_sample
    ours = sample(DDPMSampler(DDPMSchedule()), toy_model, (B, T, DA), torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)


def test_ddim_sampler_matches_diffusers_ddim_with_ten_steps():
    ref = diffusers.DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                                  set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon")
    ref.set_timesteps(10)
    x = torch.randn(B, T, DA, generator=torch.Generator().manual_seed(1))
    for t in ref.timesteps:
        x = ref.step(toy_model(x, torch.full((B,), float(t))), t, x).prev_sample
    run = Runner(DDIMSampler(DDPMSchedule(), num_steps=10))
    ours = run(toy_model, (B, T, DA), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)
    assert run.last_nfe == 10


def test_ddim_with_eta_one_and_all_training_steps_is_the_ddpm_path():
    schedule = DDPMSchedule(clip_sample=False)
    ddpm = sample(DDPMSampler(schedule), toy_model, (B, T, DA), torch.Generator().manual_seed(2))
    ddim = sample(DDIMSampler(schedule, num_steps=100, eta=1.0), toy_model, (B, T, DA), torch.Generator().manual_seed(2))
    torch.testing.assert_close(ddim, ddpm, atol=1e-4, rtol=1e-4)


def test_a_batch_level_equals_the_same_level_broadcast_per_position():
    schedule = DDPMSchedule()
    x = torch.randn(B, T, DA)
    k = torch.tensor([5, 50, 99])
    a = schedule.predict(toy_model, x, k)
    b = schedule.predict(toy_model, x, k[:, None].expand(B, T))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("schedule", [DDPMSchedule(), DDPMSchedule(prediction_type="sample"), EDMSchedule()],
                         ids=["ddpm-eps", "ddpm-x0", "edm"])
def test_a_denoiser_that_outputs_the_training_target_recovers_the_clean_chunk(schedule):
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(B, T, DA, generator=g) * 2 - 1
    noise = torch.randn(B, T, DA, generator=g)
    level = schedule.sample_training_levels((B, T), generator=g)
    x = schedule.add_noise(x0, noise, level)
    target = schedule.training_target(x0, noise, level)
    x0_hat, _ = schedule.predict(lambda *_: target, x, level)
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["ddpm", "edm"])
def test_ddim_with_an_oracle_denoiser_lands_on_the_data_point(name):
    schedule = make_schedule({"name": name})
    x0 = torch.linspace(-0.9, 0.9, T * DA).reshape(1, T, DA).expand(B, T, DA)

    def oracle(x_in, level_in):  # the exact training target for a point mass at x0
        level = level_of[0]
        noise = (x_cur[0] - schedule.add_noise(x0, torch.zeros_like(x0), level)) / (
            schedule.add_noise(torch.zeros_like(x0), torch.ones_like(x0), level))
        return schedule.training_target(x0, noise, level)

    level_of, x_cur = [None], [None]
    orig = schedule.model_input

    def spy(x, level):
        level_of[0], x_cur[0] = level, x
        return orig(x, level)

    schedule.model_input = spy
    out = sample(DDIMSampler(schedule, num_steps=8), oracle, (B, T, DA), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)


def test_raising_a_level_keeps_the_marginal_of_the_forward_process():
    schedule = DDPMSchedule(clip_sample=False)
    g = torch.Generator().manual_seed(4)
    x0 = torch.full((20000, 1, 1), 0.5)
    low = schedule.add_noise(x0, torch.randn(x0.shape, generator=g), torch.tensor(20))
    high = raise_level(schedule, low, torch.tensor(20), torch.tensor(60), torch.randn(x0.shape, generator=g))
    ab = schedule.alphas_cumprod[60].item()
    assert high.mean().item() == pytest.approx(0.5 * ab**0.5, abs=0.02)
    assert high.std().item() == pytest.approx((1 - ab) ** 0.5, abs=0.02)


def test_bad_sampler_and_schedule_options_are_refused_with_the_known_names():
    ddpm, edm = PolicySpec(DDPMSchedule()), PolicySpec(EDMSchedule())
    with pytest.raises(ValueError, match="known: ddim, ddpm, rtc, rti, rti_renoise, sdp"):
        make_sampler({"name": "euler"}, ddpm)
    with pytest.raises(ValueError, match="num_steps must be in"):
        make_sampler({"name": "ddim", "num_steps": 500}, ddpm)
    with pytest.raises(ValueError, match="needs a discrete DDPM schedule"):
        make_sampler({"name": "ddpm"}, edm)
    with pytest.raises(ValueError, match="sampler 'ddim'.*its options: num_steps, eta, n_action_steps"):
        make_sampler({"name": "ddim", "steps": 3}, ddpm)
    with pytest.raises(ValueError, match="sampler=sdp needs weights trained with per-position noise levels"):
        make_sampler({"name": "sdp"}, ddpm)
