"""Swin's shifted windows in float64: partition and reverse, the region labels and the mask, map-level attention
and its VJP, and a second map-level oracle that shares no code with the roll, the partition or the mask.

Maps are ``(B, H, W, C)``; a window side is ``ws``, a shift ``s`` (``0 <= s < ws``), ``N = ws*ws``. The
semantics are in docs/semantics.md.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from refimpl import _validate as validate
from refimpl.reference._common import attention_scale, softmax
from refimpl.reference.window_attention import window_attention, window_attention_vjp

__all__ = [
    "window_partition",
    "window_reverse",
    "shifted_window_regions",
    "shifted_window_mask",
    "shifted_window_attention",
    "shifted_window_attention_vjp",
    "shifted_window_cell",
    "shifted_window_attention_per_token",
]


# ---- windows ----


def window_partition(x, window_size: int) -> np.ndarray:
    """``(B, H, W, C) -> (B*nW, ws, ws, C)``; window row ``b*nW + wr*(W//ws) + wc`` (batch-major)."""
    x = np.asarray(x, dtype=np.float64)
    b, h, w, c = validate.map_bhwc("x", x.shape)
    ws = validate.positive_int("window_size", window_size)
    if h % ws or w % ws:
        raise ValueError(f"H={h} and W={w} must be multiples of window_size={ws} (nothing pads the map)")
    windows = [
        x[i, r * ws : (r + 1) * ws, q * ws : (q + 1) * ws]
        for i in range(b)
        for r in range(h // ws)
        for q in range(w // ws)
    ]
    return np.stack(windows).reshape(-1, ws, ws, c)


def window_reverse(windows, window_size: int, H: int, W: int) -> np.ndarray:
    """Inverse of ``window_partition``: ``(B*nW, ws, ws, C) -> (B, H, W, C)``."""
    windows = np.asarray(windows, dtype=np.float64)
    ws = validate.positive_int("window_size", window_size)
    H, W = validate.positive_int("H", H), validate.positive_int("W", W)
    b = validate.windows_shape("windows", windows.shape, window_size=ws, H=H, W=W)
    x = np.zeros((b, H, W, windows.shape[-1]))
    per_image = (H // ws) * (W // ws)
    for n in range(windows.shape[0]):
        i, rest = divmod(n, per_image)
        r, q = divmod(rest, W // ws)
        x[i, r * ws : (r + 1) * ws, q * ws : (q + 1) * ws] = windows[n]
    return x


# ---- regions and the mask ----


def _band(position: int, size: int, window_size: int, shift_size: int) -> int:
    """Swin's slices over one axis of the rolled map: [0, size-ws), [size-ws, size-s), [size-s, size)."""
    if position < size - window_size:
        return 0
    return 1 if position < size - shift_size else 2


def shifted_window_regions(H: int, W: int, window_size: int, shift_size: int) -> np.ndarray:
    """Swin's region ids on the *rolled* ``H x W`` map, int64: ``3 * row band + column band`` (0..8); all zero
    when ``shift_size == 0``. Tokens may attend to each other iff they share a window and a region."""
    H, W, ws, s = validate.shifted_window_geometry(H, W, window_size, shift_size)
    region = np.zeros((H, W), dtype=np.int64)
    if s > 0:
        for r in range(H):
            for c in range(W):
                region[r, c] = 3 * _band(r, H, ws, s) + _band(c, W, ws, s)
    return region


def shifted_window_mask(H: int, W: int, window_size: int, shift_size: int, fill: float = -100.0) -> np.ndarray:
    """Swin's shifted-window attention mask ``(nW, ws*ws, ws*ws)``: 0 between tokens of the same region of the
    rolled map, ``fill`` between regions (tokens that are neighbours only through the cyclic roll).

    ``fill`` is Swin's -100.0 or -inf; the boolean "may attend" form is ``shifted_window_mask(...) == 0``.
    """
    fill = validate.mask_fill(fill)
    regions = shifted_window_regions(H, W, window_size, shift_size)
    ws = int(window_size)
    labels = window_partition(regions[None, :, :, None], ws).reshape(-1, ws * ws)  # (nW, N)
    same_region = labels[:, :, None] == labels[:, None, :]
    return np.where(same_region, 0.0, fill)


# ---- map-level attention: roll, partition, masked window attention, reverse, roll back ----


def _roll_map(x, shift: int) -> np.ndarray:
    """``x`` ``(B, H, W, C)`` rolled by ``shift`` along H and W: ``out[:, r, c] = x[:, r - shift, c - shift]``."""
    return np.roll(x, shift=(shift, shift), axis=(1, 2))


def _shifted_windows(x, window_size: int, shift_size: int) -> np.ndarray:
    """The rolled map's windows, flattened: ``(B, H, W, C) -> (B*nW, ws*ws, C)``."""
    windows = window_partition(_roll_map(x, -shift_size), window_size)
    return windows.reshape(windows.shape[0], window_size * window_size, -1)


def _unshifted_map(windows, window_size: int, shift_size: int, H: int, W: int) -> np.ndarray:
    """Inverse of ``_shifted_windows``: ``(B*nW, ws*ws, C) -> (B, H, W, C)``."""
    windows = windows.reshape(windows.shape[0], window_size, window_size, -1)
    return _roll_map(window_reverse(windows, window_size, H, W), shift_size)


def _check_map(x, window_size, shift_size, fill):
    """``(x as float64, H, W, ws, s, mask)``, checked; the mask is None when ``s == 0`` (Swin passes none)."""
    x = np.asarray(x, dtype=np.float64)
    _, H, W, _ = validate.map_bhwc("x", x.shape)
    H, W, ws, s = validate.shifted_window_geometry(H, W, window_size, shift_size)
    mask = shifted_window_mask(H, W, ws, s, fill) if s > 0 else None
    return x, H, W, ws, s, mask


def shifted_window_attention(
    x, params: Mapping, *, num_heads: int, window_size: int, shift_size: int, qk_scale=None, fill: float = -100.0
) -> np.ndarray:
    """Swin's (shifted) window attention over a map, in float64: ``(B, H, W, C) -> (B, H, W, C)``.

    Roll the map by ``-s`` along H and W, partition it into ``ws x ws`` windows, run window attention with
    ``shifted_window_mask(H, W, ws, s, fill)`` (no mask when ``s == 0``), reverse the partition, roll back by
    ``+s``. ``params`` are AIM/Swin ``WindowAttention`` parameters for ``window_size=(ws, ws)``.
    """
    x, H, W, ws, s, mask = _check_map(x, window_size, shift_size, fill)
    windows = _shifted_windows(x, ws, s)
    out = window_attention(windows, params, num_heads=num_heads, window_size=(ws, ws), mask=mask, qk_scale=qk_scale)
    return _unshifted_map(out, ws, s, H, W)


def shifted_window_attention_vjp(
    x, params: Mapping, *, num_heads: int, window_size: int, shift_size: int, qk_scale=None, fill: float = -100.0,
    grad_out,
) -> dict[str, np.ndarray]:
    """Gradients of ``sum(shifted_window_attention(x, params, ...) * grad_out)``: roll and partition are
    permutations, so the gradient is ``window_attention_vjp`` on the permuted ``grad_out``, permuted back."""
    x, H, W, ws, s, mask = _check_map(x, window_size, shift_size, fill)
    grad_out = np.asarray(grad_out, dtype=np.float64)
    if grad_out.shape != x.shape:
        raise ValueError(f"grad_out has shape {grad_out.shape}, expected the output's shape {x.shape}")
    grads = window_attention_vjp(
        _shifted_windows(x, ws, s), params, num_heads=num_heads, window_size=(ws, ws), mask=mask, qk_scale=qk_scale,
        grad_out=_shifted_windows(grad_out, ws, s),
    )
    grads["x"] = _unshifted_map(grads["x"], ws, s, H, W)
    return grads


# ---- the second oracle: per token, by the cut lines of the shifted windows ----


def shifted_window_cell(position: int, window_size: int, shift_size: int) -> int:
    """Which shifted window, along one axis, holds ``position`` in the *original* (un-rolled) frame.

    Swin's shifted windows cut each axis at ``s, s + ws, s + 2*ws, ...``: the first window ``[0, s)`` and the
    last ``[size - ws + s, size)`` are partial, and nothing wraps around. (The roll and the mask are a way of
    batching exactly these windows as full ``ws x ws`` ones.)
    """
    return (position - shift_size) // window_size  # floor: positions before s are in window -1


def shifted_window_attention_per_token(
    x, params: Mapping, *, num_heads: int, window_size: int, shift_size: int, qk_scale=None
) -> np.ndarray:
    """A second oracle for ``shifted_window_attention`` that shares no code with the roll, the partition or the
    mask: for every output token, plain attention over exactly the tokens it may see (same shifted window along
    both axes, see ``shifted_window_cell``), with the bias looked up from the two tokens' coordinates.
    Exact masking (no -100 leak). ``(B, H, W, C) -> (B, H, W, C)``.
    """
    x = np.asarray(x, dtype=np.float64)
    b, H, W, c = validate.map_bhwc("x", x.shape)
    H, W, ws, s = validate.shifted_window_geometry(H, W, window_size, shift_size)
    num_heads = validate.positive_int("num_heads", num_heads)
    d = validate.head_dim(c, num_heads)
    w_qkv, b_qkv = validate.linear_params(params, "qkv", in_features=c, out_features=3 * c)
    w_proj, b_proj = validate.linear_params(params, "proj", in_features=c, out_features=c)
    table = validate.param(params, "relative_position_bias_table", ndim=2)
    validate.table_shape("relative_position_bias_table", table, ((2 * ws - 1) ** 2, num_heads))
    scale = attention_scale(d, qk_scale)

    qkv = (x @ w_qkv.T + b_qkv).reshape(b, H, W, 3, num_heads, d)
    q, k, val = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]  # each (B, H, W, nH, d)
    out = np.zeros((b, H, W, c))
    for i in range(b):
        for r in range(H):
            for col in range(W):
                seen = [
                    (r2, c2)
                    for r2 in range(H)
                    for c2 in range(W)
                    if shifted_window_cell(r2, ws, s) == shifted_window_cell(r, ws, s)
                    and shifted_window_cell(c2, ws, s) == shifted_window_cell(col, ws, s)
                ]
                # Swin's index for query (r, col) and key (r2, c2): no wrap-around between tokens that see
                # each other, so the offsets are plain coordinate differences, each in (-ws, ws).
                index = [(r - r2 + ws - 1) * (2 * ws - 1) + (col - c2 + ws - 1) for r2, c2 in seen]
                keys = np.stack([k[i, r2, c2] for r2, c2 in seen])  # (M, nH, d)
                values = np.stack([val[i, r2, c2] for r2, c2 in seen])  # (M, nH, d)
                logits = scale * np.einsum("he,mhe->hm", q[i, r, col], keys) + table[index].T  # (nH, M)
                context = np.einsum("hm,mhe->he", softmax(logits, axis=-1), values).reshape(c)  # head-major
                out[i, r, col] = w_proj @ context + b_proj
    return out
