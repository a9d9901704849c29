"""Video Swin 3-D window attention beyond the registered properties (refimpl/suite/test_kinds.py runs those): the
oracle against its definitions, the spec's checked examples, the prefix condition, a second map-level route,
finite differences and the 2-D oracle; the strategies reach what they claim; fair verdicts and the convention
verdict; the mutants' intended catchers, window level and block level."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import find, given, settings
from hypothesis import strategies as st

from refimpl import reference
from refimpl import strategies as rst
from refimpl.baselines import shifted_window_3d as video_swin
from refimpl.harness import verify
from refimpl.mutants import shifted_window_mask_3d as mask_mutants
from refimpl.mutants import window_attention_3d as mutants_3d
from refimpl.optimized import WindowAttention3D
from refimpl.suite import Implementation, properties_for, run_property
from refimpl.suite._compiled import compiled, compiled_settings, graphs_compiled
from refimpl.suite.window_attention_3d import (
    BASELINE,
    KIND,
    block_matches_oracle,
    declared_convention,
    geometric_drop_in,
    map_cases,
)
from refimpl.tolerance import assert_vjp_matches_central_differences

DTYPES = ("float64", "float32")
WINDOWS_UP_TO_3 = list(itertools.product(range(1, 4), repeat=3))


def _prop(name):
    (prop,) = [p for p in properties_for(KIND) if p.name == name]
    return prop


# ---- the index ----


@pytest.mark.parametrize("window", WINDOWS_UP_TO_3)
def test_3d_index_is_the_spec_formula(window):
    """Token p = (d*Wh + h)*Ww + w; entry (i, j) = (Δd+Wd-1)(2Wh-1)(2Ww-1) + (Δh+Wh-1)(2Ww-1) + (Δw+Ww-1), query
    minus key, every value in [0, (2Wd-1)(2Wh-1)(2Ww-1)) and every row of the table reached once per offset."""
    wd, wh, ww = window
    index = reference.relative_position_index(window)
    tokens = [(d, h, w) for d in range(wd) for h in range(wh) for w in range(ww)]
    for i, (di, hi, wi) in enumerate(tokens):
        for j, (dj, hj, wj) in enumerate(tokens):
            expected = ((di - dj + wd - 1) * (2 * wh - 1) * (2 * ww - 1) + (hi - hj + wh - 1) * (2 * ww - 1)
                        + (wi - wj + ww - 1))
            assert index[i, j] == expected
    assert index.dtype == np.int64
    assert len(np.unique(index)) == (2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1)


@pytest.mark.parametrize("wh, ww", [(1, 1), (2, 3), (4, 2), (3, 3)])
def test_pairs_keep_v1s_index_and_one_frame_reduces_to_it(wh, ww):
    rows, cols = np.divmod(np.arange(wh * ww), ww)
    expected = (rows[:, None] - rows[None, :] + wh - 1) * (2 * ww - 1) + cols[:, None] - cols[None, :] + ww - 1
    np.testing.assert_array_equal(reference.relative_position_index((wh, ww)), expected)
    np.testing.assert_array_equal(reference.relative_position_index(wh), reference.relative_position_index((wh, wh)))
    # a one-frame window: Δd = 0 adds (Wd - 1) * ... = 0, so the 3-D index is the 2-D one
    np.testing.assert_array_equal(reference.relative_position_index((1, wh, ww)), expected)


@pytest.mark.parametrize("window, error, words", [
    ((2, 0, 2), ValueError, "window_size[1] must be >= 1"),
    ((1, 2, 3, 4), ValueError, "pair (Wh, Ww) or a triple"),
    ((2, 2.5, 2), TypeError, "window_size[1] must be an int"),
    ("abc", TypeError, "window_size[0] must be an int"),
    (None, TypeError, "window_size must be an int, a pair"),
])
def test_bad_window_sizes_are_refused(window, error, words):
    with pytest.raises(error) as info:
        reference.relative_position_index(window)
    assert words in str(info.value)


def _spec_prefix_clause(window, used):
    """The closed form the spec states (checked exhaustively there): at most one axis cut short, every later axis
    at full size, every earlier axis of used size 1."""
    (_, wh, ww), (ud, uh, uw) = window, used
    return (uh == wh and uw == ww) or (ud == 1 and uw == ww) or (ud == 1 and uh == 1)


def test_conventions_agree_exactly_on_row_major_prefixes_up_to_3x3x3():
    """Over every window up to 3x3x3 and every used window inside it: truncated == geometric exactly when the used
    window is a row-major prefix, and the spec's closed form says the same."""
    agree = differ = 0
    for window in WINDOWS_UP_TO_3:
        for used in itertools.product(*[range(1, w + 1) for w in window]):
            same = np.array_equal(reference.window_attention_3d_index(window, used, "truncated"),
                                  reference.window_attention_3d_index(window, used, "geometric"))
            assert same == reference.is_row_major_prefix(window, used) == _spec_prefix_clause(window, used), \
                (window, used)
            agree, differ = agree + same, differ + (not same)
    assert agree and differ  # both sides of the condition were reached (counted in docs/window-attention-3d.md)


