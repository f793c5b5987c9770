"""MoDE (Reuss et al. 2025): routing by σ only, expert caching equal to routed inference with k experts per
step, the load-balancing loss, parameter and FLOP accounting, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from omegaconf import OmegaConf

from rtdp.envs.evaluate import check_observations
from rtdp.policy.accounting import flops_per_evaluation, parameter_counts
from rtdp.policy.call import DenoiserCall
from rtdp.policy.denoiser import DenoiserSpec, make_denoiser
from rtdp.policy.encoders import ObservationEncoder
from rtdp.policy.factory import make_policy
from rtdp.policy.mode import MoDEDenoiser
from rtdp.policy.moe import Route, load_balancing_loss
from rtdp.types import PlanContext

T, TO, DA, DC = 16, 2, 2, 5
TINY = {"n_layers": 2, "n_heads": 2, "dim": 32, "attn_dropout": 0.0, "mlp_dropout": 0.0}


def tiny_policy(**denoiser):
    cfg = OmegaConf.load("rtdp/configs/policy/mode.yaml")
    cfg.denoiser = OmegaConf.merge(cfg.denoiser, {**TINY, **denoiser})
    torch.manual_seed(0)
    return make_policy(cfg, OmegaConf.load("rtdp/configs/sampler/ddim.yaml"), {"state": (DC,)}, DA).eval()


def obs(batch: int = 3):
    return {"state": np.random.default_rng(0).normal(size=(batch, TO, DC)).astype(np.float32)}


def act(policy, batch: int = 3):
    policy.reset()
    return policy.act(obs(batch), PlanContext(generator=torch.Generator().manual_seed(0)))


def cache_of(policy):
    (hook,) = policy.call_hooks
    return hook


def test_cached_and_uncached_inference_give_the_same_actions():
    policy = tiny_policy()
    cached = act(policy)
    assert cache_of(policy).cached_evaluations == cached.nfe == 10  # every evaluation came from fusions
    policy.denoiser.expert_cache = False
    routed = act(policy)
    assert cache_of(policy).cached_evaluations == 10  # none more: the routed forward ran
    # the fused matrices sum the same products in another order: equal to float32 rounding
    np.testing.assert_allclose(cached.actions, routed.actions, rtol=0, atol=1e-5)


def test_the_route_is_a_function_of_sigma_only():
    den = make_denoiser({"type": "mode", **TINY}, DenoiserSpec(DA, DC, TO, T)).eval()
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(4, T, DA, generator=g), torch.randn(4, TO, DC, generator=g)
    level = torch.full((4,), 10.0)
    _, routes = den.run(x, level, cond)
    _, other = den.run(torch.randn(4, T, DA, generator=g) * 5, level, cond.flip(1) + 3)  # other, permuted tokens
    for a, b in zip(routes, other, strict=True):
        assert torch.equal(a.experts, b.experts) and torch.equal(a.weights, b.weights)
        assert (a.experts == a.experts[:1]).all()  # one σ: every sample takes the same route
    _, elsewhere = den.run(x, torch.full((4,), -100.0), cond)
    assert any(not torch.equal(a.logits, b.logits) for a, b in zip(routes, elsewhere, strict=True))


def test_the_router_sees_only_the_sigma_embedding():
    den = make_denoiser({"type": "mode", **TINY}, DenoiserSpec(DA, DC, TO, T)).eval()
    seen = []
    for block in den.blocks:
        block.moe.router.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    den(torch.randn(3, T, DA), torch.full((3,), 5.0), torch.randn(3, TO, DC))
    emb = den.sigma_embedding(torch.full((3,), 5.0))
    assert len(seen) == len(den.blocks) and all(torch.equal(s, emb) for s in seen)


def test_expert_evaluations_per_step_equal_k():
    policy = tiny_policy(num_experts=4, top_k=2)
    den = policy.denoiser
    calls = {"experts": 0, "routers": 0}
    for block in den.blocks:
        block.moe.router.register_forward_hook(lambda *a: calls.__setitem__("routers", calls["routers"] + 1))
        for expert in block.moe.experts:
            expert.register_forward_hook(lambda *a: calls.__setitem__("experts", calls["experts"] + 1))
    den.expert_cache = False
    routed = act(policy, batch=1)
    assert calls["experts"] == 2 * len(den.blocks) * routed.nfe  # routed: k expert modules per layer and step
    assert calls["routers"] == len(den.blocks) * routed.nfe
    den.expert_cache = True
    calls.update(experts=0, routers=0)
    act(policy, batch=1)  # fuses (routers run once per σ of the grid), then serves from fusions
    calls.update(experts=0, routers=0)
    cached = act(policy, batch=1)
    assert calls == {"experts": 0, "routers": 0}  # no router, no expert module: the fused feed-forwards ran
    hidden = den.blocks[0].moe.experts[0].hidden
    for fused in cache_of(policy)._fused.values():
        assert [len(f.experts) for f in fused] == [2] * len(den.blocks)
        assert [f.hidden for f in fused] == [2 * hidden] * len(den.blocks)  # k experts' width, not E's
    assert cache_of(policy).cached_evaluations == 2 * cached.nfe


def test_caching_is_off_in_training_when_gradients_are_needed_and_by_override():
    policy = tiny_policy()
    hook = cache_of(policy)
    cond = torch.randn(1, TO, DC)
    grid = policy.schedule.inference_levels(3).tolist()[:-1]
    for training, grad in ((True, False), (False, True)):
        policy.denoiser.train(training)
        call = DenoiserCall(policy.denoiser, policy.schedule, cond, hooks=[hook], grad=grad)
        call.begin(grid)
        for level in grid:
            call.predict(torch.randn(1, T, DA), torch.full((1,), level))
        call.end()
    assert hook.cached_evaluations == 0 and hook.fusions == 0
    off = tiny_policy(expert_cache=False)
    act(off)
    assert cache_of(off).cached_evaluations == 0 and cache_of(off).fusions == 0


def test_new_weights_are_fused_again():
    policy = tiny_policy()
    act(policy)
    fusions = cache_of(policy).fusions
    with torch.no_grad():
        for block in policy.denoiser.blocks:
            block.moe.experts[0].out.weight.mul_(3.0)
    cached = act(policy)
    assert cache_of(policy).fusions == 2 * fusions
    policy.denoiser.expert_cache = False
    np.testing.assert_allclose(cached.actions, act(policy).actions, rtol=0, atol=1e-5)


def _route(probs: torch.Tensor, experts: torch.Tensor) -> Route:
    return Route(probs.log(), probs, experts, torch.ones_like(experts, dtype=probs.dtype) / experts.shape[1])


def test_the_load_balancing_loss_is_minimal_at_uniform_routing():
    n = 20  # rows; probabilities on a grid of 1/n, assignments in the same proportions (f_i = P_i)
    values = {}
    for counts in ([5, 5, 5, 5], [8, 4, 4, 4], [10, 10, 0, 0], [20, 0, 0, 0], [7, 6, 4, 3], [6, 5, 5, 4]):
        probs = torch.tensor(counts, dtype=torch.float64).clamp_min(1e-12) / n
        experts = torch.repeat_interleave(torch.arange(4), torch.tensor(counts))[:, None]
        values[tuple(counts)] = float(load_balancing_loss(_route(probs.expand(n, 4), experts)))
    assert values[(5, 5, 5, 5)] == pytest.approx(1.0)
    assert all(v > 1.0 + 1e-9 for c, v in values.items() if c != (5, 5, 5, 5)), values
    # top-2 at uniform probabilities and a balanced assignment: also exactly 1
    experts = torch.tensor([[0, 1], [2, 3]])
    assert float(load_balancing_loss(_route(torch.full((2, 4), 0.25), experts))) == pytest.approx(1.0)


def test_the_auxiliary_losses_reach_the_training_logs():
    policy = tiny_policy(router_z_weight=0.001).train()
    batch = {"obs": {"state": torch.randn(4, TO, DC)}, "action": torch.rand(4, T, DA) * 2 - 1}
    loss, logs = policy.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    assert set(logs) == {"denoise_loss", "load_balancing_loss", "router_z_loss"}
    assert float(loss.detach()) == pytest.approx(float(sum(logs.values())), rel=1e-6)
    assert 0.0 < float(logs["load_balancing_loss"]) <= 0.01 * 4  # weight 0.01, E · Σ P·f <= E


@pytest.mark.parametrize("experts, top_k", [(2, 3), (4, 0)])
def test_a_layer_that_cannot_route_is_refused(experts, top_k):
    with pytest.raises(ValueError, match="1 <= top_k <= num_experts"):
        MoDEDenoiser(DA, DC, TO, T, num_experts=experts, top_k=top_k)


def test_a_mode_policy_asked_for_block_caching_is_refused_with_the_reason():
    from rtdp.policy.caching.attach import use_cache
    from rtdp.policy.caching.grids import CacheError

    with pytest.raises(CacheError, match="switch experts with σ"):
        use_cache(tiny_policy(), "bac")


def test_accounting_counts_active_parameters_and_fewer_flops_when_cached():
    policy = tiny_policy()
    counts = parameter_counts(policy.denoiser)
    block = policy.denoiser.blocks[0].moe
    expert = sum(p.numel() for p in block.experts[0].parameters())
    router = sum(p.numel() for p in block.router.parameters())
    layers = len(policy.denoiser.blocks)
    assert counts["routed"] == counts["total"] - 2 * expert * layers
    assert counts["active"] == counts["routed"] - router * layers
    cached = flops_per_evaluation(policy, obs(1))
    policy.denoiser.expert_cache = False
    routed = flops_per_evaluation(policy, obs(1))
    assert cached["nfe"] == routed["nfe"] == 10
    assert 0 < cached["flops_per_evaluation"] < routed["flops_per_evaluation"]
    dense = make_denoiser({"type": "transformer", "n_layers": 2, "n_heads": 2, "dim": 32}, DenoiserSpec(DA, DC, TO, T))
    total = sum(p.numel() for p in dense.parameters())
    assert parameter_counts(dense) == {"total": total, "routed": total, "active": total}


def test_a_learned_task_embedding_reads_the_one_hot_id():
    enc = ObservationEncoder({"state": (3,), "task_onehot": (10,)}, embed_keys={"task_onehot": 4})
    assert enc.out_dim == 3 + 4
    onehot = torch.eye(10)[[2, 7]][:, None].expand(2, TO, 10)
    feats = enc({"state": torch.zeros(2, TO, 3), "task_onehot": onehot})
    normalised = enc({"state": torch.zeros(2, TO, 3), "task_onehot": onehot * 2 - 1})  # minmax to [-1, 1]
    assert torch.equal(feats, normalised) and torch.equal(feats[0, 0, 3:], enc.embeddings["task_onehot"].weight[2])
    with pytest.raises(ValueError, match="not a one-hot"):
        ObservationEncoder({"state": (3,)}, embed_keys={"task_onehot": 4})


def test_a_multitask_policy_on_a_single_task_is_refused_naming_the_task_id():
    class Agent:
        obs_keys = ("state", "task_onehot")

    single = spaces.Dict({"state": spaces.Box(-1, 1, (39,))})
    with pytest.raises(ValueError, match="task_onehot.*only_task"):
        check_observations(Agent(), single, "metaworld/reach-v3")
    check_observations(Agent(), spaces.Dict({"state": spaces.Box(-1, 1, (39,)),
                                             "task_onehot": spaces.Box(0, 1, (10,))}), "metaworld/mt10")
