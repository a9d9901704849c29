"""Hand-written kernels. Each imports without its compiler installed and says how to install it when called.

* ``triton_window_attention(q, k, v, bias, mask=None, *, scale)``: window attention in Triton, forward and
  backward (``(B_, nH, N, d) -> (B_, nH, N, d)``), CUDA or Triton's interpreter; docs/kernels.md.
* ``is_available()``: whether triton imports here.
* ``supports(q, bias=None, mask=None)`` / ``unsupported_reason(...)``: the gate a caller routes on.
"""

from refimpl.kernels._triton_window_attention import (
    HEAD_DIMS,
    SUPPORTED_DTYPES,
    block_sizes,
    is_available,
    supports,
    triton_window_attention,
    unsupported_reason,
)

__all__ = [
    "triton_window_attention",
    "is_available",
    "supports",
    "unsupported_reason",
    "block_sizes",
    "SUPPORTED_DTYPES",
    "HEAD_DIMS",
]
