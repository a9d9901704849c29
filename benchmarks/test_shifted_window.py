"""Map-level shifted-window attention and the mask generator: refimpl.optimized against Swin's block code.

"eager" is ``refimpl.eager.eager_shifted_window_attention`` around ``EagerWindowAttention``: the mask rebuilt on
every call from the 9-slice label loop (as torchvision does), view/permute partition, snippet-style attention.
"optimized" is ``refimpl.optimized.shifted_window_attention`` around ``WindowAttention``: cached mask, cached
combined bias, one SDPA call. Forward only, float32, under ``torch.inference_mode``; groups pair the variants.
"""

import pytest
import torch

from refimpl import strategies as rst
from refimpl.eager import EagerWindowAttention, eager_shifted_window_attention, eager_shifted_window_mask
from refimpl.optimized import WindowAttention, shifted_window_attention, shifted_window_mask

from _support import DEVICES, random_window_attention, sync

# name: (batch, H = W, dim, heads, window, shift)  -- Swin-T's shifted blocks at 224x224, batch 8
MAPS = {
    "map-swin-t-stage1-shift": (8, 56, 96, 3, 7, 3),
    "map-swin-t-stage3-shift": (8, 14, 384, 12, 7, 3),
}
VARIANTS = {
    "optimized": (WindowAttention, shifted_window_attention),
    "eager": (EagerWindowAttention, eager_shifted_window_attention),
}
MASKS = {"optimized": shifted_window_mask, "eager": eager_shifted_window_mask}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("workload", list(MAPS))
def test_shifted_window_attention_forward(benchmark, workload, variant, device, flush_denormal):
    batch, side, dim, heads, ws, shift = MAPS[workload]
    config = rst.WindowAttentionConfig(dim=dim, num_heads=heads, window_size=(ws, ws), num_ttokens=8)
    module_class, map_attention = VARIANTS[variant]
    module = random_window_attention(module_class, config, device)
    x = torch.randn(batch, side, side, dim, device=device)
    benchmark.group = f"{workload} {device} {'ftz' if flush_denormal else 'denormals'}"
    benchmark.extra_info.update(threads=torch.get_num_threads(), ftz=flush_denormal)

    def run():
        with torch.inference_mode():
            out = map_attention(x, module, window_size=ws, shift_size=shift)
        sync(device)
        return out

    out = benchmark.pedantic(run, rounds=7, warmup_rounds=2, iterations=1)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", list(MASKS))
def test_shifted_window_mask(benchmark, variant, device):
    """The mask alone at Swin-T stage 1 (56x56, window 7, shift 3): a cache hit against a rebuild."""
    benchmark.group = f"mask-56x56-ws7-s3 {device} -"
    make = MASKS[variant]

    def run():
        mask = make(56, 56, 7, 3, -100.0, device=device, dtype=torch.float32)
        sync(device)
        return mask

    mask = benchmark.pedantic(run, rounds=20, warmup_rounds=2, iterations=1)
    assert mask.shape == (64, 49, 49)
