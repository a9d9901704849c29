"""Swin V2 window attention beyond the registered properties (refimpl/suite/test_kinds.py runs those): the oracle
against its definitions, a second route and finite differences; bad input; the drop-in's own promises (buffers never
read, the cached bias, one fused SDPA call, torch.compile, the map-level function); the mutants' intended catchers."""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import mutants, reference
from refimpl import strategies as rst
from refimpl.baselines import shifted_window as swin_block
from refimpl.baselines.window_attention_v2 import WindowAttention as FaithfulV2
from refimpl.counting import FUSED_CPU_SDPA_OP, dispatched_ops
from refimpl.harness import verify
from refimpl.mutants import window_attention_v2 as v2_mutants
from refimpl.optimized import WindowAttentionV2, shifted_window_attention
from refimpl.reference.window_attention_v2 import log_spaced_coordinate
from refimpl.suite import Implementation, properties_for, run_property
from refimpl.suite._compiled import compiled, compiled_settings, graphs_compiled
from refimpl.suite._core import cpu_threads, missing_kernels
from refimpl.suite.window_attention_v2 import BASELINE, KIND, rounded_case, to_tensor
from refimpl.tolerance import assert_close, assert_vjp_matches_central_differences

small_configs = rst.window_attention_v2_configs(max_heads=3, max_head_dim=3, max_window_side=3)


@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 9), st.integers(0, 9))
def test_relative_coords_table_is_the_definition(wh, ww, ph, pw):
    """Entry (a, b) holds ĉ(a - (Wh-1), Dh) and ĉ(b - (Ww-1), Dw), ĉ(Δ, D) = sign(t) log2(1 + |t|) / 3 with t = 8 Δ /
    D, D = P - 1 with a pretrained window P, else window - 1; a divisor of 0 (or one pretrained side 0) is refused."""
    pretrained = (ph, pw) if ph and pw else (0, 0)
    divisors = (ph - 1, pw - 1) if ph and pw else (wh - 1, ww - 1)
    if 0 in divisors:
        with pytest.raises(ValueError, match="pretrained_window_size" if ph and pw else "window_size"):
            reference.relative_coords_table((wh, ww), pretrained)
        return
    table = reference.relative_coords_table((wh, ww), pretrained)
    assert table.shape == (2 * wh - 1, 2 * ww - 1, 2)
    for a in range(2 * wh - 1):
        for b in range(2 * ww - 1):
            for axis, (delta, d) in enumerate([(a - (wh - 1), divisors[0]), (b - (ww - 1), divisors[1])]):
                t = 8 * delta / d
                assert table[a, b, axis] == pytest.approx(math.copysign(math.log2(1 + abs(t)) / 3, t), abs=1e-15)


@pytest.mark.parametrize("window, pretrained, extreme", [(8, 0, math.log2(9) / 3), (16, 12, 1.1913), (24, 12, 1.3826)])
def test_relative_coords_range_matches_the_spec(window, pretrained, extreme):
    table = reference.relative_coords_table(window, pretrained)
    assert table.max() == pytest.approx(extreme, abs=1e-4) and table.min() == pytest.approx(-extreme, abs=1e-4)


@given(small_configs, rst.seeds)
def test_position_bias_equals_a_per_pair_computation(config, seed):
    """Second route: for each query i and key j, Δ = pos_i - pos_j from the token grid (no table, no index),
    the coordinates of Δ, the MLP and 16 sigmoid, one pair at a time."""
    params = rst.random_window_attention_v2_params(config, np.random.default_rng(seed))
    bias = reference.continuous_position_bias(params, **config.oracle_kwargs())
    wh, ww = config.window_size
    ph, pw = config.pretrained_window_size
    dh, dw = (ph - 1, pw - 1) if ph else (wh - 1, ww - 1)
    w1, b1, w2 = params["cpb_mlp.0.weight"], params["cpb_mlp.0.bias"], params["cpb_mlp.2.weight"]
    assert ((bias > 0) & (bias < 16)).all()
    for i in range(wh * ww):
        for j in range(wh * ww):
            (ri, ci), (rj, cj) = divmod(i, ww), divmod(j, ww)
            coords = np.array([log_spaced_coordinate(ri - rj, dh), log_spaced_coordinate(ci - cj, dw)])
            pre = w2 @ np.maximum(w1 @ coords + b1, 0.0)
            np.testing.assert_allclose(bias[:, i, j], 16 / (1 + np.exp(-pre)), rtol=1e-13, atol=0)


