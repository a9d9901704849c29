"""Map-level shifted-window attention and the mask generator: refimpl.optimized against Swin's block code and
torchvision's.

"eager" is ``refimpl.baselines.shifted_window.shifted_window_attention`` around ``EagerWindowAttention``: the mask
rebuilt on
every call from the 9-slice label loop, view/permute partition, snippet-style attention. "torchvision" is
torchvision's ``ShiftedWindowAttention`` (pads, rolls, rebuilds the mask on every call, eager attention; skipped
when not installed). "optimized" is ``refimpl.optimized.shifted_window_attention`` around ``WindowAttention``:
cached mask, cached combined bias, one SDPA call. Groups pair the variants of one workload x setting.
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
    sync,
    timed_step,
    window_attention_work,
)

from refimpl import strategies as rst
from refimpl.baselines.shifted_window import shifted_window_attention as eager_shifted_window_attention
from refimpl.baselines.shifted_window import shifted_window_mask as eager_shifted_window_mask
from refimpl.baselines.window_attention import EagerWindowAttention
from refimpl.optimized import WindowAttention, shifted_window_attention, shifted_window_mask

# name: (batch, H = W, dim, heads, window, shift)  -- Swin-T's shifted blocks at 224x224, batch 8
MAPS = {
    "map-swin-t-stage1-shift": (8, 56, 96, 3, 7, 3),
    "map-swin-t-stage3-shift": (8, 14, 384, 12, 7, 3),
}
VARIANTS = ["optimized", "eager", "torchvision"]
MASKS = {"optimized": shifted_window_mask,
         "eager": lambda H, W, ws, s, fill, *, device, dtype: eager_shifted_window_mask(H, W, ws, s).to(device, dtype)}
CASES = [
    pytest.param(workload, variant, device, dtype, denormals, mode,
                 id=f"{workload}-{variant}-{device}-{dtype}-{denormals}-{mode}")
    for workload in MAPS for variant in VARIANTS for device, dtype, denormals in settings() for mode in MODES
]


def _map_attention(variant, config, device, dtype, shift):
    """``f(x (B, H, W, C)) -> (B, H, W, C)`` and the module holding its parameters."""
    ws = config.window_size[0]
    if variant == "torchvision":
        skip_unless_installed("torchvision")
        from refimpl.peers import TorchvisionWindowAttention

        module = random_window_attention(TorchvisionWindowAttention, config, device, dtype)
        module.shift_size = [shift, shift]
        map_forward = super(type(module), module).forward  # torchvision's own map-level forward
        return map_forward, module
    module_class, function = {"optimized": (WindowAttention, shifted_window_attention),
                              "eager": (EagerWindowAttention, eager_shifted_window_attention)}[variant]
    module = random_window_attention(module_class, config, device, dtype)
    return (lambda x: function(x, module, window_size=ws, shift_size=shift)), module


@pytest.mark.parametrize("workload, variant, device, dtype, denormals, mode", CASES)
def test_shifted_window_attention(benchmark, workload, variant, device, dtype, denormals, mode):
    batch, side, dim, heads, ws, shift = MAPS[workload]
    config = rst.WindowAttentionConfig(dim=dim, num_heads=heads, window_size=(ws, ws), num_ttokens=8)
    call, module = _map_attention(variant, config, device, dtype, shift)
    x = torch.randn(batch, side, side, dim, device=device, dtype=getattr(torch, dtype))
    benchmark.group = f"{workload} {device} {mode} {dtype} {denormals}"
    rows = batch * (side // ws) ** 2
    benchmark.extra_info.update(threads=torch.get_num_threads(), ftz=denormals == "ftz",
                                **window_attention_work(dim, heads, ws * ws, rows, dtype, mode))
    run = timed_step(call, x, module, mode, device)
    with denormal_setting(denormals):
        out = benchmark.pedantic(run, rounds=7, warmup_rounds=2, iterations=1)
    record_rates(benchmark)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("variant", list(MASKS))
@pytest.mark.parametrize("device", sorted({device for device, *_ in settings()}))
def test_shifted_window_mask(benchmark, variant, device):
    """The mask alone at Swin-T stage 1 (56x56, window 7, shift 3): a cache hit against a rebuild."""
    benchmark.group = f"mask-56x56-ws7-s3 {device} forward float32 -"
    make = MASKS[variant]

    def run():
        mask = make(56, 56, 7, 3, -100.0, device=device, dtype=torch.float32)
        sync(device)
        return mask

    mask = benchmark.pedantic(run, rounds=20, warmup_rounds=2, iterations=1)
    assert mask.shape == (64, 49, 49)