def test_geometric_index_reads_the_true_offsets():
    """6x6 inside 7x7 (the spec's last-stage example, one frame): the geometric entry of tokens (r, c) and (r', c')
    is the module table's row of (r - r', c - c'); the truncated one is not, for some pair."""
    window, used = (1, 7, 7), (1, 6, 6)
    geometric = reference.window_attention_3d_index(window, used, "geometric")
    full = reference.relative_position_index(window)
    for i, j in [(0, 7), (5, 30), (35, 0)]:
        (ri, ci), (rj, cj) = divmod(i, 6), divmod(j, 6)
        assert geometric[i, j] == full[ri * 7 + ci, rj * 7 + cj]
    assert not np.array_equal(geometric, reference.window_attention_3d_index(window, used, "truncated"))


# ---- the shrink rule, partition, mask: the spec's checked examples ----


@pytest.mark.parametrize("size, window, shift, expected", [
    ((16, 56, 56), (8, 7, 7), (4, 3, 3), ((8, 7, 7), (4, 3, 3))),
    ((8, 7, 7), (8, 7, 7), (4, 3, 3), ((8, 7, 7), (0, 0, 0))),
    ((4, 6, 10), (2, 7, 7), (1, 3, 3), ((2, 6, 7), (1, 0, 3))),
    ((1, 8, 8), (2, 4, 4), (1, 2, 2), ((1, 4, 4), (0, 2, 2))),
])
def test_shrink_rule_examples(size, window, shift, expected):
    assert reference.block_window_and_shift(size, window, shift) == expected
    assert video_swin.get_window_size(size, window, shift) == expected  # the upstream-faithful rule agrees


