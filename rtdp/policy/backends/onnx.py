"""`backend=onnx`: the denoiser exported to ONNX and run by ONNX Runtime on the CPU.

PyTorch runs the U-Net's small batch-1 1-D convolutions through a slow generic path; ONNX Runtime's fused CPU
kernels evaluate the same graph about 3x faster (docs/backends.md has the measured comparison with OpenVINO,
TorchScript and torch.compile). The graph is exported once per weights with torch's maintained exporter
(`torch.onnx.export(dynamo=True)`, a dynamic batch, levels given per position `[B, T]`, 1-D convolutions
written as 2-D ones, which ONNX Runtime runs faster), cached beside the checkpoint (`graph_cache`), and
checked against eager on seeded inputs whenever it is built or loaded: a graph that misses the tolerance is
refused (a cached one is rebuilt, a fresh one is an error). The runtime's intra-op threads follow
`torch.get_num_threads()` at each plan (one session per thread count).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rtdp.policy.backends import graph_cache
from rtdp.policy.backends.base import (
    Backend,
    BackendError,
    Forward,
    GraphShapes,
    Tolerance,
    WeightsWatch,
    as_position_levels,
    log,
)
from rtdp.policy.call import DenoiserCall

OPSET = 18
TOLERANCE = Tolerance(atol=1e-4, rtol=1e-4)  # float32 graph vs eager float32: measured ~1e-6
INSTALL = "pip install 'rtdp[onnx]'"
INPUTS, OUTPUT = ("x", "level", "cond"), "prediction"
MAX_BATCH = 1 << 16


def import_runtime() -> Any:
    """`onnxruntime`, or a one-line error naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise BackendError(f"backend=onnx needs ONNX Runtime, which is not installed: {INSTALL}") from None
    return onnxruntime


