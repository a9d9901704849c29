"""Video Swin's 3-D shifted windows in float64: partition and reverse, the per-axis shrink rule, the 27-region
labels and the mask, the block's attention part (shrink, pad, roll, partition, masked attention, reverse, roll back,
crop) and its VJP, and a second map-level oracle that shares no code with the pad, the roll, the partition or the
mask.

Clips are ``(B, D, H, W, C)``; a module window ``(Wd, Wh, Ww)``, a shift ``(sd, sh, sw)`` with ``0 <= s_a < W_a``.
docs/window-attention-3d.md states the semantics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from refimpl import _validate as validate
from refimpl.reference._common import attention_scale, softmax
from refimpl.reference.shifted_window import shifted_window_cell
from refimpl.reference.window_attention import relative_index_of_offsets, relative_position_index
from refimpl.reference.window_attention_3d import (
    _convention,
    window_attention_3d,
    window_attention_3d_vjp,
    window_triple,
)

__all__ = [
    "window_partition_3d",
    "window_reverse_3d",
    "block_window_and_shift",
    "padded_size_3d",
    "shifted_window_regions_3d",
    "shifted_window_mask_3d",
    "shifted_window_attention_3d",
    "shifted_window_attention_3d_vjp",
    "shifted_window_attention_3d_per_token",
]


# ---- argument checks ----


def _clip_sizes(name: str, shape) -> tuple[int, int, int, int, int]:
    if len(shape) != 5:
        raise ValueError(f"{name} must be 5-D (B, D, H, W, C), got shape {tuple(shape)}")
    return tuple(int(s) for s in shape)


def _tiled(sizes, window) -> tuple[int, int, int]:
    """``(D, H, W)`` checked to be tiled exactly by ``window``; the windows per axis."""
    for axis, length, side in zip("DHW", sizes, window, strict=True):
        validate.positive_int(axis, length)
        if length % side:
            raise ValueError(f"{axis}={length} must be a multiple of the window side {side} (window {window}): "
                             f"pad the clip first")
    return tuple(length // side for length, side in zip(sizes, window, strict=True))


# ---- windows ----


def window_partition_3d(x, window_size) -> np.ndarray:
    """``(B, D, H, W, C) -> (B*nW, Wd*Wh*Ww, C)``: window row ``b*nW + (wd*nH + wh)*nWw + ww`` (batch-major, the
    window grid row-major), tokens ``(d, h, w)`` row-major inside a window."""
    x = np.asarray(x, dtype=np.float64)
    b, *sizes, c = _clip_sizes("x", x.shape)
    wd, wh, ww = window = window_triple("window_size", window_size)
    nd, nh, nw = _tiled(sizes, window)
    windows = [
        x[i, kd * wd : (kd + 1) * wd, kh * wh : (kh + 1) * wh, kw * ww : (kw + 1) * ww].reshape(-1, c)
        for i in range(b)
        for kd in range(nd)
        for kh in range(nh)
        for kw in range(nw)
    ]
    return np.stack(windows)


def window_reverse_3d(windows, window_size, D: int, H: int, W: int) -> np.ndarray:
    """Inverse of ``window_partition_3d``: ``(B*nW, Wd*Wh*Ww, C) -> (B, D, H, W, C)``."""
    windows = np.asarray(windows, dtype=np.float64)
    wd, wh, ww = window = window_triple("window_size", window_size)
    nd, nh, nw = _tiled((D, H, W), window)
    per_clip = nd * nh * nw
    if windows.ndim != 3 or windows.shape[1] != wd * wh * ww or windows.shape[0] % per_clip:
        raise ValueError(f"windows must have shape (B*nW, Wd*Wh*Ww, C) with nW = {per_clip} and Wd*Wh*Ww = "
                         f"{wd * wh * ww}, got {windows.shape}")
    x = np.zeros((windows.shape[0] // per_clip, D, H, W, windows.shape[2]))
    for n in range(windows.shape[0]):
        i, rest = divmod(n, per_clip)
        kd, rest = divmod(rest, nh * nw)
        kh, kw = divmod(rest, nw)
        x[i, kd * wd : (kd + 1) * wd, kh * wh : (kh + 1) * wh, kw * ww : (kw + 1) * ww] = (
            windows[n].reshape(wd, wh, ww, -1))
    return x


# ---- the shrink rule, the regions and the mask ----


def block_window_and_shift(input_size, window_size, shift_size) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Video Swin's per-axis rule (``get_window_size``): where the clip is no longer than the window
    (``L_a <= W_a``, equality included) the window in use is ``L_a`` and the shift 0; elsewhere both are kept.
    Returns ``(window in use, shift in use)``."""
    window = window_triple("window_size", window_size)
    shift = validate.shift_triple("shift_size", shift_size, window)
    try:
        sizes = tuple(input_size)
    except TypeError:
        raise TypeError(f"input_size must be a triple (D, H, W), got {input_size!r}") from None
    if len(sizes) != 3:
        raise ValueError(f"input_size must be a triple (D, H, W), got {input_size!r}")
    sizes = tuple(validate.positive_int(f"input_size[{a}]", s) for a, s in enumerate(sizes))
    used = tuple(length if length <= side else side for length, side in zip(sizes, window, strict=True))
    used_shift = tuple(0 if length <= side else s for length, side, s in zip(sizes, window, shift, strict=True))
    return used, used_shift


