"""Both denoiser families: one interface, per-position noise levels, named transformer blocks."""

from __future__ import annotations

import pytest
import torch

from rtdp.policy.denoiser import Denoiser, DenoiserSpec, make_denoiser
from rtdp.policy.transformer import (
    CrossAttentionBlock,
    FeedForwardBlock,
    SelfAttentionBlock,
    TransformerDenoiser,
)
from rtdp.policy.unet1d import ConditionalUnet1D

B, T, DA, TO, DC = 3, 16, 2, 2, 6


def small(kind: str) -> torch.nn.Module:
    cfg = ({"type": "unet1d", "down_dims": [16, 32, 64], "level_embed_dim": 16, "n_groups": 4} if kind == "unet1d"
           else {"type": "transformer", "n_layers": 2, "n_heads": 2, "dim": 32, "attn_dropout": 0.0})
    torch.manual_seed(0)
    return make_denoiser(cfg, DenoiserSpec(DA, DC, TO, T)).eval()


@pytest.fixture(params=["unet1d", "transformer"])
def denoiser(request) -> torch.nn.Module:
    return small(request.param)


def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, T, DA, generator=g), torch.randn(B, TO, DC, generator=g)


def test_output_has_the_action_chunk_shape(denoiser):
    x, cond = inputs()
    assert denoiser(x, torch.tensor([0.0, 50.0, 99.0]), cond).shape == (B, T, DA)
    assert denoiser(x, torch.rand(B, T) * 99, cond).shape == (B, T, DA)


def test_a_per_sample_level_equals_the_same_level_at_every_position(denoiser):
    x, cond = inputs()
    level = torch.tensor([3.0, 40.0, 97.0])
    with torch.no_grad():
        per_sample = denoiser(x, level, cond)
        per_position = denoiser(x, level[:, None].expand(B, T).contiguous(), cond)
        scalar = denoiser(x, torch.tensor(40.0), cond)
        broadcast = denoiser(x, torch.full((B,), 40.0), cond)
    torch.testing.assert_close(per_sample, per_position, rtol=0, atol=1e-6)
    torch.testing.assert_close(scalar, broadcast, rtol=0, atol=1e-6)


def test_per_position_levels_reach_the_output(denoiser):
    """Raising the level of the last positions only changes the prediction (streaming diffusion's input)."""
    x, cond = inputs()
    flat = torch.full((B, T), 10.0)
    stair = flat.clone()
    stair[:, T // 2 :] = 90.0
    with torch.no_grad():
        a, b = denoiser(x, flat, cond), denoiser(x, stair, cond)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("levels", ["per_position", "per_sample"])
def test_unet_training_embeds_each_distinct_level_once_with_the_same_output_and_gradients(levels):
    """Training projects a table of the batch's distinct levels (per-sample: one row each) instead of every
    position; its loss and gradients equal the per-position path eval keeps."""
    net = small("unet1d")
    x, cond = inputs()
    g = torch.Generator().manual_seed(2)
    level = (torch.randint(0, 100, (B, T), generator=g) if levels == "per_position"
             else torch.randint(0, 100, (B,), generator=g)).float()
    grads, outs = {}, {}
    for mode in ("train", "eval"):
        net.train(mode == "train")
        net.zero_grad()
        out = net(x, level, cond)
        (out**2).mean().backward()
        outs[mode] = out.detach()
        grads[mode] = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.train()
    table, index = net.level_table(level, B, T, x.device)
    if levels == "per_position":
        assert table.shape[0] == len(torch.unique(level)) and index.shape == (B, T)
    else:
        assert table.shape[:2] == (B, 1) and index is None
    torch.testing.assert_close(outs["train"], outs["eval"], rtol=0, atol=1e-5)
    for name, grad in grads["eval"].items():
        torch.testing.assert_close(grads["train"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bad_level_shapes_are_rejected_with_the_expected_shapes(denoiser):
    x, cond = inputs()
    with pytest.raises(ValueError, match=r"\[B\] or \[B, T\]"):
        denoiser(x, torch.zeros(B, T + 1), cond)


def test_unet_names_the_horizon_it_cannot_downsample():
    net = ConditionalUnet1D(DA, DC, TO, down_dims=(16, 32, 64), level_embed_dim=16, n_groups=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 10, DA), torch.zeros(1), torch.randn(1, TO, DC))


def test_unet_uses_the_papers_kernel_and_groups():
    net = ConditionalUnet1D(DA, DC, TO, down_dims=(64, 128, 256))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv1d) and m.kernel_size[0] > 1
             and m.stride[0] == 1]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert convs and all(c.kernel_size == (5,) for c in convs)
    assert norms and all(n.num_groups == 8 for n in norms)


def test_transformer_is_a_stack_of_named_blocks_whose_residuals_sum_to_forward():
    net = small("transformer")
    assert isinstance(net, TransformerDenoiser)
    kinds = [type(b) for b in net.blocks]
    assert kinds == [SelfAttentionBlock, CrossAttentionBlock, FeedForwardBlock] * 2
    assert net.block_names()[:3] == ["layer0.self_attn", "layer0.cross_attn", "layer0.ffn"]
    x, cond = inputs()
    level = torch.rand(B, T) * 99
    with torch.no_grad():
        h, ctx = net.embed(x, level, cond)
        for block in net.blocks:  # what a block cache does: add each block's residual contribution
            h = h + block.residual(h, ctx)
        torch.testing.assert_close(net.output(h), net(x, level, cond), rtol=0, atol=0)


def test_transformer_action_tokens_attend_causally():
    """Changing a late action token leaves earlier outputs untouched."""
    net = small("transformer")
    x, cond = inputs()
    y = x.clone()
    y[:, -1] += 5.0
    level = torch.full((B,), 30.0)
    with torch.no_grad():
        a, b = net(x, level, cond), net(y, level, cond)
    torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=0, atol=1e-5)
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-4


def test_unknown_denoiser_type_is_named():
    with pytest.raises(ValueError, match="unknown denoiser 'mlp'; known: mode, transformer, unet1d"):
        make_denoiser({"type": "mlp"}, DenoiserSpec(DA, DC, TO, T))


def test_a_denoiser_name_clash_is_refused_when_defined_and_a_missing_forward_when_built():
    with pytest.raises(TypeError, match="abstract"):
        type("NoForward", (Denoiser,), {})()
    with pytest.raises(ValueError, match="'unet1d' is taken"):
        type("Clash", (Denoiser,), {"name": "unet1d", "forward": lambda self, x, k, c: x,
                                    "from_config": classmethod(lambda cls, cfg, spec: cls())})
