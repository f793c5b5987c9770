"""Streaming Diffusion Policy (Høeg et al. 2024) and RTI warm start (Duan et al. 2025): their reductions to the
plain samplers and their invariants, on toy and exact denoisers."""

import itertools

import pytest
import torch
from sampler_runner import Runner, sample

from rtdp.policy.calibration import binary_denoiser, flip_rate
from rtdp.policy.levels import StreamingLevels, make_level_sampler
from rtdp.policy.plan import carry_forward
from rtdp.policy.samplers import (
    DDIMSampler,
    DDPMSampler,
    RTIRenoiseSampler,
    RTISampler,
    StreamingSampler,
    staircase,
)
from rtdp.policy.schedules import DDPMSchedule
from rtdp.policy.spec import PolicySpec

B, T, DA, TO = 2, 16, 2, 2


def toy_model(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    lv = level.reshape(level.shape[0], -1, 1)
    return 0.5 * torch.tanh(x) + 0.002 * lv * torch.cos(x)


class Spy:
    """Records the levels each denoiser evaluation was given."""

    def __init__(self):
        self.levels = []

    def __call__(self, x, level):
        self.levels.append(level.clone())
        return toy_model(x, level)


def test_streaming_with_one_chunk_is_the_full_ddpm_sampler_on_every_call():
    schedule = DDPMSchedule()
    sdp = StreamingSampler(schedule, horizon=T, n_obs_steps=TO, n_action_steps=8, num_levels=100)
    assert sdp.n_chunks == 1
    ddpm = DDPMSampler(schedule)
    run_sdp, run_ddpm = Runner(sdp), Runner(ddpm)
    g_sdp, g_ddpm = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for _ in range(3):
        a = run_sdp(toy_model, (B, T, DA), generator=g_sdp)
        b = run_ddpm(toy_model, (B, T, DA), generator=g_ddpm)
        assert torch.equal(a, b)
        assert run_sdp.last_nfe == run_ddpm.last_nfe == 100


@pytest.mark.parametrize("ta,steps", [(1, 1), (2, 1), (2, 2), (4, 3)])
def test_after_every_call_the_buffer_levels_are_the_staircase_and_nfe_is_n_over_h(ta, steps):
    sdp = StreamingSampler(DDPMSchedule(), horizon=T, n_obs_steps=TO, n_action_steps=ta, steps_per_call=steps)
    stairs = staircase(T, TO, ta, sdp.num_levels)
    assert stairs[TO - 1] == steps - 1 and stairs[-1] == sdp.num_levels - 1
    assert torch.all(stairs[1:] >= stairs[:-1])  # the level rises along the buffer
    g, run = torch.Generator().manual_seed(1), Runner(sdp)
    for call in range(5):
        run(toy_model, (B, T, DA), generator=g)
        assert torch.equal(sdp.levels, stairs.expand(B, T))
        if call > 0:  # the first call is a full sample of the whole buffer (a one-off N evaluations)
            assert run.last_nfe == sdp.num_levels // sdp.n_chunks == steps


def test_the_executed_actions_come_out_clean_and_the_staircase_descends_one_level_per_evaluation():
    sdp = StreamingSampler(DDPMSchedule(), horizon=T, n_obs_steps=TO, n_action_steps=2, steps_per_call=2)
    g, run = torch.Generator().manual_seed(2), Runner(sdp)
    run(toy_model, (B, T, DA), generator=g)
    spy = Spy()
    run(spy, (B, T, DA), generator=g)
    assert len(spy.levels) == 2
    assert int(spy.levels[0][0, TO - 1]) == int(sdp.schedule_levels(torch.tensor(1)))
    assert int(spy.levels[1][0, TO - 1]) == int(sdp.schedule_levels(torch.tensor(0)))
    # after the last evaluation the executed chunk was stepped from level 0 to clean (-1)
    assert int(sdp.schedule_levels(torch.tensor(0))) >= 0 and int(sdp.schedule_levels(torch.tensor(-1))) == -1


def test_a_late_call_skips_the_actions_executed_from_the_plan_and_pays_for_them_in_evaluations():
    # Ta = 1: the loop ran 3 actions (the head, then 2 from the returned plan) before calling again
    sdp = StreamingSampler(DDPMSchedule(), horizon=T, n_obs_steps=TO, n_action_steps=1)
    g, run = torch.Generator().manual_seed(4), Runner(sdp)
    run(toy_model, (B, T, DA), generator=g)
    run(toy_model, (B, T, DA), generator=g, n_executed=1)
    assert run.last_nfe == 1  # on time: one evaluation per executed action
    spy = Spy()
    run(spy, (B, T, DA), generator=g, n_executed=3)
    # the new head is the position 2 stairs up: it starts at level 2 and needs 3 evaluations to come out clean
    assert run.last_nfe == 3 == len(spy.levels)
    assert int(spy.levels[0][0, TO - 1]) == int(sdp.schedule_levels(torch.tensor(2)))
    assert torch.equal(sdp.levels, staircase(T, TO, 1, sdp.num_levels).expand(B, T))  # back on the staircase
    assert torch.isfinite(sdp.x).all()
    # a skip longer than the buffer starts the tail from noise and still ends on the staircase
    run(toy_model, (B, T, DA), generator=g, n_executed=2 * T)
    assert run.last_nfe == sdp.num_levels
    assert torch.equal(sdp.levels, staircase(T, TO, 1, sdp.num_levels).expand(B, T))


def test_streaming_keeps_its_buffer_across_calls_and_reset_forgets_it():
    sdp = StreamingSampler(DDPMSchedule(), horizon=T, n_obs_steps=TO, n_action_steps=1)
    g, run = torch.Generator().manual_seed(3), Runner(sdp)
    run(toy_model, (B, T, DA), generator=g)
    assert run.last_nfe == sdp.num_levels
    run(toy_model, (B, T, DA), generator=g)
    assert run.last_nfe == 1
    run.reset()
    run(toy_model, (B, T, DA), generator=g)
    assert run.last_nfe == sdp.num_levels


def test_streaming_refuses_a_level_count_that_does_not_divide_into_chunks():
    with pytest.raises(ValueError, match="multiple of the number of chunks"):
        StreamingSampler(DDPMSchedule(), horizon=T, n_obs_steps=TO, n_action_steps=1, num_levels=20)


def test_streaming_training_levels_stay_in_range_and_each_regime_occurs_at_its_weight():
    weights = {"constant": 0.1, "linear": 0.2, "independent": 0.3, "chunkwise": 0.4}
    levels = StreamingLevels(DDPMSchedule(), horizon=T, n_obs_steps=TO, n_action_steps=1, num_levels=30,
                             weights=weights)
    k = levels(20000, T, generator=torch.Generator().manual_seed(4))
    assert k.shape == (20000, T) and int(k.min()) >= 0 and int(k.max()) <= 99
    freq = torch.bincount(levels.last_regimes, minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.015, rtol=0)
    chunkwise = levels.last_regimes == 3
    idx = levels.last_index[chunkwise]
    offsets = staircase(T, TO, 1, 30) - idx  # one offset per sample, in {0 … N/h - 1}
    assert torch.all(offsets == offsets[:, :1]) and set(offsets[:, 0].tolist()) == {0, 1}
    assert torch.all(levels.last_index >= 0) and torch.all(levels.last_index <= 29)
    uniform = make_level_sampler(None, PolicySpec(DDPMSchedule()))
    assert uniform(7, T).shape == (7,)


def test_renoise_rti_with_all_steps_is_the_cold_ddim_sampler_bit_for_bit():
    schedule = DDPMSchedule()
    rti, ddim = Runner(RTIRenoiseSampler(schedule, num_steps=10, warm_steps=10)), Runner(DDIMSampler(schedule, 10))
    g_rti, g_ddim = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):
        assert torch.equal(rti(toy_model, (B, T, DA), generator=g_rti), ddim(toy_model, (B, T, DA), generator=g_ddim))