def padded_size_3d(input_size, used_window) -> tuple[int, int, int]:
    """Each axis rounded up to a multiple of the window in use: ``L + (W' - L mod W') mod W'``."""
    return tuple(length + (-length) % side for length, side in zip(input_size, used_window, strict=True))


def _band(position: int, length: int, window: int, shift: int) -> int:
    """Video Swin's slices over one axis of the rolled, padded clip: ``[0, L-W)`` band 0, ``[L-W, L-s)`` band 1,
    ``[L-s, L)`` band 2. With ``s = 0`` the last slice is ``[-0:]``, the whole axis, written last: band 2
    everywhere, so that axis never splits a window."""
    if shift == 0:
        return 2
    if position < length - window:
        return 0
    return 1 if position < length - shift else 2


def shifted_window_regions_3d(D: int, H: int, W: int, window_size, shift_size) -> np.ndarray:
    """Region labels ``(D, H, W)`` int64 on the rolled, padded clip: ``9*band_d + 3*band_h + band_w`` (up to 27).
    Sizes are the padded ones, window and shift the ones in use."""
    window = window_triple("window_size", window_size)
    shift = validate.shift_triple("shift_size", shift_size, window)
    _tiled((D, H, W), window)
    labels = np.zeros((D, H, W), dtype=np.int64)
    for d in range(D):
        for h in range(H):
            for w in range(W):
                labels[d, h, w] = (9 * _band(d, D, window[0], shift[0]) + 3 * _band(h, H, window[1], shift[1])
                                   + _band(w, W, window[2], shift[2]))
    return labels


def shifted_window_mask_3d(D: int, H: int, W: int, window_size, shift_size, fill: float = -100.0) -> np.ndarray:
    """Video Swin's ``compute_mask``: ``(nW, N, N)`` float64, 0 between tokens of one region of the rolled, padded
    clip, ``fill`` between regions. ``D, H, W``: padded sizes; ``window_size``, ``shift_size``: the ones in use.
    All shifts 0 give an all-zero mask."""
    fill = validate.mask_fill(fill)
    window = window_triple("window_size", window_size)
    labels = shifted_window_regions_3d(D, H, W, window, shift_size)
    labels = window_partition_3d(labels[None, ..., None], window)[..., 0]  # (nW, N)
    return np.where(labels[:, :, None] == labels[:, None, :], 0.0, fill)


# ---- map level: shrink, pad, roll, partition, masked window attention, reverse, roll back, crop ----


class ClipGeometry(NamedTuple):
    """What the block derives from a clip: its ``size`` ``(D, H, W)``, the module ``window``, the window and shift
    in use (``used``, ``shift``), the ``padded`` size, and the mask (None when every shift in use is 0)."""

    size: tuple[int, int, int]
    window: tuple[int, int, int]
    used: tuple[int, int, int]
    shift: tuple[int, int, int]
    padded: tuple[int, int, int]
    mask: np.ndarray | None


