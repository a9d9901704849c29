"""The oracle checked against its definitions: index formulas (docs/semantics.md), softmax laws, and the hand-written
VJP against central finite differences. These tests take no implementation: they are why the oracle is trusted."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from refimpl import reference
from refimpl import strategies as rst
from refimpl.tolerance import assert_vjp_matches_central_differences

window_sides = st.integers(1, 9)


@given(window_sides, window_sides)
def test_relative_position_index_is_the_spec_formula(wh, ww):
    index = reference.relative_position_index((wh, ww))
    assert index.dtype == np.int64 and index.shape == (wh * ww, wh * ww)
    for i in range(wh * ww):
        r_i, c_i = divmod(i, ww)  # token p = r * Ww + c
        for j in range(wh * ww):
            r_j, c_j = divmod(j, ww)
            assert index[i, j] == (r_i - r_j + wh - 1) * (2 * ww - 1) + (c_i - c_j + ww - 1)
    # every relative offset has its own row of the ((2Wh-1)(2Ww-1), nH) table, and every row is used
    assert set(np.unique(index)) == set(range((2 * wh - 1) * (2 * ww - 1))) or wh * ww == 1


def test_relative_position_index_window_7x7_uses_169_rows():
    index = reference.relative_position_index((7, 7))
    assert index.min() == 0 and index.max() == 168 and index[0, 0] == index[48, 48] == 84


@given(st.integers(1, 32))
def test_temporal_relative_index_is_i_minus_j_plus_t_minus_1(t):
    index = reference.temporal_relative_index(t)
    assert index.dtype == np.int64 and index.shape == (t, t)
    for i in range(t):
        for j in range(t):
            assert index[i, j] == i - j + t - 1


def test_temporal_relative_index_t4_matches_spec():
    expected = [[3, 2, 1, 0], [4, 3, 2, 1], [5, 4, 3, 2], [6, 5, 4, 3]]  # AIM's table for T = 4 (docs/semantics.md)
    np.testing.assert_array_equal(reference.temporal_relative_index(4), expected)


rows = st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=12)


@given(rows, st.floats(-1e3, 1e3))
def test_softmax_is_a_distribution_and_shift_invariant(row, shift):
    p = reference.softmax(np.array(row))
    assert (p >= 0).all() and abs(p.sum() - 1.0) <= 1e-12
    np.testing.assert_allclose(reference.softmax(np.array(row) + shift), p, rtol=1e-9, atol=1e-300)
    assert p[int(np.argmax(row))] == p.max()


@given(rst.window_attention_cases())
def test_oracle_probabilities_are_normalized_and_masked(case):
    """Rows sum to 1, except rows that may attend to no key (all -inf / all False), which are all 0; a -inf key
    gets exactly 0, a -100 key (in a row with an allowed key) at most e^-100 x its row's spread."""
    stages = case.oracle_stages()
    mask = np.broadcast_to(stages.mask_rows[:, None], stages.probs.shape)  # (B_, nH, N, N)
    attends_to_nothing = np.isneginf(mask).all(axis=-1)
    assert (stages.probs >= 0).all()
    np.testing.assert_allclose(stages.probs.sum(-1), np.where(attends_to_nothing, 0.0, 1.0), rtol=0, atol=1e-12)
    assert (stages.probs[np.isneginf(mask)] == 0.0).all()
    has_allowed_key = (mask == 0).any(axis=-1, keepdims=True)
    # a -100 mask leaves e^-100 of weight relative to the row's largest allowed logit (logits here are O(10))
    assert (stages.probs[(mask == -100.0) & has_allowed_key] < 1e-30).all()


@given(rst.window_attention_cases(rst.window_attention_configs(max_heads=4, max_head_dim=3, max_window_side=3)))
def test_oracle_vjp_matches_central_differences(case):
    """<grad, direction> equals the directional derivative of the loss, for x and every parameter."""

    def loss(inputs):
        params = {k: a for k, a in inputs.items() if k != "x"}
        return float(np.sum(reference.window_attention(inputs["x"], params, **case.oracle_kwargs()) * case.grad_out))

    assert_vjp_matches_central_differences(loss, case.oracle_vjp(), {"x": case.x, **case.params},
                                           np.random.default_rng(case.seed))


def test_vjp_of_unused_table_is_zero():
    case = rst.WindowAttentionCase.build(
        rst.WindowAttentionConfig(dim=8, num_heads=2, window_size=(2, 3), num_ttokens=3),
        temporal=False, batch=2, n_windows=1, has_mask=False, seed=1,
    )
    grads = case.oracle_vjp()
    assert not grads["temporal_position_bias_table"].any() and grads["relative_position_bias_table"].any()
