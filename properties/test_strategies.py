"""Meta-tests of ``refimpl.strategies``: every public strategy reaches each edge case it documents, and draws only
valid values.

A property can only catch a bug on inputs its strategy draws: several of ``refimpl.mutants``' bugs show only on
non-square windows, more than 4 heads, long clips, ``qk_scale=0``, ``s = ws - 1``, ... So each documented claim
(a strategy's docstring, or a mutant's ``shows_on``) is checked here with ``hypothesis.find`` within the budget a
``refimpl verify`` run gives one property (the ``ci`` profile's ``max_examples``, derandomized): "reachable" means
reachable there, not eventually. A claim the strategy stops short of is marked ``xfail(strict=True, reason=...)``
with the measured numbers, never weakened: it shows in every run, and turns into a failure once fixed. (The
approach of data-apis' array-api-tests ``meta_tests``.) All claims share one derandomized stream, so a Hypothesis
upgrade can move a first hit; the counts in an xfail reason were measured with hypothesis 6.170.

The validity tests (``@given``) check that what is drawn satisfies the documented invariants, and that the
oracles accept it. Only public names of ``refimpl.strategies`` are used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import hypothesis
import numpy as np
import pytest
from hypothesis import Phase, given
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample
from hypothesis.strategies import SearchStrategy

import refimpl.profiles  # noqa: F401  (registers the ci profile whose budget the claims get)
from refimpl import reference
from refimpl import strategies as rst

BUDGET = hypothesis.settings.get_profile("ci").max_examples  # examples one property gets in a verify run
# The validity tests' budget: the profile's, at most 50 (every property of the suite draws the same strategies at
# the full budget and would fail on an invalid draw too; these tests say which invariant broke, and stay fast).
VALIDITY = hypothesis.settings(max_examples=min(hypothesis.settings().max_examples, 50))


@dataclass(frozen=True)
class Claim:
    """``strategy`` draws a value satisfying ``predicate`` within ``budget`` examples (derandomized)."""

    id: str
    strategy: SearchStrategy
    predicate: Callable[[object], bool]
    source: str  # where it is documented
    budget: int = BUDGET
    xfail: str = ""  # non-empty: the strategy is known to stop short (the measured numbers)


def first_hit(strategy: SearchStrategy, predicate: Callable, budget: int) -> int:
    """How many examples ``hypothesis.find`` draws until the first one satisfying ``predicate`` (no shrinking:
    reachability is the question). Raises ``NoSuchExample`` when none of ``budget`` examples does."""
    calls, hits = [0], []

    def counted(value) -> bool:
        calls[0] += 1
        ok = bool(predicate(value))
        if ok and not hits:
            hits.append(calls[0])
        return ok

    hypothesis.find(strategy, counted, settings=hypothesis.settings(
        max_examples=budget, database=None, derandomize=True, deadline=None, phases=(Phase.generate,)))
    return hits[0]


# --------------------------------------------------------------------------------------------------
# Helpers: what a drawn value is, read off its arrays
# --------------------------------------------------------------------------------------------------


def allowed(mask) -> np.ndarray:
    """The "may attend" pattern of a window mask in any convention (``reference.additive_mask``'s meaning)."""
    return reference.additive_mask(mask) == 0


def has_dead_row(case: rst.WindowAttentionCase) -> bool:
    return case.has_mask and bool((~allowed(case.mask).any(-1)).any())


def windows_differ(case: rst.WindowAttentionCase) -> bool:
    """Two windows of the mask allow different pairs (a wrong window assignment can show)."""
    pattern = allowed(case.mask) if case.has_mask else None
    return pattern is not None and len(pattern) >= 2 and bool((pattern != pattern[:1]).any())


def masks_something(case: rst.WindowAttentionCase) -> bool:
    return case.has_mask and not allowed(case.mask).all()


def spatial(case) -> bool:
    return not case.temporal


def window_attention_param_shapes(config: rst.WindowAttentionConfig) -> dict[str, tuple[int, ...]]:
    """AIM ``WindowAttention``'s parameters (no buffers) and their shapes."""
    c, heads = config.dim, config.num_heads
    wh, ww = config.window_size
    shapes = {"relative_position_bias_table": ((2 * wh - 1) * (2 * ww - 1), heads), "qkv.weight": (3 * c, c),
              "proj.weight": (c, c), "proj.bias": (c,)}
    if config.use_temporal:
        shapes["temporal_position_bias_table"] = (2 * config.num_ttokens - 1, heads)
    if config.qkv_bias:
        shapes["qkv.bias"] = (3 * c,)
    return shapes


def bn_gammas(case: rst.TemporalModelCase):
    shapes = reference.temporal_model_state_shapes(**case.config.kwargs())
    return [case.params[k] for k in shapes if k.endswith(".weight") and len(shapes[k]) == 1]


def upsample_varies(case: rst.TemporalModelCase) -> bool:
    """The pooling branch exists and its bilinear upsample is not constant and not the identity along some axis:
    the pooled grid (H // ph, W // pw) has >= 2 cells there and is resized to a different size."""
    c = case.config
    if not (c.use_pyramid_pooling and c.receptive_field >= 2):
        return False
    (ph, pw), (h, w) = c.input_shape, (case.height, case.width)
    return (ph >= 2 and h // ph >= 2) or (pw >= 2 and w // pw >= 2)


def floors(config: rst.TemporalModelConfig) -> tuple[int, int]:
    """(least TemporalBlock input, least start_out_channels) of a configuration (``temporal_model_configs``)."""
    least = 3 if config.use_pyramid_pooling else 2
    r, n_spatial = config.receptive_field, config.n_spatial_layers_between_temporal_layers
    return least, (least if r >= 3 else (2 if n_spatial else 1))


# --------------------------------------------------------------------------------------------------
# The claims
# --------------------------------------------------------------------------------------------------

WA_CONFIGS = rst.window_attention_configs()
WA_CONFIGS_DROPOUT = rst.window_attention_configs(dropout=True)
WA_CASES = rst.window_attention_cases()
WA_CASES_SPATIAL_MASKED = rst.window_attention_cases(temporal=False, mask=True)
WA_CASES_MASK = rst.window_attention_cases(mask=True)  # a mask in temporal mode too (to be ignored)
WA_CASES_DROPOUT = rst.window_attention_cases(WA_CONFIGS_DROPOUT)
WA_CASES_DEAD = rst.window_attention_cases(temporal=False, mask=True, mask_conventions=("-inf", "bool"),
                                           fully_masked_rows=True)
SW_CONFIGS = rst.shifted_window_configs()
SW_CONFIGS_NONZERO = rst.shifted_window_configs(shift="nonzero")
SW_CASES = rst.shifted_window_attention_cases()
TM_CONFIGS = rst.temporal_model_configs()
TM_CASES = rst.temporal_model_cases()
TM_CASES_SHORT = rst.temporal_model_cases(short_clips=True)
TM_CASES_BLOCKS = rst.temporal_model_cases(rst.temporal_model_configs(min_receptive_field=2))

_WAC = "window_attention_configs docstring"
_WACASE = "window_attention_cases docstring"
_MASK = "random_window_mask docstring"
_SWC = "shifted_window_configs docstring"
_SWCASE = "shifted_window_attention_cases docstring"
_TMC = "temporal_model_configs docstring"
_TMCASE = "temporal_model_cases docstring"


def _mutant(name: str) -> str:
    return f"mutants: {name}"


CLAIMS = [
    # ---- window_attention_configs ----
    Claim("wa-configs/one-head", WA_CONFIGS, lambda c: c.num_heads == 1, f"{_WAC}: 1..16 heads"),
    Claim("wa-configs/16-heads", WA_CONFIGS, lambda c: c.num_heads == 16, f"{_WAC}: 1..16 heads"),
    Claim("wa-configs/more-than-4-heads", WA_CONFIGS, lambda c: 4 < c.num_heads < 16,
          _mutant("bias_table_for_four_heads")),
    Claim("wa-configs/head-dim-1", WA_CONFIGS, lambda c: c.head_dim == 1 and c.num_heads > 1, f"{_WAC}: head_dim"),
    Claim("wa-configs/max-head-dim", WA_CONFIGS, lambda c: c.head_dim == 6, f"{_WAC}: head_dim up to max_head_dim"),
    Claim("wa-configs/non-square-window", WA_CONFIGS, lambda c: c.window_size[0] != c.window_size[1],
          f"{_WAC}; {_mutant('index_row_stride_uses_wh')}"),
    Claim("wa-configs/window-rows-and-columns", WA_CONFIGS, lambda c: min(c.window_size) >= 2,
          _mutant("meshgrid_xy")),
    Claim("wa-configs/max-window-side", WA_CONFIGS, lambda c: max(c.window_size) == 5,
          f"{_WAC}: windows up to max_window_side"),
    Claim("wa-configs/one-token-window", WA_CONFIGS, lambda c: c.window_size == (1, 1), f"{_WAC}: windows 1.."),
    Claim("wa-configs/qk-scale-none", WA_CONFIGS, lambda c: c.qk_scale is None, f"{_WAC}: qk_scale None"),
    Claim("wa-configs/qk-scale-zero", WA_CONFIGS, lambda c: c.qk_scale == 0,
          f"{_WAC}: qk_scale 0; {_mutant('qk_scale_zero_taken_literally')}"),
    Claim("wa-configs/qk-scale-override", WA_CONFIGS, lambda c: c.qk_scale is not None and c.qk_scale > 0,
          f"{_WAC}: qk_scale override"),
    Claim("wa-configs/no-temporal-table", WA_CONFIGS, lambda c: not c.use_temporal, "use_temporal drawn"),
    Claim("wa-configs/no-qkv-bias", WA_CONFIGS, lambda c: not c.qkv_bias, "qkv_bias drawn"),
    Claim("wa-configs/dropout/attn-drop", WA_CONFIGS_DROPOUT, lambda c: c.attn_drop > 0,
          f"{_WAC}: dropout=True; {_mutant('dropout_in_eval_mode')}"),
    Claim("wa-configs/dropout/proj-drop", WA_CONFIGS_DROPOUT, lambda c: c.proj_drop > 0, f"{_WAC}: dropout=True"),
    # ---- window_attention_cases ----
    Claim("wa-cases/spatial-unmasked", WA_CASES, lambda k: spatial(k) and not k.has_mask, f"{_WACASE}: mask drawn"),
    Claim("wa-cases/spatial-masked", WA_CASES, lambda k: spatial(k) and masks_something(k),
          f"{_WACASE}; {_mutant('mask_ignored')}"),
    Claim("wa-cases/temporal-T>1", WA_CASES, lambda k: k.temporal and k.n_tokens > 1,
          f"{_WACASE}: temporal drawn; {_mutant('temporal_index_reversed')}"),
    Claim("wa-cases/temporal-T>4", WA_CASES, lambda k: k.temporal and k.n_tokens > 4,
          _mutant("temporal_table_for_four_frames")),
    Claim("wa-cases/mask--100", WA_CASES, lambda k: k.has_mask and k.mask_convention == "-100",
          f"{_WACASE}: convention drawn"),
    Claim("wa-cases/mask--inf", WA_CASES, lambda k: k.has_mask and k.mask_convention == "-inf",
          f"{_WACASE}: convention drawn"),
    Claim("wa-cases/mask-bool", WA_CASES, lambda k: k.has_mask and k.mask_convention == "bool",
          f"{_WACASE}: convention drawn"),
    Claim("wa-cases/dead-row--inf", WA_CASES, lambda k: k.mask_convention == "-inf" and has_dead_row(k),
          f"{_WACASE}: rows attending to nothing; {_mutant('fully_masked_rows_nan')}"),
    Claim("wa-cases/dead-row-bool", WA_CASES, lambda k: k.mask_convention == "bool" and has_dead_row(k),
          f"{_WACASE}: rows attending to nothing; {_mutant('fully_masked_rows_nan')}"),
    Claim("wa-cases/dead-row--100", WA_CASES, lambda k: k.mask_convention == "-100" and has_dead_row(k),
          f"{_WACASE}: rows attending to nothing (any convention)",
          xfail="window_attention_cases() first draws a '-100' mask with a fully masked row at example 174 "
                "(derandomized; budget 150). 20 random seeds: median 32.5, max 178, 2 of 20 beyond 150"),
    Claim("wa-cases/images-and-windows", WA_CASES,
          lambda k: spatial(k) and k.batch >= 2 and k.n_windows >= 2 and windows_differ(k),
          f"{_MASK}: own density per window; {_mutant('mask_window_major')}"),
    Claim("wa-cases/spatial-masked/images-and-windows", WA_CASES_SPATIAL_MASKED,
          lambda k: k.batch >= 2 and k.n_windows >= 2 and windows_differ(k), _mutant("mask_window_major")),
    Claim("wa-cases/max-batch-and-windows", WA_CASES, lambda k: spatial(k) and k.batch == 3 and k.n_windows == 4,
          f"{_WACASE}: max_batch, max_windows"),
    Claim("wa-cases/heads-and-tokens", WA_CASES, lambda k: k.config.num_heads > 1 and k.n_tokens > 1,
          f"{_mutant('heads_merged_without_transpose')}; {_mutant('scale_from_whole_dim')}"),
    Claim("wa-cases/more-than-4-heads-spatial", WA_CASES, lambda k: spatial(k) and k.config.num_heads > 4,
          _mutant("bias_table_for_four_heads")),
    Claim("wa-cases/more-than-4-heads-temporal", WA_CASES, lambda k: k.temporal and k.config.num_heads > 4,
          _mutant("bias_table_for_four_heads")),
    Claim("wa-cases/non-square-window", WA_CASES, lambda k: spatial(k) and len(set(k.config.window_size)) == 2,
          _mutant("index_row_stride_uses_wh")),
    Claim("wa-cases/qk-scale-zero", WA_CASES, lambda k: k.config.qk_scale == 0,
          _mutant("qk_scale_zero_taken_literally")),
    Claim("wa-cases/mask=True/temporal-with-mask", WA_CASES_MASK, lambda k: k.temporal and masks_something(k),
          f"{_WACASE}: mask=True in temporal mode; {_mutant('mask_also_in_temporal_mode')}"),
    Claim("wa-cases/dropout/attn-drop", WA_CASES_DROPOUT, lambda k: k.config.attn_drop > 0 and k.n_tokens > 1,
          f"{_mutant('dropout_in_eval_mode')}; {_mutant('dropout_without_rescale')}"),
    Claim("wa-cases/mask/-100-spatial", WA_CASES_MASK, lambda k: not k.temporal and k.mask_convention == "-100",
          _mutant("mask_edited_in_place")),
    Claim("wa-cases/large-logits-past-float32-overflow", st.tuples(rst.window_attention_cases(temporal=False),
                                                                   rst.logit_gains),
          lambda d: d[0].with_arrays(x=d[0].x * d[1]).oracle_stages().logits.max() > 88.7,
          f"logit_gains docstring; {_mutant('softmax_without_max_subtraction')}"),
    *[Claim(f"layouts/{layout}", rst.memory_layouts, lambda drawn, layout=layout: drawn == layout,
            "MEMORY_LAYOUTS docstring" + (f"; {_mutant('strides_ignored')}" if layout != "contiguous" else ""))
      for layout in rst.MEMORY_LAYOUTS],
    Claim("wa-cases/fully_masked_rows=True/dead-row", WA_CASES_DEAD, has_dead_row,
          f"{_MASK}: fully_masked_rows blocks rows entirely; {_mutant('fully_masked_rows_nan')}"),
    Claim("wa-cases/fully_masked_rows=True/live-row-too", WA_CASES_DEAD,
          lambda k: has_dead_row(k) and bool(allowed(k.mask).any(-1).any()), f"{_MASK}: about a third of the rows"),
    # ---- shifted_window_configs ----
    Claim("sw-configs/shift-half-even-ws", SW_CONFIGS, lambda g: g.window_size % 2 == 0 and
          g.shift_size == g.window_size // 2, f"{_SWC}: shift ws // 2 (Swin's odd blocks)"),
    Claim("sw-configs/shift-half-odd-ws", SW_CONFIGS, lambda g: g.window_size % 2 == 1 and g.window_size >= 3 and
          g.shift_size == g.window_size // 2, f"{_SWC}: shift ws // 2"),
    Claim("sw-configs/shift-ws-1", SW_CONFIGS, lambda g: g.window_size >= 3 and g.shift_size == g.window_size - 1,
          f"{_SWC}: shift ws - 1"),
    Claim("sw-configs/shift-other", SW_CONFIGS,
          lambda g: 0 < g.shift_size < g.window_size - 1 and g.shift_size != g.window_size // 2,
          f"{_SWC}: any 0 <= shift < ws"),
    Claim("sw-configs/shift-not-half", SW_CONFIGS, lambda g: 0 < g.shift_size != g.window_size // 2,
          _mutant("bands_from_half_window")),
    Claim("sw-configs/shift-positive", SW_CONFIGS, lambda g: g.shift_size > 0, _mutant("labelled_before_the_roll")),
    Claim("sw-configs/shift-zero", SW_CONFIGS, lambda g: g.shift_size == 0 and g.window_size >= 2,
          f"{_SWC}: shift drawn"),
    Claim("sw-configs/H=ws", SW_CONFIGS, lambda g: g.H == g.window_size < g.W,
          f"{_SWC}: a single window along an axis"),
    Claim("sw-configs/W=ws", SW_CONFIGS, lambda g: g.W == g.window_size < g.H,
          f"{_SWC}: a single window along an axis"),
    Claim("sw-configs/single-window-shifted", SW_CONFIGS, lambda g: g.n_windows == 1 and g.shift_size > 0,
          f"{_SWC}: a single window (H == W == ws)"),
    Claim("sw-configs/non-square-map", SW_CONFIGS, lambda g: g.H != g.W and g.shift_size > 0,
          f"{_SWC}: non-square maps"),
    Claim("sw-configs/windows-per-side", SW_CONFIGS, lambda g: min(g.H, g.W) >= 2 * g.window_size,
          _mutant("windows_column_major")),
    Claim("sw-configs/max-windows-per-side", SW_CONFIGS, lambda g: g.H == g.W == 3 * g.window_size,
          "shifted_window_configs(max_windows_per_side=3)"),
    Claim("sw-configs/max-window", SW_CONFIGS, lambda g: g.window_size == 5, "shifted_window_configs(max_window=5)"),
    Claim("sw-configs/ws-1", SW_CONFIGS, lambda g: g.window_size == 1, "shifted_window_configs: ws from 1"),
    Claim("sw-configs/nonzero/shift-ws-1", SW_CONFIGS_NONZERO,
          lambda g: g.window_size >= 3 and g.shift_size == g.window_size - 1, f"{_SWC}: shift='nonzero'"),
    Claim("sw-configs/nonzero/shift-not-half", SW_CONFIGS_NONZERO, lambda g: g.shift_size != g.window_size // 2,
          f"{_SWC}: shift='nonzero'"),
    Claim("sw-configs/nonzero/windows-per-side", SW_CONFIGS_NONZERO, lambda g: min(g.H, g.W) >= 2 * g.window_size,
          f"{_SWC}: shift='nonzero'"),
    Claim("sw-configs/nonzero/single-window", SW_CONFIGS_NONZERO, lambda g: g.n_windows == 1,
          f"{_SWC}: shift='nonzero'"),
    # ---- shifted_window_attention_cases ----
    Claim("sw-cases/fill--100", SW_CASES, lambda k: k.fill == -100.0 and k.geometry.shift_size > 0,
          f"{_SWCASE}: fills"),
    Claim("sw-cases/fill--inf", SW_CASES, lambda k: k.fill == -np.inf and k.geometry.shift_size > 0,
          f"{_SWCASE}: fills"),
    Claim("sw-cases/batch-2", SW_CASES, lambda k: k.batch == 2 and k.geometry.n_windows >= 2, f"{_SWCASE}: batch"),
    Claim("sw-cases/4-heads", SW_CASES, lambda k: k.config.num_heads == 4, f"{_SWCASE}: max_heads"),
    Claim("sw-cases/shifted-windows-per-side", SW_CASES,
          lambda k: k.geometry.shift_size > 0 and min(k.geometry.H, k.geometry.W) >= 2 * k.geometry.window_size,
          f"{_SWCASE}: geometry from shifted_window_configs"),
    # ---- temporal_model_configs ----
    Claim("tm-configs/R=1", TM_CONFIGS, lambda c: c.receptive_field == 1, f"{_TMC}: receptive field from 1"),
    Claim("tm-configs/R=2", TM_CONFIGS, lambda c: c.receptive_field == 2,
          f"{_mutant('time_padded_at_the_end')}; {_mutant('slice_offset')}; {_mutant('relu_after_the_residual')}"),
    Claim("tm-configs/R>=3", TM_CONFIGS, lambda c: c.receptive_field >= 3, f"{_TMC}: a second block (R >= 3)"),
    Claim("tm-configs/R=5", TM_CONFIGS, lambda c: c.receptive_field == 5,
          "temporal_model_configs: max_receptive_field"),
    Claim("tm-configs/pooling-on", TM_CONFIGS, lambda c: c.use_pyramid_pooling and c.receptive_field >= 2,
          _mutant("pool_keeps_the_first_step")),
    Claim("tm-configs/pooling-off", TM_CONFIGS, lambda c: not c.use_pyramid_pooling and c.receptive_field >= 2,
          "temporal_model_configs: pooling drawn"),
    Claim("tm-configs/in-floor-pooling", TM_CONFIGS,
          lambda c: c.use_pyramid_pooling and c.receptive_field >= 2 and c.in_channels == 3,
          f"{_TMC}: TemporalBlock input >= 3 with pooling"),
    Claim("tm-configs/in-floor-no-pooling", TM_CONFIGS,
          lambda c: not c.use_pyramid_pooling and c.receptive_field >= 2 and c.in_channels == 2,
          f"{_TMC}: TemporalBlock input >= 2 without pooling"),
    Claim("tm-configs/start-floor-pooling", TM_CONFIGS,
          lambda c: c.use_pyramid_pooling and c.receptive_field >= 3 and c.start_out_channels == 3,
          f"{_TMC}: a second block's input at the floor (pooling)"),
    Claim("tm-configs/start-floor-no-pooling", TM_CONFIGS,
          lambda c: not c.use_pyramid_pooling and c.receptive_field >= 3 and c.start_out_channels == 2,
          f"{_TMC}: a second block's input at the floor (no pooling)"),
    Claim("tm-configs/bottleneck-floor", TM_CONFIGS, lambda c: c.n_spatial_layers_between_temporal_layers >= 1 and
          c.receptive_field >= 2 and c.start_out_channels == 2, f"{_TMC}: Bottleneck3D >= 2"),
    Claim("tm-configs/lone-block-to-1-channel", TM_CONFIGS, lambda c: c.receptive_field == 2 and
          c.n_spatial_layers_between_temporal_layers == 0 and c.start_out_channels == 1,
          "temporal_model_configs: a lone last block may narrow to 1 channel"),
    Claim("tm-configs/odd-in", TM_CONFIGS, lambda c: c.receptive_field >= 2 and c.in_channels % 2 == 1 and
          c.in_channels >= 5, f"{_TMC}: odd widths"),
    Claim("tm-configs/even-in", TM_CONFIGS, lambda c: c.receptive_field >= 2 and c.in_channels % 2 == 0 and
          c.in_channels >= 4, f"{_TMC}: even widths"),
    Claim("tm-configs/pooled-width-rounds", TM_CONFIGS, lambda c: c.use_pyramid_pooling and
          c.receptive_field >= 2 and c.in_channels % 3 != 0, f"{_TMC}: in // 3 pooled channels"),
    Claim("tm-configs/widening-blocks", TM_CONFIGS, lambda c: c.receptive_field >= 3 and c.extra_in_channels > 0,
          "temporal_model_configs: extra_in_channels"),
    Claim("tm-configs/spatial-layers", TM_CONFIGS,
          lambda c: c.receptive_field >= 2 and c.n_spatial_layers_between_temporal_layers == 1,
          "temporal_model_configs: max_spatial_layers"),
    Claim("tm-configs/input-side-1", TM_CONFIGS, lambda c: 1 in c.input_shape, f"{_TMC}: input_shape"),
    Claim("tm-configs/input-side-6", TM_CONFIGS, lambda c: 6 in c.input_shape, f"{_TMC}: input_shape up to max_side"),
    Claim("tm-configs/non-square-input", TM_CONFIGS, lambda c: c.input_shape[0] != c.input_shape[1],
          f"{_TMC}: input_shape"),
    # ---- temporal_model_cases ----
    Claim("tm-cases/T=R", TM_CASES, lambda k: k.frames == k.config.receptive_field >= 2, f"{_TMCASE}: T from R"),
    Claim("tm-cases/T=R+2", TM_CASES, lambda k: k.frames == k.config.receptive_field + 2 >= 4,
          f"{_TMCASE}: T up to R + extra_frames"),
    Claim("tm-cases/map-larger-than-input-shape", TM_CASES,
          lambda k: k.config.use_pyramid_pooling and k.config.receptive_field >= 2 and
          (k.height, k.width) != k.config.input_shape, f"{_TMCASE}: a map at least input_shape with pooling"),
    Claim("tm-cases/non-constant-upsample", TM_CASES, upsample_varies, _mutant("upsample_align_corners")),
    Claim("tm-cases/small-map-no-pooling", TM_CASES, lambda k: not k.config.use_pyramid_pooling and
          (k.height < k.config.input_shape[0] or k.width < k.config.input_shape[1]),
          f"{_TMCASE}: (only with pooling is the map at least input_shape)"),
    Claim("tm-cases/pooling-train", TM_CASES,
          lambda k: k.config.use_pyramid_pooling and k.config.receptive_field >= 2 and k.momentum is not None,
          _mutant("pool_counts_padding")),
    Claim("tm-cases/momentum-0.1", TM_CASES, lambda k: k.momentum == 0.1, f"{_TMCASE}: momentum"),
    Claim("tm-cases/momentum-0.05", TM_CASES, lambda k: k.momentum == 0.05, f"{_TMCASE}: momentum"),
    Claim("tm-cases/momentum-0.5", TM_CASES, lambda k: k.momentum == 0.5, f"{_TMCASE}: momentum"),
    Claim("tm-cases/momentum-None", TM_CASES, lambda k: k.momentum is None, f"{_TMCASE}: momentum"),
    Claim("tm-cases/batch-2", TM_CASES, lambda k: k.batch == 2 and k.config.receptive_field >= 2,
          "temporal_model_cases: max_batch"),
    Claim("tm-cases/negative-gamma", TM_CASES, lambda k: any((g < 0).any() for g in bn_gammas(k)),
          "random_temporal_model_params docstring: gamma ~ N(1, 0.5^2) (some negative)"),
    Claim("tm-cases/short/empty-output", TM_CASES_SHORT, lambda k: k.output_shape[1] == 0,
          f"{_TMCASE}: short_clips=True, T < R and its empty output"),
    Claim("tm-cases/short/empty-output-pooling", TM_CASES_SHORT,
          lambda k: k.config.use_pyramid_pooling and k.frames == 2 < k.config.receptive_field,
          f"{_TMCASE}: short_clips=True, from the fewest frames the model accepts"),
    Claim("tm-cases/short/one-frame", TM_CASES_SHORT, lambda k: k.frames == 1 < k.config.receptive_field,
          f"{_TMCASE}: short_clips=True, from the fewest frames the model accepts"),
    Claim("tm-cases/short/long-clip", TM_CASES_SHORT,
          lambda k: k.frames == k.config.receptive_field + 2 and k.config.receptive_field >= 2,
          f"{_TMCASE}: short_clips=True still reaches R + extra_frames"),
    Claim("tm-cases/min_receptive_field=2/T>R", TM_CASES_BLOCKS, lambda k: k.frames > k.config.receptive_field,
          "temporal_model_configs(min_receptive_field=2) with T > R: a kept output before the last frame"),
]

# Mutants whose ``shows_on`` is a condition on something other than the drawn case (the dtype): no claim needed.
V2_CASES = rst.window_attention_v2_cases()
V2_NO_BIAS = rst.window_attention_v2_cases(rst.window_attention_v2_configs(qkv_bias=False))
V2_GAP = st.tuples(rst.window_attention_v2_cases(rst.window_attention_v2_configs(min_head_dim=2).filter(
    lambda c: c.window_tokens >= 2), mask=False), st.floats(-0.9, -0.1))  # the mask-once property's draw
_V2 = "window_attention_v2_cases docstring"
_LN_100 = float(np.log(100.0))


def _scales(k) -> np.ndarray:
    return np.asarray(k.params["logit_scale"]).reshape(-1)


CLAIMS += [
    Claim("v2-cases/logit-scale-above-ln-100", V2_CASES, lambda k: (_scales(k) > _LN_100).any(),
          f"{_V2}; {_mutant('v2-no-clamp')}; {_mutant('v2-clamp-at-100')}"),
    Claim("v2-cases/logit-scale-above-ln-ln-100", V2_CASES, lambda k: (_scales(k) > np.log(_LN_100)).any(),
          _mutant("v2-clamp-after-exp")),
    Claim("v2-cases/qkv-bias", V2_CASES, lambda k: k.config.qkv_bias, _mutant("v2-k-bias")),
    Claim("v2-gap/two-tokens-two-channels", V2_GAP,
          lambda d: d[0].x.shape[1] >= 2 and d[0].config.head_dim >= 2 and -0.9 <= d[1] <= -0.1,
          _mutant("v2-mask-twice")),
    Claim("v2-cases/head-dim-above-1", V2_CASES, lambda k: k.config.head_dim > 1, _mutant("v2-d-scaling")),
    Claim("v2-cases/side-above-1", V2_CASES, lambda k: max(k.config.window_size) > 1, _mutant("v2-linear-coords")),
    Claim("v2-cases/pretrained-window-differs", V2_CASES,
          lambda k: tuple(k.config.pretrained_window_size) not in ((0, 0), tuple(k.config.window_size)),
          _mutant("v2-pretrained-ignored")),
    Claim("v2-cases/axes-differ", V2_CASES, lambda k: k.config.window_size[0] != k.config.window_size[1],
          _mutant("v2-coords-channels-swapped")),
    Claim("v2-cases/tokens-above-1", V2_CASES, lambda k: k.x.shape[1] > 1, _mutant("v2-key-minus-query")),
    Claim("v2-no-bias/zero-q-possible", V2_NO_BIAS, lambda k: not k.config.qkv_bias,
          f"zero tokens without q bias give q = 0; {_mutant('v2-normalize-no-eps')}"),
]

# ---- Video Swin 3-D: the strategies the window_attention_3d and shifted_window_mask_3d properties draw from ----

W3_CONFIGS = rst.window_attention_3d_configs()
W3_CASES = rst.window_attention_3d_cases()
W3_DROPOUT = rst.window_attention_3d_cases(rst.window_attention_3d_configs(dropout=True), mask=False)
# refimpl/suite/shifted_window_mask_3d.py: half the geometries shift every axis of side > 1
W3_MASKS = st.one_of(rst.clip_geometries_3d(), rst.clip_geometries_3d(shift="all"))
_W3 = "refimpl/strategies/window_attention_3d.py docstrings"

CLAIMS += [
    Claim("w3-configs/wd-differs-from-ww", W3_CONFIGS, lambda c: c.window_size[0] != c.window_size[2],
          f"{_W3}; {_mutant('table_w_major_3d')}"),
    Claim("w3-configs/wd-and-wh-above-1", W3_CONFIGS, lambda c: c.window_size[0] > 1 and c.window_size[1] > 1,
          _mutant("meshgrid_xy_3d")),
    Claim("w3-cases/tokens-above-1", W3_CASES, lambda k: k.n_tokens > 1, _mutant("bias_key_minus_query_3d")),
    Claim("w3-cases/shrunk-not-along-w-alone", W3_CASES, lambda k: k.shrunk and max(k.used_window[:2]) > 1,
          _mutant("used_window_index_along_w")),
    Claim("w3-cases/not-a-row-major-prefix", W3_CASES, lambda k: k.conventions_differ,
          f"{_W3}; {_mutant('declares_geometric_computes_truncated')}"),
    Claim("w3-cases/qk-scale-0", W3_CASES, lambda k: k.config.qk_scale == 0,
          _mutant("qk_scale_zero_taken_literally_3d")),
    Claim("w3-cases/mask-several-images-and-windows", W3_CASES, lambda k: k.has_mask and k.batch > 1
          and k.n_windows > 1, _mutant("mask_window_major_3d")),
    Claim("w3-dropout/attn-drop", W3_DROPOUT, lambda k: k.config.attn_drop > 0, _mutant("dropout_in_eval_mode_3d")),
    Claim("w3-masks/a-shift-in-use", W3_MASKS, lambda g: any(g.used[1]), _mutant("mask_3d_labelled_before_the_roll")),
    Claim("w3-masks/shift-other-than-half", W3_MASKS,
          lambda g: any(w >= 2 and s != w // 2 for w, s in zip(*g.used, strict=True)),
          _mutant("mask_3d_bands_from_half_window")),
    Claim("w3-masks/windows-along-d-and-w", W3_MASKS,
          lambda g: g.padded[0] > g.used[0][0] and g.padded[2] > g.used[0][2], _mutant("mask_3d_windows_w_major")),
    Claim("w3-masks/split-window-wd-differs-from-ww", W3_MASKS,
          lambda g: any(g.used[1]) and g.used[0][0] != g.used[0][2], _mutant("mask_3d_tokens_w_major")),
    Claim("w3-masks/shifts-on-two-axes", W3_MASKS, lambda g: sum(s > 0 for s in g.used[1]) >= 2,
          _mutant("mask_3d_labels_summed")),
]

NOT_ABOUT_CASES = {"softmax_in_bfloat16"}


def test_claim_ids_are_unique():
    ids = [c.id for c in CLAIMS]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_every_conditional_mutant_has_a_claim():
    """A mutant that shows only on some inputs survives unless the strategies draw them: each such mutant of the
    catalog is named by a claim here (its ``shows_on`` condition), so that its reachability is checked."""
    from refimpl import mutants  # imports torch: only when this test runs

    missing = [f"{m.name} (shows on {m.shows_on!r})" for m in mutants.CATALOG
               if m.shows_on != "every input" and m.name not in NOT_ABOUT_CASES
               and not any(_mutant(m.name) in c.source for c in CLAIMS)]
    assert not missing, f"no claim checks that the strategies reach the inputs of: {missing}"


@pytest.mark.parametrize("claim", [
    pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
    for c in CLAIMS
])
def test_strategy_reaches(claim):
    """``claim.strategy`` reaches the documented edge case within the budget of one property in a verify run."""
    try:
        first_hit(claim.strategy, claim.predicate, claim.budget)
    except NoSuchExample:
        pytest.fail(f"{claim.id}: no example in {claim.budget} ({claim.source})")


# --------------------------------------------------------------------------------------------------
# Validity: what each strategy draws satisfies its invariants
# --------------------------------------------------------------------------------------------------


@VALIDITY
@given(rst.seeds)
def test_seeds_are_32_bit(seed):
    assert isinstance(seed, int) and 0 <= seed < 2**32


@pytest.mark.parametrize("kwargs", [
    {}, {"dropout": True}, {"use_temporal": False, "qkv_bias": False}, {"use_temporal": True, "qkv_bias": True},
    {"max_heads": 3, "max_head_dim": 2, "max_window_side": 2, "max_ttokens": 2},
], ids=["default", "dropout", "no-temporal-no-bias", "temporal-bias", "small"])
@VALIDITY
@given(data=st.data())
def test_window_attention_configs_are_valid(kwargs, data):
    config = data.draw(rst.window_attention_configs(**kwargs))
    limits = dict(max_heads=16, max_head_dim=6, max_window_side=5, max_ttokens=6)
    limits.update((k, v) for k, v in kwargs.items() if k in limits)
    assert 1 <= config.num_heads <= limits["max_heads"]
    assert config.dim == config.num_heads * config.head_dim and 1 <= config.head_dim <= limits["max_head_dim"]
    assert all(1 <= side <= limits["max_window_side"] for side in config.window_size)
    assert config.window_tokens == config.window_size[0] * config.window_size[1]
    assert 1 <= config.num_ttokens <= limits["max_ttokens"]
    assert config.qk_scale is None or config.qk_scale == 0 or 0.05 <= config.qk_scale <= 2.0
    rates = {0.0, 0.1, 0.5} if kwargs.get("dropout") else {0.0}
    assert config.attn_drop in rates and config.proj_drop in rates
    for flag in ("use_temporal", "qkv_bias"):
        if flag in kwargs:
            assert getattr(config, flag) == kwargs[flag]
    assert rst.WindowAttentionConfig(**config.kwargs()) == config


@VALIDITY
@given(config=rst.window_attention_configs(), seed=rst.seeds)
def test_random_window_attention_params_match_aim(config, seed):
    params = rst.random_window_attention_params(config, np.random.default_rng(seed))
    assert {k: p.shape for k, p in params.items()} == window_attention_param_shapes(config)
    assert all(p.dtype == np.float64 and np.isfinite(p).all() for p in params.values())


@VALIDITY
@given(n_windows=st.integers(1, 5), n_tokens=st.integers(1, 9), seed=rst.seeds,
       convention=st.sampled_from(rst.MASK_CONVENTIONS), dead_rows=st.booleans())
def test_random_window_mask_is_valid(n_windows, n_tokens, seed, convention, dead_rows):
    mask = rst.random_window_mask(n_windows, n_tokens, np.random.default_rng(seed), convention=convention,
                                  fully_masked_rows=dead_rows)
    assert mask.shape == (n_windows, n_tokens, n_tokens)
    if convention == "bool":
        assert mask.dtype == np.bool_
    else:
        assert mask.dtype == np.float64
        assert set(np.unique(mask)) <= {0.0, -100.0 if convention == "-100" else -np.inf}
    pattern = allowed(mask)
    if not dead_rows:  # Swin's: the diagonal allowed, so every row has a key
        assert pattern[:, np.arange(n_tokens), np.arange(n_tokens)].all()
    else:  # a row is either whole (diagonal allowed) or dead
        diagonal = pattern[:, np.arange(n_tokens), np.arange(n_tokens)]
        np.testing.assert_array_equal(diagonal, pattern.any(-1))


def test_random_window_mask_refuses_an_unknown_convention():
    with pytest.raises(ValueError, match="convention"):
        rst.random_window_mask(1, 2, np.random.default_rng(0), convention="-1e9")


def check_window_attention_case(case: rst.WindowAttentionCase, *, max_batch=3, max_windows=4,
                                mask_conventions=rst.MASK_CONVENTIONS):
    config = case.config
    assert 1 <= case.batch <= max_batch and 1 <= case.n_windows <= max_windows and 0 <= case.seed < 2**32
    if case.temporal:
        assert config.use_temporal
    n_tokens = config.num_ttokens if case.temporal else config.window_tokens
    rows = case.batch if case.temporal else case.batch * case.n_windows
    assert case.x.shape == case.grad_out.shape == (rows, n_tokens, config.dim) and case.n_tokens == n_tokens
    assert case.x.dtype == np.float64 and np.isfinite(case.x).all() and np.isfinite(case.grad_out).all()
    assert {k: p.shape for k, p in case.params.items()} == window_attention_param_shapes(config)
    assert all(np.isfinite(p).all() for p in case.params.values())
    if not case.has_mask:
        assert case.mask is None and case.n_windows == 1 and not case.fully_masked_rows
    else:
        assert case.mask_convention in mask_conventions
        assert case.mask.shape == (case.n_windows, n_tokens, n_tokens)
        assert (case.mask.dtype == np.bool_) == (case.mask_convention == "bool")
        if case.mask_convention != "bool":
            assert set(np.unique(case.mask)) <= {0.0, -100.0 if case.mask_convention == "-100" else -np.inf}
        if not case.fully_masked_rows:
            assert allowed(case.mask).any(-1).all(), "a row with no allowed key, fully_masked_rows=False"
    out = case.oracle_output()  # the oracle accepts the case; rows with no allowed key give 0, never NaN
    assert out.shape == case.x.shape and np.isfinite(out).all()
    again = rst.WindowAttentionCase.build(config, temporal=case.temporal, batch=case.batch, n_windows=case.n_windows,
                                          has_mask=case.has_mask, seed=case.seed,
                                          mask_convention=case.mask_convention,
                                          fully_masked_rows=case.fully_masked_rows)
    assert again == case and "array" not in repr(case)  # replayable from its compact repr
    for name in ("x", "mask", "grad_out"):
        np.testing.assert_array_equal(getattr(again, name), getattr(case, name))


@VALIDITY
@given(rst.window_attention_cases())
def test_window_attention_cases_are_valid(case):
    check_window_attention_case(case)
    assert not (case.temporal and case.has_mask), "a mask is only drawn in spatial mode unless mask=True"


@pytest.mark.parametrize("temporal", [True, False], ids=["temporal", "spatial"])
@pytest.mark.parametrize("mask", [True, False], ids=["mask", "no-mask"])
@VALIDITY
@given(data=st.data())
def test_window_attention_cases_honour_forced_modes(temporal, mask, data):
    configs = rst.window_attention_configs(use_temporal=False) if temporal else None  # forced on anyway
    case = data.draw(rst.window_attention_cases(configs, temporal=temporal, mask=mask))
    check_window_attention_case(case)
    assert case.temporal == temporal and case.has_mask == mask


@pytest.mark.parametrize("conventions, dead", [(("-100",), False), (("-inf", "bool"), True), (("bool",), None)],
                         ids=["-100-no-dead-rows", "inf-bool-dead-rows", "bool-drawn"])
@VALIDITY
@given(data=st.data())
def test_window_attention_cases_honour_mask_options(conventions, dead, data):
    case = data.draw(rst.window_attention_cases(temporal=False, mask=True, mask_conventions=conventions,
                                                fully_masked_rows=dead, max_batch=2, max_windows=2))
    check_window_attention_case(case, max_batch=2, max_windows=2, mask_conventions=conventions)
    if dead is not None:
        assert case.fully_masked_rows == dead


@pytest.mark.parametrize("kwargs", [{}, {"shift": "zero"}, {"shift": "nonzero"}, {"max_window": 3,
                                                                                   "max_windows_per_side": 1}],
                         ids=["default", "zero", "nonzero", "small"])
@VALIDITY
@given(data=st.data())
def test_shifted_window_configs_are_valid(kwargs, data):
    g = data.draw(rst.shifted_window_configs(**kwargs))
    H, W, ws, s = g.args
    assert (H, W, ws, s) == (g.H, g.W, g.window_size, g.shift_size)
    assert 1 <= ws <= kwargs.get("max_window", 5) and 0 <= s < ws
    assert H % ws == 0 and W % ws == 0 and ws <= min(H, W)
    assert max(H, W) // ws <= kwargs.get("max_windows_per_side", 3)
    if kwargs.get("shift") == "zero":
        assert s == 0
    if kwargs.get("shift") == "nonzero":
        assert s >= 1 and ws >= 2
    assert g.n_windows == (H // ws) * (W // ws)
    assert reference.shifted_window_mask(H, W, ws, s).shape == (g.n_windows, ws * ws, ws * ws)


@VALIDITY
@given(rst.shifted_window_attention_cases())
def test_shifted_window_attention_cases_are_valid(case):
    g, config = case.geometry, case.config
    assert config.window_size == (g.window_size, g.window_size)
    assert 1 <= config.num_heads <= 4 and 1 <= config.head_dim <= 4 and config.dim == config.num_heads * config.head_dim
    assert 1 <= case.batch <= 2 and case.fill in (-100.0, -np.inf) and 0 <= case.seed < 2**32
    assert case.x.shape == case.grad_out.shape == (case.batch, g.H, g.W, config.dim)
    assert np.isfinite(case.x).all() and np.isfinite(case.grad_out).all()
    assert {k: p.shape for k, p in case.params.items()} == window_attention_param_shapes(config)
    assert all(np.isfinite(p).all() for p in case.params.values())
    out = case.oracle_output()
    assert out.shape == case.x.shape and np.isfinite(out).all()
    again = rst.ShiftedWindowAttentionCase.build(config, g, batch=case.batch, fill=case.fill, seed=case.seed)
    assert again == case and "array" not in repr(case)
    np.testing.assert_array_equal(again.x, case.x)


@VALIDITY
@given(rst.shifted_window_attention_cases(fills=(-np.inf,), max_batch=1, max_heads=1, max_head_dim=1))
def test_shifted_window_attention_cases_honour_their_options(case):
    assert case.fill == -np.inf and case.batch == 1 and case.config.dim == 1


@pytest.mark.parametrize("kwargs", [{}, {"use_pyramid_pooling": True}, {"use_pyramid_pooling": False},
                                    {"min_receptive_field": 2, "max_receptive_field": 3, "max_side": 3}],
                         ids=["default", "pooling", "no-pooling", "small"])
@VALIDITY
@given(data=st.data())
def test_temporal_model_configs_are_valid(kwargs, data):
    config = data.draw(rst.temporal_model_configs(**kwargs))
    if "use_pyramid_pooling" in kwargs:
        assert config.use_pyramid_pooling == kwargs["use_pyramid_pooling"]
    least, least_start = floors(config)
    assert kwargs.get("min_receptive_field", 1) <= config.receptive_field <= kwargs.get("max_receptive_field", 5)
    assert least <= config.in_channels <= max(least, 9)
    assert least_start <= config.start_out_channels <= max(least_start, 8)
    assert 0 <= config.extra_in_channels <= 3 and config.n_spatial_layers_between_temporal_layers in (0, 1)
    assert all(1 <= side <= kwargs.get("max_side", 6) for side in config.input_shape)
    # the oracle's constructor checks accept it (no zero-channel convolution anywhere); R = 1 is the identity
    assert bool(reference.temporal_model_state_shapes(**config.kwargs())) == (config.receptive_field >= 2)
    assert config.out_channels == reference.temporal_model_out_channels(
        config.in_channels, config.receptive_field, config.start_out_channels, config.extra_in_channels)
    assert config.min_frames == (2 if config.use_pyramid_pooling and config.receptive_field >= 2 else 1)


def check_temporal_model_case(case: rst.TemporalModelCase, *, short_clips: bool):
    config = case.config
    r, (ph, pw) = config.receptive_field, config.input_shape
    low = config.min_frames if short_clips else max(r, config.min_frames)
    assert low <= case.frames <= max(low, r + 2) and case.frames >= config.min_frames
    assert 1 <= case.batch <= 2 and case.momentum in (0.1, 0.05, 0.5, None) and 0 <= case.seed < 2**32
    if config.use_pyramid_pooling:
        assert case.height >= ph and case.width >= pw
    assert 1 <= case.height <= max(ph, pw, 6) and 1 <= case.width <= max(ph, pw, 6)
    assert case.x.shape == (case.batch, case.frames, config.in_channels, case.height, case.width)
    assert case.output_shape == (case.batch, max(case.frames - r + 1, 0), config.out_channels, case.height,
                                 case.width)
    assert case.grad_out.shape == case.output_shape
    assert np.isfinite(case.x).all() and np.isfinite(case.grad_out).all()
    shapes = reference.temporal_model_state_shapes(**config.kwargs())
    assert {k: p.shape for k, p in case.params.items()} == shapes
    for key, p in case.params.items():
        if key.endswith("num_batches_tracked"):
            assert p.dtype == np.int64 and 0 <= p < 1000
        else:
            assert p.dtype == np.float64 and np.isfinite(p).all()
        if key.endswith("running_var"):  # positive: BatchNorm divides by sqrt(var + eps)
            assert (p >= 0.25).all() and (p <= 2.0).all()
    again = rst.TemporalModelCase.build(config, batch=case.batch, frames=case.frames, height=case.height,
                                        width=case.width, momentum=case.momentum, seed=case.seed)
    assert again == case and "array" not in repr(case)
    np.testing.assert_array_equal(again.x, case.x)


@pytest.mark.parametrize("short_clips", [False, True], ids=["default", "short-clips"])
@VALIDITY
@given(data=st.data())
def test_temporal_model_cases_are_valid(short_clips, data):
    case = data.draw(rst.temporal_model_cases(short_clips=short_clips))
    check_temporal_model_case(case, short_clips=short_clips)


@VALIDITY
@given(rst.temporal_model_cases(rst.temporal_model_configs(max_in_channels=4, max_start_out_channels=4,
                                                           max_side=3)))
def test_the_oracle_accepts_temporal_model_cases(case):
    for training in (False, True):
        out = case.oracle_output(training=training)
        assert out.shape == case.output_shape and np.isfinite(out).all()
