"""Inference backends against eager on the same inputs: the ONNX graph for both denoisers with scalar, [B] and
[B, T] levels at batch 1 and 10; its cache (loaded, stale, corrupt, refused when it misses eager); the missing
runtime's one-line message; a loaded policy's actions under DDPM, DDIM, SDP and both RTI samplers; hooks and
the eager fallback of a sampler that needs gradients. CUDA graphs are checked when a CUDA device is present.
No timings: speed is benchmarks/backends.py's business."""

from __future__ import annotations

import copy
import json
import logging
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from rtdp.cli.main import main as rtdp_main
from rtdp.normalizer import Normalizer
from rtdp.policy import backends
from rtdp.policy.backends import BackendError, GraphShapes, graph_shapes, use_backend
from rtdp.policy.backends import onnx as onnx_backend
from rtdp.policy.call import CallHook, DenoiserCall
from rtdp.policy.factory import make_policy
from rtdp.policy.loading import load_policy
from rtdp.policy.samplers.diffusion import DDIMSampler
from rtdp.policy.schedules import DDPMSchedule
from rtdp.policy.transformer import TransformerDenoiser
from rtdp.policy.unet1d import ConditionalUnet1D
from rtdp.types import PlanContext

pytest.importorskip("onnxruntime", reason="backend=onnx tests need the onnx extra: pip install 'rtdp[onnx]'")
pytest.importorskip("onnxscript", reason="backend=onnx tests need the onnx extra: pip install 'rtdp[onnx]'")

DA, TO, DC = 2, 2, 20  # PushT keypoint sizes: action 2, two frames of 18 keypoint + 2 agent coordinates
DENOISERS = {  # tiny versions of both denoisers: exporting is what costs (seconds per graph), not their size
    "unet1d": (lambda: ConditionalUnet1D(DA, DC, TO, down_dims=(16, 32), level_embed_dim=16), 16),
    "transformer": (lambda: TransformerDenoiser(DA, DC, TO, 10, n_layers=2, n_heads=2, dim=32), 10),
}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="no CUDA device: backend=cuda_graph is checked on a GPU machine "
                                 "(python -m pytest tests/policy/test_backends.py -k cuda)")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/policy/conftest.py


def shapes_of(name: str) -> GraphShapes:
    return GraphShapes(horizon=DENOISERS[name][1], action_dim=DA, cond_shape=(TO, DC), level_range=(0.0, 99.0))


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return DENOISERS[name][0]().eval()