def _check_clip(x, window_size, shift_size, fill) -> tuple[np.ndarray, ClipGeometry]:
    x = np.asarray(x, dtype=np.float64)
    _, D, H, W, _ = _clip_sizes("x", x.shape)
    window = window_triple("window_size", window_size)
    used, shift = block_window_and_shift((D, H, W), window, shift_size)
    padded = padded_size_3d((D, H, W), used)
    mask = shifted_window_mask_3d(*padded, used, shift, fill) if any(shift) else None
    return x, ClipGeometry((D, H, W), window, used, shift, padded, mask)


def _shifted_windows(x, g: ClipGeometry) -> np.ndarray:
    """Pad at the end with zeros, roll by ``-shift``, partition: ``(B, D, H, W, C) -> (B*nW, N, C)``."""
    pads = [(0, 0)] + [(0, p - length) for p, length in zip(g.padded, g.size, strict=True)] + [(0, 0)]
    rolled = np.roll(np.pad(x, pads), shift=[-s for s in g.shift], axis=(1, 2, 3))
    return window_partition_3d(rolled, g.used)


def _unshifted_clip(windows, g: ClipGeometry) -> np.ndarray:
    """Inverse of ``_shifted_windows`` on the real tokens: reverse, roll by ``+shift``, crop the padding."""
    clip = np.roll(window_reverse_3d(windows, g.used, *g.padded), shift=g.shift, axis=(1, 2, 3))
    D, H, W = g.size
    return clip[:, :D, :H, :W]


def shifted_window_attention_3d(
    x, params: Mapping, *, num_heads: int, window_size, shift_size, qk_scale=None, fill: float = -100.0,
    index_convention: str = "geometric",
) -> np.ndarray:
    """``SwinTransformerBlock3D.forward_part1`` without ``norm1``, in float64: ``(B, D, H, W, C) -> (B, D, H, W, C)``.

    The window and shift in use come from ``block_window_and_shift`` on the unpadded ``(D, H, W)``; the clip is
    zero-padded at the end of each axis to a multiple of the window in use, rolled by ``-shift`` when any shift is
    non-zero (and then masked with ``shifted_window_mask_3d`` on the padded sizes), partitioned, attended with a
    module built for ``window_size`` over the window in use (``index_convention``), reversed, rolled back, cropped.
    Pad tokens are not masked: they are keys with ``k = b_k`` and ``v = b_v``.
    """
    x, g = _check_clip(x, window_size, shift_size, fill)
    out = window_attention_3d(_shifted_windows(x, g), params, num_heads=num_heads, window_size=g.window,
                              used_window=g.used, mask=g.mask, qk_scale=qk_scale, index_convention=index_convention)
    return _unshifted_clip(out, g)


def shifted_window_attention_3d_vjp(
    x, params: Mapping, *, num_heads: int, window_size, shift_size, qk_scale=None, fill: float = -100.0,
    index_convention: str = "geometric", grad_out,
) -> dict[str, np.ndarray]:
    """Gradients of ``sum(shifted_window_attention_3d(x, params, ...) * grad_out)``. Pad, roll and partition are a
    zero-extension followed by a permutation, crop its adjoint: ``grad_out`` goes through the same path as ``x``
    (zeros at the pad tokens, whose outputs are dropped), and the gradient of the windows comes back through the
    inverse path (the crop drops the pad tokens' gradient, which belongs to no input)."""
    x, g = _check_clip(x, window_size, shift_size, fill)
    grad_out = np.asarray(grad_out, dtype=np.float64)
    if grad_out.shape != x.shape:
        raise ValueError(f"grad_out has shape {grad_out.shape}, expected the output's shape {x.shape}")
    grads = window_attention_3d_vjp(
        _shifted_windows(x, g), params, num_heads=num_heads, window_size=g.window, used_window=g.used, mask=g.mask,
        qk_scale=qk_scale, index_convention=index_convention, grad_out=_shifted_windows(grad_out, g),
    )
    grads["x"] = _unshifted_clip(grads["x"], g)
    return grads