@settings(max_examples=15)
@given(rst.window_attention_v2_cases(small_configs, max_batch=2, max_windows=2))
def test_oracle_vjp_matches_central_differences(case):
    """<grad, direction> equals the directional derivative, for x and every parameter (the CPB MLP, the logit
    scale on both sides of the clamp, q/v biases, the linears)."""

    def loss(inputs):
        params = {k: a for k, a in inputs.items() if k != "x"}
        return float(np.sum(reference.window_attention_v2(inputs["x"], params, **case.oracle_kwargs())
                            * case.grad_out))

    assert_vjp_matches_central_differences(loss, case.oracle_vjp(), {"x": case.x, **case.params},
                                           np.random.default_rng(case.seed))


def test_oracle_logit_scale_gradient_is_zero_above_the_clamp_and_exp_below():
    config = rst.WindowAttentionV2Config(dim=4, num_heads=2, window_size=(2, 2))
    case = rst.WindowAttentionV2Case.build(config, batch=2, n_windows=1, has_mask=False, seed=3)
    scales = np.array([math.log(100) + 0.3, math.log(100) - 0.3]).reshape(2, 1, 1)
    case = case.with_arrays(params={**case.params, "logit_scale": scales})
    grad = case.oracle_vjp()["logit_scale"].reshape(-1)
    stages = case.oracle_stages()
    assert grad[0] == 0.0 and grad[1] != 0.0 and stages.scale[0] == pytest.approx(100.0, rel=1e-15)
    # d/dl of exp(l) * <cosine, g_logits> at the unclamped head, from the stages
    assert stages.scale[1] == pytest.approx(math.exp(math.log(100) - 0.3), rel=1e-15)


def test_oracle_zero_tokens_are_finite():
    config = rst.WindowAttentionV2Config(dim=4, num_heads=2, window_size=(2, 2), qkv_bias=False)
    case = rst.WindowAttentionV2Case.build(config, batch=1, n_windows=1, has_mask=False, seed=1)
    stages = case.with_arrays(x=np.zeros_like(case.x)).oracle_stages()
    assert (stages.q_hat == 0).all() and (stages.cosine == 0).all() and np.isfinite(stages.out).all()


@given(rst.shifted_window_attention_v2_cases(max_heads=2, max_head_dim=2))
def test_oracle_map_level_without_shift_is_blockwise(case):
    """With shift 0 the map-level oracle is window attention on each ws x ws block, sliced straight out of the map."""
    ws, (batch, H, W, C) = case.geometry.window_size, case.x.shape
    out = case.oracle_output(shift_size=0)
    for r in range(0, H, ws):
        for c in range(0, W, ws):
            block = case.x[:, r:r + ws, c:c + ws].reshape(batch, ws * ws, C)
            expected = reference.window_attention_v2(block, case.params, num_heads=case.config.num_heads,
                                                     window_size=(ws, ws),
                                                     pretrained_window_size=case.config.pretrained_window_size)
            np.testing.assert_allclose(out[:, r:r + ws, c:c + ws].reshape(batch, ws * ws, C), expected, rtol=0,
                                       atol=0)


# ---- bad input: the oracle and the module refuse the same calls ----

BAD_SIZES = [
    (dict(window_size=(1, 4)), ValueError, "window_size=(1, 4) has a side of 1"),
    (dict(window_size=1), ValueError, "window_size=(1, 1) has a side of 1"),
    (dict(pretrained_window_size=(1, 4)), ValueError, "pretrained_window_size=(1, 4) has a side of 1"),
    (dict(pretrained_window_size=(4, 0)), ValueError, "pretrained_window_size must be (0, 0)"),
    (dict(pretrained_window_size=(-1, 3)), ValueError, "pretrained_window_size[0] must be >= 0"),
    (dict(window_size=(2, 0)), ValueError, "window_size[1] must be >= 1"),
    (dict(dim=10, num_heads=3), ValueError, "not divisible by num_heads=3"),
    (dict(num_heads=0), ValueError, "num_heads must be >= 1"),
    (dict(dim=2.5), TypeError, "dim must be an int"),
]
V2_DEFAULTS = dict(dim=8, window_size=(2, 3), num_heads=2)


