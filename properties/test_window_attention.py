"""Every registered window-attention property, on every device present and every dtype it applies to."""

import pytest
import torch
import torch.nn.functional as F

from refimpl.counting import FUSED_CPU_SDPA_OP, ONEDNN_LINEAR_OP, dispatched_ops
from refimpl.optimized import WindowAttention
from refimpl.optimized._linear import onednn_linear_available
from refimpl.suite import properties_for, property_grid, run_property
from refimpl.suite._core import cpu_threads
from refimpl.suite.window_attention import EAGER, KIND

CASES = [pytest.param(prop, device, dtype, id=f"{prop.name}-{device}-{dtype}")
         for prop, device, dtype in property_grid(KIND)]


@pytest.mark.parametrize("prop, device, dtype", CASES)
def test_window_attention(prop, device, dtype, window_attention_impl):
    run_property(prop, window_attention_impl, device, dtype)


@pytest.mark.parametrize("name", ["forward_matches_oracle", "gradients_match_oracle"])
def test_eager_baseline_is_exact_in_float64(name):
    """The tolerance baseline itself agrees with the oracle in float64 (within the policy's floor)."""
    (prop,) = [p for p in properties_for(KIND) if p.name == name]
    run_property(prop, EAGER, "cpu", "float64")


# ---- the optimized module on torch's CPU SDPA kernels (docs/torch-versions.md) ----

MATH_OPS = {"bmm", "_softmax", "_safe_softmax"}


def _module_inputs():
    """refimpl's module (eval) with a 2x2 window and two windows whose masks (-100, and -inf with one row that
    allows no key) cover the cases the module turns into one combined 4-D mask."""
    torch.manual_seed(0)
    module = WindowAttention(12, 3, (2, 2), 3).eval()
    x = torch.randn(4, 4, 12)  # B_ = 2 images x nW = 2 windows
    mask = torch.zeros(2, 4, 4)
    mask[0, 0, 1:] = -100.0
    mask[1, 3, :] = float("-inf")  # query 3 of window 1 may attend to nothing
    return module, x, mask


def _cpu_sdpa_fuses_a_4d_additive_mask() -> bool:
    q = torch.zeros(1, 1, 2, 2)
    ops = dispatched_ops(F.scaled_dot_product_attention, q, q, q, attn_mask=torch.zeros(1, 1, 2, 2))
    return FUSED_CPU_SDPA_OP in ops


@pytest.mark.parametrize("call", ["spatial", "spatial-masked", "temporal"])
def test_optimized_forward_is_one_fused_sdpa_call_on_cpu(call):
    """Inference on one thread runs exactly one SDPA call, on the fused CPU kernel: the 4-D combined mask keeps SDPA
    off its math backend (no bmm or softmax anywhere in the forward)."""
    if not _cpu_sdpa_fuses_a_4d_additive_mask():
        pytest.skip(f"torch {torch.__version__}'s CPU SDPA has no fused kernel for an additive mask (it runs the math "
                    "backend, which the oracle properties cover)")
    module, x, mask = _module_inputs()
    if call == "temporal":
        x = x[:, :3]  # num_ttokens = 3
    with torch.no_grad(), cpu_threads(1):
        ops = dispatched_ops(module, x, mask if call == "spatial-masked" else None, call == "temporal")
    assert ops.count(FUSED_CPU_SDPA_OP) == 1 and not MATH_OPS & set(ops), ops


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_optimized_linears_run_onednn_for_cpu_float32_only(dtype):
    """CPU float32: the two linears are oneDNN GEMMs (``mkldnn._linear_pointwise``) in inference, and in training
    forward and backward (the input gradients; the weight gradients are ``mm``); other dtypes keep ``addmm``. (The
    oracle properties compare every route's outputs and gradients.)"""
    if not onednn_linear_available():
        pytest.skip(f"torch {torch.__version__}: the oneDNN linear route is off (no register_flop_formula before "
                    "torch 2.2, or oneDNN disabled)")
    module, x, mask = _module_inputs()
    module, x, mask = module.to(dtype), x.to(dtype), mask.to(dtype)
    with torch.no_grad():
        inference = dispatched_ops(module, x, mask)
    training = dispatched_ops(lambda: module(x.requires_grad_(), mask).sum().backward())
    onednn = 1 if dtype == torch.float32 else 0
    assert inference.count(ONEDNN_LINEAR_OP) == 2 * onednn and inference.count("addmm") == 2 * (1 - onednn), inference
    assert training.count(ONEDNN_LINEAR_OP) == 4 * onednn and training.count("addmm") == 2 * (1 - onednn), training
    assert x.grad is not None and module.qkv.weight.grad is not None


@pytest.mark.parametrize("call", ["float32 inference on 2 threads", "bfloat16 inference", "float32 training"])
def test_optimized_cpu_core_is_matmul_softmax_matmul_where_sdpa_loses(call):
    """CPU inference on more than one thread, CPU bfloat16, and CPU training with a learned bias (the mask requires
    grad) run the cached mask through matmul, softmax, matmul: no SDPA call, and so none of its math backend's
    all-masked-row checks."""
    module, x, mask = _module_inputs()
    if call == "bfloat16 inference":
        module, x, mask = module.bfloat16(), x.bfloat16(), mask.bfloat16()
    with torch.set_grad_enabled(call == "float32 training"), cpu_threads(2 if "2 threads" in call else 1):
        ops = dispatched_ops(module, x, mask)
    assert "scaled_dot_product_attention" not in " ".join(ops) and "_safe_softmax" not in ops, ops
    assert ops.count("_softmax") == 1 and ops.count("bmm") == 2, ops


def test_cached_attention_mask_holds_no_graph():
    """The mask cached for inference does not require grad on any torch version (one that did would hold an
    autograd graph and, from torch 2.3, send every CPU SDPA call to the math backend)."""
    module, x, mask = _module_inputs()
    with torch.no_grad():
        module(x, mask)
        cached = module.attention_mask(x.shape, mask)
    assert module.relative_position_bias_table.requires_grad and not cached.requires_grad


@pytest.mark.parametrize("backend", ["MATH", "FLASH_ATTENTION"])
def test_rows_with_no_allowed_key_give_proj_bias_on_each_cpu_backend(backend):
    """The fully-masked-row decision holds whichever CPU backend SDPA is forced onto (one thread, where the module
    calls SDPA): such a row outputs exactly proj.bias, every other row is finite and the same as the
    matmul-softmax-matmul route's (two threads) up to rounding (raw SDPA gives NaN there before torch 2.5 and 0
    from 2.5; the module never hands it such a row)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        pytest.skip(f"torch {torch.__version__} has no torch.nn.attention.sdpa_kernel: the backend cannot be chosen "
                    "(rows_with_no_allowed_key_attend_to_nothing covers the default one)")
    module, x, mask = _module_inputs()
    with torch.no_grad():
        with cpu_threads(2):
            matmul_route = module(x, mask)
        with cpu_threads(1), sdpa_kernel(getattr(SDPBackend, backend)):
            forced = module(x, mask)
    dead = forced[[1, 3], 3]  # query 3 of window 1, in both images
    assert torch.equal(dead, module.proj.bias.detach().expand_as(dead)), dead
    assert torch.isfinite(forced).all()
    torch.testing.assert_close(forced, matmul_route)
