"""Third-party Swin window attention under the harness, through the adapters of ``refimpl.peers``: timm,
torchvision, transformers (SwinAttention with the eager and the sdpa attention function, and Donut's 4.x-style
layout), mmpretrain and mmaction2; their Swin V2 attention; and Video Swin's 3-D window attention and mask
(mmaction2, torchvision). Each is skipped (with the reason) where its packages are not installed; the
``peers`` tox environment installs them with torch pinned."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings

import refimpl.peers
from refimpl.harness import verify
from refimpl.peers import ADAPTERS, RECORDS, V2_ADAPTERS, V2_RECORDS, V3D_ADAPTERS, not_installed
from refimpl.strategies import window_attention_3d as st3d

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


# ---- Video Swin 3-D (kinds window_attention_3d and shifted_window_mask_3d) ----

VIDEO_SWIN_ATTENTION = [name for name, (_peer, _attr, kind) in V3D_ADAPTERS.items() if kind == "window_attention_3d"]


@pytest.mark.parametrize("name", V3D_ADAPTERS)
def test_video_swin_peer_passes_every_property_it_supports(name):
    """The Video Swin adapters (each under its kind), as above: nothing fails, and every skip is a declared lack
    (torchvision: no window masks, no qk_scale)."""
    reason = not_installed(name)
    if reason:
        pytest.skip(reason)
    peer, attr, kind = V3D_ADAPTERS[name]
    report = verify({kind: f"refimpl.peers:{attr}"}, devices=["cpu"], dtypes=("float64", "float32"), max_examples=30)
    failed = report.failed
    assert not failed, failed[0].detail
    skipped = [o for o in report.outcomes if o.status == "skipped"]
    assert all(any(d in o.detail for d in DECLARED) for o in skipped), [o.detail for o in skipped]
    assert any(o.status == "passed" for o in report.outcomes)


def _video_swin_params(window, num_heads, head_dim, seed):
    from refimpl.strategies.window_attention_3d import WindowAttention3DConfig, random_window_attention_3d_params

    config = WindowAttention3DConfig(num_heads * head_dim, num_heads, window, qkv_bias=True)
    return config, random_window_attention_3d_params(config, np.random.default_rng(seed))


def _load(module, params):
    state = {k: torch.as_tensor(a) for k, a in params.items()}
    missing, unexpected = module.double().load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"relative_position_index"}, (missing, unexpected)
    return module.eval()


# module window, window in use: none is a row-major prefix (only D cut, or D = 1 and H cut, or D = H = 1 and W cut)
NON_PREFIX = [((2, 3, 3), (2, 2, 3)), ((2, 3, 3), (2, 3, 2)), ((2, 3, 3), (1, 2, 2)), ((3, 3, 3), (3, 2, 2)),
              ((2, 2, 3), (2, 1, 3)), ((2, 4, 4), (1, 3, 3)), ((2, 7, 7), (2, 6, 6))]


@pytest.mark.parametrize("name", VIDEO_SWIN_ATTENTION)
@pytest.mark.parametrize(("window", "used"), NON_PREFIX)
def test_video_swin_peer_computes_upstreams_truncated_lookup(name, window, used):
    """Why both 3-D adapters declare ``index_convention = "truncated"``: where the window in use is not a row-major
    prefix of the module window (a clip shorter than the window in H or W), the peer's output equals the truncated
    oracle (``relative_position_index[:N, :N]``) within the tolerance policy, and is off the geometric oracle by
    more than that bound (unit-scale bias table)."""
    from refimpl import reference
    from refimpl.baselines.window_attention_3d import WindowAttention3D as Faithful
    from refimpl.tolerance import assert_close, compare

    reason = not_installed(name)
    if reason:
        pytest.skip(reason)
    assert not reference.is_row_major_prefix(window, used)
    peer, attr, _kind = V3D_ADAPTERS[name]
    config, params = _video_swin_params(window, 2, 2, seed=sum(window) * 100 + sum(used))
    module = _load(getattr(refimpl.peers, attr)(**config.kwargs()), params)
    faithful = _load(Faithful(**config.kwargs()), params)
    x = np.random.default_rng(7).standard_normal((3, int(np.prod(used)), config.dim))
    with torch.no_grad():
        actual, baseline = module(torch.as_tensor(x)), faithful(torch.as_tensor(x))

    def oracle(convention):
        return reference.window_attention_3d(x, params, num_heads=2, window_size=window, used_window=used,
                                             index_convention=convention)

    result = assert_close(actual, oracle("truncated"), baseline=baseline, dtype="float64",
                          what=f"{name} against the truncated oracle")
    geometric = compare(actual, oracle("geometric"), baseline=baseline, dtype="float64", what="")
    assert geometric.max_error > 1e3 * result.bound, (f"{name}: the geometric oracle is as close "
                                                      f"({geometric.max_error:.3g}) as the truncated one")


@settings(max_examples=40, deadline=None)
@given(case=st3d.shifted_window_attention_3d_cases(
    configs=st3d.window_attention_3d_configs(max_heads=3, max_head_dim=3).filter(lambda c: not c.qk_scale)))
def test_torchvision_block_attention_is_video_swins(case):
    """torchvision's ``ShiftedWindowAttention3d`` at map level, its own code end to end (its ``<=`` shrink rule,
    padding, ``sum(shift) > 0``, the mask it builds in ``x``'s dtype inside its forward, partition, roll back,
    crop), equals Video Swin's block attention (``reference.shifted_window_attention_3d``, truncated lookup) on clips
    that shrink, equal the window or need padding, with shifts zero on some axes. The window-level adapter cannot
    pass masks, so this is where torchvision's shifted path is checked."""
    from refimpl.baselines.shifted_window_3d import shifted_window_attention_3d as video_swin_block_attention
    from refimpl.baselines.window_attention_3d import WindowAttention3D as Faithful
    from refimpl.tolerance import assert_close

    reason = not_installed("torchvision")
    if reason:
        pytest.skip(reason)
    refimpl.peers._import_torchvision()
    from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

    g, c = case.geometry, case.config
    module = _load(ShiftedWindowAttention3d(c.dim, list(g.window_size), list(g.shift_size), c.num_heads,
                                            qkv_bias=c.qkv_bias), case.params)
    faithful = _load(Faithful(**c.kwargs()), case.params)
    x = torch.as_tensor(case.x)
    with torch.no_grad():
        actual = module(x)
        baseline = video_swin_block_attention(x, faithful, window_size=g.window_size, shift_size=g.shift_size)
    assert_close(actual, case.oracle_output("truncated"), baseline=baseline, dtype="float64",
                 what=f"torchvision's block attention, clip {g.size}, window {g.window_size}, shift {g.shift_size}")