OBS = {"keypoint": (9, 2), "agent_pos": (2,)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny sdp_unet checkpoint (random weights, PushT keypoint shapes), as `rtdp train` writes it."""
    from rtdp.train.checkpoint import save_checkpoint

    with initialize_config_module("rtdp.configs", version_base=None):
        cfg = compose("train", overrides=["policy=sdp_unet", "task=pusht_keypoints", "policy.denoiser.down_dims=[16,32]",
                                          "policy.denoiser.level_embed_dim=16"])
    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit({"keypoint": rng.uniform(0, 512, (100, 9, 2)), "agent_pos": rng.uniform(0, 512, (100, 2)),
                                 "action": rng.uniform(0, 512, (100, 2))})
    torch.manual_seed(0)
    policy = make_policy(cfg.policy, cfg.sampler, OBS, 2, normalizer)
    run = tmp_path_factory.mktemp("tiny_ckpt")
    save_checkpoint(run, 1, model=policy, ema_model=None, normalizer=normalizer, config=cfg,
                    data_meta={"obs_shapes": {k: list(v) for k, v in OBS.items()}, "action_dim": 2})
    return run


@pytest.fixture(scope="module")
def built(checkpoint, tmp_path_factory):
    """One ONNX backend per denoiser, each exported once: the U-Net's by loading the tiny checkpoint with
    backend=onnx (cached in its `backends/`), the transformer's into a cache of its own."""
    unet = load_policy(checkpoint, ["sampler=ddim"], backend="onnx").backend
    transformer = onnx_backend.OnnxBackend(tiny("transformer"), shapes_of("transformer"),
                                           cache_dir=tmp_path_factory.mktemp("graphs"))
    return {"unet1d": unet, "transformer": transformer}


def level_of(kind: str, batch: int, horizon: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "scalar":
        return torch.tensor(37.0)
    if kind == "batch":
        return torch.rand(batch, generator=gen) * 99
    return torch.rand(batch, horizon, generator=gen) * 99


def call_for(denoiser, cond, hooks=(), grad=False) -> DenoiserCall:
    return DenoiserCall(denoiser, DDPMSchedule(num_train_steps=100), cond, hooks=hooks, grad=grad)


# --------------------------------------------------------------------------------------- graph vs eager
@pytest.mark.parametrize("name", list(DENOISERS))
@pytest.mark.parametrize("kind", ["scalar", "batch", "position"])
@pytest.mark.parametrize("batch", [1, 10])
def test_the_onnx_graph_matches_eager_within_its_tolerance(built, name, kind, batch):
    backend = built[name]
    horizon = DENOISERS[name][1]
    gen = torch.Generator().manual_seed(batch)
    x, cond = torch.randn(batch, horizon, DA, generator=gen), torch.randn(batch, TO, DC, generator=gen)
    level = level_of(kind, batch, horizon, gen)
    call = call_for(backend.denoiser, cond)
    backend.bind(call)
    assert isinstance(call.forward, onnx_backend.OnnxForward)
    with torch.no_grad():
        out, ref = call.forward(x, level), backend.denoiser(x, level, cond)
    assert out.shape == ref.shape == (batch, horizon, DA)
    assert backend.tolerance.excess(out, ref) <= 1, float((out - ref).abs().max())


def test_the_check_at_build_and_the_cache_layout_are_recorded_beside_the_graph(built):
    backend = built["unet1d"]
    path = backend.graph_path
    assert path.suffix == ".onnx" and path.name.startswith("onnx-unet1d-")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["key"].startswith(path.stem.split("-")[-1])
    assert meta["check"]["max_abs_diff"] <= onnx_backend.TOLERANCE.atol
    assert meta["check"]["probe_batches"] == [1, 3, 10]
    assert set(meta["versions"]) == {"torch", "onnx", "onnxscript", "onnxruntime"}
    assert meta["bytes"] == path.stat().st_size
    assert not list(path.parent.glob(".*.tmp"))  # atomic writes leave no temp files


def test_the_same_weights_load_the_cached_graph_without_exporting(built, monkeypatch):
    first = built["unet1d"]
    monkeypatch.setattr(onnx_backend, "export", lambda *a: pytest.fail("exported although a graph was cached"))
    again = onnx_backend.OnnxBackend(copy.deepcopy(first.denoiser), first.shapes, cache_dir=first.cache_dir)
    assert again.graph_path == first.graph_path
    assert again.meta["loaded_check"]["excess"] <= 1


def test_a_stale_graph_is_rebuilt_when_the_weights_change(built, tmp_path):
    old = built["unet1d"]
    denoiser = copy.deepcopy(old.denoiser)
    backend = onnx_backend.OnnxBackend(denoiser, old.shapes, cache_dir=old.cache_dir)
    assert backend.graph_path == old.graph_path
    with torch.no_grad():  # new weights in place (as load_state_dict or an optimiser step would write them)
        for p in denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, level, cond = old.shapes.probes(batches=(2,), seed=5)[0]
    call = call_for(denoiser, cond)
    backend.bind(call)  # sees the weights moved: rebuilds under the new key
    assert backend.graph_path != old.graph_path and old.graph_path.exists()
    with torch.no_grad():
        out, ref, stale = call.forward(x, level), denoiser(x, level, cond), old.denoiser(x, level, cond)
    assert backend.tolerance.excess(out, ref) <= 1
    assert (ref - stale).abs().max() > 1e-2  # the old graph would have been wrong


def test_the_key_sees_settings_the_module_tree_does_not_show():
    causal = TransformerDenoiser(DA, DC, TO, 10, n_layers=1, dim=32, causal=True)
    free = TransformerDenoiser(DA, DC, TO, 10, n_layers=1, dim=32, causal=False)
    free.load_state_dict(causal.state_dict())
    assert repr(causal) == repr(free)
    assert onnx_backend.structure_of(causal) != onnx_backend.structure_of(free)


def test_a_graph_that_misses_eager_is_refused(built, tmp_path, monkeypatch):
    wrong = built["unet1d"].graph_path.read_bytes()  # the graph of other weights
    monkeypatch.setattr(onnx_backend, "export", lambda *a: wrong)
    with pytest.raises(BackendError, match="misses eager") as err:
        onnx_backend.OnnxBackend(tiny("unet1d", seed=7), shapes_of("unet1d"), cache_dir=tmp_path)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.glob("*.onnx"))  # nothing refused is cached


def _corrupt_graph(graph, meta):
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])