@pytest.mark.parametrize("kwargs, error, words", BAD_SIZES, ids=[w for _, _, w in BAD_SIZES])
def test_bad_sizes_are_refused_by_the_module_and_the_oracle(kwargs, error, words):
    cfg = {**V2_DEFAULTS, **kwargs}
    with pytest.raises(error, match=re.escape(words)):
        WindowAttentionV2(**cfg)
    if "dim" in kwargs:
        return  # the oracle reads C off x and the head split off num_heads: covered by the call checks below
    params = {k: t.detach().numpy() for k, t in WindowAttentionV2(**V2_DEFAULTS).named_parameters()}
    with pytest.raises(error, match=re.escape(words)):
        reference.window_attention_v2(np.zeros((1, 6, 8)), params, num_heads=cfg["num_heads"],
                                      window_size=cfg["window_size"],
                                      pretrained_window_size=cfg.get("pretrained_window_size", (0, 0)))


def test_upstream_gives_nan_where_refimpl_raises():
    """The decision documented in docs/window-attention-v2.md: upstream computes 0/0 for a window side of 1 with no
    pretrained window (the whole output is NaN); refimpl raises ValueError. With a pretrained window, side 1 works."""
    with torch.no_grad():
        assert torch.isnan(FaithfulV2(8, (1, 4), 2)(torch.randn(2, 4, 8))).all()
        ok = WindowAttentionV2(8, (1, 4), 2, pretrained_window_size=(8, 8))(torch.randn(2, 4, 8))
    assert torch.isfinite(ok).all()


BAD_CALLS = {
    "x not a tensor": ((np.zeros((1, 6, 8)),), TypeError, "x must be a torch.Tensor"),
    "x integer": ((torch.zeros(1, 6, 8, dtype=torch.long),), TypeError, "floating dtype"),
    "x not 3-D": ((torch.zeros(6, 8),), ValueError, "3-D"),
    "C != dim": ((torch.zeros(1, 6, 4),), ValueError, "C=4"),
    "N != Wh*Ww": ((torch.zeros(1, 5, 8),), ValueError, "N=5"),
    "mask shape": ((torch.zeros(2, 6, 8), torch.zeros(2, 6, 5)), ValueError, "(nW, N, N)"),
    "B_ % nW": ((torch.zeros(3, 6, 8), torch.zeros(2, 6, 6)), ValueError, "multiple of nW"),
    "boolean mask": ((torch.zeros(2, 6, 8), torch.ones(2, 6, 6, dtype=torch.bool)), TypeError, "floating additive"),
    "NaN in mask": ((torch.zeros(2, 6, 8), torch.full((2, 6, 6), float("nan"))), ValueError, "NaN"),
}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_bad_calls_are_refused(name):
    args, error, words = BAD_CALLS[name]
    with pytest.raises(error, match=re.escape(words)), torch.no_grad():
        WindowAttentionV2(**V2_DEFAULTS)(*args)


# ---- the drop-in's own promises ----


def _loaded(config, seed=0, dtype=torch.float32):
    params = rst.random_window_attention_v2_params(config, np.random.default_rng(seed))
    module = WindowAttentionV2(**config.kwargs()).to(dtype).eval()
    module.load_state_dict({k: torch.as_tensor(a, dtype=dtype) for k, a in params.items()}, strict=False)
    return module, params


CONFIG = rst.WindowAttentionV2Config(dim=12, num_heads=3, window_size=(3, 4), pretrained_window_size=(5, 6))


def test_loaded_buffers_are_never_read():
    """Built by the module, not loaded: a checkpoint whose relative_coords_table and relative_position_index are
    corrupted loads (strict=True) and changes nothing; the module computes its coordinates and index from its
    constructor arguments. (microsoft's module reads them; its checkpoints hold the values refimpl builds.)"""
    module, _ = _loaded(CONFIG)
    x = torch.randn(4, 12, 12)
    with torch.no_grad():
        before = module(x)
        state = module.state_dict()
        state["relative_coords_table"] = torch.randn_like(state["relative_coords_table"])
        state["relative_position_index"] = torch.zeros_like(state["relative_position_index"])
        module.load_state_dict(state, strict=True)
        assert torch.equal(module(x), before)


