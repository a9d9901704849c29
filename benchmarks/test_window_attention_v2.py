"""Swin V2 window attention: refimpl's ``WindowAttentionV2`` (cached continuous position bias, one fused attention
call), the upstream-faithful code (``refimpl.baselines.window_attention_v2``: the position-bias MLP run and the bias
gathered on every call, explicit softmax) and timm's Swin V2 attention, side by side at Swin-V2-T stage 1 (window
8, C 96, 3 heads), forward and forward+backward. Grouped and reported as the V1 benchmarks are (``report.py``).
"""

import numpy as np
import pytest
import torch
from _support import MODES, denormal_setting, record_rates, settings, skip_unless_installed, timed_step

from refimpl import reference
from refimpl import strategies as rst
from refimpl.baselines.window_attention_v2 import WindowAttention as FaithfulWindowAttentionV2
from refimpl.flops import macs_to_flops, swin_v2_window_attention_macs
from refimpl.optimized import WindowAttentionV2

# name: (dim, heads, window, B_ rows, shifted map (H, W, shift) or None); 256 px input -> a 64x64 stage-1 map
WORKLOADS = {
    "swin-v2-t-stage1-shift": (96, 3, 8, 128, (64, 64, 4)),  # two 256 px images: 2 x 64 windows, shift 4
    "swin-v2-t-stage1": (96, 3, 8, 128, None),
}
VARIANTS = ["optimized", "eager", "timm"]


def _module(variant, dim, heads, ws, device, dtype):
    if variant == "timm":
        skip_unless_installed("timm")
        from refimpl.peers import TimmWindowAttentionV2 as cls
    else:
        cls = {"optimized": WindowAttentionV2, "eager": FaithfulWindowAttentionV2}[variant]
    config = rst.WindowAttentionV2Config(dim=dim, num_heads=heads, window_size=(ws, ws))
    params = rst.random_window_attention_v2_params(config, np.random.default_rng(0))
    module = cls(**config.kwargs())
    module.load_state_dict({k: torch.as_tensor(a, dtype=torch.float32) for k, a in params.items()}, strict=False)
    return module.to(device=device, dtype=getattr(torch, dtype)).eval()


CASES = [
    pytest.param(workload, variant, device, dtype, denormals, mode,
                 id=f"{workload}-{variant}-{device}-{dtype}-{denormals}-{mode}")
    for workload in WORKLOADS for variant in VARIANTS
    for device, dtype, denormals in settings() for mode in MODES
]


@pytest.mark.parametrize("workload, variant, device, dtype, denormals, mode", CASES)
def test_window_attention_v2(benchmark, workload, variant, device, dtype, denormals, mode):
    dim, heads, ws, rows, shifted = WORKLOADS[workload]
    module = _module(variant, dim, heads, ws, device, dtype)
    x = torch.randn(rows, ws * ws, dim, device=device, dtype=getattr(torch, dtype))
    mask = None
    if shifted is not None:
        h, w, s = shifted
        mask = torch.as_tensor(reference.shifted_window_mask(h, w, ws, s), dtype=x.dtype, device=device)
    benchmark.group = f"{workload} {device} {mode} {dtype} {denormals}"
    flop = macs_to_flops(swin_v2_window_attention_macs(dim, heads, (ws, ws), windows=rows))
    benchmark.extra_info.update(threads=torch.get_num_threads(), ftz=denormals == "ftz",
                                flop=flop * (3 if mode == "forward+backward" else 1))
    run = timed_step(lambda t: module(t, mask), x, module, mode, device)
    with denormal_setting(denormals):
        out = benchmark.pedantic(run, rounds=7, warmup_rounds=2, iterations=1)
    record_rates(benchmark)
    assert out.shape == x.shape and torch.isfinite(out).all()
