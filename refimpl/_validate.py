"""Argument checks shared by the oracle and the optimized modules.

Each check raises ``TypeError`` or ``ValueError`` naming the argument, the value and what was expected, so that
the oracle and the optimized side refuse the same bad call in the same words. Shape checks take plain shapes so
that they serve NumPy arrays and torch tensors alike; nothing here imports torch.
"""

from __future__ import annotations

import numbers
from typing import Mapping

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


def window_mask(name: str, mask, *, n_rows: int, n_tokens: int) -> np.ndarray:
    try:
        arr = np.asarray(mask, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real numeric array, got {type(mask).__name__}") from None
    window_mask_shape(name, arr.shape, n_rows=n_rows, n_tokens=n_tokens)
    return arr


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