_NO_CPU_FLOAT16 = missing_kernels("cpu", "float16")
needs_cpu_float16 = pytest.mark.skipif(_NO_CPU_FLOAT16 is not None,
                                       reason=f"this torch has no CPU float16 kernels: {_NO_CPU_FLOAT16}")


def _cpu_sdpa_fuses_a_4d_additive_mask() -> bool:
    q = torch.zeros(1, 1, 2, 2)
    return FUSED_CPU_SDPA_OP in dispatched_ops(F.scaled_dot_product_attention, q, q, q,
                                               attn_mask=torch.zeros(1, 1, 2, 2))


@needs_cpu_float16
def test_float16_zero_tokens_give_zero_not_nan():
    """refimpl normalizes half dtypes in float32, where F.normalize's floor 1e-12 exists: zero tokens give finite
    outputs in float16 too. Upstream's eps 1e-12 is 0 in float16: NaN."""
    config = rst.WindowAttentionV2Config(dim=8, num_heads=2, window_size=(2, 2), qkv_bias=False)
    module, params = _loaded(config, dtype=torch.float16)
    faithful = FaithfulV2(**config.kwargs()).half().eval()
    faithful.load_state_dict({k: torch.as_tensor(a, dtype=torch.float16) for k, a in params.items()}, strict=False)
    x = torch.zeros(1, 4, 8, dtype=torch.float16)
    with torch.no_grad():
        assert torch.isfinite(module(x)).all() and torch.isnan(faithful(x)).all()


@needs_cpu_float16
def test_float16_short_vectors_keep_finite_gradients():
    """The CI-profile case that found it (one channel per head, no q/v bias): upstream's float16 normalization
    backward overflows to NaN; refimpl's gradients are finite and equal the oracle within float16's policy (here
    against the float32 module's error, as upstream has no finite float16 baseline)."""
    config = rst.WindowAttentionV2Config(dim=2, num_heads=2, window_size=(2, 4), qkv_bias=False)
    case = rst.WindowAttentionV2Case.build(config, batch=3, n_windows=2, has_mask=True, seed=172101)
    case = rounded_case(case, torch.float16)
    grads = {}
    for dtype in (torch.float16, torch.float32):
        module = WindowAttentionV2(**config.kwargs()).to(dtype)
        module.load_state_dict({k: torch.as_tensor(a, dtype=dtype) for k, a in case.params.items()}, strict=False)
        x = torch.as_tensor(case.x, dtype=dtype).requires_grad_()
        (module(x, torch.as_tensor(case.mask, dtype=dtype)) * torch.as_tensor(case.grad_out, dtype=dtype)).sum() \
            .backward()
        grads[dtype] = x.grad
    assert torch.isfinite(grads[torch.float16]).all()
    assert_close(grads[torch.float16], case.oracle_vjp()["x"], baseline=grads[torch.float32], dtype=torch.float16,
                 what="grad of x", magnitude=float(case.oracle_vjp_magnitudes()["x"].max()))


@pytest.mark.skipif(not _cpu_sdpa_fuses_a_4d_additive_mask(),
                    reason="this torch's CPU SDPA has no fused kernel for an additive mask (torch < 2.3)")
def test_inference_is_one_fused_sdpa_call_and_a_cached_bias():
    """Inference on one thread: exactly one SDPA call on the fused CPU kernel, and (cache hit) no MLP work."""
    module, _ = _loaded(CONFIG)
    x, mask = torch.randn(4, 12, 12), torch.zeros(2, 12, 12)
    mask[0, 0, 1:] = -100.0
    with torch.no_grad(), cpu_threads(1):
        module(x, mask)  # fills the cache
        ops = dispatched_ops(module, x, mask)
    assert ops.count(FUSED_CPU_SDPA_OP) == 1, ops
    assert "relu" not in " ".join(ops) and "sigmoid" not in " ".join(ops), ops


def test_training_rebuilds_the_bias_so_gradients_flow():
    module, _ = _loaded(CONFIG)
    module.train()
    module(torch.randn(2, 12, 12)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.cpb_mlp.parameters())