def test_renoise_rti_first_call_is_a_cold_start_and_later_calls_are_warm_and_cheap():
    schedule = DDPMSchedule()
    rti = Runner(RTIRenoiseSampler(schedule, num_steps=10, warm_steps=2))
    cold = sample(DDIMSampler(schedule, num_steps=10), toy_model, (B, T, DA), torch.Generator().manual_seed(6))
    first = rti(toy_model, (B, T, DA), generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, cold) and rti.last_nfe == 10 and not rti.last_warm
    rti(toy_model, (B, T, DA), generator=torch.Generator().manual_seed(7))
    assert rti.last_warm and rti.last_nfe == 2 and rti.sampler.tau == 10
    rti.reset()
    rti(toy_model, (B, T, DA))
    assert not rti.last_warm


def test_carry_forward_drops_the_executed_actions_and_repeats_the_last():
    a = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)
    out = carry_forward(a, 2)
    assert out[0, :, 0].tolist() == [2, 3, 4, 4, 4] and out[1, :, 0].tolist() == [7, 8, 9, 9, 9]
    assert torch.equal(carry_forward(a, 0), a)
    assert carry_forward(a, 9)[0, :, 0].tolist() == [4] * 5
    pad = torch.full((2, 2, 1), -1.0)
    assert carry_forward(a, 2, pad)[0, :, 0].tolist() == [2, 3, 4, -1, -1]


