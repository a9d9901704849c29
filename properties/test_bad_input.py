"""Bad calls get a clear ValueError/TypeError at the boundary, the same kind from the oracle and the module."""

import re

import numpy as np
import pytest
import torch

from refimpl import reference
from refimpl.optimized import WindowAttention

# name: (constructor kwargs, x shape, mask shape or None, temporal, expected error, words the message must name)
BAD_CALLS = {
    "C not divisible by heads": (dict(dim=10, num_heads=3), (1, 4, 10), None, False, ValueError, "num_heads=3"),
    "x not 3-D": (dict(), (4, 8), None, False, ValueError, "3-D"),
    "C != dim": (dict(), (1, 4, 6), None, False, ValueError, "C=6"),
    "N != Wh*Ww": (dict(), (1, 5, 8), None, False, ValueError, "N=5"),
    "N != num_ttokens": (dict(), (1, 4, 8), None, True, ValueError, "N=4"),
    "num_ttokens == 1 broadcast": (dict(num_ttokens=1), (1, 4, 8), None, True, ValueError, "num_ttokens == 1"),
    "mask shape": (dict(), (2, 4, 8), (2, 4, 3), False, ValueError, "(nW, N, N)"),
    "B_ % nW": (dict(), (3, 4, 8), (2, 4, 4), False, ValueError, "multiple of nW"),
}
DEFAULTS = dict(dim=8, num_ttokens=3, window_size=(2, 2), num_heads=2)


