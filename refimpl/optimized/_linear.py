"""``F.linear`` for inference, on oneDNN's matmul where that is the fast CPU GEMM.

torch's CPU ``addmm`` calls MKL's sgemm, which on the AMD EPYC (Zen) machines we measure on takes a generic code
path: 77-102 GFLOP/s on one thread for the window-attention linears ((25088, 96) x (96, 288)), where oneDNN's matmul
(``torch.ops.mkldnn._linear_pointwise``, the op inductor emits for CPU linears) reaches 249 GFLOP/s and adds the
bias inside the GEMM instead of broadcasting it into the output first (``benchmarks/`` and the README have the
figures). The result is the same GEMM; the properties compare every route against the float64 oracle.

Used only where nothing is lost: CPU float32, autograd not recording (the op has no derivative), oneDNN enabled
(``torch.backends.mkldnn.enabled``), and torch >= 2.3, the releases whose CPU SDPA fuses a masked attention, i.e.
the fast-path regime whose FLOP count ``refimpl.counting.count_flops`` checks (it registers the op's formula).
Everywhere else this is ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["linear", "onednn_linear_available"]


def _onednn_linear():
    if tuple(int(p) for p in torch.__version__.split(".")[:2]) < (2, 3) or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear()


def onednn_linear_available() -> bool:
    """Whether ``linear`` takes the oneDNN route on CPU float32 inference in this process."""
    return _ONEDNN_LINEAR is not None and torch.backends.mkldnn.enabled


def _recording(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: ``x`` ``(..., K)``, ``weight`` ``(M, K)``, ``bias`` ``(M,)`` or None ->
    ``(..., M)``; one oneDNN GEMM over the flattened rows on CPU float32 inference (see the module docstring)."""
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or (bias is not None and bias.dtype != torch.float32)
        or x.numel() == 0
        or not onednn_linear_available()
        or _recording(x, weight, bias)
    ):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])  # a view when x is contiguous, else one copy (as F.linear would make)
    out = _ONEDNN_LINEAR(rows, weight.contiguous(), bias, "none", [], "")
    return out.reshape(*x.shape[:-1], weight.shape[0])