# ---- the second oracle: per token, by the cut lines of the shifted windows in the padded, unrolled clip ----


def shifted_window_attention_3d_per_token(
    x, params: Mapping, *, num_heads: int, window_size, shift_size, qk_scale=None,
    index_convention: str = "geometric",
) -> np.ndarray:
    """A second oracle for ``shifted_window_attention_3d`` that shares no code with the pad, the roll, the
    partition or the mask: for every output token, plain attention over exactly the tokens of its shifted window.

    In the padded, unrolled clip, the shifted windows cut each axis at ``s', s' + W', ...`` (``shifted_window_cell``,
    as in 2-D; nothing wraps): two tokens see each other iff they share a cell on every axis. Pad tokens (zeros,
    so ``k = b_k``, ``v = b_v``) are keys like any other; outputs are kept for the real tokens only. Masking is
    exact (no -100 leak). The bias:

    * ``"geometric"``: the table row of the two tokens' coordinate difference, with the module window's radices;
    * ``"truncated"``: upstream's lookup needs each token's place in the partition, so here it is written out
      explicitly: a token's in-window coordinate is ``(pos - s') mod W'`` per axis, flattened row-major over the
      window in use, and the row is ``relative_position_index(window_size)`` at those two flat positions.
    """
    x = np.asarray(x, dtype=np.float64)
    b, D, H, W, c = _clip_sizes("x", x.shape)
    window = window_triple("window_size", window_size)
    used, shift = block_window_and_shift((D, H, W), window, shift_size)
    convention = _convention(index_convention)
    padded = padded_size_3d((D, H, W), used)
    num_heads = validate.positive_int("num_heads", num_heads)
    d = validate.head_dim(c, num_heads)
    w_qkv, b_qkv = validate.linear_params(params, "qkv", in_features=c, out_features=3 * c)
    w_proj, b_proj = validate.linear_params(params, "proj", in_features=c, out_features=c)
    table = validate.param(params, "relative_position_bias_table", ndim=2)
    rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    validate.table_shape("params['relative_position_bias_table']", table, (rows, num_heads))
    scale = attention_scale(d, qk_scale)
    module_index = relative_position_index(window)

    xp = np.zeros((b, *padded, c))
    xp[:, :D, :H, :W] = x
    qkv = (xp @ w_qkv.T + b_qkv).reshape(b, *padded, 3, num_heads, d)
    q, k, val = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]  # each (B, Dp, Hp, Wp, nH, d)

    # every padded token's coordinates (3, T), its cell per axis and its in-window coordinate per axis
    coords = np.stack([g.reshape(-1) for g in np.meshgrid(*[np.arange(p) for p in padded], indexing="ij")])
    cells = np.stack([[shifted_window_cell(int(p), used[a], shift[a]) for p in coords[a]] for a in range(3)])
    in_window = np.stack([(coords[a] - shift[a]) % used[a] for a in range(3)])
    flat_in_window = (in_window[0] * used[1] + in_window[1]) * used[2] + in_window[2]

    out = np.zeros((b, D, H, W, c))
    for t in range(coords.shape[1]):
        pd, ph, pw = coords[:, t]
        if pd >= D or ph >= H or pw >= W:
            continue  # a pad token: its output is cropped
        seen = np.flatnonzero((cells == cells[:, t : t + 1]).all(axis=0))  # (M,) keys in its shifted window
        if convention == "geometric":
            index = relative_index_of_offsets(window, [coords[a, t] - coords[a, seen] for a in range(3)])
        else:
            index = module_index[flat_in_window[t], flat_in_window[seen]]
        bias = table[index].T  # (nH, M)
        for i in range(b):
            keys = k[i][tuple(coords[:, seen])]  # (M, nH, d)
            values = val[i][tuple(coords[:, seen])]
            logits = scale * np.einsum("he,mhe->hm", q[i, pd, ph, pw], keys) + bias
            context = np.einsum("hm,mhe->he", softmax(logits, axis=-1), values).reshape(c)  # head-major
            out[i, pd, ph, pw] = w_proj @ context + b_proj
    return out