def test_mask_example_counts_and_27_labels():
    mask = reference.shifted_window_mask_3d(4, 8, 8, (2, 4, 4), (1, 2, 2))
    assert mask.shape == (8, 32, 32)
    assert (mask == 0).sum(axis=(1, 2)).tolist() == [1024 // 2**k for k in (0, 1, 1, 2, 1, 2, 2, 3)]
    assert (mask == 0).sum(axis=(1, 2)).tolist() == [1024, 512, 512, 256, 512, 256, 256, 128]
    assert set(np.unique(mask)) == {0.0, -100.0}
    assert len(np.unique(reference.shifted_window_regions_3d(4, 8, 8, (2, 4, 4), (1, 2, 2)))) == 27
    # an axis with zero shift has one band; all zero: an all-zero mask
    assert len(np.unique(reference.shifted_window_regions_3d(4, 8, 8, (2, 4, 4), (0, 2, 2)))) == 9
    assert not reference.shifted_window_mask_3d(4, 8, 8, (2, 4, 4), (0, 0, 0)).any()
    assert np.isneginf(reference.shifted_window_mask_3d(4, 8, 8, (2, 4, 4), (1, 2, 2), fill=-np.inf)).any()


@settings(max_examples=60)
@given(rst.clip_geometries_3d())
def test_mask_equals_video_swins_compute_mask(geometry):
    """The oracle's mask (labels from the band definition, partitioned) equals the upstream-faithful compute_mask,
    an independent construction (slices written into a label volume)."""
    expected = video_swin.compute_mask(*geometry.mask_args, torch.device("cpu")).double().numpy()
    np.testing.assert_array_equal(reference.shifted_window_mask_3d(*geometry.mask_args), expected)


@settings(max_examples=30)
@given(st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)), rst.seeds)
def test_partition_order_and_reverse(window, seed):
    """Window row b*nW + (kd*nH + kh)*nWw + kw holds the tokens of that grid cell in (d, h, w) row-major order;
    reverse is the inverse."""
    b, (wd, wh, ww) = window[0], window[1:]
    grid = np.random.default_rng(seed).integers(1, 3, size=3)
    D, H, W = grid[0] * wd, grid[1] * wh, grid[2] * ww
    x = np.random.default_rng(seed).standard_normal((b, D, H, W, 2))
    windows = reference.window_partition_3d(x, (wd, wh, ww))
    n = 0
    for i in range(b):
        for kd, kh, kw in itertools.product(range(grid[0]), range(grid[1]), range(grid[2])):
            for p, (d, h, w) in enumerate(itertools.product(range(wd), range(wh), range(ww))):
                np.testing.assert_array_equal(windows[n, p], x[i, kd * wd + d, kh * wh + h, kw * ww + w])
            n += 1
    np.testing.assert_array_equal(reference.window_reverse_3d(windows, (wd, wh, ww), D, H, W), x)


# ---- the oracles: two map-level routes, finite differences, the 2-D special case, the faithful module ----

small_map_cases = rst.shifted_window_attention_3d_cases(
    rst.clip_geometries_3d(max_window=(2, 3, 3)),
    configs=rst.window_attention_3d_configs(max_heads=2, max_head_dim=2, max_window=(2, 3, 3)), max_batch=1)


@settings(max_examples=40)
@given(small_map_cases)
def test_map_oracle_equals_the_per_token_oracle(case):
    """Pad + roll + partition + mask (-100) + reverse + crop equals plain attention per token over its shifted
    window in the padded, unrolled clip, under both conventions (the per-token truncated lookup spells out each
    token's place in the partition; the geometric one uses coordinate differences only)."""
    for convention in reference.INDEX_CONVENTIONS:
        np.testing.assert_allclose(case.oracle_output(convention), case.oracle_per_token(convention),
                                   rtol=0, atol=1e-12)


def test_the_per_token_oracle_separates_the_conventions():
    """On a non-prefix shrink (H shrunk under a 2-frame window) the two conventions give different outputs, so the
    agreement above is not vacuous."""
    geometry = rst.ClipGeometry3D((2, 2, 3), (2, 3, 3), (1, 1, 1))
    config = rst.WindowAttention3DConfig(4, 2, (2, 3, 3))
    case = rst.ShiftedWindowAttention3DCase.build(config, geometry, batch=1, fill=-100.0, seed=3)
    assert case.conventions_differ
    gap = np.abs(case.oracle_per_token("geometric") - case.oracle_per_token("truncated")).max()
    assert gap > 0.1


@settings(max_examples=10)
@given(rst.window_attention_3d_cases(rst.window_attention_3d_configs(max_heads=2, max_head_dim=2), max_windows=2),
       st.sampled_from(reference.INDEX_CONVENTIONS))
def test_window_vjp_matches_central_differences(case, convention):
    grads = case.oracle_vjp(convention)
    inputs = {"x": case.x, **case.params}

    def loss(values):
        x = values["x"]
        params = {k: v for k, v in values.items() if k != "x"}
        return float(np.sum(case.oracle_output(convention, x=x, params=params) * case.grad_out))

    assert_vjp_matches_central_differences(loss, grads, inputs, np.random.default_rng(case.seed))


