"""Video Swin 3-D: refimpl's drop-in ``WindowAttention3D`` and its map-level ``shifted_window_attention_3d`` /
``shifted_window_mask_3d`` (``refimpl.optimized``) against the float64 oracle (``refimpl.reference``) and Video Swin's
code (``refimpl.baselines``), under the one tolerance policy; and the drop-in's own promises: the loaded index is
never read, the cached bias never goes stale, one fused attention call per clip, torch.compile, bad input refused.

The registered properties of the two kinds (refimpl/suite, run by refimpl/suite/test_kinds.py) drive modules
through Video Swin's block code; this module tests refimpl's own map-level function, which gathers instead.
"""

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import reference
from refimpl.baselines import shifted_window_3d as video_swin
from refimpl.baselines.window_attention_3d import WindowAttention3D as FaithfulWindowAttention3D
from refimpl.counting import FUSED_CPU_SDPA_OP, dispatched_ops
from refimpl.optimized import WindowAttention3D, shifted_window_attention_3d, shifted_window_mask_3d
from refimpl.optimized.window_attention_3d import INDEX_CONVENTIONS
from refimpl.suite._compiled import graphs_compiled, inductor_counting
from refimpl.suite._core import cpu_threads, missing_kernels
from refimpl.tolerance import assert_close, assert_close_mapping

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
_NO_FLOAT16 = missing_kernels("cpu", "float16")


def _dtype_param(dtype):
    marks = [pytest.mark.skip(reason=_NO_FLOAT16)] if dtype == torch.float16 and _NO_FLOAT16 else []
    return pytest.param(dtype, id=str(dtype).removeprefix("torch."), marks=marks)


ALL_DTYPES = [_dtype_param(d) for d in DTYPES]


# ---- cases: parameters with what default init hides (tables std 1, qkv biases), clips that shrink and pad ----


def _params(window, dim, heads, qkv_bias, rng) -> dict:
    """Video Swin's state-dict keys (no index: the module builds its own), float64, randomized at unit scale."""
    rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    params = {
        "relative_position_bias_table": rng.normal(0.0, 1.0, (rows, heads)),
        "qkv.weight": rng.normal(0.0, dim**-0.5, (3 * dim, dim)),
        "proj.weight": rng.normal(0.0, dim**-0.5, (dim, dim)),
        "proj.bias": rng.normal(0.0, 1.0, dim),
    }
    if qkv_bias:
        params["qkv.bias"] = rng.normal(0.0, 1.0, 3 * dim)
    return params


def _rounded(array, dtype) -> np.ndarray:
    """``array`` rounded through ``dtype`` (what a module of that dtype holds), back in float64."""
    return torch.as_tensor(np.asarray(array, dtype=np.float64)).to(dtype).double().numpy()


def _load(module, params, dtype):
    module = module.to(dtype)  # first: load_state_dict copies into the module's dtype
    state = module.state_dict()
    state.update({k: torch.as_tensor(a).to(dtype) for k, a in params.items()})
    module.load_state_dict(state, strict=True)
    return module.eval()


def _drop_in(window, dim, heads, params, dtype, convention="truncated"):
    module = WindowAttention3D(dim, window, heads, qkv_bias="qkv.bias" in params, index_convention=convention)
    return _load(module, params, dtype)


def _faithful(window, dim, heads, params, dtype, convention="truncated", used_window=None):
    """Video Swin's module, the naive same-dtype computation (the policy's baseline). For the geometric convention
    its index's top-left ``N x N`` block (all that upstream's ``index[:N, :N]`` reads) holds the geometric index of
    the used window: the same naive computation of the geometric bias."""
    module = _load(FaithfulWindowAttention3D(dim, window, heads, qkv_bias="qkv.bias" in params), params, dtype)
    if convention == "geometric" and used_window is not None:
        n = math.prod(used_window)
        geometric = reference.window_attention_3d_index(window, used_window, "geometric")
        module.relative_position_index[:n, :n] = torch.as_tensor(geometric)
    return module