def _flip_bytes(graph, meta):
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))


def _garbage_with_its_own_hash(graph, meta):
    import hashlib

    junk = b"not an onnx graph" * 100
    graph.write_bytes(junk)
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps({**record, "sha256": hashlib.sha256(junk).hexdigest(), "bytes": len(junk)}))


def _garbage_sidecar(graph, meta):
    meta.write_text("{not json")


@pytest.mark.parametrize("damage", [_corrupt_graph, _flip_bytes, _garbage_with_its_own_hash, _garbage_sidecar])
def test_a_corrupt_cached_graph_is_refused_with_one_warning_line_and_rebuilt(built, tmp_path, monkeypatch, caplog,
                                                                             damage):
    good = built["unet1d"]
    for src in (good.graph_path, good.graph_path.with_suffix(".json")):
        (tmp_path / src.name).write_bytes(src.read_bytes())
    graph, meta = tmp_path / good.graph_path.name, tmp_path / good.graph_path.with_suffix(".json").name
    damage(graph, meta)
    exports = []
    real = good.graph_path.read_bytes()
    monkeypatch.setattr(onnx_backend, "export", lambda *a: exports.append(1) or real)  # the exporter is not on trial
    with caplog.at_level(logging.WARNING, logger="rtdp.policy.backends"):
        backend = onnx_backend.OnnxBackend(copy.deepcopy(good.denoiser), good.shapes, cache_dir=tmp_path)
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "\n" not in refused[0].getMessage() and refused[0].exc_info is None
    assert str(graph) in refused[0].getMessage() and "rebuilding" in refused[0].getMessage()
    assert exports == [1] and backend.graph_path == graph
    assert graph.read_bytes() == real and json.loads(meta.read_text())["key"] == backend.meta["key"]


def test_backend_onnx_without_the_runtime_names_the_extra_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    with pytest.raises(BackendError) as err:
        onnx_backend.OnnxBackend(tiny("unet1d"), shapes_of("unet1d"))
    assert str(err.value) == ("backend=onnx needs ONNX Runtime, which is not installed: pip install 'rtdp[onnx]'")


def test_unknown_backends_are_refused_and_auto_is_eager_on_the_cpu():
    with pytest.raises(BackendError, match="choose one of auto, eager, onnx, cuda_graph"):
        backends.resolve("tensorrt", "cpu")
    assert backends.resolve("auto", "cpu") == "eager"
    assert backends.resolve("auto", "cuda:0") == "cuda_graph"
    from rtdp.cli.args import BACKENDS  # the CLI's copy of the names (args.py imports no torch)

    assert BACKENDS == backends.NAMES


def test_auto_leaves_the_policy_eager_with_one_line_where_its_backend_cannot_be_built(built, monkeypatch, caplog):
    policy = tiny_policy(built)
    monkeypatch.setattr(backends, "resolve", lambda name, device: "cuda_graph")  # as on a GPU machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # ... whose device is gone
    with caplog.at_level(logging.WARNING, logger="rtdp.policy.backends"):
        assert use_backend(policy, "auto") is None and policy.backend is None
    assert [r.getMessage() for r in caplog.records] == [
        ("rtdp: backend=auto: backend=cuda_graph needs a CUDA device and none is visible; use backend=eager or "
         "onnx; running eager")]
    with pytest.raises(BackendError, match="needs a CUDA device"):  # asked for by name, it is an error
        use_backend(policy, "cuda_graph")


