"""`backend=cuda_graph`: the fixed-shape denoiser call captured as a CUDA graph and replayed per evaluation.

At batch 1 a GPU evaluation of these small denoisers is bound by kernel launches (hundreds per call), not by
arithmetic; replaying a captured graph issues them as one. One graph is captured per batch size (the control
loop's 1 at build, others on first use) on static input buffers that each evaluation copies into; the output
is cloned out. Each graph has its own memory pool (these denoisers need a few MB), so graphs of different batch
sizes can be replayed in any order. Precision: bf16 autocast where the denoiser passes the bf16 check against
float32 eager on seeded probes (`precision=auto`), else float32; every captured graph is checked against eager
on its own static inputs before it is used: a bf16 graph that misses makes every graph float32 (`auto`), a
float32 one that misses is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

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

FP32_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-4)  # the same kernels, replayed
BF16_TOLERANCE = Tolerance(atol=5e-2, rtol=5e-2)  # bf16 keeps 8 mantissa bits; outputs are O(1) noise estimates
PRECISIONS = ("auto", "bf16", "fp32")
WARMUP_RUNS = 3  # eager runs on a side stream before capture (cuBLAS/cuDNN pick and allocate their workspaces)


@dataclass
class Captured:
    """One captured graph: its static inputs, its output buffer and how it compared with eager."""

    graph: Any
    x: Tensor
    level: Tensor
    cond: Tensor
    out: Tensor
    check: dict[str, float]


def capture(fn: Any, inputs: tuple[Tensor, ...]) -> tuple[Any, Tensor]:
    """A CUDA graph of `fn(*inputs)` and its output buffer (warm-up on a side stream, as torch's docs do)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_RUNS):
            fn(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*inputs)
    return graph, out


class CudaGraphBackend(Backend):
    """The denoiser's evaluations replayed from CUDA graphs (one per batch size), bf16 where it is safe."""

    name = "cuda_graph"

    def __init__(self, denoiser: nn.Module, shapes: GraphShapes, precision: str = "auto",
                 batches: tuple[int, ...] = (1,)):
        super().__init__(denoiser, shapes)
        if precision not in PRECISIONS:
            raise BackendError(f"backend=cuda_graph: precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if not torch.cuda.is_available():
            raise BackendError("backend=cuda_graph needs a CUDA device and none is visible; use backend=eager or onnx")
        self.device = next(denoiser.parameters()).device
        if self.device.type != "cuda":
            raise BackendError(f"backend=cuda_graph: the policy is on {self.device}; load it with device=cuda")
        self._graphs: dict[int, Captured] = {}
        self.wanted = precision
        self.precision_check: dict[str, float] = {}
        with torch.no_grad():
            self.precision = self._choose_precision(precision)
            for batch in batches:
                self.graph(batch)
        self._watch = WeightsWatch(denoiser)

    @property
    def tolerance(self) -> Tolerance:  # type: ignore[override]
        return BF16_TOLERANCE if self.precision == "bf16" else FP32_TOLERANCE

    def _run(self, x: Tensor, level: Tensor, cond: Tensor) -> Tensor:
        """The function captured: the denoiser, under bf16 autocast when chosen (its output back in float32)."""
        if self.precision == "bf16":
            # no autocast weight cache inside a capture: cached casts would be freed behind the graph's back
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                return self.denoiser(x, level, cond).float()
        return self.denoiser(x, level, cond)

    def _choose_precision(self, wanted: str) -> str:
        if wanted == "fp32":
            return "fp32"
        if not torch.cuda.is_bf16_supported():
            if wanted == "bf16":
                raise BackendError(f"backend=cuda_graph precision=bf16: {torch.cuda.get_device_name(self.device)} "
                                   "has no bf16; use precision=fp32")
            return "fp32"
        self.precision = "bf16"
        excess, max_abs = 0.0, 0.0
        for x, level, cond in self.shapes.probes(device=self.device):
            ref = self.denoiser(x, level, cond)
            out = self._run(x, level, cond)
            excess = max(excess, BF16_TOLERANCE.excess(out, ref))
            max_abs = max(max_abs, float((out - ref).abs().max()))
        self.precision_check = {"bf16_max_abs_diff": max_abs, "bf16_excess": excess}
        if excess <= 1:
            return "bf16"
        if wanted == "bf16":
            raise BackendError(f"backend=cuda_graph precision=bf16 misses float32 eager (max abs diff {max_abs:.3g} "
                               f"beyond {BF16_TOLERANCE}); use precision=auto or fp32")
        self.notice_once("bf16", f"bf16 misses float32 eager (max abs diff {max_abs:.3g}); capturing in float32")
        return "fp32"

    def graph(self, batch: int) -> Captured:
        """The captured graph for `batch` rows (captured and checked against eager on first use)."""
        if batch in self._graphs:
            return self._graphs[batch]
        x, level, cond = self.shapes.probes(batches=(batch,), device=self.device, seed=batch)[0]
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            with torch.no_grad():
                try:
                    graph, out = capture(self._run, (x, level, cond))
                except Exception as err:  # noqa: BLE001 - a capture failure names the way out in one line
                    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    raise BackendError(f"cannot capture {type(self.denoiser).__name__} as a CUDA graph "
                                       f"({type(err).__name__}: {first[:200]}); use backend=eager") from None
                graph.replay()
                ref = self.denoiser(x, level, cond)
                check = {"max_abs_diff": float((out - ref).abs().max()), "excess": self.tolerance.excess(out, ref)}
        finally:
            self.denoiser.train(was_training)
        if check["excess"] > 1 and self.precision == "bf16" and self.wanted == "auto":
            self.notice_once("bf16-graph", f"the bf16 graph at batch {batch} misses eager (max abs diff "
                                           f"{check['max_abs_diff']:.3g}); capturing every graph in float32")
            self.precision = "fp32"
            batches = (*self._graphs, batch)
            self._graphs.clear()
            for b in batches:
                self.graph(b)
            return self._graphs[batch]
        if check["excess"] > 1:
            raise BackendError(f"the CUDA graph of {type(self.denoiser).__name__} at batch {batch} ({self.precision}) "
                               f"misses eager: max abs diff {check['max_abs_diff']:.3g} beyond {self.tolerance}; "
                               "use backend=eager")
        self._graphs[batch] = Captured(graph, x, level, cond, out, check)
        return self._graphs[batch]

    def unsupported(self, call: DenoiserCall) -> str | None:
        if call.device != self.device:
            return f"the policy runs on {call.device}, the graphs were captured on {self.device}"
        if not isinstance(call.cond, Tensor) or tuple(call.cond.shape[1:]) != tuple(self.shapes.cond_shape):
            return f"the conditioning differs from the graphs' [B, {self.shapes.cond_shape}]"
        if self._watch.changed():
            # the graphs read the parameters in place, so new values reach them; recapture anyway to re-check
            log.warning("rtdp: backend=cuda_graph: the denoiser's weights changed; recapturing its graphs")
            batches = tuple(self._graphs)
            self._graphs.clear()
            with torch.no_grad():
                for batch in batches:
                    self.graph(batch)
            self._watch = WeightsWatch(self.denoiser)
        return None

    def forward_for(self, call: DenoiserCall) -> Forward:
        return CudaGraphForward(self, call.cond, call.forward)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "precision": self.precision, **self.precision_check,
                "graphs": {b: c.check for b, c in self._graphs.items()}}


class CudaGraphForward:
    """One plan's evaluations replayed from the graph of their batch size; other shapes run eager."""

    def __init__(self, backend: CudaGraphBackend, cond: Tensor, eager: Forward):
        self.backend, self.cond, self.eager = backend, cond, eager
        self.shape = (backend.shapes.horizon, backend.shapes.action_dim)

    def __call__(self, x: Tensor, level: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.shape or x.shape[0] != self.cond.shape[0] or x.dtype != torch.float32:
            self.backend.notice_once(f"shape:{tuple(x.shape)}", f"input {tuple(x.shape)} {x.dtype} differs from "
                                     f"the graphs' [B, {self.shape[0]}, {self.shape[1]}] float32; it runs eager")
            return self.eager(x, level)
        cap = self.backend.graph(int(x.shape[0]))
        cap.x.copy_(x)
        cap.level.copy_(as_position_levels(level, x))
        cap.cond.copy_(self.cond)
        cap.graph.replay()
        return cap.out.clone()