@st.composite
def clip_cases(draw, max_side=3):
    """A module window, a clip that shrinks (an axis no longer than the window), pads (not a multiple) or neither on
    each axis, a shift per axis (0 included), both conventions."""
    window = tuple(draw(st.integers(1, max_side)) for _ in range(3))
    clip = tuple(draw(st.integers(1, 2 * w + 1)) for w in window)
    shift = tuple(draw(st.integers(0, w - 1)) for w in window)
    return dict(window=window, clip=clip, shift=shift, heads=draw(st.integers(1, 2)),
                head_dim=draw(st.integers(1, 3)), batch=draw(st.integers(1, 2)), qkv_bias=draw(st.booleans()),
                convention=draw(st.sampled_from(INDEX_CONVENTIONS)), seed=draw(st.integers(0, 2**32 - 1)))


@st.composite
def window_cases(draw, max_side=3):
    """A module window, a used window inside it (any shape: prefix or not), images x windows rows, a window mask
    (0 / -100 or -inf, diagonal allowed) or none."""
    window = tuple(draw(st.integers(1, max_side)) for _ in range(3))
    used = tuple(draw(st.integers(1, w)) for w in window)
    n, n_windows = math.prod(used), draw(st.integers(1, 3))
    masked = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    mask = None
    if masked:
        allowed = np.random.default_rng(seed).random((n_windows, n, n)) < 0.6
        allowed |= np.eye(n, dtype=bool)
        mask = np.where(allowed, 0.0, draw(st.sampled_from([-100.0, -math.inf])))
    return dict(window=window, used=used, n_windows=n_windows, mask=mask, heads=draw(st.integers(1, 2)),
                head_dim=draw(st.integers(1, 3)), batch=draw(st.integers(1, 2)), qkv_bias=draw(st.booleans()),
                convention=draw(st.sampled_from(INDEX_CONVENTIONS)), seed=seed)


def _window_inputs(case, dtype):
    rng = np.random.default_rng(case["seed"])
    dim = case["heads"] * case["head_dim"]
    params = {k: _rounded(a, dtype) for k, a in _params(case["window"], dim, case["heads"], case["qkv_bias"],
                                                         rng).items()}
    rows = case["batch"] * case["n_windows"]
    x = _rounded(rng.normal(0.0, 1.0, (rows, math.prod(case["used"]), dim)), dtype)
    return dim, params, x


# ---- the map-level function ----


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@given(clip_cases())
def test_map_level_matches_the_oracle(dtype, case):
    """``shifted_window_attention_3d`` (one gather for pad + roll + partition, one for reverse + roll back + crop,
    the cached mask) around the drop-in equals ``reference.shifted_window_attention_3d`` under the module's
    convention, within the policy against Video Swin's block code around Video Swin's module, on clips that shrink
    (an axis no longer than the window loses its shift), pad at the end, and have zero shifts on some axes."""
    rng = np.random.default_rng(case["seed"])
    window, shift, heads, convention = case["window"], case["shift"], case["heads"], case["convention"]
    dim = heads * case["head_dim"]
    params = {k: _rounded(a, dtype) for k, a in _params(window, dim, heads, case["qkv_bias"], rng).items()}
    x = _rounded(rng.normal(0.0, 1.0, (case["batch"], *case["clip"], dim)), dtype)
    used, _ = reference.block_window_and_shift(case["clip"], window, shift)
    expected = reference.shifted_window_attention_3d(x, params, num_heads=heads, window_size=window, shift_size=shift,
                                                     index_convention=convention)
    xt = torch.as_tensor(x).to(dtype)
    with torch.no_grad():
        actual = shifted_window_attention_3d(xt, _drop_in(window, dim, heads, params, dtype, convention),
                                             window_size=window, shift_size=shift)
        baseline = video_swin.shifted_window_attention_3d(
            xt, _faithful(window, dim, heads, params, dtype, convention, used), window_size=window, shift_size=shift)
    assert actual.dtype == dtype and actual.shape == xt.shape
    assert_close(actual, expected, baseline=baseline, dtype=dtype,
                 what=f"map level, clip {case['clip']} window {window} shift {shift} ({convention})")


