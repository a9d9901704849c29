"""Whether the code is being traced by ``torch.compile`` (dynamo).

The eager fast paths (oneDNN's GEMM called directly, caches keyed on tensor identity and version, mask checks that
read values on the host) cannot be traced: dynamo breaks the graph at each of them, and inductor cannot lower
``mkldnn._linear_pointwise`` when the weight is not a graph constant. While compiling, the drop-ins take a plain,
branch-free route that inductor fuses by itself; the properties check that it equals the eager route.
"""

from __future__ import annotations

import torch

__all__ = ["is_compiling"]


def _detector():
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):  # torch >= 2.3
        return compiler.is_compiling
    try:  # torch 2.1 / 2.2
        from torch._dynamo import is_compiling
    except ImportError:  # pragma: no cover - torch without dynamo
        return lambda: False
    return is_compiling


is_compiling = _detector()