def _trusting_denoiser(target_sign: float):
    """A denoiser that, like a trained one near the data, trusts its input at low noise: its x̂0 is a blend
    of the input's estimate and the observation's answer (gripper = `target_sign`), weighted toward the input."""
    schedule = DDPMSchedule(clip_sample=False)

    def fn(x, level):
        ab = schedule.abar(level, x)  # trust in the input grows with its signal fraction
        x0 = ab.sqrt() * x + (1 - ab) * target_sign
        return (x - ab.sqrt() * x0) / (1 - ab).clamp_min(1e-8).sqrt()

    return schedule, fn


@pytest.mark.parametrize("mode,follows", [("reinit", True), ("keep", False)])
def test_a_gripper_flip_is_followed_within_one_step_when_the_discrete_dimension_is_reinitialised(mode, follows):
    schedule, open_fn = _trusting_denoiser(+1.0)
    _, close_fn = _trusting_denoiser(-1.0)
    rti = Runner(RTIRenoiseSampler(schedule, num_steps=10, warm_steps=2, n_action_steps=1, discrete_dims=[0],
                                   discrete_mode=mode, discrete_hysteresis=None))  # the sign as carried
    g = torch.Generator().manual_seed(8)
    for _ in range(3):  # gripper open for a while
        out = rti(open_fn, (64, T, 1), generator=g)
    assert (out[:, TO - 1, 0] == 1.0).float().mean().item() > 0.8
    out = rti(close_fn, (64, T, 1), generator=g)  # the observation now says: close
    closed = (out[:, TO - 1, 0] == -1.0).float().mean().item()
    assert (closed > 0.95) if follows else (closed < 0.5)
    assert rti.last_nfe == 2 + (mode == "reinit")  # re-deciding the gripper costs one evaluation


@pytest.mark.parametrize("value,follows", [(0.1, True), (1.0, False)])
def test_a_gripper_flip_is_followed_within_one_step_with_scaling_on(value, follows):
    """RTI-DP's scaling, on the exact denoiser of a binary gripper: trained at ±0.1, a warm-started sign is weak
    evidence at τ, so an observation that says "close" (98 % sure) flips it on the very next call; at ±1 the
    carried-over sign wins. The same 2 evaluations either way (reinit pays a third)."""
    schedule = DDPMSchedule(clip_sample=False)
    res = flip_rate(schedule, value, warm_steps=2, n=256, num_steps=10, horizon=T, n_obs_steps=TO, seed=8)
    assert res["held_before"] > 0.9
    assert (res["followed"] > 0.9) if follows else (res["followed"] < 0.05)