@settings(max_examples=15)
@given(clip_cases())
def test_map_level_equals_video_swins_block_code_in_float64(case):
    """The same module through refimpl's gathers and through Video Swin's pad/roll/partition code gives the same
    clip (float64, 32 ulps): the gathers and the cached mask are the block's geometry, pad tokens included."""
    rng = np.random.default_rng(case["seed"])
    window, shift, heads = case["window"], case["shift"], case["heads"]
    dim = heads * case["head_dim"]
    # truncated: Video Swin's block code cannot tell a geometric module the used window (N < N0)
    module = _drop_in(window, dim, heads, _params(window, dim, heads, case["qkv_bias"], rng), torch.float64)
    x = torch.as_tensor(rng.normal(0.0, 1.0, (case["batch"], *case["clip"], dim)))
    with torch.no_grad():
        ours = shifted_window_attention_3d(x, module, window_size=window, shift_size=shift)
        theirs = video_swin.shifted_window_attention_3d(x, module, window_size=window, shift_size=shift)
    assert_close(ours, theirs, baseline=None, dtype=torch.float64, what="refimpl's map level vs Video Swin's")


@given(clip_cases(max_side=4))
def test_mask_equals_the_oracle_and_video_swins(case):
    """``shifted_window_mask_3d`` on the padded sizes with the used window and shift equals the oracle's (the
    definition: per-axis bands, 27 labels, one band on a zero-shift axis) and Video Swin's ``compute_mask``."""
    used, used_shift = reference.block_window_and_shift(case["clip"], case["window"], case["shift"])
    padded = reference.padded_size_3d(case["clip"], used)
    mask = shifted_window_mask_3d(*padded, used, used_shift)
    assert mask.dtype == torch.get_default_dtype()
    np.testing.assert_array_equal(mask.numpy(), reference.shifted_window_mask_3d(*padded, used, used_shift))
    assert torch.equal(mask, video_swin.compute_mask(*padded, used, used_shift, "cpu"))


def test_mask_is_cached_and_an_edited_copy_is_not_served_again():
    first = shifted_window_mask_3d(4, 8, 8, (2, 4, 4), (1, 2, 2))
    assert shifted_window_mask_3d(4, 8, 8, (2, 4, 4), (1, 2, 2)) is first  # cached: the module's cache hits too
    assert [int((w == 0).sum()) for w in first] == [1024, 512, 512, 256, 512, 256, 256, 128]
    first.zero_()  # a caller corrupting the shared tensor
    again = shifted_window_mask_3d(4, 8, 8, (2, 4, 4), (1, 2, 2))
    assert again is not first
    assert [int((w == 0).sum()) for w in again] == [1024, 512, 512, 256, 512, 256, 256, 128]
    assert shifted_window_mask_3d(4, 8, 8, (2, 4, 4), (1, 2, 2), fill=-math.inf, dtype=torch.float16).dtype == \
        torch.float16


# ---- the module ----


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@given(window_cases())
def test_module_matches_the_oracle(dtype, case):
    """``WindowAttention3D(index_convention=...)`` told its used window equals ``reference.window_attention_3d`` with
    that convention, within the policy against Video Swin's module (with the geometric index, for geometric)."""
    dim, params, x = _window_inputs(case, dtype)
    window, used, heads, convention = case["window"], case["used"], case["heads"], case["convention"]
    mask = None if case["mask"] is None else torch.as_tensor(case["mask"]).to(dtype)
    expected = reference.window_attention_3d(
        x, params, num_heads=heads, window_size=window, used_window=used,
        mask=None if mask is None else mask.double().numpy(), index_convention=convention)
    xt = torch.as_tensor(x).to(dtype)
    with torch.no_grad():
        actual = _drop_in(window, dim, heads, params, dtype, convention)(xt, mask, used_window=used)
        # Video Swin's module adds the mask as it is: give it the mask in the module's dtype
        baseline = _faithful(window, dim, heads, params, dtype, convention, used)(xt, mask)
    assert_close(actual, expected, baseline=baseline, dtype=dtype,
                 what=f"forward, window {window} used {used} ({convention})")


