"""Video Swin 3-D window attention at map level: refimpl's drop-in, Video Swin's code and torchvision's, side by side
at Video Swin-T stage 1 (window (8, 7, 7), C 96, 3 heads; a 32-frame 224 px clip after the (2, 4, 4) patch embedding
is 16x56x56; batch 1: 128 windows of 392 tokens), with the block's shift (4, 3, 3) and without, forward and
forward+backward.

Variants: "optimized" (``refimpl.optimized.shifted_window_attention_3d`` around ``WindowAttention3D``: one cached
gather for pad + roll + partition, the cached mask and combined bias, one fused SDPA call per clip, oneDNN linears
in CPU float32 inference); "eager" (``refimpl.baselines.shifted_window_3d``: Video Swin's block code around its
``WindowAttention3D``, the bias gathered on every call, a 5-D mask add, softmax, matmul; its ``compute_mask`` is
``lru_cache``d, as upstream's); "torchvision" (torchvision's ``ShiftedWindowAttention3d``: pads, rolls, builds
the mask on every call, eager attention; skipped when torchvision is not installed); and compiled variants of the
first two (``compiled`` marker: CI's smoke run deselects them) for the shifted workload. Reported by ``report.py``
like the other kinds: ``pytest benchmarks/test_window_attention_3d.py --benchmark-json=...``.
"""

import numpy as np
import pytest
import torch
from _support import (
    MODES,
    denormal_setting,
    record_rates,
    settings,
    skip_unless_installed,
    timed_step,
    window_attention_work,
)

from refimpl.baselines.shifted_window_3d import shifted_window_attention_3d as video_swin_attention_3d
from refimpl.baselines.window_attention_3d import WindowAttention3D as FaithfulWindowAttention3D
from refimpl.optimized import WindowAttention3D, shifted_window_attention_3d

# name: (batch, (D, H, W), dim, heads, window, shift)
CLIPS = {
    "video-swin-t-stage1-shift": (1, (16, 56, 56), 96, 3, (8, 7, 7), (4, 3, 3)),
    "video-swin-t-stage1": (1, (16, 56, 56), 96, 3, (8, 7, 7), (0, 0, 0)),
}
VARIANTS = ["optimized", "eager", "torchvision"]
# Compiling costs 20-60 s per variant here: only the shifted workload has compiled variants.
COMPILED_VARIANTS = ["optimized-compiled", "eager-compiled"]
COMPILED_WORKLOADS = {"video-swin-t-stage1-shift"}


def _params(dim, heads, window, rng) -> dict:
    """The same parameters for every variant: Video Swin's keys, tables at scale 0.5 and qkv biases (what default
    init hides), linears at 1/sqrt(C)."""
    rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    return {
        "relative_position_bias_table": rng.normal(0.0, 0.5, (rows, heads)),
        "qkv.weight": rng.normal(0.0, dim**-0.5, (3 * dim, dim)),
        "qkv.bias": rng.normal(0.0, 0.5, 3 * dim),
        "proj.weight": rng.normal(0.0, dim**-0.5, (dim, dim)),
        "proj.bias": rng.normal(0.0, 0.5, dim),
    }


def _map_attention(variant, dim, heads, window, shift, device, dtype):
    """``f(x (B, D, H, W, C)) -> (B, D, H, W, C)`` and the module holding its parameters."""
    base = variant.removesuffix("-compiled")
    if base == "torchvision":
        skip_unless_installed("torchvision")
        from refimpl.peers import _import_torchvision

        _import_torchvision()  # torchvision's fake-op registrations need the shim on a CPU-only torch
        from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

        module = ShiftedWindowAttention3d(dim, list(window), list(shift), heads, qkv_bias=True)
    else:
        module_class = {"optimized": WindowAttention3D, "eager": FaithfulWindowAttention3D}[base]
        module = module_class(dim, window, heads, qkv_bias=True)
    params = _params(dim, heads, window, np.random.default_rng(0))
    module.load_state_dict({k: torch.as_tensor(a, dtype=torch.float32) for k, a in params.items()}, strict=False)
    module = module.to(device=device, dtype=getattr(torch, dtype)).eval()
    if base == "torchvision":
        return module, module
    function = {"optimized": shifted_window_attention_3d, "eager": video_swin_attention_3d}[base]
    return (lambda x: function(x, module, window_size=window, shift_size=shift)), module


def _marks(variant):
    return [pytest.mark.compiled] if variant.endswith("-compiled") else []


CASES = [
    pytest.param(workload, variant, device, dtype, denormals, mode,
                 id=f"{workload}-{variant}-{device}-{dtype}-{denormals}-{mode}", marks=_marks(variant))
    for workload in CLIPS
    for variant in VARIANTS + (COMPILED_VARIANTS if workload in COMPILED_WORKLOADS else [])
    for device, dtype, denormals in settings() for mode in MODES
]


@pytest.mark.parametrize("workload, variant, device, dtype, denormals, mode", CASES)
def test_window_attention_3d(benchmark, workload, variant, device, dtype, denormals, mode):
    batch, clip, dim, heads, window, shift = CLIPS[workload]
    call, module = _map_attention(variant, dim, heads, window, shift, device, dtype)
    if variant.endswith("-compiled"):
        call = torch.compile(call)  # inductor, default mode; the warm-up rounds pay the compile
    x = torch.randn(batch, *clip, dim, device=device, dtype=getattr(torch, dtype))
    benchmark.group = f"{workload} {device} {mode} {dtype} {denormals}"
    rows = batch * int(np.prod([side // w for side, w in zip(clip, window, strict=True)]))  # no padding here
    benchmark.extra_info.update(threads=torch.get_num_threads(), ftz=denormals == "ftz",
                                **window_attention_work(dim, heads, int(np.prod(window)), rows, dtype, mode))
    run = timed_step(call, x, module, mode, device)
    with denormal_setting(denormals):
        out = benchmark.pedantic(run, rounds=7, warmup_rounds=2, iterations=1)
    record_rates(benchmark)
    assert out.shape == x.shape and torch.isfinite(out).all()