@settings(max_examples=8)
@given(small_map_cases, st.sampled_from(reference.INDEX_CONVENTIONS))
def test_map_vjp_matches_central_differences(case, convention):
    grads = case.oracle_vjp(convention)
    inputs = {"x": case.x, **case.params}

    def loss(values):
        params = {k: v for k, v in values.items() if k != "x"}
        out = reference.shifted_window_attention_3d(values["x"], params, **case.oracle_kwargs(convention))
        return float(np.sum(out * case.grad_out))

    assert_vjp_matches_central_differences(loss, grads, inputs, np.random.default_rng(case.seed))


@settings(max_examples=20)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 2), st.booleans(), rst.seeds)
def test_one_frame_is_the_2d_oracle(ws, grid, shift, qkv_bias, seed):
    """A one-frame clip with window (1, ws, ws) and shift (0, s, s) is Swin V1's shifted window attention (the 2-D
    oracle, an independent implementation) when the map is tiled and larger than the window."""
    shift = shift % ws
    H = W = ws * (grid + 1)
    config = rst.WindowAttention3DConfig(4, 2, (1, ws, ws), qkv_bias)
    params = rst.random_window_attention_3d_params(config, np.random.default_rng(seed))
    x = np.random.default_rng(seed + 1).standard_normal((2, 1, H, W, 4))
    got = reference.shifted_window_attention_3d(x, params, num_heads=2, window_size=(1, ws, ws),
                                                shift_size=(0, shift, shift))
    expected = reference.shifted_window_attention(x[:, 0], params, num_heads=2, window_size=ws, shift_size=shift)
    np.testing.assert_allclose(got[:, 0], expected, rtol=0, atol=1e-12)


@settings(max_examples=40)
@given(rst.shifted_window_attention_3d_cases())
def test_truncated_oracle_equals_the_upstream_faithful_block_in_float64(case):
    """The oracle with index_convention="truncated" is what Video Swin computes: the upstream-faithful module in
    Video Swin's block code, float64, to rounding."""
    module = BASELINE.factory(**case.config.kwargs()).double().eval()
    module.load_state_dict({k: torch.as_tensor(v) for k, v in case.params.items()}, strict=False)
    g = case.geometry
    with torch.no_grad():
        got = video_swin.shifted_window_attention_3d(torch.as_tensor(case.x), module, window_size=g.window_size,
                                                     shift_size=g.shift_size, fill=case.fill).numpy()
    np.testing.assert_allclose(got, case.oracle_output("truncated"), rtol=0, atol=1e-12)


def test_pad_tokens_are_zero_tokens_attended_as_keys():
    """Padding a clip is the same as extending it with zero tokens (which then need no padding) and cropping: pad
    tokens are ordinary, unmasked keys with k = b_k, v = b_v; the per-token oracle, which attends over the padded
    clip's cells without any mask, agrees. (That excluding them changes the output is the pad_tokens_masked block
    mutant's test.)"""
    geometry = rst.ClipGeometry3D((1, 3, 3), (1, 2, 2), (0, 1, 1))
    config = rst.WindowAttention3DConfig(4, 2, (1, 2, 2), qkv_bias=True)
    case = rst.ShiftedWindowAttention3DCase.build(config, geometry, batch=1, fill=-100.0, seed=5)
    assert geometry.padded == (1, 4, 4)
    zero_extended = np.zeros((1, 1, 4, 4, 4))
    zero_extended[:, :, :3, :3] = case.x
    kwargs = case.oracle_kwargs("truncated")
    extended = reference.shifted_window_attention_3d(zero_extended, case.params, **kwargs)
    np.testing.assert_allclose(case.oracle_output("truncated"), extended[:, :, :3, :3], rtol=0, atol=1e-12)
    np.testing.assert_allclose(case.oracle_output("truncated"), case.oracle_per_token("truncated"), rtol=0, atol=1e-12)