@pytest.mark.parametrize("dtype", [_dtype_param(torch.float64), _dtype_param(torch.float32)])
@settings(max_examples=20)
@given(window_cases())
def test_module_gradients_match_the_oracle(dtype, case):
    """Training (the bias rebuilt every call, the explicit route on CPU): gradients of x, the table, the linears
    equal ``reference.window_attention_3d_vjp``, within the policy against Video Swin's module's autograd."""
    from refimpl.strategies.window_attention_3d import window_attention_3d_vjp_magnitudes

    dim, params, x = _window_inputs(case, dtype)
    window, used, heads, convention = case["window"], case["used"], case["heads"], case["convention"]
    mask = None if case["mask"] is None else torch.as_tensor(case["mask"]).to(dtype)
    grad_out = _rounded(np.random.default_rng(case["seed"] + 1).normal(0.0, 1.0, x.shape), dtype)
    kwargs = dict(num_heads=heads, window_size=window, used_window=used,
                  mask=None if mask is None else mask.double().numpy(), index_convention=convention)
    expected = reference.window_attention_3d_vjp(x, params, grad_out=grad_out, **kwargs)
    magnitudes = window_attention_3d_vjp_magnitudes(x, params, grad_out=grad_out, **kwargs)

    def gradients(module, **call):
        module.train()
        xt = torch.as_tensor(x).to(dtype).requires_grad_(True)
        (module(xt, mask, **call) * torch.as_tensor(grad_out).to(dtype)).sum().backward()
        named = dict(module.named_parameters())
        return {"x": xt.grad, **{k: named[k].grad for k in params}}

    actual = gradients(_drop_in(window, dim, heads, params, dtype, convention), used_window=used)
    baseline = gradients(_faithful(window, dim, heads, params, dtype, convention, used))
    expected = {k: v for k, v in expected.items() if k in actual}
    assert_close_mapping(actual, expected, baseline=baseline, dtype=dtype, magnitudes=magnitudes,
                         what=f"grad, window {window} used {used} ({convention})")


@given(window_cases())
def test_truncated_lookup_needs_only_n(case):
    """Upstream's lookup depends on N alone: the truncated module gives the same output with and without
    ``used_window``; the geometric one refuses N < N0 without it (N does not say where the tokens lie)."""
    dim, params, x = _window_inputs(case, torch.float64)
    window, used, heads = case["window"], case["used"], case["heads"]
    xt = torch.as_tensor(x)
    with torch.no_grad():
        module = _drop_in(window, dim, heads, params, torch.float64)
        assert torch.equal(module(xt, used_window=used), module(xt))
        if used != window:
            with pytest.raises(ValueError, match="used_window"):
                _drop_in(window, dim, heads, params, torch.float64, "geometric")(xt)


def test_conventions_differ_only_off_the_row_major_prefix():
    """A shrunk H (6 of 7) is not a row-major prefix of the window: truncated and geometric differ, each matching
    its oracle; a shrunk D (prefix) gives the same output under both."""
    window, heads, dim = (2, 7, 7), 2, 8
    params = _params(window, dim, heads, True, np.random.default_rng(3))
    modules = {c: _drop_in(window, dim, heads, params, torch.float64, c) for c in INDEX_CONVENTIONS}
    for clip, differ in [((4, 6, 7), True), ((1, 7, 7), False)]:
        x = np.random.default_rng(4).normal(0.0, 1.0, (1, *clip, dim))
        with torch.no_grad():
            out = {c: shifted_window_attention_3d(torch.as_tensor(x), m, window_size=window, shift_size=(1, 3, 3))
                   for c, m in modules.items()}
        for c in INDEX_CONVENTIONS:
            expected = reference.shifted_window_attention_3d(x, params, num_heads=heads, window_size=window,
                                                             shift_size=(1, 3, 3), index_convention=c)
            assert_close(out[c], expected, baseline=None, dtype=torch.float64, what=f"{c} at clip {clip}")
        assert (float((out["truncated"] - out["geometric"]).abs().max()) > 1e-3) == differ


def test_state_dict_is_video_swins_and_the_index_is_built():
    """Video Swin's keys, shapes and order (persistent (N0, N0) int64 index): checkpoints load both ways with
    strict=True; the index the module builds equals the definition."""
    ours, theirs = WindowAttention3D(12, (2, 3, 4), 3, qkv_bias=True), FaithfulWindowAttention3D(12, (2, 3, 4), 3, True)
    assert [(k, v.shape, v.dtype) for k, v in ours.state_dict().items()] == \
        [(k, v.shape, v.dtype) for k, v in theirs.state_dict().items()]
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    np.testing.assert_array_equal(ours.relative_position_index.numpy(), reference.relative_position_index((2, 3, 4)))
    table = WindowAttention3D(12, (2, 3, 4), 3).relative_position_bias_table.detach()
    assert float(table.std()) < 0.05 and float(table.abs().max()) <= 2.0  # trunc-normal std .02, bounds +-2