@pytest.mark.parametrize("shift", [0, 2])
def test_optimized_map_level_function_takes_the_v2_module(shift):
    """``refimpl.optimized.shifted_window_attention`` drives the V2 module (its cached gather and mask) and equals
    ``reference.shifted_window_attention_v2``, within the policy against Swin's block code around the faithful
    module."""
    config = rst.WindowAttentionV2Config(dim=8, num_heads=2, window_size=(4, 4))
    case = rst.ShiftedWindowAttentionV2Case.build(config, rst.ShiftedWindowConfig(8, 12, 4, shift), batch=2,
                                                   fill=-100.0, seed=5)
    case = rounded_case(case, torch.float32)
    module, _ = _loaded(config)
    module.load_state_dict({k: torch.as_tensor(a, dtype=torch.float32) for k, a in case.params.items()}, strict=False)
    faithful = FaithfulV2(**config.kwargs()).eval()
    faithful.load_state_dict({k: torch.as_tensor(a, dtype=torch.float32) for k, a in case.params.items()},
                             strict=False)
    x = to_tensor(case.x, "cpu", torch.float32)
    with torch.no_grad():
        actual = shifted_window_attention(x, module, window_size=4, shift_size=shift)
        baseline = swin_block.shifted_window_attention(x, faithful, window_size=4, shift_size=shift)
    assert_close(actual, case.oracle_output(), baseline=baseline, dtype=torch.float32, what="map level")


@pytest.mark.parametrize("name", ["forward_matches_oracle", "map_level_matches_oracle"])
def test_forward_under_torch_compile_fullgraph(name):
    """Inference compiled with fullgraph=True (no graph breaks: no caches, no host reads while compiling) equals
    the oracle; few examples, since each module compiles afresh."""
    (prop,) = [p for p in properties_for(KIND) if p.name == name]
    before = graphs_compiled()
    impl = compiled(Implementation(KIND, "refimpl.optimized:WindowAttentionV2", WindowAttentionV2), fullgraph=True)
    result = run_property(prop, impl, "cpu", "float32", settings=compiled_settings())
    assert result["run"] > 0 and graphs_compiled() > before


def test_the_baseline_and_the_unmutated_snippet_pass():
    for factory in (FaithfulV2, mutants.window_attention_v2.SnippetWindowAttentionV2):
        report = verify({KIND: Implementation(KIND, f"base:{factory.__name__}", factory)}, devices=["cpu"],
                        dtypes=("float64", "float32"), fail_fast=True, max_examples=15)
        assert not report.failed, report.failed[0].detail
    assert BASELINE.factory is FaithfulV2


# ---- each V2 mutant is caught by the property written for its bug ----

INTENDED = {
    "MaskAddedTwice": "mask_is_added_exactly_once",
    "NoClamp": "logit_scale_is_clamped_exactly_at_ln_100",
    "ClampAt100NotLn100": "logit_scale_is_clamped_exactly_at_ln_100",
    "NormalizeWithoutEps": "zero_tokens_normalize_to_zero",
    "StaleCachedBias": "cached_bias_never_goes_stale",
    "NoSixteenSigmoid": "position_bias_is_its_definition",
    "PretrainedWindowIgnored": "position_bias_is_its_definition",
    "KeyMinusQueryOffsets": "position_bias_is_its_definition",
    "LinearCoordinates": "buffers_match_the_definitions",
}


@pytest.mark.mutants
@pytest.mark.parametrize("mutant, prop_name", INTENDED.items(), ids=list(INTENDED))
def test_the_intended_property_catches_the_mutant(mutant, prop_name):
    (prop,) = [p for p in properties_for(KIND) if p.name == prop_name]
    impl = Implementation(KIND, f"refimpl.mutants.window_attention_v2:{mutant}", getattr(v2_mutants, mutant))
    with pytest.raises((AssertionError, ExceptionGroup)) as caught:  # Hypothesis groups distinct failures
        run_property(prop, impl, "cpu", "float32" if prop_name == "buffers_match_the_definitions" else "float64",
                     settings=settings(max_examples=40, deadline=None, derandomize=True, database=None))
    if isinstance(caught.value, ExceptionGroup):
        assert caught.value.subgroup(AssertionError) is not None, caught.value
