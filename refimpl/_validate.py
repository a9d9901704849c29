"""Argument checks shared by the oracle and the optimized modules.

Each check raises ``TypeError`` or ``ValueError`` naming the argument, the value and what was expected, so that
the oracle and the optimized side refuse the same bad call in the same words. Shape checks take plain shapes so
that they serve NumPy arrays and torch tensors alike; nothing here imports torch.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def window_pair(name: str, value) -> tuple[int, int]:
    """A window size: an int ``ws`` (meaning ``(ws, ws)``) or a pair ``(Wh, Ww)``, each >= 1."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints (Wh, Ww), got {value!r}") from None
    if len(pair) != 2:
        raise ValueError(f"{name} must be a pair (Wh, Ww), got {value!r} with {len(pair)} entries")
    return positive_int(f"{name}[0]", pair[0]), positive_int(f"{name}[1]", pair[1])


def window_triple(name: str, value) -> tuple[int, int, int]:
    """A 3-D window ``(Wd, Wh, Ww)`` (or one int ``w`` meaning ``(w, w, w)``), each side >= 1."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value, value)
    try:
        triple = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a triple of ints (Wd, Wh, Ww), got {value!r}") from None
    if len(triple) != 3:
        raise ValueError(f"{name} must be a triple (Wd, Wh, Ww), got {value!r} with {len(triple)} entries")
    return tuple(positive_int(f"{name}[{a}]", side) for a, side in enumerate(triple))


def shift_triple(name: str, value, window: tuple[int, int, int]) -> tuple[int, int, int]:
    """A 3-D shift ``(sd, sh, sw)`` (or one int), each in ``[0, window side)``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value, value)
    try:
        triple = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a triple of ints (sd, sh, sw), got {value!r}") from None
    if len(triple) != 3:
        raise ValueError(f"{name} must be a triple (sd, sh, sw), got {value!r} with {len(triple)} entries")
    shifts = tuple(non_negative_int(f"{name}[{a}]", s) for a, s in enumerate(triple))
    for axis in range(3):  # indexing, not zip(strict=True): torch 2.1's dynamo refuses the keyword
        s, w = shifts[axis], window[axis]
        if s >= w:
            raise ValueError(f"{name}[{axis}]={s} must be smaller than the window side {w} (window {window})")
    return shifts


def head_dim(channels: int, num_heads: int, channels_name: str = "C") -> int:
    if channels % num_heads:
        raise ValueError(
            f"{channels_name}={channels} is not divisible by num_heads={num_heads}: the head split "
            f"(C // num_heads channels per head) needs C % num_heads == 0"
        )
    return channels // num_heads


def rows_tokens_channels(name: str, shape) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"{name} must be 3-D (B_, N, C), got shape {tuple(shape)}")
    return tuple(int(s) for s in shape)


def array3d(name: str, x) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real numeric array, got {type(x).__name__}") from None
    rows_tokens_channels(name, arr.shape)
    return arr


