"""The oracle's public surface: the names and signatures users import (the contract's ``refimpl.reference``
table), every name the module exported before it became a package, and its independence from torch."""

import inspect
import subprocess
import sys
import textwrap
import warnings

import pytest

from refimpl import magnitudes, reference

# The contract's table, as stubs with the promised signatures (bodies are never run).


def relative_position_index(window_size): ...
def temporal_relative_index(num_ttokens): ...
def window_partition(x, window_size): ...
def window_reverse(windows, window_size, H, W): ...
def shifted_window_mask(H, W, window_size, shift_size, fill=-100.0): ...
def window_attention(x, params, *, num_heads, window_size, mask=None, temporal=False, qk_scale=None): ...
def window_attention_vjp(x, params, *, num_heads, window_size, mask=None, temporal=False, qk_scale=None,
                         grad_out): ...
def shifted_window_attention(x, params, *, num_heads, window_size, shift_size, qk_scale=None): ...
def temporal_model(x, params, *, in_channels, receptive_field, input_shape, start_out_channels=64,
                   extra_in_channels=0, n_spatial_layers_between_temporal_layers=0, use_pyramid_pooling=True,
                   training=False): ...
def window_attention_flops(dim, num_heads, N, T, temporal=False): ...


CONTRACT = [relative_position_index, temporal_relative_index, window_partition, window_reverse, shifted_window_mask,
            window_attention, window_attention_vjp, shifted_window_attention, temporal_model, window_attention_flops]

# ``refimpl.reference.__all__`` before the oracle became a package, less the MAC tally (``counting_macs``,
# ``MacTally``: the oracle is no longer instrumented) and the gradient magnitudes (now ``refimpl.magnitudes``,
# still reachable from here with a DeprecationWarning, tested below).
PUBLIC_BEFORE_THE_SPLIT = [
    "relative_position_index", "temporal_relative_index", "softmax", "WindowAttentionStages",
    "window_attention_stages", "window_attention", "window_attention_vjp", "window_attention_flops",
    "window_attention_flops_upstream", "swin_window_attention_macs", "aim_block_attention_macs",
    "aim_model_attention_macs", "swin_model_mac_terms", "swin_model_macs", "temporal_model_macs", "macs_to_flops",
    "flops_to_macs", "additive_mask", "window_partition", "window_reverse", "shifted_window_regions",
    "shifted_window_mask", "shifted_window_attention", "shifted_window_attention_vjp", "shifted_window_cell",
    "shifted_window_attention_per_token", "BATCH_NORM_EPS", "conv3d", "conv3d_vjp", "causal_pad", "causal_conv3d",
    "causal_conv3d_vjp", "batch_statistics", "batch_norm_3d", "batch_norm_3d_vjp", "updated_running_stats", "relu",
    "avg_pool3d", "avg_pool3d_vjp", "bilinear_matrix", "bilinear_resize", "bilinear_resize_vjp",
    "temporal_model_out_channels", "temporal_model_state_shapes", "TemporalModelForward", "temporal_model_forward",
    "temporal_model", "temporal_model_vjp",
]


@pytest.mark.parametrize("stub", CONTRACT, ids=lambda stub: stub.__name__)
def test_contract_names_have_the_contract_signatures(stub):
    """Every parameter the contract names is there, of the same kind (positional or keyword-only) with the same
    default; positional parameters keep their order; anything more has a default, so no contract call breaks."""
    promised = inspect.signature(stub).parameters
    actual = inspect.signature(getattr(reference, stub.__name__)).parameters
    for name, p in promised.items():
        assert name in actual, f"{stub.__name__} lacks {name!r}"
        assert (actual[name].kind, actual[name].default) == (p.kind, p.default), (stub.__name__, name)

    def positional(params):
        return [n for n, p in params.items() if p.kind is not inspect.Parameter.KEYWORD_ONLY]

    assert positional(actual) == positional(promised)
    extra = [p for n, p in actual.items() if n not in promised]
    assert all(p.default is not inspect.Parameter.empty for p in extra), (stub.__name__, extra)


def test_every_name_exported_before_the_split_is_still_exported():
    missing = [name for name in PUBLIC_BEFORE_THE_SPLIT if not hasattr(reference, name)]
    assert not missing
    assert set(PUBLIC_BEFORE_THE_SPLIT) <= set(reference.__all__)
    assert all(hasattr(reference, name) for name in reference.__all__)


@pytest.mark.parametrize("name", ["window_attention_vjp_magnitudes", "shifted_window_attention_vjp_magnitudes"])
def test_moved_magnitudes_still_resolve_with_a_deprecation_warning(name):
    with pytest.warns(DeprecationWarning, match=f"refimpl.magnitudes.{name}"):
        moved = getattr(reference, name)
    assert moved is getattr(magnitudes, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            reference.counting_macs  # noqa: B018  (removed with the instrumentation)


def test_reference_imports_without_torch():
    code = "import sys, refimpl.reference; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reference_runs_where_torch_cannot_be_imported():
    """With ``import torch`` (and ``refimpl.optimized``) made to fail, the oracle, the FLOP formulas and the
    magnitudes import, and window attention runs."""
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # ``import torch`` now raises ImportError
        sys.modules["refimpl.optimized"] = None
        import numpy as np
        import refimpl.flops, refimpl.magnitudes
        from refimpl import reference

        rng = np.random.default_rng(0)
        c, heads, window = 4, 2, (2, 2)
        params = {"qkv.weight": rng.standard_normal((3 * c, c)), "qkv.bias": rng.standard_normal(3 * c),
                  "proj.weight": rng.standard_normal((c, c)), "proj.bias": rng.standard_normal(c),
                  "relative_position_bias_table": rng.standard_normal((9, heads))}
        out = reference.window_attention(rng.standard_normal((3, 4, c)), params, num_heads=heads, window_size=window)
        assert out.shape == (3, 4, c) and out.dtype == np.float64 and np.isfinite(out).all()
        assert reference.window_attention_flops(c, heads, 4, 1) == 2 * c * 4 * 4
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
