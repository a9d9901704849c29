"""Properties of shifted-window masking: the mask generator, and map-level (shifted) window attention.

Two kinds of implementation are tested here:

* ``window_attention`` modules, at map level: ``refimpl.optimized.shifted_window_attention`` (roll, partition,
  cached mask, reverse, roll back) drives the module under test, and the result is compared with the float64
  oracle, whose own roll/partition/mask route is in turn checked against a second oracle that shares no code
  with it (``properties/test_reference.py``);
* ``shifted_window_mask`` functions ``(H, W, window_size, shift_size) -> (nW, N, N)``, against the mask's
  definition and against a closed-form count of the pairs it allows.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from hypothesis import strategies as st

from refimpl import optimized, reference
from refimpl import strategies as rst
from refimpl.eager import eager_shifted_window_attention
from refimpl.properties._core import register
from refimpl.properties.window_attention import (
    EAGER,
    HIGH,
    KIND,
    assert_gradients_close,
    attention_probabilities,
    build,
    gradients_of,
    round_to,
    rounded_case,
    to_tensor,
)
from refimpl.tolerance import assert_close, error_bound

MASK_KIND = "shifted_window_mask"

# --------------------------------------------------------------------------------------------------
# Running a module at map level
# --------------------------------------------------------------------------------------------------


def rounded_map_case(case: rst.ShiftedWindowAttentionCase, dtype) -> rst.ShiftedWindowAttentionCase:
    """The case as a ``dtype`` implementation sees it: the oracle then runs on exactly those inputs."""
    return case.with_arrays(
        x=round_to(case.x, dtype),
        params={k: round_to(a, dtype) for k, a in case.params.items()},
        grad_out=round_to(case.grad_out, dtype),
    )


def map_forward(module, case, device, dtype, *, x=None, fill=None, eager=False, requires_grad=False):
    """``(B, H, W, C)`` output of map-level attention around ``module``: refimpl's optimized map function, or
    (``eager``) Swin's way of writing it, which serves as the tolerance baseline."""
    if not isinstance(x, torch.Tensor):
        x = to_tensor(case.x if x is None else x, device, dtype, requires_grad)
    run = eager_shifted_window_attention if eager else optimized.shifted_window_attention
    geometry = case.geometry
    return run(x, module, window_size=geometry.window_size, shift_size=geometry.shift_size,
               fill=case.fill if fill is None else fill)


def map_gradients(module, case, device, dtype, *, eager=False) -> dict[str, torch.Tensor]:
    """Gradients of ``sum(out * grad_out)`` through map-level attention (see ``gradients_of``)."""
    return gradients_of(module, lambda x: map_forward(module, case, device, dtype, x=x, eager=eager), case, device, dtype)


def _modules(impl, case, device, dtype, *, train=False):
    return (build(impl, case.config, case.params, device, dtype, train=train),
            build(EAGER, case.config, case.params, device, dtype, train=train))


def visible_tokens(geometry: rst.ShiftedWindowConfig, r: int, c: int) -> np.ndarray:
    """``(H, W)`` bool: the tokens that token ``(r, c)`` may see, by the definition in the original frame (the
    same shifted window along both axes; ``reference.shifted_window_cell``), not by any mask."""
    ws, s = geometry.window_size, geometry.shift_size
    rows = np.array([reference.shifted_window_cell(i, ws, s) for i in range(geometry.H)])
    cols = np.array([reference.shifted_window_cell(j, ws, s) for j in range(geometry.W)])
    return (rows == rows[r])[:, None] & (cols == cols[c])[None, :]


# --------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------

map_cases = rst.shifted_window_attention_cases()
shifted_map_cases = rst.shifted_window_attention_cases(rst.shifted_window_configs(shift="nonzero"))
unshifted_map_cases = rst.shifted_window_attention_cases(rst.shifted_window_configs(shift="zero"))
minus_100_map_cases = rst.shifted_window_attention_cases(rst.shifted_window_configs(shift="nonzero"), fills=(-100.0,))
dead_row_cases = rst.window_attention_cases(
    temporal=False, mask=True, mask_conventions=("-inf", "bool"), fully_masked_rows=True
)
# One window of at least two tokens and a logit gap beyond the -100 mask's reach (e^10 = 22026 > N - 1).
gap_cases = st.tuples(
    rst.window_attention_cases(
        rst.window_attention_configs().filter(lambda c: c.window_tokens >= 2), temporal=False, mask=False
    ),
    st.floats(110.0, 1000.0),
)

# --------------------------------------------------------------------------------------------------
# Map-level properties of a window-attention module
# --------------------------------------------------------------------------------------------------