@pytest.mark.parametrize("mode,max_changed", [("noiseless", 0.0), ("keep", 1.0)])
def test_noiseless_discrete_warm_start_never_flips_on_its_own_and_still_follows_a_sure_observation(mode, max_changed):
    """An observation only 80 % sure of "open": re-noised with noise (keep, ±0.1) the gripper flips at random
    between calls; re-noised without noise it holds the sign it has. Both follow a 98 %-sure "close"."""
    schedule = DDPMSchedule(clip_sample=False)
    unsure, close = binary_denoiser(schedule, 0.1, 0.8), binary_denoiser(schedule, 0.1, 0.02)
    sampler = RTIRenoiseSampler(schedule, num_steps=10, warm_steps=2, n_action_steps=1, discrete_dims=[0],
                                discrete_mode=mode, discrete_hysteresis=None)
    sampler.discrete_levels = (torch.tensor([-0.1]), torch.tensor([0.1]))
    rti, g = Runner(sampler), torch.Generator().manual_seed(3)
    heads = [rti(unsure, (512, T, 1), generator=g)[:, TO - 1, 0] for _ in range(6)]
    changed = torch.stack([a != b for a, b in itertools.pairwise(heads[1:])]).any(0).float().mean().item()
    assert changed <= max_changed and (mode == "noiseless" or changed > 0.2)
    out = rti(close, (512, T, 1), generator=g)
    assert (out[:, TO - 1, 0] < 0).float().mean().item() > 0.9 and rti.last_nfe == 2


@pytest.mark.parametrize("hysteresis,p_open,flips", [(None, 0.98, False), (3.0, 0.98, True), (3.0, 0.9, False)])
def test_discrete_hysteresis_sets_how_sure_an_observation_must_be_to_flip_a_carried_gripper(hysteresis, p_open, flips):
    """Trained at ±0.3, a carried-over "closed" re-noised without noise to τ=10 counts 2ᾱs²/(1−ᾱ) ≈ 5.2 log-odds:
    even a 98 %-sure "open" (3.9) cannot flip it. Weighed to 3 log-odds, that observation flips it and a 90 %-sure
    one (2.2) still does not. Deterministic: every sample agrees."""
    schedule = DDPMSchedule(clip_sample=False)
    closed, opening = binary_denoiser(schedule, 0.3, 0.98), binary_denoiser(schedule, 0.3, 1.0 - p_open)
    sampler = RTIRenoiseSampler(schedule, num_steps=10, warm_steps=2, n_action_steps=1, discrete_dims=[0],
                                discrete_mode="noiseless", discrete_hysteresis=hysteresis)
    sampler.discrete_levels = (torch.tensor([-0.3]), torch.tensor([0.3]))
    rti, g = Runner(sampler), torch.Generator().manual_seed(5)
    rti.set_previous(torch.full((64, T, 1), 0.3))
    assert (rti(closed, (64, T, 1), generator=g)[:, TO - 1, 0] > 0).all()  # held while the data agree
    head = rti(opening, (64, T, 1), generator=g)[:, TO - 1, 0]
    assert (head < 0).all() if flips else (head > 0).all()
    assert rti.last_nfe == 2


@pytest.mark.parametrize("half", [0.3, 1.0])
def test_discrete_hysteresis_is_converted_to_the_carried_value_that_is_worth_it_at_tau(half):
    schedule = DDPMSchedule()
    rti = RTIRenoiseSampler(schedule, tau=10, discrete_dims=[0], discrete_hysteresis=1.6)
    ab = schedule.abar(torch.tensor([10]), torch.zeros(1, 1, 1)).reshape(())
    carry = rti._carry(torch.tensor(half), torch.zeros(1))
    assert torch.isclose(2 * ab * carry * half**2 / (1 - ab), torch.tensor(1.6))


def test_negative_hysteresis_is_refused():
    with pytest.raises(ValueError, match="discrete_hysteresis must be >= 0 log-odds"):
        RTIRenoiseSampler(DDPMSchedule(), discrete_dims=[0], discrete_hysteresis=-1.0)


def test_renoise_rti_snaps_discrete_dimensions_to_the_normalisers_two_values_without_an_extra_evaluation():
    schedule = DDPMSchedule(clip_sample=False)
    sampler = RTIRenoiseSampler(schedule, num_steps=10, warm_steps=2, n_action_steps=1, discrete_dims=[0],
                                discrete_mode="keep")
    sampler.discrete_levels = (torch.tensor([-0.1]), torch.tensor([0.1]))
    fn, rti = binary_denoiser(schedule, 0.1, 0.5), Runner(sampler)
    rti(fn, (64, T, 2))
    out = rti(fn, (64, T, 2))
    assert rti.last_warm and rti.last_nfe == 2
    assert set(out[..., 0].unique().tolist()) <= {torch.tensor(-0.1).item(), torch.tensor(0.1).item()}
    assert len(out[..., 1].unique()) > 2  # the continuous dimension is left alone


