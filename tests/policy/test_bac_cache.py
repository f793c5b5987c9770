"""The block cache as a denoiser-call hook on tiny random transformer policies: an all-update schedule is the
uncached sampler bit for bit, skipped steps add the block's residual from its last update in the same plan, the
counted block evaluations are the schedule's prediction, and stale, corrupt or misplaced schedules are refused."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_module

from rtdp.policy.caching.attach import cache_hook, use_cache, weights_sha256
from rtdp.policy.caching.calibrate import calibrate
from rtdp.policy.caching.grids import CacheError, probe_grids
from rtdp.policy.caching.schedule import CacheSchedule, GridSchedule, load_schedule
from rtdp.policy.factory import make_policy
from rtdp.types import PlanContext

OBS = {"keypoint": (9, 2), "agent_pos": (2,)}
TINY = ["policy.denoiser.n_layers=2", "policy.denoiser.dim=32", "policy.denoiser.n_heads=2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/policy/conftest.py


def tiny_policy(*overrides: str, policy: str = "transformer", seed: int = 0):
    with initialize_config_module("rtdp.configs", version_base=None):
        cfg = compose("train", overrides=[f"policy={policy}", "task=pusht_keypoints",
                                          *(TINY if "transformer" in policy else []), *overrides])
    torch.manual_seed(seed)
    return make_policy(cfg.policy, cfg.sampler, OBS, 2, None).eval()


def observations(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"keypoint": torch.randn(batch, 2, 9, 2, generator=g), "agent_pos": torch.randn(batch, 2, 2, generator=g)}


def plans(policy, n: int = 2, seed: int = 0) -> list:
    """`n` consecutive plans of one episode (a warm-starting sampler warm-starts the later ones)."""
    policy.reset()
    gen = torch.Generator().manual_seed(seed)
    return [policy.plan_chunk(observations(seed=i), PlanContext(generator=gen)) for i in range(n)]


SAMPLERS = {"ddim10": ["sampler=ddim"], "ddpm100": ["sampler=ddpm"], "rti": ["sampler=rti"],
            "rti_renoise": ["sampler=rti_renoise", "sampler.warm_steps=3"]}


def all_update(policy) -> CacheSchedule:
    grids = [g for g in probe_grids(policy) if g is not None]
    return CacheSchedule.all_update(policy.denoiser.block_names(), grids, weights_sha256(policy))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_an_all_update_schedule_is_the_uncached_sampler_bit_for_bit(sampler):
    policy = tiny_policy(*SAMPLERS[sampler])
    uncached = plans(policy)
    hook = use_cache(policy, all_update(policy))
    cached = plans(policy)
    for a, b in zip(uncached, cached):
        assert torch.equal(a.actions, b.actions)
    n_blocks = len(policy.denoiser.block_names())
    for plan in cached:
        assert plan.info["block_evals"] == plan.info["block_evals_uncached"] == plan.nfe * n_blocks
    assert hook.totals["plans"] == 2


@torch.no_grad()
def reference_plan(policy, schedule: CacheSchedule, obs, gen) -> torch.Tensor:
    """The cached plan computed without the hook: the transformer run block by block, each block's residual taken
    from its last update step of this plan, through a call whose forward is replaced here."""
    from rtdp.policy.caching.grids import grid_levels

    den = policy.denoiser
    blocks = den.block_names()
    cond = policy.encoder(obs)
    call = policy.denoiser_call(cond)
    saved = {}

    class Reference:
        def begin(self, c):
            grid = schedule.for_grid(grid_levels(c.grid))
            saved.clear()

            def forward(x, level):
                k = c.step
                h, ctx = den.embed(x, level, c.cond)
                for i, block in enumerate(den.blocks):
                    if k in grid.updates[blocks[i]]:
                        saved[i] = block.residual(h, ctx)
                    h = h + saved[i]
                return den.output(h)

            c.forward = forward

        def before_step(self, *a):
            pass

        def end(self, c):
            pass

    call.hooks = [Reference()]
    return policy.sampler.sample(call, (cond.shape[0], policy.horizon, policy.action_dim), PlanContext(generator=gen),
                                 None).actions


@pytest.mark.parametrize("sampler", ["ddim10", "ddpm100"])
def test_skipped_steps_add_the_residual_of_the_blocks_last_update(sampler):
    policy = tiny_policy(*SAMPLERS[sampler])
    schedule, _ = calibrate(policy, observations(4, seed=5), None, budget=3, bubbling=2)
    use_cache(policy, schedule)
    policy.reset()
    obs = observations()
    cached = policy.plan_chunk(obs, PlanContext(generator=torch.Generator().manual_seed(1))).actions
    use_cache(policy, None)
    expected = reference_plan(policy, schedule, obs, torch.Generator().manual_seed(1))
    assert torch.equal(cached, expected)
    uncached = plans(policy, 1, seed=1)[0].actions  # and the cache does change the result
    assert not torch.equal(cached, uncached)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_counted_block_evaluations_are_the_schedules_prediction(sampler):
    policy = tiny_policy(*SAMPLERS[sampler])
    schedule, _ = calibrate(policy, observations(4, seed=5), observations(4, seed=6), budget=4, bubbling=3)
    hook = use_cache(policy, schedule)
    n_blocks = len(policy.denoiser.block_names())
    for plan in plans(policy, 3):
        grid = next(g for g in schedule.grids if g.n_steps == plan.nfe)
        assert plan.info["block_evals"] == plan.info["block_evals_predicted"] == grid.predicted_block_evals
        assert plan.info["block_evals_uncached"] == n_blocks * plan.nfe
        assert grid.predicted_block_evals < n_blocks * plan.nfe  # a budget below the steps skips blocks
    assert hook.totals["block_evals"] == hook.totals["block_evals_predicted"]


def test_no_cached_residual_outlives_its_plan():
    policy = tiny_policy("sampler=ddim")
    schedule, _ = calibrate(policy, observations(4, seed=5), None, budget=2, bubbling=0)
    hook = use_cache(policy, schedule)
    first = plans(policy, 1, seed=3)[0].actions
    assert hook._cache == []
    policy.reset()
    other = policy.plan_chunk(observations(batch=5, seed=9), PlanContext())  # another batch size in between
    assert hook._cache == [] and other.info["block_evals"] == schedule.grids[0].predicted_block_evals
    again = plans(policy, 1, seed=3)[0].actions
    assert torch.equal(first, again)


def test_a_schedule_for_other_weights_is_refused_naming_both():
    policy = tiny_policy("sampler=ddim")
    schedule = all_update(policy)
    other = tiny_policy("sampler=ddim", seed=1)
    with pytest.raises(CacheError, match=rf"made for other weights: sha256 {schedule.weights_sha256[:12]}.*this "
                                         rf"policy's are {weights_sha256(other)[:12]}"):
        use_cache(other, schedule)
    assert cache_hook(other) is None


def test_a_schedule_for_another_step_grid_is_refused_naming_both(tmp_path):
    policy = tiny_policy("sampler=ddim")
    path = all_update(policy).save(tmp_path / "s.json")
    five = tiny_policy("sampler=ddim", "sampler.num_steps=5")
    with pytest.raises(CacheError) as err:
        use_cache(five, path)
    message = str(err.value)
    assert "made for the step grid 10 steps" in message and "visits 5 steps" in message and "\n" not in message


def test_missing_and_corrupt_schedule_files_are_one_line_refusals(tmp_path):
    policy = tiny_policy("sampler=ddim")
    with pytest.raises(CacheError, match="no such schedule file"):
        use_cache(policy, tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CacheError, match="not a valid block-cache schedule \\(not JSON"):
        use_cache(policy, bad)
    data = all_update(policy).to_json()
    data["grids"][0]["updates"]["layer0.ffn"] = [3, 1]
    bad.write_text(json.dumps(data))
    with pytest.raises(CacheError, match="update steps must be increasing, start at 0"):
        use_cache(policy, bad)
    data["version"] = 99
    bad.write_text(json.dumps(data))
    with pytest.raises(CacheError, match="version 99"):
        load_schedule(bad)


def test_a_unet_policy_is_refused_saying_which_configs_have_a_transformer():
    policy = tiny_policy("sampler=ddim", "policy.denoiser.down_dims=[16,32]", policy="unet1d")
    with pytest.raises(CacheError, match="policy=transformer or policy=sdp_transformer"):
        use_cache(policy, "bac")


def test_cache_bac_needs_a_checkpoint_and_sdp_gets_the_across_calls_pointer():
    with pytest.raises(CacheError, match="was not loaded from one"):
        use_cache(tiny_policy("sampler=ddim"), "bac")
    sdp = tiny_policy("sampler=sdp", policy="sdp_transformer")
    with pytest.raises(CacheError, match="try the experiment cache=across_calls"):
        use_cache(sdp, "bac")


def test_the_grid_schedule_predicts_its_block_evaluations():
    grid = GridSchedule((3.0, 2.0, 1.0, 0.0), {"layer0.self_attn": (0,), "layer0.ffn": (0, 2, 3)}, 2)
    assert grid.predicted_block_evals == 4
    assert grid.table(["layer0.self_attn", "layer0.ffn"]) == [[True, True], [False, False], [False, True],
                                                              [False, True]]


def test_a_residual_computed_for_the_tail_tokens_is_the_full_residuals_tail():
    den = tiny_policy("sampler=ddim").denoiser
    x, cond = torch.randn(2, den.horizon, 2), torch.randn(2, den.n_obs_steps, den.cond_proj.in_features)
    with torch.no_grad():
        h, ctx = den.embed(x, torch.tensor([5.0, 7.0]), cond)
        for block in den.blocks:
            assert torch.allclose(block.residual_tail(h, ctx, 3), block.residual(h, ctx)[:, -3:], atol=1e-6)


def test_across_calls_reuses_the_shifted_residuals_on_all_but_every_rth_streaming_plan():
    sdp = tiny_policy("sampler=sdp", policy="sdp_transformer")
    hook = use_cache(sdp, "across_calls:3")
    shown = [p.info for p in plans(sdp, 5)]
    n_blocks = len(sdp.denoiser.block_names())
    reused = [i["reused"] for i in shown]
    assert reused[0] is False and reused.count(True) >= 1
    for info in shown:
        assert info["block_evals"] + info["block_tail_evals"] == info["block_evals_uncached"]
        assert (info["block_tail_evals"] == n_blocks) == info["reused"]
    assert not any(reused[i] and reused[i + 1] and reused[i + 2] for i in range(3))  # every 3rd recomputes
    with pytest.raises(CacheError, match="across_calls is the streaming experiment"):
        use_cache(tiny_policy("sampler=ddim"), "across_calls")
    assert hook.totals["plans"] == 5