# --------------------------------------------------------------------------------------------- policies
class CountingHook(CallHook):
    def __init__(self):
        self.begins, self.steps, self.ends, self.forwards = 0, [], 0, []

    def begin(self, call):
        self.begins += 1

    def before_step(self, call, x, level):
        self.steps.append(call.step)
        self.forwards.append(call.forward)

    def end(self, call):
        self.ends += 1


def tiny_policy(built) -> torch.nn.Module:
    """A policy around the tiny U-Net's weights, served by its cached graph."""
    policy = make_policy({"name": "t", "horizon": 16, "n_obs_steps": TO,
                          "denoiser": {"type": "unet1d", "down_dims": [16, 32], "level_embed_dim": 16},
                          "schedule": {"name": "ddpm", "num_train_steps": 100}},
                         {"name": "ddim", "num_steps": 10}, {"state": (DC,)}, DA).eval()
    policy.denoiser.load_state_dict(built["unet1d"].denoiser.state_dict())  # the checkpoint's U-Net
    use_backend(policy, "onnx", cache_dir=built["unet1d"].cache_dir)
    assert policy.backend.graph_path == built["unet1d"].graph_path  # same weights, same shapes: the cached graph
    return policy


def test_hooks_see_every_step_of_a_plan_served_by_the_graph(built):
    policy = tiny_policy(built)
    hook = CountingHook()
    policy.call_hooks.append(hook)
    policy.act({"state": np.zeros((1, TO, DC), np.float32)})
    assert (hook.begins, hook.steps, hook.ends) == (1, list(range(10)), 1)
    assert all(isinstance(f, onnx_backend.OnnxForward) for f in hook.forwards)


class GradDDIM(DDIMSampler):
    """A DDIM that says it differentiates through the denoiser (as RTC's guidance will); sets no `name` of its
    own, so it is not registered."""

    needs_grad = True


def test_a_sampler_that_needs_gradients_runs_eager_with_a_one_line_notice(built, caplog):
    policy = tiny_policy(built)
    policy.sampler = GradDDIM(policy.schedule, num_steps=4)
    hook = CountingHook()
    policy.call_hooks.append(hook)
    with caplog.at_level(logging.WARNING, logger="rtdp.policy.backends"):
        for _ in range(3):
            policy.act({"state": np.zeros((1, TO, DC), np.float32)})
    assert len(hook.forwards) == 12 and not any(isinstance(f, onnx_backend.OnnxForward) for f in hook.forwards)
    notices = [r.getMessage() for r in caplog.records if "needs gradients" in r.getMessage()]
    assert notices == ["rtdp: backend=onnx: sampler 'ddim' needs gradients through the denoiser; its plans run eager"]


def window(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"keypoint": rng.uniform(100, 400, (batch, 2, 9, 2)).astype(np.float32),
            "agent_pos": rng.uniform(100, 400, (batch, 2, 2)).astype(np.float32)}


SAMPLER_OVERRIDES = {
    "ddim": ["sampler=ddim", "sampler.num_steps=10"],
    "ddpm": ["sampler=ddpm", "sampler.num_steps=20"],
    "sdp": ["sampler=sdp"],
    "rti": ["sampler=rti"],
    "rti_renoise": ["sampler=rti_renoise"],
}


@pytest.mark.parametrize("sampler", list(SAMPLER_OVERRIDES))
@pytest.mark.parametrize("batch", [1, 10])
def test_a_policy_served_by_onnx_plans_as_eager_does(checkpoint, sampler, batch):
    plans = {}
    for backend in ("eager", "onnx"):
        policy = load_policy(checkpoint, SAMPLER_OVERRIDES[sampler], backend=backend)
        assert (policy.backend is None) == (backend == "eager")
        gen = torch.Generator().manual_seed(3)
        plans[backend] = []
        for step in range(4):  # a cold plan, then warm starts / streaming from the previous one
            chunk = policy.act(window(batch, step), PlanContext(generator=gen))
            plans[backend].append((policy.plan.actions.clone(), chunk.start, chunk.n_exec, chunk.nfe))
    for (a, *layout_a), (b, *layout_b) in zip(plans["eager"], plans["onnx"]):
        assert layout_a == layout_b
        torch.testing.assert_close(b, a, atol=1e-3, rtol=0)  # normalised actions