def test_streaming_returns_the_clean_head_and_a_denoised_estimate_for_the_still_noisy_tail():
    sdp = StreamingSampler(DDPMSchedule(), horizon=T, n_obs_steps=TO, n_action_steps=1)
    g, run = torch.Generator().manual_seed(9), Runner(sdp)
    run(toy_model, (B, T, DA), generator=g)
    x_before = sdp.x.clone()
    out = run(toy_model, (B, T, DA), generator=g)
    assert out.abs().max() <= 1.0  # every position is a clipped x̂0 estimate or a clean action, never raw noise
    assert x_before.abs().max() > 1.0  # while the buffer itself held noisy iterates


def _zero_data_denoiser(schedule: DDPMSchedule):
    """The exact ε-denoiser of data that are 0 everywhere: x̂0 = 0, so a position at level k holds N(0, 1 − ᾱ_k)."""

    def fn(x, level):
        ab = schedule.abar(level, x)
        return torch.where(ab < 1, x / (1 - ab).clamp_min(1e-12).sqrt(), torch.zeros_like(x))

    return fn


@pytest.mark.parametrize("stochastic", [False, True])
def test_the_streaming_buffer_holds_what_its_level_labels_say_after_every_refill(stochastic):
    """With data at 0, every buffer position labelled level k must hold noise of variance 1 − ᾱ_k after each call
    (denoised down its stairs, shifted, the tail fresh, raised positions forward-noised)."""
    schedule = DDPMSchedule(clip_sample=False)
    sdp = StreamingSampler(schedule, horizon=T, n_obs_steps=TO, n_action_steps=2, steps_per_call=2,
                           stochastic=stochastic)
    run, g = Runner(sdp), torch.Generator().manual_seed(11)
    for call in range(4):
        run(_zero_data_denoiser(schedule), (4000, T, 1), generator=g, n_executed=3 if call == 2 else None)
        want = 1 - schedule.abar(sdp.schedule_levels(sdp.levels[:1]), torch.zeros(1, T, 1))[0, :, 0].double()
        got = sdp.x[..., 0].double().var(dim=0)
        torch.testing.assert_close(got, want, rtol=0.08, atol=1e-6)


def test_authors_rti_with_the_full_step_list_from_a_noised_guess_is_the_cold_ddpm_sampler():
    """The warm path with steps [K-1 … 0], its previous plan a prior draw: exactly the cold DDPM-K sample given the
    same noise (the guess is the iterate itself, so nothing is added to it)."""
    schedule, shape = DDPMSchedule(), (B, T, DA)
    rti = Runner(RTISampler(schedule, steps=list(range(99, -1, -1))))
    g = torch.Generator().manual_seed(12)
    rti.set_previous(torch.randn(shape, generator=g))
    warm = rti(toy_model, shape, generator=g, n_executed=0)
    assert rti.last_warm and rti.last_nfe == 100
    cold = sample(DDPMSampler(schedule), toy_model, shape, torch.Generator().manual_seed(12))
    assert torch.equal(warm, cold)


def test_authors_rti_is_cold_first_then_replans_every_step_at_three_evaluations():
    schedule = DDPMSchedule()
    rti = Runner(RTISampler(schedule))
    first = rti(toy_model, (B, T, DA), generator=torch.Generator().manual_seed(13))
    assert not rti.last_warm and rti.last_nfe == 100 and rti.plan.n_exec == 1 and rti.plan.start == TO - 1
    assert torch.equal(first, sample(DDPMSampler(schedule), toy_model, (B, T, DA), torch.Generator().manual_seed(13)))
    for _ in range(3):
        rti(toy_model, (B, T, DA), generator=torch.Generator().manual_seed(14))
        assert rti.last_warm and rti.last_nfe == 3 and rti.plan.n_exec == 1


