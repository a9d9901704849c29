"""Fair verdicts: a target without declarations is checked on its kind's upstream protocol only, extensions are
opt-in and listed in the report, failures name the mode or edge the case used and how to declare it; and one
regression test for each harness bug that failed correct third-party code."""

import numpy as np
import pytest
import torch

from refimpl import mutants
from refimpl import strategies as rst
from refimpl.baselines.window_attention import EagerWindowAttention
from refimpl.harness import verify
from refimpl.mutants import window_attention as window_attention_mutants
from refimpl.suite import Implementation, properties_for
from refimpl.suite.window_attention import KIND, case_modes, worst_leak


def _verify(target, properties, *, dtypes=("float64",), max_examples=30, name=None):
    impl = Implementation(KIND, f"test:{name or target.__name__}", target)
    return verify({KIND: impl}, devices=["cpu"], dtypes=dtypes, max_examples=max_examples, properties=properties)


class UpstreamSoftmax(window_attention_mutants.FullyMaskedRowsNaN):
    """Correct on AIM's protocol; NaN on rows with no allowed key, as eager softmax (and upstream) gives; no
    declaration at all."""

    refimpl_capabilities = None


def test_extensions_are_not_checked_without_opt_in_and_the_report_says_how_to_opt_in():
    report = _verify(UpstreamSoftmax, ("mask_window_assignment_is_batch_major",
                                       "rows_with_no_allowed_key_attend_to_nothing"))
    assert not report.failed, report.failed[0].detail
    status = {o.property: o for o in report.outcomes}
    assert status["rows_with_no_allowed_key_attend_to_nothing"].status == "skipped"
    masked = status["mask_window_assignment_is_batch_major"]
    assert masked.examples_skipped > 0  # boolean / fully masked cases were drawn, set aside and drawn again
    assert masked.examples == 30  # the budget went to cases the target supports
    unchecked = report.unchecked_extensions()[(KIND, "test:UpstreamSoftmax")]
    assert set(unchecked) == {"boolean_masks", "fully_masked_rows"}
    text = report.markdown()
    assert 'refimpl_capabilities = {"extensions": ["boolean_masks", "fully_masked_rows"]}' in text


def test_an_opted_in_extension_is_checked_and_its_failure_names_the_mode_and_upstream_behaviour():
    class OptedIn(UpstreamSoftmax):
        refimpl_capabilities = {"extensions": ["fully_masked_rows"]}

    report = _verify(OptedIn, ("rows_with_no_allowed_key_attend_to_nothing",))
    (failure,) = report.failed
    assert "fully_masked_rows: query rows with no allowed key" in failure.detail
    assert "eager softmax over an all -inf row gives NaN" in failure.detail
    assert "extension beyond the upstream protocol" in failure.detail


def test_a_failure_in_an_upstream_mode_says_how_to_declare_it_is_not_supported():
    report = _verify(window_attention_mutants.ScaleFromWholeDim, ("forward_matches_oracle",), dtypes=("float32",))
    (failure,) = report.failed
    assert "The failing case ran in float32" in failure.detail
    assert "declare the dtypes it computes faithfully" in failure.detail
    report = _verify(window_attention_mutants.TemporalIndexReversed, ("forward_matches_oracle",))
    (failure,) = report.failed
    assert "- temporal: a temporal call" in failure.detail
    assert 'If the target does not support this, declare: refimpl_capabilities = {"modes": ["masks", "qk_scale"' \
           in failure.detail


def test_a_failure_names_the_qk_scale_zero_edge():
    report = _verify(window_attention_mutants.QkScaleZeroTakenLiterally, ("forward_matches_oracle",), max_examples=100)
    (failure,) = report.failed
    assert "edge: qk_scale=0, which upstream takes as the default" in failure.detail


# ---- bug 1: isolation with one window covering the whole map ----


def test_worst_leak_is_none_when_no_token_is_outside_the_window():
    change = np.array([[[0.0739, 0.5]]])  # every token may see the perturbed one
    allowed = np.array([[[0.0738, 0.0]]])
    assert worst_leak(change, allowed, np.zeros(change.shape, dtype=bool)) is None
    outside = np.array([[[True, False]]])
    assert worst_leak(change, allowed, outside) == (0, 0, 0)
    assert worst_leak(np.full((1, 1, 2), np.nan), allowed, outside) == (0, 0, 0)  # NaN never passes