@pytest.mark.parametrize("convention", INDEX_CONVENTIONS)
def test_a_loaded_index_is_never_read(convention):
    """Built by the module, not loaded: a checkpoint whose relative_position_index is corrupted loads
    (strict=True) and changes nothing, at the full and at a shrunk window (Video Swin's module reads it)."""
    window, heads, dim = (2, 3, 3), 3, 12
    params = _params(window, dim, heads, True, np.random.default_rng(0))
    module = _drop_in(window, dim, heads, params, torch.float32, convention)
    x, x_small = torch.randn(4, 18, dim), torch.randn(4, 4, dim)
    with torch.no_grad():
        before = module(x), module(x_small, used_window=(1, 2, 2))
        state = module.state_dict()
        state["relative_position_index"] = torch.randint_like(state["relative_position_index"], 0, 3).flip(0)
        module.load_state_dict(state, strict=True)
        assert torch.equal(module(x), before[0])
        assert torch.equal(module(x_small, used_window=(1, 2, 2)), before[1])
        faithful = _faithful(window, dim, heads, params, torch.float32)
        faithful.load_state_dict(state, strict=True)
        assert not torch.allclose(faithful(x), before[0])  # the corruption is real: upstream would read it


def _oracle_forward(module, x, mask=None, used=None):
    params = {k: v.detach().double().numpy() for k, v in module.state_dict().items()}
    return reference.window_attention_3d(x.double().numpy(), params, num_heads=module.num_heads,
                                         window_size=module.window_size, used_window=used,
                                         mask=None if mask is None else mask.double().numpy(),
                                         index_convention=module.index_convention)


def test_cached_bias_never_goes_stale():
    """The gathered bias is cached per used window and mask, and rebuilt whenever what it was built from changes:
    in-place edits of the table, ``.data`` swaps, ``load_state_dict``, an in-place edit of the mask, a training
    step, ``.to(dtype)``. After each, inference equals the oracle on the module's current state."""
    window, heads, dim = (2, 3, 3), 3, 12
    module = _drop_in(window, dim, heads, _params(window, dim, heads, True, np.random.default_rng(1)), torch.float64)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 18, dim, dtype=torch.float64, generator=generator)
    mask = shifted_window_mask_3d(2, 6, 3, window, (1, 1, 0), dtype=torch.float64)  # 2 windows

    def check(what, mask=mask, x=x):
        with torch.no_grad():
            out = module(x, mask)
        assert_close(out, _oracle_forward(module, x, mask), baseline=None, dtype=out.dtype, what=what)

    check("fresh")
    check("cache hit")
    with torch.no_grad():
        module.relative_position_bias_table.mul_(-2.0)
    check("after an in-place edit of the table")
    table_shape = module.relative_position_bias_table.shape
    module.relative_position_bias_table.data = torch.randn(table_shape, dtype=torch.float64, generator=generator)
    check("after a .data swap")
    state = module.state_dict()
    state["relative_position_bias_table"] = torch.randn(table_shape, dtype=torch.float64, generator=generator)
    module.load_state_dict(state)
    check("after load_state_dict")
    edited = mask.clone()
    check("a second mask", mask=edited)
    with torch.no_grad():
        edited[0, 0, 1:] = -100.0
    check("after an in-place edit of the mask", mask=edited)
    module.train()
    # A linear loss keeps the step bounded: a squared loss at a large rate blew the output up to ~1e5, where
    # float64 round-off alone exceeds the 32-ulp bound this test uses (no float64 baseline to widen it).
    target = torch.randn(4, 18, dim, dtype=torch.float64, generator=generator)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    (module(x, mask) * target).sum().backward()
    assert module.relative_position_bias_table.grad.abs().sum() > 0  # training rebuilds it: gradients flow
    table_before = module.relative_position_bias_table.detach().clone()
    optimizer.step()
    assert (module.relative_position_bias_table - table_before).abs().max() > 1e-3  # the step really moved it
    module.eval()
    check("after a training step")
    module.float()
    check("after .float()", mask=mask.float(), x=x.float())


