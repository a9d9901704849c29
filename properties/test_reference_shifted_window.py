"""The shifted-window oracle checked against its definitions, with no implementation involved.

Two oracles of map-level attention must agree: ``reference.shifted_window_attention`` (roll, partition, mask,
window attention, reverse, roll back) and ``reference.shifted_window_attention_per_token`` (for each token, plain
attention over the tokens it may see, by the cut-line definition of shifted windows). They share no code, so
their agreement proves the mask construction, the roll direction and the partition order.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from refimpl import reference
from refimpl import strategies as rst
from refimpl.suite.shifted_window_mask import swin_allowed_pairs
from refimpl.tolerance import assert_close, assert_vjp_matches_central_differences

small_map_cases = rst.shifted_window_attention_cases(
    rst.shifted_window_configs(max_window=4, max_windows_per_side=2), max_heads=3, max_head_dim=3
)


@given(rst.shifted_window_attention_cases())
def test_the_two_oracles_agree(case):
    """Roll + partition + mask (with -100 or -inf) == per-token attention over the visible tokens, to float64
    rounding (the -100 leak, ~e^-100 relative, is below it)."""
    assert_close(case.oracle_output(), case.oracle_per_token(), baseline=None, dtype="float64",
                 what="shifted_window_attention vs per-token oracle")


@given(rst.shifted_window_configs())
def test_visibility_by_cut_lines_is_same_rolled_window_and_region(geometry):
    """Token (r, c) sees (r2, c2) by the cut-line definition (shifted_window_cell) exactly when, after rolling by
    -s, the two share a window and a region id: checked pair by pair, with explicit coordinates."""
    H, W, ws, s = geometry.args
    regions = reference.shifted_window_regions(H, W, ws, s)  # on the rolled map
    for r in range(H):
        for c in range(W):
            rr, rc = (r - s) % H, (c - s) % W  # where token (r, c) lands in the rolled map
            for r2 in range(H):
                for c2 in range(W):
                    rr2, rc2 = (r2 - s) % H, (c2 - s) % W
                    rolled = (rr // ws, rc // ws) == (rr2 // ws, rc2 // ws) and regions[rr, rc] == regions[rr2, rc2]
                    cells = (reference.shifted_window_cell(r, ws, s), reference.shifted_window_cell(c, ws, s)) == (
                        reference.shifted_window_cell(r2, ws, s), reference.shifted_window_cell(c2, ws, s))
                    assert rolled == cells, ((r, c), (r2, c2))


def test_mask_8x8_window_4_shift_2_matches_the_spec():
    """Swin's 8x8 example (docs/semantics.md): the four windows allow 256, 128, 128 and 64 pairs of 256; region
    ids run 0..8."""
    mask = reference.shifted_window_mask(8, 8, 4, 2)
    np.testing.assert_array_equal((mask == 0).sum(axis=(1, 2)), [256, 128, 128, 64])
    assert set(np.unique(mask)) == {0.0, -100.0}
    np.testing.assert_array_equal(np.unique(reference.shifted_window_regions(8, 8, 4, 2)), np.arange(9))
    np.testing.assert_array_equal(swin_allowed_pairs(rst.ShiftedWindowConfig(8, 8, 4, 2)), [256, 128, 128, 64])


def test_a_mask_built_in_the_unrolled_frame_is_caught():
    """The two-oracle comparison has teeth: labelling regions on the map *before* the roll (a classic bug) gives
    a mask that makes roll + partition + mask disagree with the per-token oracle."""
    case = rst.ShiftedWindowAttentionCase.build(
        rst.WindowAttentionConfig(dim=4, num_heads=2, window_size=(4, 4), num_ttokens=1, use_temporal=False),
        rst.ShiftedWindowConfig(8, 8, 4, 2), batch=1, fill=-100.0, seed=3,
    )
    H, W, ws, s = case.geometry.args
    unrolled_regions = np.roll(reference.shifted_window_regions(H, W, ws, s), (s, s), axis=(0, 1))
    labels = reference.window_partition(unrolled_regions[None, :, :, None], ws).reshape(-1, ws * ws)
    wrong_mask = np.where(labels[:, :, None] == labels[:, None, :], 0.0, -100.0)
    windows = reference.window_partition(np.roll(case.x, (-s, -s), axis=(1, 2)), ws).reshape(-1, ws * ws, 4)
    out = reference.window_attention(windows, case.params, num_heads=2, window_size=(ws, ws), mask=wrong_mask)
    wrong = np.roll(reference.window_reverse(out.reshape(-1, ws, ws, 4), ws, H, W), (s, s), axis=(1, 2))
    assert np.abs(wrong - case.oracle_per_token()).max() > 1e-3
    assert np.abs(case.oracle_output() - case.oracle_per_token()).max() < 1e-12


@given(rst.shifted_window_configs(), st.integers(1, 3), st.integers(1, 3))
def test_partition_is_batch_major_and_reverse_inverts_it(geometry, batch, channels):
    H, W, ws, _ = geometry.args
    x = np.random.default_rng(0).standard_normal((batch, H, W, channels))
    windows = reference.window_partition(x, ws)
    assert windows.shape == (batch * geometry.n_windows, ws, ws, channels)
    for b in range(batch):
        for wr in range(H // ws):
            for wc in range(W // ws):
                row = b * geometry.n_windows + wr * (W // ws) + wc
                np.testing.assert_array_equal(windows[row], x[b, wr * ws : (wr + 1) * ws, wc * ws : (wc + 1) * ws])
    np.testing.assert_array_equal(reference.window_reverse(windows, ws, H, W), x)


@given(small_map_cases)
def test_map_vjp_matches_central_differences_of_the_per_token_oracle(case):
    """<grad, direction> of the roll/partition VJP equals the directional derivative of the *other* oracle's loss,
    for the map and every parameter: the gradients are checked by a route that shares no code with them."""
    kwargs = {k: v for k, v in case.oracle_kwargs().items() if k != "fill"}  # the per-token oracle masks exactly

    def loss(inputs):
        params = {k: a for k, a in inputs.items() if k != "x"}
        out = reference.shifted_window_attention_per_token(inputs["x"], params, **kwargs)
        return float(np.sum(out * case.grad_out))

    assert_vjp_matches_central_differences(loss, case.oracle_vjp(), {"x": case.x, **case.params},
                                           np.random.default_rng(case.seed))