def test_authors_rti_adds_no_noise_to_the_shifted_guess():
    """With steps [0] (one step to clean, where DDPM adds no noise) the warm plan is a function of the guess and
    the observation only: two generators give the same plan."""
    schedule = DDPMSchedule()
    guess = torch.randn(B, T, DA, generator=torch.Generator().manual_seed(15))
    plans = []
    for seed in (1, 2):
        rti = Runner(RTISampler(schedule, steps=[0]))
        rti.set_previous(guess)
        plans.append(rti(toy_model, (B, T, DA), generator=torch.Generator().manual_seed(seed), n_executed=1))
    assert torch.equal(plans[0], plans[1])


def test_authors_rti_clip_carries_the_gripper_sign_shrunk_by_the_clip_factor():
    seen = []
    sampler = RTISampler(DDPMSchedule(), steps=[0], discrete_dims=[0], discrete="clip", clip_factor=10.0)
    sampler.discrete_levels = (torch.tensor([-1.0]), torch.tensor([1.0]))
    rti = Runner(sampler)
    rti.set_previous(torch.cat([torch.full((1, T, 1), 0.7), torch.full((1, T, 1), 0.3)], dim=2))
    rti(lambda x, level: seen.append(x.clone()) or torch.zeros_like(x), (1, T, 2), n_executed=1)
    assert torch.allclose(seen[0][..., 0], torch.tensor(0.1)) and torch.allclose(seen[0][..., 1], torch.tensor(0.3))
    assert set(rti.plan.actions[..., 0].unique().tolist()) <= {-1.0, 1.0}


def _step_gripper_denoiser(schedule: DDPMSchedule, s: float, flip_at: int, confidence: float = 0.98):
    """The exact ε-denoiser of a gripper that is +s, then −s from chunk position `flip_at` on (one flip time for the
    whole chunk, so the evidence of the input is shared across positions); the observation puts `confidence` on
    that flip time and spreads the rest over the others (`flip_at` = T: no flip inside the chunk)."""
    pos = torch.arange(T)
    cands = torch.stack([torch.where(pos < f, s, -s) for f in range(T + 1)]).double()  # [T+1, T]
    prior = torch.full((T + 1,), (1 - confidence) / T, dtype=torch.float64)
    prior[min(max(flip_at, 0), T)] = confidence

    def fn(x, level):
        ab = schedule.abar(level, x).double()  # [B, T, 1]
        xd = x.double()[..., 0]
        a, var = ab[:, 0, 0].sqrt(), (1 - ab[:, 0, 0]).clamp_min(1e-12)
        logits = prior.log() + (a[:, None] / var[:, None]) * (xd @ cands.T)  # [B, T+1]; |cand|² is the same for all
        x0 = torch.softmax(logits, dim=1) @ cands  # [B, T]
        return ((xd - a[:, None] * x0) / var[:, None].sqrt()).unsqueeze(-1).to(x.dtype)

    return fn


@pytest.mark.parametrize("shift,follows", [(1, True), (0, False)])
def test_authors_rti_follows_a_gripper_flip_within_one_step_when_the_evidence_is_shared(shift, follows):
    """Replanning every step with the gripper trained at ±0.5, the executed gripper closes at the step the data
    close (within one step) and stays closed. Carried without its shift (a loop that reports no executed actions)
    the plan's flip never reaches the head: the test can tell."""
    schedule, flip_time, shape = DDPMSchedule(), 10, (32, T, 1)
    sampler = RTISampler(schedule, discrete_dims=[0])
    sampler.discrete_levels = (torch.tensor([-0.5]), torch.tensor([0.5]))
    rti, g, heads = Runner(sampler), torch.Generator().manual_seed(16), []
    for t in range(16):
        fn = _step_gripper_denoiser(schedule, 0.5, flip_time - t + (TO - 1))
        heads.append(rti(fn, shape, generator=g, n_executed=None if t == 0 else shift)[:, TO - 1, 0])
    closed = torch.stack(heads) < 0  # [t, B]
    if follows:
        assert closed[:flip_time].float().mean() < 0.05
        assert closed[flip_time + 1:].all(dim=0).float().mean() > 0.95  # closed by one step late, and stays closed
    else:
        assert closed.float().mean() < 0.05