def test_load_policy_caches_the_graph_beside_the_checkpoint(checkpoint, built):
    policy = load_policy(checkpoint, ["sampler=sdp"], backend="onnx")  # another sampler: the same graph
    ckpt = policy.checkpoint_path
    assert policy.backend.graph_path == built["unet1d"].graph_path
    assert policy.backend.graph_path.parent == ckpt / "backends"
    assert policy.backend.describe()["check"]["excess"] <= 1
    assert graph_shapes(policy).cond_shape == (TO, DC)


def test_rtdp_eval_with_backend_onnx_and_no_runtime_is_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    ckpt = checkpoint / "checkpoints" / "last"  # the directory whose config.yaml names the task
    code = rtdp_main(["eval", f"checkpoint={ckpt}", f"out={tmp_path / 'ev'}", "episodes=1", "backend=onnx"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.endswith("backend=onnx needs ONNX Runtime, which is not installed: pip install 'rtdp[onnx]'")
    assert not (tmp_path / "ev").exists()


# ------------------------------------------------------------------------------------------ CUDA graphs
@CUDA
@pytest.mark.parametrize("name", list(DENOISERS))
@pytest.mark.parametrize("kind", ["scalar", "batch", "position"])
@pytest.mark.parametrize("batch", [1, 10])
@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_cuda_graphs_match_eager_within_their_tolerance(name, kind, batch, precision):
    from rtdp.policy.backends.cuda_graph import CudaGraphBackend

    denoiser = tiny(name).cuda()
    backend = CudaGraphBackend(denoiser, shapes_of(name), precision=precision)
    horizon = DENOISERS[name][1]
    gen = torch.Generator().manual_seed(batch)
    x, cond = torch.randn(batch, horizon, DA, generator=gen).cuda(), torch.randn(batch, TO, DC, generator=gen).cuda()
    level = level_of(kind, batch, horizon, gen).cuda()
    call = call_for(denoiser, cond)
    backend.bind(call)
    with torch.no_grad():
        first, ref = call.forward(x, level), denoiser(x, level, cond)
        second = call.forward(x, level)  # a replay gives the same again (static buffers refilled)
    assert backend.tolerance.excess(first, ref) <= 1
    torch.testing.assert_close(first, second, atol=0, rtol=0)


@CUDA
@pytest.mark.parametrize("sampler", ["ddim", "sdp"])
def test_a_policy_on_cuda_uses_cuda_graphs_and_plans_as_eager_does(checkpoint, sampler):
    from rtdp.policy.backends.cuda_graph import CudaGraphBackend

    plans, hook = {}, CountingHook()
    variants = {"eager": ("eager", {}), "fp32": ("cuda_graph", {"precision": "fp32"}), "auto": ("auto", {})}
    for name, (backend, options) in variants.items():
        policy = load_policy(checkpoint, SAMPLER_OVERRIDES[sampler], device="cuda", backend=backend,
                             backend_options=options)
        assert isinstance(policy.backend, CudaGraphBackend) == (name != "eager")  # auto: CUDA graphs on a GPU
        if name == "auto":
            policy.call_hooks.append(hook)
            bf16 = policy.backend.precision == "bf16"
        gen = torch.Generator(device="cuda").manual_seed(3)
        plans[name] = []
        for step in range(3):
            policy.act(window(1, step), PlanContext(generator=gen))
            plans[name].append(policy.plan.actions.clone())
    assert hook.steps and hook.begins == hook.ends == 3
    for a, b, c in zip(plans["eager"], plans["fp32"], plans["auto"]):
        torch.testing.assert_close(b, a, atol=1e-3, rtol=0)  # normalised actions
        torch.testing.assert_close(c, a, atol=0.25 if bf16 else 1e-3, rtol=0)  # bf16: a looser, stated bound
