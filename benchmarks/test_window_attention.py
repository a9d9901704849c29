"""Window attention: refimpl's optimized WindowAttention, the source-snippet-style eager code and the peers' code
paths, side by side.

Variants: "optimized" (``refimpl.optimized.WindowAttention``: cached combined mask, one SDPA call, oneDNN linears
on CPU float32 inference), "eager" (``refimpl.baselines.window_attention.EagerWindowAttention``: bias gathered every
call, 5-D mask
add, softmax, matmul), "timm" (timm's ``WindowAttention`` as timm runs it by default: the same eager math) and
"timm-fused" (its SDPA path, ``fused_attn = True``, which builds the (B_, nH, N, N) mask on every call); the peers
run spatial workloads only and are skipped when not installed. Each benchmark group is one workload x device x
mode x dtype x denormal setting, so a table puts the variants of one workload side by side.
Run: ``pytest benchmarks --benchmark-json=bench.json`` then ``python benchmarks/report.py bench.json``.
"""

import pytest
import torch
from _support import (
    MODES,
    denormal_setting,
    random_window_attention,
    record_rates,
    settings,
    skip_unless_installed,
    timed_step,
    window_attention_work,
)

from refimpl import reference
from refimpl import strategies as rst
from refimpl.baselines.window_attention import EagerWindowAttention
from refimpl.optimized import WindowAttention

# name: (dim, heads, window, B_ rows, shifted map (H, W, shift) or None, temporal tokens or None)
WORKLOADS = {
    "swin-t-stage1-shift": (96, 3, 7, 512, (56, 56, 3), None),
    "swin-t-stage1": (96, 3, 7, 512, None, None),
    "swin-t-stage3-shift": (384, 12, 7, 32, (14, 14, 3), None),
    "swin-t-stage3": (384, 12, 7, 32, None, None),
    "temporal-t8": (96, 3, 7, 1568, None, 8),
    "temporal-t16": (192, 6, 7, 784, None, 16),
}
# issue 8's CUDA target shape (Swin-T stage 1, batch 64): GPU only, too slow to be worth timing on a CPU
CUDA_WORKLOADS = {"swin-t-stage1-shift-b64": (96, 3, 7, 4096, (56, 56, 3), None)}
WORKLOADS.update(CUDA_WORKLOADS)
VARIANTS = ["optimized", "eager", "timm", "timm-fused"]
# What a compiling user gets: torch.compile (inductor, default mode) of refimpl's module, of the seed-style eager
# code and of timm's. Compiling costs 10-60 s per variant, so only these workloads have compiled variants, and CI's
# smoke run deselects them (``-m "not compiled"``).
COMPILED_VARIANTS = ["optimized-compiled", "eager-compiled", "timm-compiled"]
COMPILED_WORKLOADS = {"swin-t-stage1-shift", "temporal-t8", "swin-t-stage1-shift-b64"}
# On CUDA only: refimpl's module with the Triton kernel switched off (SDPA with the cached mask), and
# FlexAttention with the bias and mask as a score_mod (a baseline, compiled as FlexAttention must be).
CUDA_VARIANTS = ["optimized-sdpa", "flex-attention"]


def _module_class(variant):
    if variant == "flex-attention":
        from _support import FlexWindowAttention

        return FlexWindowAttention
    variant = variant.removesuffix("-compiled").removesuffix("-sdpa")
    if variant.startswith("timm"):
        skip_unless_installed("timm")
        from refimpl.peers import TimmWindowAttention

        return TimmWindowAttention
    return {"optimized": WindowAttention, "eager": EagerWindowAttention}[variant]


def _setup(workload, variant, device, dtype):
    dim, heads, ws, rows, shifted, t_tokens = WORKLOADS[workload]
    config = rst.WindowAttentionConfig(dim=dim, num_heads=heads, window_size=(ws, ws), num_ttokens=t_tokens or 8)
    module = random_window_attention(_module_class(variant), config, device, dtype)
    if variant == "timm-fused":
        module.fused_attn = True
    if variant == "optimized-sdpa":
        module.attention_backend = "sdpa"
    n = t_tokens or ws * ws
    x = torch.randn(rows, n, dim, device=device, dtype=getattr(torch, dtype))
    mask = None
    if shifted is not None:
        h, w, s = shifted
        mask = torch.as_tensor(reference.shifted_window_mask(h, w, ws, s), dtype=x.dtype, device=device)
    return module, x, mask, t_tokens is not None


def _variants(workload, device):
    variants = VARIANTS + (COMPILED_VARIANTS if workload in COMPILED_WORKLOADS else [])
    return variants + (CUDA_VARIANTS if device == "cuda" else [])


def _marks(variant):
    return [pytest.mark.compiled] if variant.endswith("-compiled") or variant == "flex-attention" else []


CASES = [
    pytest.param(workload, variant, device, dtype, denormals, mode,
                 id=f"{workload}-{variant}-{device}-{dtype}-{denormals}-{mode}", marks=_marks(variant))
    for workload, (*_, t_tokens) in WORKLOADS.items()
    for device, dtype, denormals in settings() if device == "cuda" or workload not in CUDA_WORKLOADS
    for variant in _variants(workload, device)
    if not (t_tokens and (variant.startswith("timm") or variant == "flex-attention"))  # spatial only
    for mode in MODES
]


@pytest.mark.parametrize("workload, variant, device, dtype, denormals, mode", CASES)
def test_window_attention(benchmark, workload, variant, device, dtype, denormals, mode):
    module, x, mask, temporal = _setup(workload, variant, device, dtype)
    dim, heads, ws, rows, _, t_tokens = WORKLOADS[workload]
    benchmark.group = f"{workload} {device} {mode} {dtype} {denormals}"
    benchmark.extra_info.update(threads=torch.get_num_threads(), ftz=denormals == "ftz",
                                **window_attention_work(dim, heads, t_tokens or ws * ws, rows, dtype, mode))
    call = (lambda x: module(x, mask)) if variant.startswith("timm") else (lambda x: module(x, mask, temporal))
    if variant.endswith("-compiled"):
        call = torch.compile(call)  # inductor, default mode; the warm-up rounds pay the compile
    run = timed_step(call, x, module, mode, device)
    with denormal_setting(denormals):
        out = benchmark.pedantic(run, rounds=7, warmup_rounds=2, iterations=1)
    record_rates(benchmark)
    assert out.shape == x.shape and torch.isfinite(out).all()