@register(KIND, map_cases, needs=('masks',))
def map_level_matches_oracle(impl, case, device, dtype):
    """Map-level (shifted) window attention around the module equals the float64 oracle (roll by -s, partition,
    masked window attention, reverse, roll back), with Swin's -100 mask and with -inf."""
    case = rounded_map_case(case, dtype)
    module, eager = _modules(impl, case, device, dtype)
    actual = map_forward(module, case, device, dtype)
    baseline = map_forward(eager, case, device, dtype, eager=True)
    assert_close(actual, case.oracle_output(), baseline=baseline, dtype=dtype, what="map-level output")


@register(KIND, map_cases, needs=('gradients', 'masks'))
def map_level_gradients_match_oracle(impl, case, device, dtype):
    """Gradients of sum(out * grad_out) through map-level attention, with respect to the map and every
    parameter, equal the oracle's (the roll and the partition are permutations; their adjoints undo them)."""
    case = rounded_map_case(case, dtype)
    module, eager = _modules(impl, case, device, dtype, train=True)
    expected, magnitudes = case.oracle_vjp(), case.oracle_vjp_magnitudes()
    actual = map_gradients(module, case, device, dtype)
    baseline = map_gradients(eager, case, device, dtype, eager=True)
    assert_gradients_close(actual, expected, baseline=baseline, magnitudes=magnitudes, dtype=dtype,
                           what="map-level grad")


@register(KIND, map_cases, dtypes=HIGH, needs=('masks',))
def perturbing_a_token_changes_only_its_own_shifted_window(impl, case, device, dtype):
    """Isolation: perturbing one token of the map changes the outputs of exactly the tokens that may see it (same
    shifted window, by the definition in the original frame) and nothing else: bit for bit with a -inf mask,
    and with -100 up to the oracle's e^-100 leak plus the dtype's rounding floor. The token itself changes."""
    case = rounded_map_case(case, dtype)
    module = build(impl, case.config, case.params, device, dtype)
    rng = np.random.default_rng(case.seed + 2)
    b, r, c = (int(rng.integers(n)) for n in case.x.shape[:3])
    x2 = case.x.copy()
    x2[b, r, c] += round_to(3.0 * rng.standard_normal(case.x.shape[-1]), dtype)
    x2 = round_to(x2, dtype)
    with torch.no_grad():
        change = (map_forward(module, case, device, dtype, x=x2) - map_forward(module, case, device, dtype))
    change = change.abs().amax(dim=-1).double().cpu().numpy()  # (B, H, W)
    outside = np.ones(change.shape, dtype=bool)
    outside[b] = ~visible_tokens(case.geometry, r, c)
    assert change[b, r, c] > 0, f"perturbing token {(b, r, c)} did not change its own output"
    if case.fill == -np.inf:
        leaked = np.argwhere(outside & (change > 0))
        assert leaked.size == 0, (
            f"perturbing token {(b, r, c)} changed tokens it may not see, e.g. {tuple(leaked[0])} "
            f"by {change[tuple(leaked[0])]:.3g} (-inf mask: isolation must be exact)"
        )
        return
    oracle = case.oracle_output()
    oracle_change = np.abs(case.with_arrays(x=x2).oracle_output() - oracle).max(axis=-1)
    # The allowance is the oracle's own -100 leak, not zero: it is ~e^(gap-100) relative, which large logit gaps
    # lift above float64 rounding (the thorough profile found one with qk_scale 2: H=4, W=12, ws 4, s 2).
    allowed = oracle_change + error_bound(oracle, None, dtype)
    worst = np.unravel_index(np.argmax(np.where(outside, change - allowed, -np.inf)), change.shape)
    assert change[worst] <= allowed[worst], (
        f"perturbing token {(b, r, c)} changed token {tuple(int(i) for i in worst)}, which may not see it, "
        f"by {change[worst]:.3g} > {allowed[worst]:.3g} (the -100 leak plus the {dtype} rounding floor)"
    )


@register(KIND, unshifted_map_cases, dtypes=HIGH)
def without_shift_map_level_is_plain_window_attention(impl, case, device, dtype):
    """With shift 0 the map-level operation is plain window attention, no mask: each ws x ws block of the output
    equals the oracle's window attention on that block of the input, sliced straight out of the map."""
    case = rounded_map_case(case, dtype)
    module, eager = _modules(impl, case, device, dtype)
    actual = map_forward(module, case, device, dtype)
    baseline = map_forward(eager, case, device, dtype, eager=True)
    ws, (batch, H, W, C) = case.geometry.window_size, case.x.shape
    expected = np.zeros(case.x.shape)
    for r in range(0, H, ws):
        for c in range(0, W, ws):
            block = case.x[:, r : r + ws, c : c + ws].reshape(batch, ws * ws, C)
            out = reference.window_attention(block, case.params, num_heads=case.config.num_heads,
                                             window_size=(ws, ws), qk_scale=case.config.qk_scale)
            expected[:, r : r + ws, c : c + ws] = out.reshape(batch, ws, ws, C)
    assert_close(actual, expected, baseline=baseline, dtype=dtype, what="unshifted map-level output")


