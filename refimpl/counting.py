"""Counting the work torch actually does, to cross-check the analytic formulas of ``refimpl.flops``.

``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-accumulate of every matmul and
convolution (padding charged like real input, biases and elementwise work not counted). On CPU, torch 2.3 and
later run ``F.scaled_dot_product_attention`` as ``aten._scaled_dot_product_flash_attention_for_cpu``, which has
no formula, so the counter silently counts the attention core as 0. ``count_flops``
registers the formula the counter already uses for the CUDA flash op on that CPU op first, once. Before 2.3 there
is no such op (and before 2.2 no ``register_flop_formula``), and nothing is needed: CPU SDPA runs the flash op the
counter knows (no mask) or decomposes into ``bmm`` (with a mask), so the counter is right as it is
(docs/torch-versions.md). The same holds for oneDNN's linear (``mkldnn._linear_pointwise``), which refimpl's
optimized modules run for CPU float32 where this registration is possible (``refimpl.optimized._linear``):
``count_flops`` registers ``2 * rows * in * out``, the counter's ``addmm`` formula.
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["count_flops", "cpu_sdpa_formula_registered", "dispatched_ops", "FUSED_CPU_SDPA_OP", "ONEDNN_LINEAR_OP"]

FUSED_CPU_SDPA_OP = "_scaled_dot_product_flash_attention_for_cpu"  # CPU SDPA's fused kernel, torch >= 2.3
_CPU_SDPA = getattr(torch.ops.aten, FUSED_CPU_SDPA_OP, None)
ONEDNN_LINEAR_OP = "_linear_pointwise"  # oneDNN's CPU linear (``torch.ops.mkldnn``), no formula in the counter


def cpu_sdpa_formula_registered() -> bool:
    """Register (once) and report whether the counter has a formula for CPU SDPA: ``4 * B * nH * Sq * Sk * d``
    FLOPs, ``sdpa_flop_count`` as for the CUDA kernels. False where torch lacks the op or the API (before 2.2)."""
    if _CPU_SDPA is None or not hasattr(flop_counter, "register_flop_formula"):
        return False
    if _CPU_SDPA not in flop_counter.flop_registry:

        def cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

        flop_counter.register_flop_formula(_CPU_SDPA)(cpu_sdpa_flop)
    return True


def _register_onednn_linear_formula() -> None:
    """``x (rows, in) @ weight (out, in)^T``: ``2 * rows * in * out`` FLOPs, as the counter charges ``addmm``
    (where torch has the op and ``register_flop_formula``: exactly where ``refimpl.optimized._linear`` uses it)."""
    if not hasattr(flop_counter, "register_flop_formula"):
        return
    try:
        op = getattr(torch.ops.mkldnn, ONEDNN_LINEAR_OP)
    except (AttributeError, RuntimeError):
        return
    if op in flop_counter.flop_registry:
        return

    def onednn_linear_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        rows = 1
        for size in x_shape[:-1]:
            rows *= size
        return 2 * rows * x_shape[-1] * w_shape[0]

    flop_counter.register_flop_formula(op)(onednn_linear_flop)


def count_flops(fn, *args, **kwargs) -> tuple[int, dict[str, int]]:
    """``(total FLOPs, FLOPs per aten op)`` of ``fn(*args, **kwargs)`` under ``FlopCounterMode`` (2 per MAC), with
    the formulas of CPU SDPA and oneDNN's linear registered."""
    cpu_sdpa_formula_registered()
    _register_onednn_linear_formula()
    with flop_counter.FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def dispatched_ops(fn, *args, **kwargs) -> list[str]:
    """Names of the aten ops ``fn(*args, **kwargs)`` runs, in order: e.g. ``FUSED_CPU_SDPA_OP`` when CPU SDPA takes
    its fused kernel, ``"bmm"`` and ``"_softmax"`` when it decomposes into its math backend."""
    with _OpRecorder() as recorder:
        fn(*args, **kwargs)
    return recorder.names