def window_mask_shape(name: str, shape, *, n_rows: int, n_tokens: int) -> int:
    """Checks a window mask of shape ``(nW, N, N)`` against ``B_ = n_rows``; returns ``nW``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[1:] != (n_tokens, n_tokens) or shape[0] < 1:
        raise ValueError(f"{name} must have shape (nW, N, N) = (nW, {n_tokens}, {n_tokens}), got {shape}")
    if n_rows % shape[0]:
        raise ValueError(
            f"{name} has nW={shape[0]} windows but x has B_={n_rows} rows: B_ must be a multiple of nW "
            f"(rows are batch-major, row b uses mask[b % nW])"
        )
    return shape[0]


def param(params: Mapping, key: str, *, ndim: int) -> np.ndarray:
    if key not in params:
        raise ValueError(f"params is missing {key!r} (has {sorted(params)})")
    arr = np.asarray(params[key], dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"params[{key!r}] must be {ndim}-D, got shape {arr.shape}")
    return arr


def table_shape(name: str, table, expected: tuple[int, int]) -> None:
    if tuple(table.shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(table.shape)}, expected {tuple(expected)}")


def linear_params(params: Mapping, prefix: str, *, in_features: int, out_features: int):
    """``(weight (out, in), bias (out,) or zeros when the key is absent)`` of an ``nn.Linear``."""
    weight = param(params, f"{prefix}.weight", ndim=2)
    if weight.shape != (out_features, in_features):
        raise ValueError(
            f"params[{prefix + '.weight'!r}] has shape {weight.shape}, expected {(out_features, in_features)} "
            f"for x with C={in_features} channels"
        )
    if f"{prefix}.bias" not in params:
        return weight, np.zeros(out_features)
    bias = param(params, f"{prefix}.bias", ndim=1)
    table_shape(f"params[{prefix + '.bias'!r}]", bias, (out_features,))
    return weight, bias


def shifted_window_geometry(H, W, window_size, shift_size) -> tuple[int, int, int, int]:
    """Checks a map size, window and shift for Swin's (shifted) windows; returns ``(H, W, ws, s)``.

    The window must fit in the map, tile it exactly (nothing pads), and the shift must lie in ``[0, ws)``.
    """
    H, W = positive_int("H", H), positive_int("W", W)
    ws = positive_int("window_size", window_size)
    if isinstance(shift_size, bool) or not isinstance(shift_size, numbers.Integral):
        raise TypeError(f"shift_size must be an int, got {shift_size!r} ({type(shift_size).__name__})")
    if ws > min(H, W):
        raise ValueError(
            f"window_size={ws} is larger than the {H}x{W} map; Swin's blocks clamp the window to min(H, W) and "
            f"set shift_size=0 in that case: do that before calling"
        )
    if H % ws or W % ws:
        raise ValueError(f"H={H} and W={W} must be multiples of window_size={ws} (nothing pads the map)")
    if not 0 <= shift_size < ws:
        raise ValueError(f"shift_size must be in [0, window_size={ws}), got {shift_size}")
    return H, W, ws, int(shift_size)


def mask_fill(fill) -> float:
    """The value a shifted-window mask puts between regions: a negative number or -inf (Swin: -100)."""
    if isinstance(fill, bool) or not isinstance(fill, numbers.Real):
        raise TypeError(f"fill must be a real number (Swin's -100.0, or -inf), got {fill!r}")
    fill = float(fill)
    if not fill < 0:  # also refuses NaN
        raise ValueError(f"fill must be negative (Swin's -100.0, or -inf), got {fill}")
    return fill


def map_bhwc(name: str, shape) -> tuple[int, int, int, int]:
    if len(shape) != 4:
        raise ValueError(f"{name} must be 4-D (B, H, W, C), got shape {tuple(shape)}")
    return tuple(int(s) for s in shape)


def windows_shape(name: str, shape, *, window_size: int, H: int, W: int) -> int:
    """Checks ``(B*nW, ws, ws, C)`` windows of an ``H x W`` map; returns ``B``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or shape[1:3] != (window_size, window_size):
        raise ValueError(f"{name} must have shape (B*nW, ws, ws, C) with ws={window_size}, got {shape}")
    if H % window_size or W % window_size:
        raise ValueError(f"H={H} and W={W} must be multiples of window_size={window_size}")
    per_image = (H // window_size) * (W // window_size)
    if shape[0] % per_image:
        raise ValueError(
            f"{name} has {shape[0]} windows, not a multiple of nW = (H/ws)*(W/ws) = {per_image} for a {H}x{W} map"
        )
    return shape[0] // per_image


def non_negative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


class TemporalModelSizes(NamedTuple):
    """FIERY ``TemporalModel`` constructor sizes, checked (the constructor's own argument names)."""

    in_channels: int
    receptive_field: int
    input_shape: tuple[int, int]
    start_out_channels: int
    extra_in_channels: int
    n_spatial_layers_between_temporal_layers: int


def temporal_model_config(
    in_channels, receptive_field, input_shape, start_out_channels, extra_in_channels,
    n_spatial_layers_between_temporal_layers,
) -> TemporalModelSizes:
    """FIERY ``TemporalModel`` constructor sizes, checked; see ``temporal_model_layers`` for the channel floors."""
    return TemporalModelSizes(
        positive_int("in_channels", in_channels),
        positive_int("receptive_field", receptive_field),
        window_pair("input_shape", input_shape),
        positive_int("start_out_channels", start_out_channels),
        non_negative_int("extra_in_channels", extra_in_channels),
        non_negative_int("n_spatial_layers_between_temporal_layers", n_spatial_layers_between_temporal_layers),
    )


def temporal_model_input(
    name: str, shape, *, in_channels: int, receptive_field: int, input_shape, use_pyramid_pooling: bool
) -> tuple[int, int, int, int, int]:
    """Checks ``x`` ``(B, T, C, H, W)`` against a FIERY temporal model; returns the five sizes."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 5:
        raise ValueError(f"{name} must be 5-D (B, T, C, H, W), got shape {shape}")
    b, t, c, h, w = shape
    if c != in_channels:
        raise ValueError(f"{name} has C={c} channels (shape {shape}), but the model was built with "
                         f"in_channels={in_channels}")
    if min(b, t, h, w) < 1:
        raise ValueError(f"{name} must have B, T, H, W >= 1, got shape {shape}")
    if use_pyramid_pooling and receptive_field >= 2:
        ph, pw = input_shape
        if h < ph or w < pw:
            raise ValueError(
                f"{name} has a {h}x{w} map, smaller than input_shape={(ph, pw)}: the pyramid pooling kernel covers "
                f"input_shape, so the map must be at least that large"
            )
        if t == 1:
            raise ValueError(
                f"{name} has T=1 frame, but pyramid pooling averages over 2 frames and needs T >= 2 "
                f"(upstream's AvgPool3d rejects T=1)"
            )
    return b, t, c, h, w


def pretrained_window_pair(name: str, value) -> tuple[int, int]:
    """Swin V2's ``pretrained_window_size``: ``(0, 0)`` (use the window itself) or a pair ``(Ph, Pw)`` of sides
    >= 2 (an int ``P`` means ``(P, P)``)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints (Ph, Pw), got {value!r}") from None
    if len(pair) != 2:
        raise ValueError(f"{name} must be a pair (Ph, Pw), got {value!r} with {len(pair)} entries")
    ph, pw = (non_negative_int(f"{name}[{i}]", side) for i, side in enumerate(pair))
    if (ph == 0) != (pw == 0):
        raise ValueError(f"{name} must be (0, 0) (use the window) or have both sides >= 2, got {(ph, pw)}: upstream "
                         f"tests side 0 only, so (P, 0) divides the w offsets by -1 (a sign flip) and (0, P) ignores "
                         f"P")
    if ph == 1 or pw == 1:
        raise ValueError(f"{name}={(ph, pw)} has a side of 1: the log-spaced coordinates divide by side - 1, which "
                         f"is 0 (upstream's output is all NaN); use (0, 0) or sides >= 2")
    return ph, pw


def cpb_geometry(window_size, pretrained_window_size) -> tuple[tuple[int, int], tuple[int, int]]:
    """Swin V2's window and the divisors ``(Dh, Dw)`` of its log-spaced coordinates: ``P - 1`` with a pretrained
    window ``P``, else ``window - 1``. A side whose divisor would be 0 is refused (upstream's 0/0 makes the whole
    output NaN)."""
    wh, ww = window_pair("window_size", window_size)
    ph, pw = pretrained_window_pair("pretrained_window_size", pretrained_window_size)
    if ph > 0:
        return (wh, ww), (ph - 1, pw - 1)
    if wh == 1 or ww == 1:
        raise ValueError(f"window_size={(wh, ww)} has a side of 1 with pretrained_window_size=(0, 0): the "
                         f"log-spaced coordinates divide by window side - 1 = 0 (upstream's output is all NaN); pass "
                         f"a pretrained_window_size with sides >= 2, or use a window with sides >= 2")
    return (wh, ww), (wh - 1, ww - 1)