def _oracle_params(kwargs):
    divisible = kwargs.get("dim", 8) % kwargs.get("num_heads", 2) == 0
    module = WindowAttention(**{**DEFAULTS, **kwargs}) if divisible else None
    if module is None:  # the module refuses to be built; give the oracle well-formed params for dim 10
        c, nh = kwargs["dim"], kwargs["num_heads"]
        return {"qkv.weight": np.zeros((3 * c, c)), "proj.weight": np.zeros((c, c)), "proj.bias": np.zeros(c),
                "relative_position_bias_table": np.zeros((9, nh))}
    return {k: t.detach().numpy() for k, t in module.named_parameters()}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_oracle_and_module_refuse_the_same_bad_call(name):
    kwargs, x_shape, mask_shape, temporal, error, words = BAD_CALLS[name]
    cfg = {**DEFAULTS, **kwargs}
    x = np.zeros(x_shape)
    mask = None if mask_shape is None else np.zeros(mask_shape)
    with pytest.raises(error, match=re.escape(words)):
        reference.window_attention(x, _oracle_params(kwargs), num_heads=cfg["num_heads"],
                                   window_size=cfg["window_size"], mask=mask, temporal=temporal)
    with pytest.raises(error, match=re.escape(words)):
        module = WindowAttention(**cfg)
        module(torch.zeros(x_shape), None if mask is None else torch.zeros(mask_shape), temporal)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(window_size=(0, 2)), ValueError, "window_size[0] must be >= 1"),
        (dict(window_size=(2, 2, 2)), ValueError, "pair"),
        (dict(num_heads=0), ValueError, "num_heads must be >= 1"),
        (dict(dim=2.5), TypeError, "dim must be an int"),
        (dict(num_ttokens=0), ValueError, "num_ttokens must be >= 1"),
    ],
)
def test_constructor_and_oracle_refuse_bad_sizes(kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        WindowAttention(**{**DEFAULTS, **kwargs})
    if "window_size" in kwargs and len(kwargs["window_size"]) == 2:  # the oracle's index also takes triples (3-D)
        with pytest.raises(error, match=re.escape(words)):
            reference.relative_position_index(kwargs["window_size"])
    if "num_ttokens" in kwargs:
        with pytest.raises(error, match=re.escape(words)):
            reference.temporal_relative_index(kwargs["num_ttokens"])


def test_temporal_call_on_spatial_only_module():
    module = WindowAttention(**DEFAULTS, use_temporal=False)
    assert "temporal_position_bias_table" not in module.state_dict()
    with pytest.raises(ValueError, match="use_temporal=False"):
        module(torch.zeros(1, 3, 8), temporal=True)


def test_non_tensor_and_integer_inputs():
    module = WindowAttention(**DEFAULTS)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        module(np.zeros((1, 4, 8)))
    with pytest.raises(TypeError, match="floating dtype"):
        module(torch.zeros(1, 4, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="mask must be a floating additive mask .* or a boolean"):
        module(torch.zeros(1, 4, 8), torch.zeros(1, 4, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="mask must be a floating additive mask .* or a boolean"):
        reference.window_attention(np.zeros((1, 4, 8)), _oracle_params({}), num_heads=2, window_size=(2, 2),
                                   mask=np.zeros((1, 4, 4), dtype=np.int64))


# --------------------------------------------------------------------------------------------------
# Shifted windows: geometry, fill, windows, masks
# --------------------------------------------------------------------------------------------------

from refimpl import optimized  # noqa: E402

# name: ((H, W, window_size, shift_size), expected error, words the message must name)
BAD_GEOMETRY = {
    "H not a multiple of the window": ((6, 8, 4, 0), ValueError, "H=6 and W=8 must be multiples of window_size=4"),
    "W not a multiple of the window": ((8, 6, 4, 1), ValueError, "H=8 and W=6 must be multiples"),
    "negative shift": ((8, 8, 4, -1), ValueError, "shift_size must be in [0, window_size=4), got -1"),
    "shift equal to the window": ((8, 8, 4, 4), ValueError, "shift_size must be in [0, window_size=4), got 4"),
    "window larger than the map": ((3, 8, 4, 0), ValueError, "window_size=4 is larger than the 3x8 map"),
    "fractional shift": ((8, 8, 4, 1.5), TypeError, "shift_size must be an int, got 1.5"),
    "zero window": ((8, 8, 0, 0), ValueError, "window_size must be >= 1, got 0"),
}


@pytest.mark.parametrize("name", BAD_GEOMETRY)
def test_every_shifted_window_function_refuses_bad_geometry(name):
    (H, W, ws, s), error, words = BAD_GEOMETRY[name]
    calls = {
        "reference.shifted_window_mask": lambda: reference.shifted_window_mask(H, W, ws, s),
        "optimized.shifted_window_mask": lambda: optimized.shifted_window_mask(H, W, ws, s),
        "reference.shifted_window_attention": lambda: reference.shifted_window_attention(
            np.zeros((1, H, W, 4)), {}, num_heads=2, window_size=ws, shift_size=s),
        "optimized.shifted_window_attention": lambda: optimized.shifted_window_attention(
            torch.zeros(1, H, W, 4), WindowAttention(4, 1, 2, 2), window_size=ws, shift_size=s),
    }
    for call in calls.values():
        with pytest.raises(error, match=re.escape(words)):
            call()


@pytest.mark.parametrize("fill, error, words", [
    (1.0, ValueError, "fill must be negative"),
    (0.0, ValueError, "fill must be negative"),
    (float("nan"), ValueError, "fill must be negative"),
    ("-100", TypeError, "fill must be a real number"),
])
def test_mask_fill_must_be_a_negative_number(fill, error, words):
    with pytest.raises(error, match=words):
        reference.shifted_window_mask(8, 8, 4, 2, fill)
    with pytest.raises(error, match=words):
        optimized.shifted_window_mask(8, 8, 4, 2, fill)


def test_maps_and_windows_of_the_wrong_shape():
    for partition, x in ((reference.window_partition, np.zeros((4, 4, 2))),
                         (optimized.window_partition, torch.zeros(4, 4, 2))):
        with pytest.raises(ValueError, match=re.escape("x must be 4-D (B, H, W, C), got shape (4, 4, 2)")):
            partition(x, 2)
    for reverse, windows in ((reference.window_reverse, np.zeros((3, 2, 2, 1))),
                             (optimized.window_reverse, torch.zeros(3, 2, 2, 1))):
        with pytest.raises(ValueError, match=re.escape("has 3 windows, not a multiple of nW = (H/ws)*(W/ws) = 4")):
            reverse(windows, 2, 4, 4)
        with pytest.raises(ValueError, match=re.escape("(B*nW, ws, ws, C) with ws=3")):
            reverse(windows, 3, 6, 6)


def test_map_level_attention_needs_a_module_with_the_same_window():
    module = WindowAttention(4, 1, (2, 2), 2)
    with pytest.raises(ValueError, match=re.escape("attn was built with window_size=(2, 2), but window_size=4")):
        optimized.shifted_window_attention(torch.zeros(1, 8, 8, 4), module, window_size=4, shift_size=2)


@pytest.mark.parametrize("bad, words", [(float("nan"), "NaN or +inf"), (float("inf"), "NaN or +inf")])
def test_masks_with_nan_or_plus_inf_are_refused(bad, words):
    mask = np.zeros((1, 4, 4))
    mask[0, 1, 2] = bad
    with pytest.raises(ValueError, match=re.escape(words)):
        reference.window_attention(np.zeros((2, 4, 8)), _oracle_params({}), num_heads=2, window_size=(2, 2), mask=mask)
    with pytest.raises(ValueError, match=re.escape(words)):
        WindowAttention(**DEFAULTS)(torch.zeros(2, 4, 8), torch.as_tensor(mask, dtype=torch.float32))


# ---- FIERY temporal model ----

from refimpl.optimized import TemporalModel  # noqa: E402

TM_DEFAULTS = dict(in_channels=4, receptive_field=3, input_shape=(3, 3))

# name: (constructor overrides, x shape (B, T, C, H, W), expected error, words the message must name)
BAD_CLIPS = {
    "x not 5-D": (dict(), (4, 3, 3, 3), ValueError, "5-D"),
    "C != in_channels": (dict(), (1, 3, 5, 3, 3), ValueError, "in_channels=4"),
    "map smaller than input_shape": (dict(), (1, 3, 4, 2, 3), ValueError, "smaller than input_shape"),
    "T == 1 with pooling": (dict(), (1, 1, 4, 3, 3), ValueError, "T=1"),
}


def _temporal_params(overrides):
    module = TemporalModel(**{**TM_DEFAULTS, **overrides})
    return {k: t.detach().numpy() for k, t in module.state_dict().items()}


@pytest.mark.parametrize("name", BAD_CLIPS)
def test_temporal_model_and_oracle_refuse_the_same_bad_clip(name):
    overrides, shape, error, words = BAD_CLIPS[name]
    module = TemporalModel(**{**TM_DEFAULTS, **overrides}).eval()
    with pytest.raises(error, match=re.escape(words)):
        module(torch.zeros(shape))
    with pytest.raises(error, match=re.escape(words)):
        reference.temporal_model(np.zeros(shape), _temporal_params(overrides), **{**TM_DEFAULTS, **overrides})


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(in_channels=2), ValueError, "in_channels"),  # pooling needs in // 3 >= 1; FIERY: zero-channel conv
    (dict(in_channels=1, use_pyramid_pooling=False), ValueError, "in_channels"),
    (dict(receptive_field=0), ValueError, "receptive_field"),
    (dict(receptive_field=2.5), TypeError, "receptive_field"),
    (dict(input_shape=(3,)), ValueError, "input_shape"),
    (dict(start_out_channels=2, receptive_field=3), ValueError, "start_out_channels"),  # feeds the second block
    (dict(extra_in_channels=-1), ValueError, "extra_in_channels"),
])
def test_temporal_model_constructor_and_oracle_refuse_bad_sizes(kwargs, error, words):
    config = {**TM_DEFAULTS, **kwargs}
    with pytest.raises(error, match=re.escape(words)):
        TemporalModel(**config)
    with pytest.raises(error, match=re.escape(words)):
        reference.temporal_model_state_shapes(**config)


