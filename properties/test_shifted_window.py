"""refimpl.optimized's window functions against the oracle: partition / reverse (exact: they are permutations),
the mask in its three conventions, the mask cache, and the map-level function forward and backward."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import optimized, reference
from refimpl import strategies as rst
from refimpl.suite import DTYPES, Implementation, available_devices
from refimpl.suite._compiled import COMPILED_EXAMPLES, graphs_compiled, inductor_counting
from refimpl.suite.window_attention import (
    _modules,
    assert_gradients_close,
    gradients_of,
    map_forward,
    map_gradients,
    rounded_map_case,
    to_tensor,
)
from refimpl.tolerance import assert_close

WINDOW_ATTENTION = Implementation("window_attention", "refimpl.optimized:WindowAttention", optimized.WindowAttention)

devices = st.sampled_from(available_devices())


@given(rst.shifted_window_configs(), st.integers(1, 3), st.integers(1, 3), devices)
def test_partition_and_reverse_equal_the_oracle_exactly(geometry, batch, channels, device):
    H, W, ws, _ = geometry.args
    x = np.random.default_rng(batch).standard_normal((batch, H, W, channels))
    windows = optimized.window_partition(torch.as_tensor(x, device=device), ws)
    np.testing.assert_array_equal(windows.cpu().numpy(), reference.window_partition(x, ws))
    np.testing.assert_array_equal(optimized.window_reverse(windows, ws, H, W).cpu().numpy(), x)


@given(rst.shifted_window_configs(), st.sampled_from([-100.0, -np.inf]), devices)
def test_mask_conventions_equal_the_oracle(geometry, fill, device):
    """Additive masks equal the oracle's with the same fill; the boolean one is exactly "oracle == 0"."""
    expected = reference.shifted_window_mask(*geometry.args, fill=fill)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        mask = optimized.shifted_window_mask(*geometry.args, fill, device=device, dtype=dtype)
        assert mask.dtype == dtype and mask.device.type == device
        np.testing.assert_array_equal(mask.double().cpu().numpy(), expected)
    allowed = optimized.shifted_window_mask(*geometry.args, device=device, dtype=torch.bool)
    np.testing.assert_array_equal(allowed.cpu().numpy(), expected == 0)


def test_mask_is_cached_per_geometry_fill_device_and_dtype_and_rebuilt_after_an_in_place_edit():
    first = optimized.shifted_window_mask(8, 8, 4, 2)
    assert optimized.shifted_window_mask(8, 8, 4, 2) is first
    assert optimized.shifted_window_mask(8, 8, 4, 2, dtype=torch.float64) is not first
    assert optimized.shifted_window_mask(8, 8, 4, 2, float("-inf")) is not first
    assert optimized.shifted_window_mask(8, 8, 4, 1) is not first
    first.zero_()  # a user edits the shared tensor in place: the cache must notice
    again = optimized.shifted_window_mask(8, 8, 4, 2)
    assert again is not first
    np.testing.assert_array_equal(again.numpy(), reference.shifted_window_mask(8, 8, 4, 2))


def test_repeated_map_level_calls_reuse_one_cached_bias():
    """Repeated map-level calls reuse the cached mask, so the module's combined-bias cache hits (one entry)."""
    module = optimized.WindowAttention(dim=4, num_ttokens=1, window_size=2, num_heads=2, use_temporal=False).eval()
    x = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        first = optimized.shifted_window_attention(x, module, window_size=2, shift_size=1)
        second = optimized.shifted_window_attention(x, module, window_size=2, shift_size=1)
    assert torch.equal(first, second) and len(module._bias_cache) == 1


# ---- refimpl's optimized map function on its own (the registered map-level properties drive every target through
# Swin's block code instead, so that a bug here cannot fail a user's module) ----

HIGH = [pytest.param(d, id=d) for d in ("float64", "float32")]


def _optimized_map(module, case, device, dtype, x):
    g = case.geometry
    return optimized.shifted_window_attention(x, module, window_size=g.window_size, shift_size=g.shift_size,
                                              fill=case.fill)


@pytest.mark.parametrize("dtype", HIGH)
@given(case=rst.shifted_window_attention_cases(), device=devices)
def test_optimized_map_function_matches_the_oracle_forward_and_gradients(dtype, case, device):
    """refimpl.optimized.shifted_window_attention around refimpl's module: output and gradients (x and every
    parameter) equal the oracle's, with Swin's block code around the same module as the tolerance baseline."""
    torch_dtype = DTYPES[dtype]
    case = rounded_map_case(case, torch_dtype)
    module, eager = _modules(WINDOW_ATTENTION, case, device, torch_dtype, train=True)
    x = to_tensor(case.x, device, torch_dtype)
    with torch.no_grad():
        actual = _optimized_map(module, case, device, torch_dtype, x)
    assert_close(actual, case.oracle_output(), baseline=map_forward(eager, case, device, torch_dtype),
                 dtype=torch_dtype, what="optimized map-level output")
    grads = gradients_of(module, lambda t: _optimized_map(module, case, device, torch_dtype, t), case, device,
                         torch_dtype)
    assert_gradients_close(grads, case.oracle_vjp(), baseline=map_gradients(eager, case, device, torch_dtype),
                           magnitudes=case.oracle_vjp_magnitudes(), dtype=torch_dtype, what="optimized map-level grad")


# torch 2.1.2's inductor compiles this training step wrongly at the smallest shapes: a 1x1 map with dim 1 gets a
# proj.bias gradient of 0 instead of the oracle's (its eager run, and torch 2.13's compiled one, are right).
INDUCTOR_MISCOMPILES_TINY_MAPS = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 2)


@pytest.mark.skipif(INDUCTOR_MISCOMPILES_TINY_MAPS, reason="torch 2.1's inductor miscompiles the map-level training "
                    "step at a 1x1 map (proj.bias gradient 0); docs/gpu.md")
@pytest.mark.parametrize("dtype", [pytest.param("float32", id="float32")])
@settings(max_examples=COMPILED_EXAMPLES)
@given(case=rst.shifted_window_attention_cases(), device=devices)
def test_compiled_map_function_matches_the_oracle_forward_and_gradients(dtype, case, device):
    """torch.compile (inductor, fullgraph=True) of refimpl.optimized.shifted_window_attention around refimpl's
    module: forward in inference and the gradients of a training step equal the oracle's, as eager does."""
    torch_dtype = DTYPES[dtype]
    case = rounded_map_case(case, torch_dtype)
    module, eager = _modules(WINDOW_ATTENTION, case, device, torch_dtype, train=True)
    torch._dynamo.reset()  # new shapes every example: never let the recompile limit fall back to eager
    before = graphs_compiled()
    compiled_map = torch.compile(lambda t: _optimized_map(module, case, device, torch_dtype, t), fullgraph=True,
                                 backend=inductor_counting)
    x = to_tensor(case.x, device, torch_dtype)
    with torch.no_grad():
        actual = compiled_map(x)
    assert_close(actual, case.oracle_output(), baseline=map_forward(eager, case, device, torch_dtype),
                 dtype=torch_dtype, what="compiled map-level output")
    grads = gradients_of(module, compiled_map, case, device, torch_dtype)
    assert_gradients_close(grads, case.oracle_vjp(), baseline=map_gradients(eager, case, device, torch_dtype),
                           magnitudes=case.oracle_vjp_magnitudes(), dtype=torch_dtype, what="compiled map-level grad")
    assert graphs_compiled() >= before + 2, "inference and training graphs were not both compiled"