def test_qk_scale_zero_means_the_default_in_the_oracle():
    case = find(rst.window_attention_3d_cases(rst.window_attention_3d_configs(qk_scale=0.0)), lambda c: True)
    np.testing.assert_array_equal(case.oracle_output(), case.oracle_output(qk_scale=None))


@pytest.mark.parametrize("call, error, words", [
    (lambda: reference.block_window_and_shift((4, 4, 4), (2, 2, 2), (2, 0, 0)), ValueError, "shift_size[0]"),
    (lambda: reference.shifted_window_mask_3d(3, 4, 4, (2, 2, 2), (1, 1, 1)), ValueError, "D=3 must be a multiple"),
    (lambda: reference.window_attention_3d(np.zeros((1, 5, 4)), {}, num_heads=2, window_size=(2, 2, 2),
                                           used_window=(1, 2, 2)), ValueError, "x has N=5 tokens"),
    (lambda: reference.window_attention_3d_index((2, 2, 2), (3, 1, 1)), ValueError, "must fit in window_size"),
    (lambda: reference.window_attention_3d_index((2, 2, 2), None, "xy"), ValueError, "index_convention"),
    (lambda: reference.shifted_window_attention_3d(np.zeros((1, 2, 2, 4)), {}, num_heads=2, window_size=(1, 2, 2),
                                                   shift_size=(0, 1, 1)), ValueError, "5-D (B, D, H, W, C)"),
])
def test_bad_oracle_calls_are_refused(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)


# ---- the strategies reach what they claim ----


def _reaches(strategy, predicate):
    find(strategy, predicate, settings=settings(max_examples=2000, database=None))


@pytest.mark.parametrize("what, predicate", [
    ("a full window", lambda c: not c.shrunk),
    ("a prefix shrink", lambda c: c.shrunk and not c.conventions_differ),
    ("a non-prefix shrink with D > 1", lambda c: c.conventions_differ and c.used_window[0] > 1),
    ("a non-prefix shrink of W alone",
     lambda c: c.conventions_differ and c.used_window[:2] == c.config.window_size[:2]),
    ("masks over several images and windows", lambda c: c.has_mask and c.batch > 1 and c.n_windows > 1),
    ("a -inf mask", lambda c: c.has_mask and c.mask_convention == "-inf"),
    ("qk_scale=0", lambda c: c.config.qk_scale == 0),
    ("no qkv bias", lambda c: not c.config.qkv_bias),
    ("unequal window sides", lambda c: len(set(c.config.window_size)) == 3),
    ("a unit-scale bias table", lambda c: np.std(c.params["relative_position_bias_table"]) > 0.5),
])
def test_window_cases_reach(what, predicate):
    _reaches(rst.window_attention_3d_cases(), predicate)