def test_temporal_model_input_types_and_fewer_frames_than_r():
    module = TemporalModel(**TM_DEFAULTS).eval()
    with pytest.raises(TypeError, match="torch.Tensor"):
        module(np.zeros((1, 3, 4, 3, 3)))
    with pytest.raises(TypeError, match="floating dtype"):
        module(torch.zeros((1, 3, 4, 3, 3), dtype=torch.int64))
    # T < R is not an error: FIERY returns an empty time axis, and so do the module and the oracle
    assert module(torch.zeros((2, 2, 4, 3, 3))).shape == (2, 0, 64, 3, 3)
    params = _temporal_params({})
    assert reference.temporal_model(np.zeros((2, 2, 4, 3, 3)), params, **TM_DEFAULTS).shape == (2, 0, 64, 3, 3)


def test_stream_refuses_train_mode_and_frames_of_another_shape():
    module = TemporalModel(**TM_DEFAULTS)
    stream = module.stream()
    with pytest.raises(RuntimeError, match="eval mode"):
        stream.step(torch.zeros(1, 4, 3, 3))
    module.eval()
    with pytest.raises(ValueError, match=re.escape("(B, C, H, W)")):
        stream.step(torch.zeros(1, 1, 4, 3, 3))
    stream.step(torch.zeros(1, 4, 3, 3))
    with pytest.raises(ValueError, match="reset()"):
        stream.step(torch.zeros(2, 4, 3, 3))