def import_exporter() -> None:
    """The exporter's packages (`onnx`, `onnxscript`), or a one-line error naming the extra."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise BackendError(f"backend=onnx needs {err.name or 'onnx'} to export the graph, which is not installed: "
                           f"{INSTALL}") from None


def versions() -> dict[str, str]:
    """The versions a cached graph depends on (exporter and runtime)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__}
    for pkg in ("onnx", "onnxscript", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


class Conv1dAs2d(nn.Module):
    """A `Conv1d` computed as a `Conv2d` over a height of 1 (same weights, same result): ONNX Runtime's CPU
    kernels for 2-D convolutions are faster (measured 22% on the CPU U-Net at batch 1, 31% at batch 10)."""

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        if c.padding_mode != "zeros" or isinstance(c.padding, str):
            return c(x)
        y = torch.nn.functional.conv2d(x.unsqueeze(2), c.weight.unsqueeze(2), c.bias, stride=(1, c.stride[0]),
                                       padding=(0, c.padding[0]), dilation=(1, c.dilation[0]), groups=c.groups)
        return y.squeeze(2)


REWRITES = ("conv1d_as_conv2d",)  # what `for_export` changes (part of the cache key)


def for_export(denoiser: nn.Module) -> nn.Module:
    """A copy of `denoiser` with its `Conv1d`s computed as `Conv2d`s (the module exported; eager is untouched)."""
    clone = copy.deepcopy(denoiser).eval()
    for parent in list(clone.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv1d:
                setattr(parent, name, Conv1dAs2d(child))
    return clone


def export(denoiser: nn.Module, shapes: GraphShapes) -> bytes:
    """The ONNX graph of `denoiser(x [B,T,Da], level [B,T], cond [B,To,Dc])` with a dynamic batch, serialised."""
    import_exporter()
    denoiser = for_export(denoiser)
    ex = shapes.probes(batches=(2,), seed=1)[0]  # batch 2: torch.export would specialise an example batch of 1
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(denoiser, ex, dynamo=True, dynamic_shapes=({0: batch},) * 3,
                                        input_names=list(INPUTS), output_names=[OUTPUT], opset_version=OPSET,
                                        optimize=True, verbose=False)
    except Exception as err:  # noqa: BLE001 - any exporter failure becomes one line naming the way out
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BackendError(f"cannot export {type(denoiser).__name__} to ONNX ({type(err).__name__}: {first}); "
                           "use backend=eager") from None
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    return program.model_proto.SerializeToString()


def structure_of(module: nn.Module) -> str:
    """The module tree (`repr`) and every submodule's plain settings (flags such as the transformer's `causal`
    that `repr` does not show), as text for the cache key."""
    plain = (bool, int, float, str, tuple)
    settings = {name: {k: v for k, v in sorted(vars(m).items())
                       if not k.startswith("_") and k != "training" and isinstance(v, plain)}
                for name, m in module.named_modules()}
    return repr(module) + repr(settings)


class OnnxBackend(Backend):
    """The denoiser as a cached, eager-checked ONNX graph run by ONNX Runtime (CPU, float32)."""

    name = "onnx"
    tolerance = TOLERANCE

    def __init__(self, denoiser: nn.Module, shapes: GraphShapes, cache_dir: str | Path | None = None,
                 spin: bool = False):
        super().__init__(denoiser, shapes)
        self.ort = import_runtime()
        self.spin = spin  # ORT's idle workers spin-wait; on a CPU shared with other jobs that only steals time
        self.cache_dir = self._cache_dir(cache_dir)
        self.graph_path: Path | None = None
        self.meta: dict[str, Any] = {}
        self._sessions: dict[int, Any] = {}
        self._graph = b""
        self.build()

    # ------------------------------------------------------------------------------------------- building
    def _cache_dir(self, wanted: str | Path | None) -> Path:
        if wanted is not None and graph_cache.writable(Path(wanted)):
            return Path(wanted)
        fallback = graph_cache.default_cache_dir()
        if wanted is not None:
            self.notice_once("cache", f"cannot write {wanted}; caching graphs in {fallback}")
        return fallback

    def key_parts(self) -> dict[str, Any]:
        """Everything the graph depends on: weights, denoiser class and module tree, shapes, versions."""
        return {"backend": self.name, "opset": OPSET, "rewrites": list(REWRITES),
                "denoiser": type(self.denoiser).__qualname__,
                "structure": hashlib.sha256(structure_of(self.denoiser).encode()).hexdigest(),
                "weights": graph_cache.weights_digest(self.denoiser),
                "shapes": {"horizon": self.shapes.horizon, "action_dim": self.shapes.action_dim,
                           "cond_shape": list(self.shapes.cond_shape)},
                "versions": versions()}

    def build(self) -> None:
        """Load the cached graph of the current weights, or export, check and cache a new one."""
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            self._build()
        finally:
            self.denoiser.train(was_training)
        self._watch = WeightsWatch(self.denoiser)

    def _build(self) -> None:
        parts = self.key_parts()
        key = graph_cache.graph_key(parts)
        stem = f"onnx-{getattr(self.denoiser, 'name', type(self.denoiser).__name__)}-{key[:16]}"
        try:
            cached = graph_cache.load(self.cache_dir, stem, key)
            if cached is not None:
                graph, meta = cached
                check, session = self._check(graph)
                if check["excess"] > 1:
                    raise graph_cache.CorruptGraph(f"it misses eager (max abs diff {check['max_abs_diff']:.2g}, "
                                                   f"tolerance {self.tolerance})")
                self._use(graph, {**meta, "loaded_check": check}, graph_cache.paths(self.cache_dir, stem)[0],
                          session)
                return
        except graph_cache.CorruptGraph as err:
            path = graph_cache.paths(self.cache_dir, stem)[0]
            log.warning("rtdp: backend=onnx: cached graph %s refused (%s); rebuilding it", path, err)
            graph_cache.remove(self.cache_dir, stem)
        log.warning("rtdp: backend=onnx: exporting %s to ONNX (once per weights; tens of seconds) -> %s",
                    type(self.denoiser).__name__, self.cache_dir)
        t0 = time.perf_counter()
        graph = export(self.denoiser, self.shapes)
        export_s = time.perf_counter() - t0
        try:
            check, session = self._check(graph)
        except graph_cache.CorruptGraph as err:
            raise BackendError(f"the fresh ONNX graph of {type(self.denoiser).__name__} cannot be used ({err}); "
                               "use backend=eager") from None
        if check["excess"] > 1:
            raise BackendError(f"the ONNX graph of {type(self.denoiser).__name__} misses eager: max abs diff "
                               f"{check['max_abs_diff']:.3g} beyond the tolerance {self.tolerance}; use "
                               "backend=eager")
        meta = {"key": key, **{k: v for k, v in parts.items()}, "check": check, "export_s": round(export_s, 2),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            path = graph_cache.store(self.cache_dir, stem, graph, meta)
        except OSError as err:  # a full disk or a directory gone: the checked graph still serves this process
            path = graph_cache.paths(self.cache_dir, stem)[0]
            log.warning("rtdp: backend=onnx: cannot cache the graph at %s (%s); using it uncached", path, err)
        self._use(graph, meta, path, session)

    def _use(self, graph: bytes, meta: dict[str, Any], path: Path, session: Any) -> None:
        self._graph, self.meta, self.graph_path = graph, meta, path
        self._sessions = {torch.get_num_threads(): session}  # the checked session serves this thread count

    def _session(self, graph: bytes, threads: int) -> Any:
        ort = self.ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        try:
            return ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises its own types for an unreadable graph
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise graph_cache.CorruptGraph(f"ONNX Runtime cannot load it: {first[:200]}") from None

    def _check(self, graph: bytes) -> tuple[dict[str, Any], Any]:
        """Evaluate `graph` and eager on the same seeded probes: the worst difference and its ratio to the
        tolerance, and the session that ran it."""
        session = self._session(graph, torch.get_num_threads())
        worst, max_abs, batches = 0.0, 0.0, []
        with torch.no_grad():
            for x, level, cond in self.shapes.probes():
                ref = self.denoiser(x, level, cond)
                try:
                    out = session.run([OUTPUT], {"x": x.numpy(), "level": level.numpy(), "cond": cond.numpy()})[0]
                except Exception as err:  # noqa: BLE001
                    raise graph_cache.CorruptGraph(f"ONNX Runtime cannot run it: {str(err).splitlines()[0][:200]}")
                out = torch.from_numpy(out)
                if out.shape != ref.shape:
                    raise graph_cache.CorruptGraph(f"it returns {tuple(out.shape)} for {tuple(ref.shape)}")
                worst = max(worst, self.tolerance.excess(out, ref))
                max_abs = max(max_abs, float((out - ref).abs().max()))
                batches.append(int(x.shape[0]))
        return {"max_abs_diff": max_abs, "excess": worst, "atol": self.tolerance.atol, "rtol": self.tolerance.rtol,
                "probe_batches": batches}, session

    # -------------------------------------------------------------------------------------------- serving
    def session(self, threads: int | None = None) -> Any:
        """The runtime session for `threads` intra-op threads (default: torch's current setting)."""
        threads = int(threads or torch.get_num_threads())
        if threads not in self._sessions:
            self._sessions[threads] = self._session(self._graph, threads)
        return self._sessions[threads]

    def unsupported(self, call: DenoiserCall) -> str | None:
        if call.device.type != "cpu":
            return f"the policy runs on {call.device}, ONNX Runtime here on the CPU (use backend=cuda_graph)"
        if not isinstance(call.cond, Tensor) or call.cond.dtype != torch.float32:
            return "the conditioning is not a float32 tensor"
        if tuple(call.cond.shape[1:]) != tuple(self.shapes.cond_shape):
            return f"conditioning {tuple(call.cond.shape)} differs from the graph's [B, {self.shapes.cond_shape}]"
        if self._watch.changed():
            log.warning("rtdp: backend=onnx: the denoiser's weights changed since its graph was built; rebuilding")
            self.build()
        return None

    def forward_for(self, call: DenoiserCall) -> Forward:
        return OnnxForward(self, self.session(), call.cond, call.forward)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "graph": str(self.graph_path), "check": self.meta.get("check"),
                "export_s": self.meta.get("export_s"), "versions": self.meta.get("versions"), "spin": self.spin}


class OnnxForward:
    """One plan's evaluations through an ONNX Runtime session: `(x [B,T,Da], level) -> prediction`; inputs of
    another shape or dtype than the graph's go to the eager forward it replaced."""

    def __init__(self, backend: OnnxBackend, session: Any, cond: Tensor, eager: Forward):
        self.backend, self.session, self.eager = backend, session, eager
        self.cond = cond.detach().contiguous().numpy()
        self.shape = (backend.shapes.horizon, backend.shapes.action_dim)

    def __call__(self, x: Tensor, level: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.shape or x.shape[0] != self.cond.shape[0] or x.dtype != torch.float32:
            self.backend.notice_once(f"shape:{tuple(x.shape)}", f"input {tuple(x.shape)} {x.dtype} differs from "
                                     f"the graph's [B, {self.shape[0]}, {self.shape[1]}] float32; it runs eager")
            return self.eager(x, level)
        levels = as_position_levels(level, x)
        feeds = {"x": np.ascontiguousarray(x.detach().numpy()), "level": levels.detach().numpy(), "cond": self.cond}
        return torch.from_numpy(self.session.run([OUTPUT], feeds)[0])

    def __repr__(self) -> str:
        return f"OnnxForward({self.backend.graph_path})"