@register(KIND, minus_100_map_cases, dtypes=HIGH, needs=('masks',))
def minus_100_matches_minus_inf_while_logits_are_bounded(impl, case, device, dtype):
    """Swin's -100 mask equals exact (-inf) masking up to a leak: in every row the masked keys hold at most
    |M| e^(gap - 100) of the probability (gap = largest masked logit minus largest allowed one), which for the
    drawn, bounded logits is far below any rounding; the module's -100 output then equals the -inf oracle."""
    case = rounded_map_case(case, dtype)
    H, W, ws, s = case.geometry.args
    windows = reference.window_partition(np.roll(case.x, (-s, -s), axis=(1, 2)), ws).reshape(-1, ws * ws, case.x.shape[-1])
    stages = reference.window_attention_stages(
        windows, case.params, num_heads=case.config.num_heads, window_size=(ws, ws),
        mask=reference.shifted_window_mask(H, W, ws, s, -100.0), qk_scale=case.config.qk_scale,
    )
    masked = np.broadcast_to(stages.mask_rows[:, None] != 0, stages.logits.shape)
    unmasked_logits = stages.logits - stages.mask_rows[:, None]
    leak = np.where(masked, stages.probs, 0.0).sum(axis=-1)
    gap = np.where(masked, unmasked_logits, -np.inf).max(-1) - np.where(masked, -np.inf, unmasked_logits).max(-1)
    bound = masked.sum(axis=-1) * np.exp(gap - 100.0)
    assert (leak <= bound * (1 + 1e-9)).all(), "the -100 leak exceeds |M| e^(gap - 100)"
    module, eager = _modules(impl, case, device, dtype)
    actual = map_forward(module, case, device, dtype, fill=-100.0)
    baseline = map_forward(eager, case, device, dtype, fill=-100.0, eager=True)
    expected = case.oracle_output(fill=-np.inf)
    assert_close(actual, expected, baseline=baseline, dtype=dtype, what="-100 output against the -inf oracle")


@register(KIND, gap_cases, dtypes=HIGH, needs=('masks', 'boolean_masks'))
def minus_100_stops_masking_beyond_a_logit_gap_of_100(impl, drawn, device, dtype):
    """The failure mode of Swin's -100, recorded as a property rather than skipped: when a masked key's logit
    exceeds the allowed ones by more than about 100 (here 110..1000, via the bias table), the -100 mask no longer
    masks, and that key takes almost all of the weight; -inf and boolean masks still give it exactly 0."""
    case, gap = drawn
    n = case.n_tokens
    index = reference.relative_position_index(case.config.window_size)
    params = dict(case.params)
    params["relative_position_bias_table"] = np.zeros_like(params["relative_position_bias_table"])
    params["relative_position_bias_table"][index[0, 1]] = gap  # query 0 -> key 1 gets +gap, every head
    blocked = np.zeros((1, n, n), dtype=bool)
    blocked[0, 0, 1] = True  # query 0 may not see key 1
    for convention, mask in (("-100", np.where(blocked, -100.0, 0.0)), ("-inf", np.where(blocked, -np.inf, 0.0)),
                             ("bool", ~blocked)):
        probe = replace(case, n_windows=1, has_mask=True, mask_convention=convention, params=params, mask=mask)
        p_masked = attention_probabilities(impl, probe, device, dtype)[0, :, 0, 1]  # (nH,)
        if convention == "-100":
            assert (p_masked > 0.99).all(), (
                f"with a logit gap of {gap:.4g}, the -100-masked key should take almost all the weight (the known "
                f"failure mode), got {p_masked.min():.3g}; an implementation that masks exactly here does not "
                f"compute Swin's -100 semantics"
            )
        else:
            assert (p_masked == 0).all(), f"{convention} mask: masked key got weight {p_masked.max():.3g}"


