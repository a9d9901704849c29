"""Video Swin's ``WindowAttention3D`` in float64: the bias index of a (possibly shrunk) window under both index
conventions, the forward with every stage kept, and its VJP.

Notation: ``B_`` rows of ``N`` tokens with ``C`` channels, ``nH`` heads of ``d = C // nH`` channels. The module is
built for a window ``(Wd, Wh, Ww)`` (``N0 = Wd*Wh*Ww`` tokens, a table of ``(2Wd-1)(2Wh-1)(2Ww-1)`` rows); the
block may attend over a smaller *used* window ``(Wd', Wh', Ww')`` (``N = Wd'*Wh'*Ww'``) when the clip is short.
docs/window-attention-3d.md states the semantics.

The forward is V1's (scale ``q`` first, add ``Bias[h, i, j] = table[index[i, j], h]``, add ``mask[b % nW]`` once,
softmax over keys, ``proj``); only the index differs, and it depends on the convention:

* ``"geometric"``: the table row of the true offset (query minus key) of the two tokens of the used window, with
  the module window's radices (``relative_index_of_offsets``);
* ``"truncated"``: upstream's ``relative_position_index(window_size)[:N, :N]``, which takes token ``p`` of the
  used window to be token ``p`` of the module window's flattening. Both agree exactly when the used window is a
  row-major prefix of the module window (``is_row_major_prefix``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from refimpl import _validate as validate
from refimpl.reference._common import attention_scale
from refimpl.reference.window_attention import (
    WindowAttentionStages,
    _attend,
    _backward,
    _mask_rows,
    relative_index_of_offsets,
    relative_position_index,
    window_coordinates,
    window_sides,
)

__all__ = [
    "INDEX_CONVENTIONS",
    "window_triple",
    "is_row_major_prefix",
    "window_attention_3d_index",
    "window_attention_3d_stages",
    "window_attention_3d",
    "window_attention_3d_vjp",
]

INDEX_CONVENTIONS = ("geometric", "truncated")


def window_triple(name: str, value) -> tuple[int, int, int]:
    """A 3-D window ``(Wd, Wh, Ww)``, each side >= 1."""
    sides = window_sides(name, value)
    if len(sides) != 3:
        raise ValueError(f"{name} must be a triple (Wd, Wh, Ww), got {value!r}")
    return sides


def _used_window(window_size, used_window) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    window = window_triple("window_size", window_size)
    used = window if used_window is None else window_triple("used_window", used_window)
    if any(u > w for u, w in zip(used, window, strict=True)):
        raise ValueError(f"used_window={used} must fit in window_size={window} on every axis (the block only "
                         f"shrinks the window)")
    return window, used


def _convention(index_convention) -> str:
    if index_convention not in INDEX_CONVENTIONS:
        raise ValueError(f"index_convention must be one of {INDEX_CONVENTIONS}, got {index_convention!r}")
    return index_convention


def is_row_major_prefix(window_size, used_window) -> bool:
    """Whether the used window's tokens, flattened row-major, are the first ``N`` tokens of the module window's
    flattening at the same coordinates: by comparing the coordinates themselves (the definition; the closed form,
    at most one axis cut short with every later axis full and every earlier one of size 1, is a test)."""
    window, used = _used_window(window_size, used_window)
    n = int(np.prod(used))
    return bool(np.array_equal(window_coordinates(window)[:, :n], window_coordinates(used)))


def window_attention_3d_index(window_size, used_window=None, index_convention: str = "geometric") -> np.ndarray:
    """The bias index ``(N, N)`` int64 of a module built for ``window_size`` attending over ``used_window``
    (default: the whole window): ``"geometric"`` looks up the true offset of the two tokens of the used window,
    ``"truncated"`` is upstream's ``relative_position_index(window_size)[:N, :N]``."""
    window, used = _used_window(window_size, used_window)
    n = int(np.prod(used))
    if _convention(index_convention) == "truncated":
        return relative_position_index(window)[:n, :n]
    coords = window_coordinates(used)  # (3, N), the used window's tokens in their own flattening
    return relative_index_of_offsets(window, [axis[:, None] - axis[None, :] for axis in coords])


def _bias_table(params: Mapping, window, num_heads: int) -> np.ndarray:
    table = validate.param(params, "relative_position_bias_table", ndim=2)
    rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    validate.table_shape("params['relative_position_bias_table']", table, (rows, num_heads))
    return table


