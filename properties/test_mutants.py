"""The suite catches bugs: the harness (CI profile) fails every catalogued mutant of ``refimpl.mutants``, and passes
the correct implementations the mutants are derived from, so each is caught for its one bug."""

import pytest

from refimpl import mutants
from refimpl.baselines.shifted_window import shifted_window_mask as swin_shifted_window_mask
from refimpl.baselines.temporal_model import TemporalModel as FieryTemporalModel
from refimpl.harness import verify
from refimpl.mutants.shifted_window_mask_3d import unmutated_compute_mask
from refimpl.mutants.window_attention_3d import SnippetWindowAttention3D
from refimpl.suite import Implementation

DTYPES = ("float64", "float32")


def test_the_catalog_is_large_enough():
    kinds = [m.kind for m in mutants.CATALOG]
    assert kinds.count("window_attention") >= 15 and kinds.count("temporal_model") >= 5
    assert kinds.count("shifted_window_mask") >= 3
    assert kinds.count("window_attention_3d") >= 8 and kinds.count("shifted_window_mask_3d") >= 4
    assert len({m.name for m in mutants.CATALOG}) == len(mutants.CATALOG)


@pytest.mark.mutants
@pytest.mark.parametrize("mutant", mutants.CATALOG, ids=[m.name for m in mutants.CATALOG])
def test_every_mutant_is_caught(mutant):
    failure = mutants.catch(mutant, devices=["cpu"], dtypes=DTYPES)
    assert failure is not None, f"mutant {mutant.name} ({mutant.bug}) survived every property"


@pytest.mark.parametrize("kind, base", [
    ("window_attention", mutants.SnippetWindowAttention),
    ("temporal_model", FieryTemporalModel),
    ("shifted_window_mask", swin_shifted_window_mask),
    ("window_attention_3d", SnippetWindowAttention3D),
    ("shifted_window_mask_3d", unmutated_compute_mask),
], ids=["snippet-window-attention", "eager-temporal-model", "eager-shifted-window-mask", "snippet-window-attention-3d",
        "video-swin-compute-mask"])
def test_the_unmutated_bases_pass(kind, base):
    # fewer examples than the CI profile: refimpl's own implementations get the full profile in the other modules
    report = verify({kind: Implementation(kind, f"base:{base.__name__}", base)}, devices=["cpu"], dtypes=DTYPES,
                    fail_fast=True, max_examples=20)
    assert not report.failed, report.failed[0].detail
