"""``F.linear`` on oneDNN's matmul where that is the fast CPU GEMM.

torch's CPU ``addmm`` calls MKL's sgemm, which on the AMD EPYC (Zen) machines we measure on takes a generic code
path, far below the rate oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``, the op inductor emits for CPU
linears) reaches on the window-attention linears; oneDNN also adds the bias inside the GEMM instead of
broadcasting it into the output first (docs/benchmarks.md has the figures).
The result is the same GEMM; the properties compare every route against the float64 oracle.

Used for CPU float32 with oneDNN enabled (``torch.backends.mkldnn.enabled``) where torch has the op and
``torch.utils.flop_counter.register_flop_formula`` (torch >= 2.2): the FLOP counter knows no formula for the op,
and ``refimpl.counting.count_flops`` registers one, so the counted work stays checkable (detected by feature, as
everything else in refimpl). The op has no derivative: under autograd ``_OneDnnLinear`` supplies one, with the input
gradient ``grad_out @ W`` on oneDNN as well and the weight gradient ``grad_out^T @ x`` on ``mm`` (measured: oneDNN
is no faster there once the transposed copies are paid), written with differentiable operations so that second
derivatives work too. Everywhere else this is ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils import flop_counter

from refimpl.optimized._compiling import is_compiling

__all__ = ["linear", "onednn_linear_available"]


def _onednn_linear():
    if not (hasattr(flop_counter, "register_flop_formula") and torch.backends.mkldnn.is_available()):
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear()


def onednn_linear_available() -> bool:
    """Whether ``linear`` takes the oneDNN route for CPU float32 in this process."""
    return _ONEDNN_LINEAR is not None and torch.backends.mkldnn.enabled


def _gemm(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``rows (R, K) @ weight (M, K)^T + bias`` on oneDNN -> ``(R, M)``."""
    return _ONEDNN_LINEAR(rows, weight.contiguous(), bias, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """oneDNN's GEMM with a derivative: ``(R, K), (M, K), (M,) or None -> (R, M)``."""

    @staticmethod
    def forward(ctx, rows, weight, bias):
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        return _gemm(rows, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):  # differentiable in turn: create_graph=True records these operations
        rows, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_rows = _OneDnnLinear.apply(grad_out, weight.t(), None) if ctx.needs_input_grad[0] else None
        grad_weight = grad_out.t().mm(rows) if ctx.needs_input_grad[1] else None
        grad_bias = grad_out.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_rows, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: ``x`` ``(..., K)``, ``weight`` ``(M, K)``, ``bias`` ``(M,)`` or None ->
    ``(..., M)``; one oneDNN GEMM over the flattened rows for CPU float32 (see the module docstring)."""
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or (bias is not None and bias.dtype != torch.float32)
        or x.numel() == 0
        or not onednn_linear_available()
        or is_compiling()  # inductor emits its own oneDNN linear where the weight is a constant (freezing)
    ):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])  # a view when x is contiguous, else one copy (as F.linear would make)
    recording = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    out = _OneDnnLinear.apply(rows, weight, bias) if recording else _gemm(rows, weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])