def window_attention_3d_stages(
    x, params: Mapping, *, num_heads: int, window_size, used_window=None, mask=None, qk_scale=None,
    index_convention: str = "geometric",
) -> WindowAttentionStages:
    """Video Swin ``WindowAttention3D.forward(x, mask)`` in float64, every intermediate kept (eval mode).

    ``x``: ``(B_, N, C)`` with ``N = prod(used_window or window_size)``; ``mask``: ``(nW, N, N)`` additive (or
    boolean may-attend), row ``b`` gets ``mask[b % nW]``. ``qk_scale`` None or 0 means ``d ** -0.5``.
    """
    x = validate.array3d("x", x)
    n_rows, n_tokens, channels = x.shape
    num_heads = validate.positive_int("num_heads", num_heads)
    head_dim = validate.head_dim(channels, num_heads)
    window, used = _used_window(window_size, used_window)
    if n_tokens != int(np.prod(used)):
        raise ValueError(f"x has N={n_tokens} tokens but the window in use {used} has {int(np.prod(used))}")
    w_qkv, b_qkv = validate.linear_params(params, "qkv", in_features=channels, out_features=3 * channels)
    w_proj, b_proj = validate.linear_params(params, "proj", in_features=channels, out_features=channels)
    table = _bias_table(params, window, num_heads)
    index = window_attention_3d_index(window, used, index_convention)

    bias = np.einsum("ijh->hij", table[index])  # Bias[h, i, j] = table[index[i, j], h]
    mask_rows = _mask_rows(mask, n_rows, n_tokens)
    scale = attention_scale(head_dim, qk_scale)

    return _attend(x, w_qkv, b_qkv, w_proj, b_proj, bias, mask_rows, scale, num_heads)


def window_attention_3d(
    x, params: Mapping, *, num_heads: int, window_size, used_window=None, mask=None, qk_scale=None,
    index_convention: str = "geometric",
) -> np.ndarray:
    """Video Swin ``WindowAttention3D.forward(x, mask)`` in float64: ``(B_, N, C) -> (B_, N, C)``.

    ``params`` maps Video Swin's state-dict keys to arrays (``relative_position_bias_table``
    ``((2Wd-1)(2Wh-1)(2Ww-1), nH)``, ``qkv.weight``, ``qkv.bias`` unless qkv_bias is off, ``proj.weight``,
    ``proj.bias``); ``relative_position_index`` in ``params`` is ignored (the oracle derives its own).
    ``used_window``: the window the block attends over (default ``window_size``); ``index_convention``:
    ``"geometric"`` (the definition) or ``"truncated"`` (upstream's ``index[:N, :N]``).
    """
    return window_attention_3d_stages(
        x, params, num_heads=num_heads, window_size=window_size, used_window=used_window, mask=mask,
        qk_scale=qk_scale, index_convention=index_convention,
    ).out


def window_attention_3d_vjp(
    x, params: Mapping, *, num_heads: int, window_size, used_window=None, mask=None, qk_scale=None,
    index_convention: str = "geometric", grad_out,
) -> dict[str, np.ndarray]:
    """Gradients of ``sum(window_attention_3d(x, params, ...) * grad_out)``: V1's backward (the stages are the
    same), and the table gradient scatter-added over the index in use.

    Returns ``{"x": (B_, N, C), key: array shaped like params[key] for every key of params}``; keys the output does
    not depend on (``relative_position_index``) get zeros, and so do table rows the index never reads.
    """
    st = window_attention_3d_stages(
        x, params, num_heads=num_heads, window_size=window_size, used_window=used_window, mask=mask,
        qk_scale=qk_scale, index_convention=index_convention,
    )
    grads = _backward(st, x, params, grad_out)
    g_bias = grads.pop("bias")  # (nH, N, N)
    window, used = _used_window(window_size, used_window)
    index = window_attention_3d_index(window, used, index_convention)
    g_table = np.zeros(np.shape(params["relative_position_bias_table"]))
    for i in range(index.shape[0]):
        for j in range(index.shape[1]):
            g_table[index[i, j]] += g_bias[:, i, j]
    grads["relative_position_bias_table"] = g_table
    return {key: grads[key] if key in grads else np.zeros(np.shape(params[key])) for key in ["x", *params]}