@pytest.mark.parametrize("what, predicate", [
    *[(f"a clip shorter than the window along {a}", lambda g, a=a: g.size[a] < g.window_size[a]) for a in range(3)],
    *[(f"a clip equal to the window along {a} with a shift there",
       lambda g, a=a: g.size[a] == g.window_size[a] and g.shift_size[a] > 0) for a in range(3)],
    *[(f"padding along {a} with a shift in use", lambda g, a=a: g.padded[a] > g.size[a] and g.used[1][a] > 0)
      for a in range(3)],
    ("a zero shift on one axis and a non-zero on another", lambda g: 0 in g.used[1] and any(g.used[1])),
    ("all shifts zero", lambda g: not any(g.shift_size)),
    ("several windows along every axis", lambda g: all(p // u > 1 for p, u in zip(g.padded, g.used[0], strict=True))),
    ("a non-prefix shrink", lambda g: not reference.is_row_major_prefix(g.window_size, g.used[0])),
])
def test_clip_geometries_reach(what, predicate):
    _reaches(rst.clip_geometries_3d(), predicate)


def test_dropout_configs_reach_nonzero_rates():
    _reaches(rst.window_attention_3d_configs(dropout=True), lambda c: c.attn_drop > 0 and c.proj_drop > 0)


# ---- fair verdicts and the convention verdict ----


@pytest.mark.parametrize("target", [
    "refimpl.baselines.window_attention_3d:WindowAttention3D",
    "refimpl.optimized:WindowAttention3D",
    "refimpl.suite.window_attention_3d:geometric_drop_in",
    "refimpl.mutants.window_attention_3d:SnippetWindowAttention3D",
])
def test_fair_verdicts(target):
    """Upstream-faithful code passes at defaults (truncated, undeclared), and so do refimpl's drop-in (declares
    truncated) and its geometric build (declares geometric) and the mutants' unmutated base."""
    report = verify({KIND: target}, devices=["cpu"], dtypes=DTYPES, max_examples=25)
    assert not report.failed, report.failed[0].detail


@pytest.mark.parametrize("target", ["refimpl.suite.shifted_window_mask_3d:video_swin_compute_mask",
                                    "refimpl.optimized:shifted_window_mask_3d",
                                    "refimpl.mutants.shifted_window_mask_3d:unmutated_compute_mask"])
def test_mask_kind_fair_verdicts(target):
    report = verify({"shifted_window_mask_3d": target}, devices=["cpu"], dtypes=("float32",), max_examples=50)
    assert not report.failed, report.failed[0].detail


def test_declared_conventions():
    assert declared_convention(BASELINE) == "truncated"
    assert declared_convention(Implementation(KIND, "g", geometric_drop_in)) == "geometric"
    assert declared_convention(Implementation(KIND, "o", WindowAttention3D),
                               WindowAttention3D(4, (2, 2, 2), 2, index_convention="geometric")) == "geometric"


NON_PREFIX = rst.WindowAttention3DCase.build(rst.WindowAttention3DConfig(4, 2, (2, 3, 3)), (2, 2, 3), batch=1,
                                             n_windows=1, has_mask=False, seed=11)


def test_declaring_geometric_but_computing_truncated_is_named():
    impl = Implementation(KIND, "mutant", mutants_3d.DeclaresGeometricComputesTruncated)
    with pytest.raises(AssertionError, match="computes upstream's truncated lookup .* but declares geometric"):
        _prop("forward_matches_oracle").check(impl, NON_PREFIX, "cpu", torch.float64)


def test_computing_geometric_without_declaring_it_is_named():
    """A target whose module knows the window in use by other means (here: told by the test) and computes the
    geometric bias, but declares nothing: the failure says to declare the convention."""

    class KnowsTheWindow(WindowAttention3D):
        refimpl_capabilities = {}  # declares nothing: upstream's truncated lookup is assumed

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs, index_convention="geometric")
            self.refimpl_capabilities = {}  # nor does the instance

        def forward(self, x, mask=None):
            return super().forward(x, mask, used_window=NON_PREFIX.used_window)

    impl = Implementation(KIND, "knows", KnowsTheWindow)
    with pytest.raises(AssertionError, match=r"computes the geometric bias but declares \(or defaults to\) truncated"
                                             r".*declare refimpl_capabilities\['index_convention'\] = 'geometric'"):
        _prop("forward_matches_oracle").check(impl, NON_PREFIX, "cpu", torch.float64)


def test_forward_property_under_torch_compile():
    before = graphs_compiled()
    impl = compiled(Implementation(KIND, "refimpl.optimized:WindowAttention3D", WindowAttention3D), fullgraph=True)
    result = run_property(_prop("forward_matches_oracle"), impl, "cpu", "float32", settings=compiled_settings())
    assert result["run"] > 0 and graphs_compiled() > before


# ---- the mutants: each caught by the property written for its bug ----

INTENDED = {
    "table_w_major_3d": "index_buffer_is_the_definition",
    "meshgrid_xy_3d": "index_buffer_is_the_definition",
    "bias_key_minus_query_3d": "forward_matches_oracle",
    "used_window_index_along_w": "forward_matches_oracle",
    "declares_geometric_computes_truncated": "forward_matches_oracle",
    "qk_scale_zero_taken_literally_3d": "forward_matches_oracle",
    "mask_window_major_3d": "forward_matches_oracle",
    "bias_table_detached_3d": "gradients_match_oracle",
    "dropout_in_eval_mode_3d": "dropout_acts_only_in_train_mode",
    "mask_3d_labelled_before_the_roll": "mask_equals_its_definition",
    "mask_3d_bands_from_half_window": "mask_equals_its_definition",
    "mask_3d_windows_w_major": "mask_equals_its_definition",
    "mask_3d_tokens_w_major": "mask_equals_its_definition",
    "mask_3d_labels_summed": "mask_equals_its_definition",
}


@pytest.mark.mutants
@pytest.mark.parametrize("mutant", mutants_3d.CATALOG + mask_mutants.CATALOG, ids=lambda m: m.name)
def test_each_mutant_is_caught_by_its_property(mutant):
    from refimpl.mutants import catch

    failure = catch(mutant, devices=["cpu"], dtypes=DTYPES)
    assert failure is not None, f"{mutant.name} survived"
    assert failure.property == INTENDED[mutant.name], failure.detail


def test_the_unmutated_block_passes():
    @settings(max_examples=60, deadline=None)
    @given(map_cases)
    def run(case):
        block_matches_oracle(mutants_3d.SnippetBlock3D(), case)

    run()


@pytest.mark.mutants
@pytest.mark.parametrize("mutant", mutants_3d.BLOCK_MUTANTS, ids=lambda m: m.name)
def test_each_block_mutant_is_caught(mutant):
    @settings(max_examples=100, deadline=None, derandomize=True, database=None)
    @given(map_cases)
    def run(case):
        block_matches_oracle(mutant.target, case)

    with pytest.raises(AssertionError, match="map-level output of the block code"):
        run()


# ---- the contract's names and signatures (its Video Swin table) ----


def _stubs():
    def window_partition_3d(x, window_size): ...
    def window_reverse_3d(windows, window_size, D, H, W): ...
    def block_window_and_shift(input_size, window_size, shift_size): ...
    def shifted_window_mask_3d(D, H, W, window_size, shift_size, fill=-100.0): ...
    def window_attention_3d(x, params, *, num_heads, window_size, used_window=None, mask=None, qk_scale=None,
                            index_convention="geometric"): ...
    def shifted_window_attention_3d(x, params, *, num_heads, window_size, shift_size, qk_scale=None, fill=-100.0,
                                    index_convention="geometric"): ...
    def window_attention_3d_vjp(x, params, *, num_heads, window_size, used_window=None, mask=None, qk_scale=None,
                                index_convention="geometric", grad_out): ...
    def shifted_window_attention_3d_vjp(x, params, *, num_heads, window_size, shift_size, qk_scale=None,
                                        fill=-100.0, index_convention="geometric", grad_out): ...
    return [window_partition_3d, window_reverse_3d, block_window_and_shift, shifted_window_mask_3d,
            window_attention_3d, shifted_window_attention_3d, window_attention_3d_vjp,
            shifted_window_attention_3d_vjp]


@pytest.mark.parametrize("stub", _stubs(), ids=lambda stub: stub.__name__)
def test_contract_3d_names_have_the_contract_signatures(stub):
    """Every parameter the contract names is there, of the same kind with the same default, in order; anything more
    has a default."""
    import inspect

    promised = inspect.signature(stub).parameters
    actual = inspect.signature(getattr(reference, stub.__name__)).parameters
    assert stub.__name__ in reference.__all__
    for name, p in promised.items():
        assert name in actual, f"{stub.__name__} lacks {name!r}"
        assert actual[name].kind == p.kind and actual[name].default == p.default, (stub.__name__, name)
    positional = [n for n, p in promised.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert [n for n, p in actual.items() if p.kind == p.POSITIONAL_OR_KEYWORD][:len(positional)] == positional
    assert all(p.default is not p.empty or p.kind == p.VAR_KEYWORD for n, p in actual.items() if n not in promised)
