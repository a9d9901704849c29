"""refimpl's optimized WindowAttention against the source-snippet-style eager code, side by side.

Each benchmark group is one workload x denormal setting, so ``--benchmark-group-by=group`` puts the two
variants next to each other. Forward only, float32, under ``torch.inference_mode``.
Run: ``pytest benchmarks --benchmark-json=bench.json`` then ``python benchmarks/report.py bench.json``.
"""

import numpy as np
import pytest
import torch

from refimpl import reference
from refimpl import strategies as rst
from refimpl.eager import EagerWindowAttention
from refimpl.optimized import WindowAttention

from _support import DEVICES, random_window_attention, sync

# name: (dim, heads, window, B_ rows, shifted map (H, W, shift) or None, temporal tokens or None)
WORKLOADS = {
    "swin-t-stage1-shift": (96, 3, 7, 512, (56, 56, 3), None),
    "swin-t-stage1": (96, 3, 7, 512, None, None),
    "swin-t-stage3-shift": (384, 12, 7, 32, (14, 14, 3), None),
    "swin-t-stage3": (384, 12, 7, 32, None, None),
    "temporal-t8": (96, 3, 7, 1568, None, 8),
    "temporal-t16": (192, 6, 7, 784, None, 16),
}
VARIANTS = {"optimized": WindowAttention, "eager": EagerWindowAttention}


def _setup(workload, variant, device):
    dim, heads, ws, rows, shifted, t_tokens = WORKLOADS[workload]
    config = rst.WindowAttentionConfig(dim=dim, num_heads=heads, window_size=(ws, ws), num_ttokens=t_tokens or 8)
    module = random_window_attention(VARIANTS[variant], config, device)
    n = t_tokens or ws * ws
    x = torch.randn(rows, n, dim, device=device)
    mask = None
    if shifted is not None:
        h, w, s = shifted
        mask = torch.as_tensor(reference.shifted_window_mask(h, w, ws, s), dtype=torch.float32, device=device)
    flops = reference.window_attention_flops(dim, heads, n, 1) * rows  # attention-core MACs of this call
    return module, x, mask, t_tokens is not None, flops


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_window_attention_forward(benchmark, workload, variant, device, flush_denormal):
    module, x, mask, temporal, macs = _setup(workload, variant, device)
    benchmark.group = f"{workload} {device} {'ftz' if flush_denormal else 'denormals'}"
    benchmark.extra_info.update(attention_core_macs=macs, threads=torch.get_num_threads(), ftz=flush_denormal)

    def run():
        with torch.inference_mode():
            out = module(x, mask, temporal)
        sync(device)
        return out

    out = benchmark.pedantic(run, rounds=7, warmup_rounds=2, iterations=1)
    assert out.shape == x.shape and torch.isfinite(out).all()
