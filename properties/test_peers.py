"""Third-party Swin window attention under the harness, through the adapters of ``refimpl.peers``: timm,
torchvision, transformers (SwinAttention with the eager and the sdpa attention function, and Donut's 4.x-style
layout), mmpretrain and mmaction2. Each is skipped (with the reason) where its packages are not installed; the
``peers`` tox environment installs them with torch pinned."""

import pytest

from refimpl.harness import verify
from refimpl.peers import ADAPTERS, RECORDS, V2_ADAPTERS, V2_RECORDS, not_installed

# a skip is a lack the adapter declares, an extension it did not opt into, or the optional flops method; never an
# unexplained one
DECLARED = ("declares", "did not opt into", "needs the extension", "no flops(")


@pytest.mark.parametrize("name", ADAPTERS)
def test_peer_passes_every_property_it_supports(name):
    reason = not_installed(name)
    if reason:
        pytest.skip(reason)
    report = verify({"window_attention": f"refimpl.peers:{ADAPTERS[name][1]}"}, devices=["cpu"],
                    dtypes=("float64", "float32"), max_examples=30)
    assert not report.failed, report.failed[0].detail
    skipped = [o for o in report.outcomes if o.status == "skipped"]
    assert all(any(d in o.detail for d in DECLARED) for o in skipped), [o.detail for o in skipped]
    assert any(o.status == "passed" for o in report.outcomes)


def test_transformers_eager_float64_is_only_float32_accurate():
    """Why ``HFSwinAttentionEager`` declares no float64: the same module declaring every dtype fails float64 (HF's
    eager softmax runs in float32) and passes float32."""
    reason = not_installed("transformers")
    if reason:
        pytest.skip(reason)
    report = verify({"window_attention": f"refimpl.peers:{RECORDS['transformers-eager-all-dtypes'][1][1]}"},
                    devices=["cpu"], dtypes=("float64", "float32"), properties=("probabilities_match_oracle",),
                    max_examples=10)
    status = {o.dtype: o.status for o in report.outcomes}
    assert status == {"float64": "failed", "float32": "passed"}, status
    detail = report.failed[0].detail
    assert detail.startswith("AssertionError: attention probabilities (float64)"), detail


@pytest.mark.parametrize("name", V2_ADAPTERS)
def test_swin_v2_peer_passes_every_property_it_supports(name):
    """The Swin V2 adapters (kind ``window_attention_v2``), as above."""
    reason = not_installed(name)
    if reason:
        pytest.skip(reason)
    report = verify({"window_attention_v2": f"refimpl.peers:{V2_ADAPTERS[name][1]}"}, devices=["cpu"],
                    dtypes=("float64", "float32"), max_examples=30)
    assert not report.failed, report.failed[0].detail
    skipped = [o for o in report.outcomes if o.status == "skipped"]
    assert all(any(d in o.detail for d in DECLARED) for o in skipped), [o.detail for o in skipped]
    assert any(o.status == "passed" for o in report.outcomes)


def test_transformers_swinv2_adds_the_mask_twice():
    """Why ``HFSwinv2Attention`` declares no masks: the same module declaring them fails the mask-once property
    (HF adds the window mask twice, so -100 acts as -200) in float64 and float32."""
    reason = not_installed("transformers")
    if reason:
        pytest.skip(reason)
    report = verify({"window_attention_v2": f"refimpl.peers:{V2_RECORDS['transformers-v2-masks'][1][1]}"},
                    devices=["cpu"], dtypes=("float64", "float32"), properties=("mask_is_added_exactly_once",),
                    max_examples=10)
    assert {o.dtype: o.status for o in report.outcomes} == {"float64": "failed", "float32": "failed"}
    assert "with a -100 mask" in report.failed[0].detail
