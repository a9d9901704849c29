"""refimpl's WindowAttention beyond the registered properties (refimpl/suite/test_kinds.py runs those): the
tolerance baseline's own exactness, the routes it takes (one fused SDPA call, oneDNN linears, the Triton kernel's
gate), torch.compile and CUDA graphs."""

import pytest
import torch
import torch.nn.functional as F

from refimpl.counting import FUSED_CPU_SDPA_OP, ONEDNN_LINEAR_OP, dispatched_ops
from refimpl.optimized import WindowAttention
from refimpl.optimized._linear import onednn_linear_available
from refimpl.suite import properties_for, run_property
from refimpl.suite._compiled import compiled, compiled_settings, graphs_compiled
from refimpl.suite._core import Implementation, available_devices, cpu_threads
from refimpl.suite.window_attention import EAGER, KIND

COMPILED = [pytest.param(name, device, dtype, id=f"{name}-{device}-{dtype}")
            for name, dtypes in [("forward_matches_oracle", ("float32", "bfloat16")),
                                 ("gradients_match_oracle", ("float32",)),
                                 ("rows_with_no_allowed_key_attend_to_nothing", ("float32",))]
            for device in available_devices() for dtype in dtypes]


# torch 2.1.2's inductor compiles the backward of the bias-table gather wrongly at tiny shapes (window (1, 2),
# dim 1: a table gradient of -0.0023 where the oracle, eager torch 2.1.2 and compiled torch 2.13 give -0.043)
INDUCTOR_MISCOMPILES_TINY_BACKWARDS = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 2)


@pytest.mark.parametrize("name, device, dtype", COMPILED)
def test_compiled_window_attention_matches_the_oracle(name, device, dtype):
    """refimpl's WindowAttention under torch.compile (inductor, fullgraph=True), through the kind's own
    properties: inference (spatial, masked in every convention, temporal; with autograd recording and under
    no_grad) and a training step's gradients equal the oracle's, and compiled code really ran."""
    if name == "gradients_match_oracle" and INDUCTOR_MISCOMPILES_TINY_BACKWARDS:
        pytest.skip("torch 2.1's inductor miscompiles the bias-table gather's backward at tiny shapes (docs/gpu.md)")
    (prop,) = [p for p in properties_for(KIND) if p.name == name]
    target = compiled(Implementation(KIND, "refimpl.optimized:WindowAttention", WindowAttention))
    before = graphs_compiled()
    result = run_property(prop, target, device, dtype, settings=compiled_settings())
    assert result["run"] > 0 and graphs_compiled() > before


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


# ---- the attention core's gate: the Triton kernel on CUDA where it applies, SDPA otherwise ----

def _gate_module(**kwargs):
    torch.manual_seed(0)
    return WindowAttention(dim=32, num_ttokens=4, window_size=(4, 4), num_heads=2, use_temporal=False, **kwargs)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Count calls of the Triton kernel by WindowAttention (the real kernel still runs where it can)."""
    from refimpl import kernels

    calls = []
    real = kernels.triton_window_attention

    def counting(*args, **kwargs):
        calls.append(args[0].device.type)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "triton_window_attention", counting)
    return calls


@pytest.mark.parametrize("backend", ["auto", "sdpa"])
def test_cpu_calls_never_take_the_kernel_unless_asked(backend, kernel_calls):
    module = _gate_module().eval()
    module.attention_backend = backend
    x = torch.randn(4, 16, 32)
    module(x, torch.zeros(2, 16, 16))
    module.train()
    module(x).sum().backward()
    assert kernel_calls == []


def test_attention_backend_triton_refuses_dropout_and_a_learned_mask_with_the_reason():
    module = _gate_module(attn_drop=0.5).train()
    module.attention_backend = "triton"
    with pytest.raises(ValueError, match="dropout acts"):
        module(torch.randn(2, 16, 32))
    module.eval()
    mask = torch.zeros(2, 16, 16, requires_grad=True)
    with pytest.raises(ValueError, match="window mask requires grad"):
        module(torch.randn(2, 16, 32), mask)


def test_attention_backend_triton_says_why_the_kernel_cannot_run_here():
    """On CPU without Triton's interpreter (or without triton), 'triton' raises with the kernel's reason."""
    module = _gate_module().eval()
    module.attention_backend = "triton"
    with pytest.raises(ValueError, match="the kernel does not support this call: .*(triton|TRITON_INTERPRET)"):
        module(torch.randn(2, 16, 32))


def test_attention_backend_must_be_one_of_the_three():
    module = _gate_module().eval()
    module.attention_backend = "flash"
    with pytest.raises(ValueError, match="attention_backend must be 'auto', 'sdpa' or 'triton', got 'flash'"):
        module(torch.randn(2, 16, 32))


def _kernel_importable() -> bool:
    from refimpl import kernels

    return kernels.is_available()


cuda_with_triton = pytest.mark.skipif(not (torch.cuda.is_available() and _kernel_importable()),
                                      reason="needs a CUDA device and triton")


@pytest.mark.cuda
@cuda_with_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_calls_take_the_kernel_where_it_applies_and_sdpa_elsewhere(dtype, kernel_calls):
    module = _gate_module().to("cuda", dtype).eval()
    x = torch.randn(4, 16, 32, device="cuda", dtype=dtype)
    mask = torch.zeros(2, 16, 16, device="cuda", dtype=dtype)
    with torch.no_grad():
        module(x, mask)
        assert kernel_calls == ["cuda"]
        module.attention_backend = "sdpa"
        module(x, mask)
        assert kernel_calls == ["cuda"]
    odd = WindowAttention(dim=24, num_ttokens=4, window_size=(4, 4), num_heads=3, use_temporal=False)
    with torch.no_grad():
        odd.to("cuda", dtype).eval()(torch.randn(4, 16, 24, device="cuda", dtype=dtype))  # d = 8: SDPA
    assert kernel_calls == ["cuda"]
    dropped = _gate_module(attn_drop=0.1).to("cuda", dtype).train()
    dropped(x, mask)  # dropout acts: SDPA
    assert kernel_calls == ["cuda"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["auto", "sdpa"])
def test_qkv_attention_proj_is_captured_in_a_cuda_graph(backend):
    """A whole forward (qkv -> attention core -> proj, with a shifted-window mask) records into a CUDA graph, and
    replaying it on new input equals the eager forward: no host synchronization, no allocation that depends on
    data, inside the step (the mask's checks run once, at warm-up, and are cached)."""
    module = _gate_module().to("cuda", torch.bfloat16).eval()
    module.attention_backend = backend
    x = torch.randn(8, 16, 32, device="cuda", dtype=torch.bfloat16)
    mask = torch.zeros(4, 16, 16, device="cuda", dtype=torch.bfloat16)
    mask[1, :8, 8:] = -100.0
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(stream):
        for _ in range(3):  # warm-up: caches filled, kernels compiled
            module(x, mask)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        captured = module(x, mask)
    fresh = torch.randn_like(x)
    x.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    with torch.no_grad():
        expected = module(fresh, mask)
    torch.testing.assert_close(captured, expected, rtol=0, atol=0)