def test_inference_is_one_fused_sdpa_call_per_clip_and_a_cached_bias():
    """Inference on one thread: one call of CPU SDPA's fused kernel per image (the per-window mask is never copied
    B-fold), no table gather on a cache hit."""
    if not hasattr(torch.ops.aten, FUSED_CPU_SDPA_OP):
        pytest.skip("this torch's CPU SDPA has no fused kernel (torch < 2.3)")
    window, heads, dim = (2, 3, 3), 3, 12
    module = _drop_in(window, dim, heads, _params(window, dim, heads, True, np.random.default_rng(2)), torch.float32)
    mask = shifted_window_mask_3d(2, 6, 3, window, (1, 1, 0))  # nW = 2
    for images in (1, 3):
        x = torch.randn(2 * images, 18, dim)
        with torch.no_grad(), cpu_threads(1):
            module(x, mask)  # fills the cache
            ops = dispatched_ops(module, x, mask)
        assert ops.count(FUSED_CPU_SDPA_OP) == images, ops
        assert "index" not in ops and "repeat" not in ops, ops


def test_dropout_acts_only_in_train_mode():
    """attn_drop and proj_drop act in train mode only: in eval the module equals the oracle (which has no dropout),
    in train mode two calls differ."""
    window, heads, dim = (2, 2, 2), 2, 8
    params = _params(window, dim, heads, True, np.random.default_rng(8))
    module = _load(WindowAttention3D(dim, window, heads, qkv_bias=True, attn_drop=0.5, proj_drop=0.5), params,
                   torch.float64)
    x = torch.randn(3, 8, dim, dtype=torch.float64)
    with torch.no_grad():
        assert_close(module(x), _oracle_forward(module, x), baseline=None, dtype=torch.float64, what="eval")
        module.train()
        assert not torch.equal(module(x), module(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_map_level_on_cuda_matches_the_oracle(dtype):
    """The same map-level route on CUDA (SDPA's CUDA kernels with the cached mask), a shrunk, padded clip."""
    window, heads, dim, clip, shift = (2, 3, 3), 2, 8, (3, 2, 7), (1, 1, 1)
    params = {k: _rounded(a, dtype) for k, a in _params(window, dim, heads, True, np.random.default_rng(9)).items()}
    x = _rounded(np.random.default_rng(10).normal(0.0, 1.0, (2, *clip, dim)), dtype)
    xt = torch.as_tensor(x).to(device="cuda", dtype=dtype)
    used, _ = reference.block_window_and_shift(clip, window, shift)
    with torch.no_grad():
        actual = shifted_window_attention_3d(xt, _drop_in(window, dim, heads, params, dtype).cuda(),
                                             window_size=window, shift_size=shift)
        baseline = video_swin.shifted_window_attention_3d(xt, _faithful(window, dim, heads, params, dtype).cuda(),
                                                          window_size=window, shift_size=shift)
    expected = reference.shifted_window_attention_3d(x, params, num_heads=heads, window_size=window,
                                                     shift_size=shift, index_convention="truncated")
    assert_close(actual, expected, baseline=baseline, dtype=dtype, what=f"CUDA map level, window in use {used}")


def test_capabilities_declare_the_convention():
    assert WindowAttention3D.refimpl_capabilities["index_convention"] == "truncated"
    assert WindowAttention3D(6, 2, 3).refimpl_capabilities["index_convention"] == "truncated"
    geometric = WindowAttention3D(6, 2, 3, index_convention="geometric")
    assert geometric.refimpl_capabilities["index_convention"] == "geometric"
    assert WindowAttention3D.refimpl_capabilities["index_convention"] == "truncated"  # the class is untouched
    assert WindowAttention3D(6, 2, 3, qk_scale=0).scale == 2**-0.5  # head_dim 2; upstream's `qk_scale or d ** -0.5`
    assert WindowAttention3D(96, (8, 7, 7), 3).flops(392) == 4 * 392 * 96**2 + 2 * 392**2 * 96


# ---- torch.compile ----


# torch 2.1's inductor fails to generate code for the shifted mask's int64 region labels (an AssertionError in its
# CPU codegen, measured with torch 2.1.2); eager, and torch >= 2.2 compiled, are right.
INDUCTOR_FAILS_ON_THE_3D_MASK = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 2)


@pytest.mark.skipif(INDUCTOR_FAILS_ON_THE_3D_MASK, reason="torch 2.1's inductor cannot compile the 3-D mask's "
                    "int64 label arithmetic; docs/gpu.md")
def test_map_level_under_torch_compile_fullgraph():
    """Inference compiled with fullgraph=True (no caches, no host reads while compiling: a graph break raises)
    equals the oracle and the eager call: a clip that shrinks H off the prefix (geometric), pads W, shift on D/W."""
    window, heads, dim, clip, shift = (2, 3, 3), 2, 8, (4, 2, 4), (1, 1, 1)
    params = _params(window, dim, heads, True, np.random.default_rng(5))
    module = _drop_in(window, dim, heads, params, torch.float32, "geometric")
    x = _rounded(np.random.default_rng(6).normal(0.0, 1.0, (2, *clip, dim)), torch.float32)
    xt = torch.as_tensor(x).float()
    before = graphs_compiled()
    torch._dynamo.reset()
    run = torch.compile(lambda t: shifted_window_attention_3d(t, module, window_size=window, shift_size=shift),
                        fullgraph=True, backend=inductor_counting)
    with torch.no_grad():
        compiled_out, eager_out = run(xt), shifted_window_attention_3d(xt, module, window_size=window,
                                                                       shift_size=shift)
        used, _ = reference.block_window_and_shift(clip, window, shift)
        baseline = video_swin.shifted_window_attention_3d(
            xt, _faithful(window, dim, heads, params, torch.float32, "geometric", used), window_size=window,
            shift_size=shift)
    assert graphs_compiled() > before
    expected = reference.shifted_window_attention_3d(x, params, num_heads=heads, window_size=window,
                                                     shift_size=shift, index_convention="geometric")
    for name, out in [("compiled", compiled_out), ("eager", eager_out)]:
        assert_close(out, expected, baseline=baseline, dtype=torch.float32, what=f"{name} map level")


def test_module_under_torch_compile_fullgraph_with_a_mask_and_several_images():
    window, heads, dim = (2, 3, 3), 3, 12
    params = _params(window, dim, heads, False, np.random.default_rng(7))
    module = _drop_in(window, dim, heads, params, torch.float32)
    mask = shifted_window_mask_3d(2, 6, 3, window, (1, 1, 0))
    x = torch.randn(6, 18, dim)
    before = graphs_compiled()
    torch._dynamo.reset()
    run = torch.compile(module.forward, fullgraph=True, backend=inductor_counting)
    with torch.no_grad():
        compiled_out, eager_out = run(x, mask), module(x, mask)
        baseline = _faithful(window, dim, heads, params, torch.float32)(x, mask)
    assert graphs_compiled() > before
    expected = _oracle_forward(module, x, mask)
    for name, out in [("compiled", compiled_out), ("eager", eager_out)]:
        assert_close(out, expected, baseline=baseline, dtype=torch.float32, what=f"{name} forward")


# ---- bad input ----

_X = torch.zeros(2, 18, 6)
BAD_CONSTRUCTORS = {
    "dim 0": (dict(dim=0), ValueError, "dim must be >= 1"),
    "heads do not divide": (dict(dim=6, num_heads=4), ValueError, "dim=6 is not divisible by num_heads=4"),
    "window pair": (dict(window_size=(2, 3)), ValueError, "window_size must be a triple"),
    "window side 0": (dict(window_size=(2, 0, 3)), ValueError, "window_size[1] must be >= 1"),
    "window str": (dict(window_size="abc"), TypeError, "window_size[0] must be an int"),
    "window float": (dict(window_size=2.0), TypeError, "window_size must be an int or a triple"),
    "convention": (dict(index_convention="upstream"), ValueError, "index_convention must be one of"),
    "qk_scale str": (dict(qk_scale="0.5"), TypeError, "qk_scale must be a real number"),
}


@pytest.mark.parametrize("name", BAD_CONSTRUCTORS)
def test_bad_constructor_arguments_are_refused(name):
    kwargs, error, words = BAD_CONSTRUCTORS[name]
    with pytest.raises(error, match=re.escape(words)):
        WindowAttention3D(**{**dict(dim=6, window_size=(2, 3, 3), num_heads=3), **kwargs})


BAD_CALLS = {
    "x not a tensor": ((_X.numpy(),), {}, TypeError, "x must be a torch.Tensor"),
    "x integer": ((_X.long(),), {}, TypeError, "x must have a floating dtype"),
    "x 2-D": ((_X[0],), {}, ValueError, "x must be 3-D (B_, N, C)"),
    "wrong C": ((torch.zeros(2, 18, 4),), {}, ValueError, "x has C=4 channels, but the module was built with dim=6"),
    "N too large": ((torch.zeros(2, 19, 6),), {}, ValueError, "a window holds at most Wd*Wh*Ww == 18"),
    "used window too big": ((torch.zeros(2, 4, 6),), dict(used_window=(1, 4, 1)), ValueError, "must fit inside"),
    "used window wrong N": ((torch.zeros(2, 4, 6),), dict(used_window=(1, 2, 3)), ValueError,
                            "x has N=4 tokens but used_window=(1, 2, 3) has 6"),
    "mask shape": ((_X, torch.zeros(2, 18, 17)), {}, ValueError, "mask must have shape (nW, N, N)"),
    "mask windows": ((_X, torch.zeros(3, 18, 18)), {}, ValueError, "B_ must be a multiple of nW"),
    "mask bool": ((_X, torch.ones(1, 18, 18, dtype=torch.bool)), {}, TypeError, "mask must be a floating additive"),
    "mask list": ((_X, [[0.0]]), {}, TypeError, "mask must be a torch.Tensor or None"),
    "mask NaN": ((_X, torch.full((1, 18, 18), math.nan)), {}, ValueError, "mask must not contain NaN or +inf"),
}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_bad_calls_are_refused(name):
    args, kwargs, error, words = BAD_CALLS[name]
    with pytest.raises(error, match=re.escape(words)), torch.no_grad():
        WindowAttention3D(6, (2, 3, 3), 3)(*args, **kwargs)


BAD_MAP_CALLS = {
    "x 4-D": ((torch.zeros(1, 4, 4, 6),), {}, ValueError, "x must be 5-D (B, D, H, W, C)"),
    "window mismatch": ((torch.zeros(1, 4, 6, 6, 6),), dict(window_size=(2, 3, 2)), ValueError,
                        "attn was built with window_size=(2, 3, 3), but window_size=(2, 3, 2) was given"),
    "shift too big": ((torch.zeros(1, 4, 6, 6, 6),), dict(shift_size=(1, 3, 1)), ValueError,
                      "shift_size[1]=3 must be smaller than the window side 3"),
    "shift negative": ((torch.zeros(1, 4, 6, 6, 6),), dict(shift_size=(1, -1, 1)), ValueError,
                       "shift_size[1] must be >= 0"),
}


@pytest.mark.parametrize("name", BAD_MAP_CALLS)
def test_bad_map_level_calls_are_refused(name):
    args, kwargs, error, words = BAD_MAP_CALLS[name]
    kwargs = {**dict(window_size=(2, 3, 3), shift_size=(1, 1, 1)), **kwargs}
    with pytest.raises(error, match=re.escape(words)), torch.no_grad():
        shifted_window_attention_3d(*args, WindowAttention3D(6, (2, 3, 3), 3), **kwargs)


@pytest.mark.parametrize("args, kwargs, error, words", [
    ((4, 8, 6, (2, 4, 4), (1, 2, 2)), {}, ValueError, "W=6 must be a multiple of the window side 4"),
    ((4, 8, 8, (2, 4, 4), (1, 4, 2)), {}, ValueError, "shift_size[1]=4 must be smaller than the window side 4"),
    ((4, 8, 8, (2, 4, 4), (1, 2, 2)), dict(fill=1.0), ValueError, "fill must be negative"),
    ((4, 8, 8, (2, 4, 4), (1, 2, 2)), dict(dtype=torch.int64), TypeError, "dtype must be a floating torch dtype"),
    ((0, 8, 8, (2, 4, 4), (1, 2, 2)), {}, ValueError, "D must be >= 1"),
])
def test_bad_mask_arguments_are_refused(args, kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        shifted_window_mask_3d(*args, **kwargs)