@register(KIND, dead_row_cases, needs=('masks', 'fully_masked_rows'))
def rows_with_no_allowed_key_attend_to_nothing(impl, case, device, dtype):
    """refimpl's decision for a query row with no allowed key (all -inf, or all False): it attends to nothing,
    its attention output is 0 and its output token is exactly proj.bias, never NaN; every gradient is finite.
    (Eager softmax gives NaN there, and SDPA backends differ across torch versions.)"""
    case = rounded_case(case, dtype)
    module = build(impl, case.config, case.params, device, dtype, train=True)
    x = to_tensor(case.x, device, dtype, requires_grad=True)
    mask = to_tensor(case.mask, device, dtype)
    out = module(x, mask, False)
    (out * to_tensor(case.grad_out, device, dtype)).sum().backward()
    allowed = case.mask if case.mask.dtype == bool else case.mask == 0
    dead = ~allowed.any(axis=-1)  # (nW, N)
    dead_rows = np.tile(dead, (case.batch, 1))  # row b of x uses window b % nW
    bias = module.proj.bias.detach()
    got = out.detach()[torch.as_tensor(dead_rows, device=out.device)]
    assert torch.equal(got, bias.expand_as(got)), (
        f"rows with no allowed key must output exactly proj.bias; max deviation "
        f"{(got - bias).abs().max().item() if got.numel() else 0:.3g} (NaN: {torch.isnan(got).any().item()})"
    )
    assert torch.isfinite(x.grad).all(), "non-finite gradient for x"
    for name, p in module.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"


# --------------------------------------------------------------------------------------------------
# Properties of a shifted-window mask function
# --------------------------------------------------------------------------------------------------


def _mask_of(impl, geometry) -> np.ndarray:
    """The implementation's mask for ``geometry`` as a NumPy array (bool stays bool, floats become float64)."""
    mask = impl.factory(*geometry.args)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu()
        mask = mask.numpy() if mask.dtype == torch.bool else mask.double().numpy()
    mask = np.asarray(mask)
    expected_shape = (geometry.n_windows, geometry.window_size**2, geometry.window_size**2)
    assert mask.shape == expected_shape, f"mask has shape {mask.shape}, expected (nW, N, N) = {expected_shape}"
    return mask


def _allowed(mask: np.ndarray) -> np.ndarray:
    return mask if mask.dtype == bool else mask == 0


@register(MASK_KIND, rst.shifted_window_configs(), dtypes=("float32",))
def mask_equals_its_definition(impl, geometry, device, dtype):
    """The mask allows exactly the pairs of the definition (same region of the rolled map, region ids
    3 * row band + column band) and uses one convention throughout: boolean "may attend", or 0 where allowed and
    one common fill of at most -100 (Swin's -100, or -inf) everywhere else."""
    mask = _mask_of(impl, geometry)
    expected = reference.shifted_window_mask(*geometry.args) == 0
    allowed = _allowed(mask)
    wrong = np.argwhere(allowed != expected)
    if wrong.size:
        first = tuple(int(i) for i in wrong[0])
        got, want = ("allowed", "blocked") if allowed[first] else ("blocked", "allowed")
        raise AssertionError(
            f"{len(wrong)} of {allowed.size} entries disagree with the definition; first at (window, query, key) = "
            f"{first}: got {got}, expected {want}"
        )
    if mask.dtype != bool:
        fills = np.unique(mask[~allowed])
        assert fills.size <= 1, f"blocked entries use several values {fills[:4]}: one fill expected"
        assert fills.size == 0 or fills[0] <= -100.0, f"fill {fills[0]} is too weak to mask (Swin uses -100)"


def swin_allowed_pairs(geometry: rst.ShiftedWindowConfig) -> np.ndarray:
    """Allowed (query, key) pairs per window, in closed form: along an axis a window holds ws tokens of one
    band, except the last one when shifted, which holds ws - s and s tokens of two bands; a region is a
    row band x a column band, so a window allows (sum over its row bands of n^2) x (same over column bands)."""
    H, W, ws, s = geometry.args

    def per_axis(k: int, n_windows: int) -> int:
        return ws**2 if s == 0 or k < n_windows - 1 else (ws - s) ** 2 + s**2

    return np.array([per_axis(wr, H // ws) * per_axis(wc, W // ws) for wr in range(H // ws) for wc in range(W // ws)])


@register(MASK_KIND, rst.shifted_window_configs(), dtypes=("float32",))
def mask_is_symmetric_with_allowed_diagonal_and_counted_pairs(impl, geometry, device, dtype):
    """The mask is symmetric, always allows a token to see itself (no row is fully masked), and window w allows
    exactly the number of pairs counted in closed form (e.g. 256, 128, 128, 64 for 8x8, ws 4, shift 2)."""
    allowed = _allowed(_mask_of(impl, geometry))
    assert (allowed == allowed.transpose(0, 2, 1)).all(), "the mask is not symmetric"
    assert allowed[:, np.arange(allowed.shape[1]), np.arange(allowed.shape[1])].all(), "a token may not see itself"
    counts, expected = allowed.sum(axis=(1, 2)), swin_allowed_pairs(geometry)
    assert (counts == expected).all(), f"allowed pairs per window {counts.tolist()} != {expected.tolist()}"