def test_isolation_holds_for_a_single_window_covering_the_map():
    (prop,) = [p for p in properties_for(KIND) if p.name == "perturbing_a_token_changes_only_its_own_shifted_window"]
    config = rst.WindowAttentionConfig(dim=4, num_heads=2, window_size=(2, 2), num_ttokens=1, use_temporal=False)
    case = rst.ShiftedWindowAttentionCase.build(config, rst.ShiftedWindowConfig(2, 2, 2, 0), batch=1, fill=-100.0,
                                                seed=3)
    impl = Implementation(KIND, "refimpl.baselines.window_attention:EagerWindowAttention", EagerWindowAttention)
    for dtype in (torch.float64, torch.float32):
        prop.check(impl, case, "cpu", dtype)


# ---- bug 2: properties that draw tuples honour undeclared modes ----


class NoQkScale(EagerWindowAttention):
    """A target whose constructor has no qk_scale (it raises on one), declaring so."""

    refimpl_capabilities = {"modes": ["temporal", "masks", "training", "gradients"]}

    def __init__(self, *args, qk_scale=None, **kwargs):
        if qk_scale:
            raise ValueError(f"no qk_scale here, got {qk_scale}")
        super().__init__(*args, **kwargs)


def test_tuple_cases_report_the_modes_of_every_part():
    config = rst.WindowAttentionConfig(dim=4, num_heads=2, window_size=(2, 2), num_ttokens=1, qk_scale=0.5)
    case = rst.WindowAttentionCase.build(config, temporal=False, batch=1, n_windows=1, has_mask=False, seed=0)
    assert "qk_scale" in case_modes((case, 200.0))
    assert case_modes((case, 200.0)) == case_modes(case)


def test_a_target_without_qk_scale_is_not_built_with_one_by_tuple_drawing_properties():
    report = _verify(NoQkScale, ("minus_100_stops_masking_beyond_a_logit_gap_of_100",), dtypes=("float64",),
                     max_examples=40)
    (outcome,) = report.outcomes
    assert outcome.status == "passed", outcome.detail
    assert outcome.examples_skipped > 0 and outcome.missing_modes == ["qk_scale"]


# ---- bug 3: map-level properties take the geometry from the case, not from the module's window_size ----


class TripleWindowSize(EagerWindowAttention):
    """Stores its window as the triple ``(1, Wh, Ww)``, as a 3-D implementation run on one frame does; the
    protocol does not fix the form of a ``window_size`` attribute."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.window_size = (1, *self.window_size)

    def forward(self, x, mask=None, temporal=False):
        triple, self.window_size = self.window_size, self.window_size[1:]  # upstream's forward reads a pair
        try:
            return super().forward(x, mask, temporal)
        finally:
            self.window_size = triple


MAP_PROPERTIES = ("map_level_matches_oracle", "map_level_gradients_match_oracle",
                  "perturbing_a_token_changes_only_its_own_shifted_window",
                  "without_shift_map_level_is_plain_window_attention",
                  "minus_100_matches_minus_inf_while_logits_are_bounded")


def test_map_level_properties_drive_a_module_with_a_triple_window_size():
    report = _verify(TripleWindowSize, MAP_PROPERTIES, dtypes=("float64", "float32"), max_examples=10)
    assert len(report.outcomes) == 2 * len(MAP_PROPERTIES)
    assert not report.failed, report.failed[0].detail


# ---- bug 4: the divergence locator uses the tolerance policy of the dtype ----


class SoftmaxInFloat32(mutants.SnippetWindowAttention):
    """A float64 module whose softmax runs in float32: wrong in float64 by ~1e-8, below any fixed 1e-3."""

    def normalize(self, attn):
        return attn.float().softmax(dim=-1).to(attn.dtype)


def test_the_locator_blames_the_softmax_of_a_float64_module_computing_it_in_float32():
    report = _verify(SoftmaxInFloat32, ("forward_matches_oracle", "probabilities_match_oracle"), max_examples=50)
    failed = {o.property: o for o in report.failed}
    assert set(failed) == {"forward_matches_oracle", "probabilities_match_oracle"}
    assert "first diverging stage: softmax(position bias + mask)" in failed["forward_matches_oracle"].detail


@pytest.mark.parametrize("name", ["forward_matches_oracle"])
def test_the_locator_says_the_softmax_agrees_when_only_the_projection_is_wrong(name):
    (prop,) = [p for p in properties_for(KIND) if p.name == name]
    impl = Implementation(KIND, "refimpl.mutants.window_attention:ProjBiasDropped",
                          window_attention_mutants.ProjBiasDropped)
    config = rst.WindowAttentionConfig(dim=4, num_heads=2, window_size=(2, 2), num_ttokens=1)
    case = rst.WindowAttentionCase.build(config, temporal=False, batch=1, n_windows=2, has_mask=True, seed=1)
    with pytest.raises(AssertionError, match="softmax\\(position bias \\+ mask\\) agrees within the float64"):
        prop.check(impl, case, "cpu", torch.float64)
