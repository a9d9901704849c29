"""NumPy float64 oracles: short functions, each meant to be checked by reading it.

Semantics follow ``spec.md`` (AIM's ``WindowAttention`` and Swin's index tables). Nothing here imports torch.
Every array argument may be anything ``np.asarray`` accepts; every result is float64 (index tables int64).

Notation: ``B_`` rows of ``N`` tokens with ``C`` channels, ``nH`` heads of ``d = C // nH`` channels,
``nW`` windows per image.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from refimpl import _validate as v

__all__ = [
    "counting_macs",
    "MacTally",
    "relative_position_index",
    "temporal_relative_index",
    "softmax",
    "WindowAttentionStages",
    "window_attention_stages",
    "window_attention",
    "window_attention_vjp",
    "window_attention_vjp_magnitudes",
    "window_attention_flops",
    "window_attention_flops_upstream",
    "swin_window_attention_macs",
    "aim_block_attention_macs",
    "aim_model_attention_macs",
    "swin_model_mac_terms",
    "swin_model_macs",
    "temporal_model_macs",
    "macs_to_flops",
    "flops_to_macs",
    "additive_mask",
    "window_partition",
    "window_reverse",
    "shifted_window_regions",
    "shifted_window_mask",
    "shifted_window_attention",
    "shifted_window_attention_vjp",
    "shifted_window_attention_vjp_magnitudes",
    "shifted_window_cell",
    "shifted_window_attention_per_token",
    # FIERY temporal model
    "BATCH_NORM_EPS",
    "conv3d",
    "conv3d_vjp",
    "causal_pad",
    "causal_conv3d",
    "causal_conv3d_vjp",
    "batch_statistics",
    "batch_norm_3d",
    "batch_norm_3d_vjp",
    "updated_running_stats",
    "relu",
    "avg_pool3d",
    "avg_pool3d_vjp",
    "bilinear_matrix",
    "bilinear_resize",
    "bilinear_resize_vjp",
    "temporal_model_out_channels",
    "temporal_model_state_shapes",
    "TemporalModelForward",
    "temporal_model_forward",
    "temporal_model",
    "temporal_model_vjp",
]


# --------------------------------------------------------------------------------------------------
# Counting the work the oracle does (to cross-check the FLOP formulas)
# --------------------------------------------------------------------------------------------------


@dataclass
class MacTally:
    """Multiply-accumulates counted by ``counting_macs``."""

    macs: int = 0


_TALLIES: list[MacTally] = []


@contextlib.contextmanager
def counting_macs():
    """Count the multiply-accumulates of every matmul-like contraction the oracle performs in the block (the
    forward's linears, ``q@k^T``, ``attn@v`` and convolutions; not softmax, norms, pooling or resizing, as
    ``torch.utils.flop_counter`` and the published conventions)::

        with reference.counting_macs() as tally:
            reference.window_attention(x, params, num_heads=3, window_size=7)
        tally.macs"""
    tally = MacTally()
    _TALLIES.append(tally)
    try:
        yield tally
    finally:
        _TALLIES.remove(tally)


def _contract(spec: str, a, b) -> np.ndarray:
    """``np.einsum(spec, a, b)`` for a product summed over shared indices: it does one multiply-accumulate per
    combination of all the indices, which is what the active tallies are charged."""
    if _TALLIES:
        sizes = dict(zip(spec.split("->")[0].replace(",", ""), (*np.shape(a), *np.shape(b))))
        for tally in _TALLIES:
            tally.macs += math.prod(sizes.values())
    return np.einsum(spec, a, b)


# --------------------------------------------------------------------------------------------------
# Index tables
# --------------------------------------------------------------------------------------------------


def relative_position_index(window_size) -> np.ndarray:
    """Swin's ``relative_position_index``: int64 ``(Wh*Ww, Wh*Ww)``.

    Token ``p = r*Ww + c``.  Entry ``(i, j)`` is
    ``(r_i - r_j + Wh - 1) * (2*Ww - 1) + (c_i - c_j + Ww - 1)``, in ``[0, (2Wh-1)(2Ww-1))``.
    """
    wh, ww = v.window_pair("window_size", window_size)
    rows, cols = np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")  # 'ij': rows vary slowest
    rows, cols = rows.reshape(-1), cols.reshape(-1)  # (N,) coordinates of token p = r*Ww + c
    d_row = rows[:, None] - rows[None, :] + (wh - 1)  # (N, N), in [0, 2Wh-2]
    d_col = cols[:, None] - cols[None, :] + (ww - 1)  # (N, N), in [0, 2Ww-2]
    return (d_row * (2 * ww - 1) + d_col).astype(np.int64)


def temporal_relative_index(num_ttokens: int) -> np.ndarray:
    """AIM's temporal index, int64 ``(T, T)`` with entry ``i - j + T - 1`` (in ``[0, 2T-2]``)."""
    t = v.positive_int("num_ttokens", num_ttokens)
    i = np.arange(t)[:, None]
    j = np.arange(t)[None, :]
    return (i - j + t - 1).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Window attention
# --------------------------------------------------------------------------------------------------


def softmax(x, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64 (the row maximum is subtracted before ``exp``).

    A row whose every entry is ``-inf`` (a query with no key it may attend to) gives all-zero probabilities:
    it attends to nothing. That is refimpl's decision for fully masked rows (see the README); plain softmax
    would give NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    row_max = np.max(x, axis=axis, keepdims=True)
    attends_to_nothing = row_max == -np.inf
    e = np.exp(x - np.where(attends_to_nothing, 0.0, row_max))  # exp(-inf) = 0
    total = np.sum(e, axis=axis, keepdims=True)
    return np.where(attends_to_nothing, 0.0, e / np.where(attends_to_nothing, 1.0, total))


@dataclass(frozen=True)
class WindowAttentionStages:
    """Every intermediate of one oracle forward, float64.

    ``q, k, v``: ``(B_, nH, N, d)`` (``q`` not yet scaled); ``bias``: ``(nH, N, N)``;
    ``mask_rows``: ``(B_, N, N)`` mask added to each row (zeros when there is no mask);
    ``logits``: ``(B_, nH, N, N)`` = ``scale * q k^T + bias + mask_rows``; ``probs``: softmax of ``logits``
    over keys; ``context``: ``(B_, N, C)`` attention output before ``proj``, channels head-major;
    ``out``: ``(B_, N, C)``.
    """

    scale: float
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    bias: np.ndarray
    mask_rows: np.ndarray
    logits: np.ndarray
    probs: np.ndarray
    context: np.ndarray
    out: np.ndarray


def _attention_scale(head_dim: int, qk_scale) -> float:
    # AIM writes ``qk_scale or head_dim ** -0.5``: a qk_scale of 0 (or None) means the default.
    return float(qk_scale) if qk_scale else head_dim**-0.5


def _relative_bias(params, n_tokens: int, num_heads: int, window_size, temporal: bool) -> np.ndarray:
    """The additive position bias ``(nH, N, N)``: ``Bias[h, i, j] = table[index[i, j], h]``."""
    if temporal:
        table = v.param(params, "temporal_position_bias_table", ndim=2)
        num_ttokens = (table.shape[0] + 1) // 2
        v.table_shape("temporal_position_bias_table", table, (2 * num_ttokens - 1, num_heads))
        if n_tokens != num_ttokens:
            raise ValueError(
                f"x has N={n_tokens} tokens but temporal mode needs N == num_ttokens == {num_ttokens} "
                f"(temporal_position_bias_table has {table.shape[0]} rows = 2*num_ttokens - 1)"
            )
        index = temporal_relative_index(num_ttokens)
    else:
        wh, ww = v.window_pair("window_size", window_size)
        table = v.param(params, "relative_position_bias_table", ndim=2)
        v.table_shape("relative_position_bias_table", table, ((2 * wh - 1) * (2 * ww - 1), num_heads))
        if n_tokens != wh * ww:
            raise ValueError(
                f"x has N={n_tokens} tokens but spatial mode needs N == Wh*Ww == {wh * ww} for window_size={(wh, ww)}"
            )
        index = relative_position_index((wh, ww))
    gathered = table[index]  # (N, N, nH)
    return np.einsum("ijh->hij", gathered)


def additive_mask(mask) -> np.ndarray:
    """A window mask as the additive float64 term of the logits.

    Two conventions are accepted: an additive float mask (0 where attention is allowed; Swin's -100, or -inf,
    where it is not) is returned as it is; a boolean "may attend" mask (True where allowed) becomes 0 / -inf.
    Integer masks are refused (is 1 "allowed" or "add 1"?), as are NaN and +inf entries.
    """
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        return np.where(arr, 0.0, -np.inf)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(
            f"mask must be a floating additive mask (0 where allowed, e.g. -100 or -inf where not) or a boolean "
            f"'may attend' mask (True where allowed), got dtype {arr.dtype}"
        )
    arr = arr.astype(np.float64)
    if np.isnan(arr).any() or (arr == np.inf).any():
        raise ValueError("mask must not contain NaN or +inf (0 where allowed, a negative value or -inf where not)")
    return arr


def _mask_rows(mask, n_rows: int, n_tokens: int) -> np.ndarray:
    """The additive mask each of the ``B_`` rows receives: row ``b`` gets ``mask[b mod nW]`` (batch-major)."""
    if mask is None:
        return np.zeros((n_rows, n_tokens, n_tokens))
    v.window_mask_shape("mask", np.shape(mask), n_rows=n_rows, n_tokens=n_tokens)
    mask = additive_mask(mask)
    window_of_row = np.arange(n_rows) % mask.shape[0]
    return mask[window_of_row]


def window_attention_stages(
    x, params: Mapping, *, num_heads: int, window_size, mask=None, temporal: bool = False, qk_scale=None
) -> WindowAttentionStages:
    """AIM ``WindowAttention.forward`` in float64, keeping every intermediate (eval mode: no dropout).

    ``x``: ``(B_, N, C)``. Spatial mode: ``N == Wh*Ww``, optional ``mask`` ``(nW, N, N)`` with ``B_ % nW == 0``.
    Temporal mode: ``N == num_ttokens`` (read off the temporal table), and ``mask`` is ignored, as upstream.
    """
    x = v.array3d("x", x)
    n_rows, n_tokens, channels = x.shape
    num_heads = v.positive_int("num_heads", num_heads)
    head_dim = v.head_dim(channels, num_heads)
    w_qkv, b_qkv = v.linear_params(params, "qkv", in_features=channels, out_features=3 * channels)
    w_proj, b_proj = v.linear_params(params, "proj", in_features=channels, out_features=channels)
    if not temporal:
        v.window_pair("window_size", window_size)

    bias = _relative_bias(params, n_tokens, num_heads, window_size, temporal)
    mask_rows = np.zeros((n_rows, n_tokens, n_tokens)) if temporal else _mask_rows(mask, n_rows, n_tokens)
    scale = _attention_scale(head_dim, qk_scale)

    qkv = _contract("bnc,oc->bno", x, w_qkv) + b_qkv  # (B_, N, 3C), channels ordered [s][h][e]
    qkv = qkv.reshape(n_rows, n_tokens, 3, num_heads, head_dim)
    q, k, val = (np.einsum("bnhe->bhne", qkv[:, :, s]) for s in range(3))  # each (B_, nH, N, d)

    logits = scale * _contract("bhie,bhje->bhij", q, k) + bias[None] + mask_rows[:, None]
    probs = softmax(logits, axis=-1)
    context = _contract("bhij,bhje->bihe", probs, val).reshape(n_rows, n_tokens, channels)  # head-major
    out = _contract("bnc,oc->bno", context, w_proj) + b_proj
    return WindowAttentionStages(scale, q, k, val, bias, mask_rows, logits, probs, context, out)


def window_attention(
    x, params: Mapping, *, num_heads: int, window_size, mask=None, temporal: bool = False, qk_scale=None
) -> np.ndarray:
    """AIM ``WindowAttention.forward(x, mask, temporal)`` in float64: ``(B_, N, C) -> (B_, N, C)``.

    ``params`` maps AIM state-dict keys to arrays (``qkv.weight``, ``qkv.bias`` unless qkv_bias is off,
    ``proj.weight``, ``proj.bias``, ``relative_position_bias_table``, ``temporal_position_bias_table``).
    Index buffers in ``params`` are ignored: the oracle derives its own.
    """
    return window_attention_stages(
        x, params, num_heads=num_heads, window_size=window_size, mask=mask, temporal=temporal, qk_scale=qk_scale
    ).out


def _backward(st: WindowAttentionStages, x, params: Mapping, grad_out, *, absolute: bool) -> dict[str, np.ndarray]:
    """The backward pass of ``window_attention_stages`` for the loss ``sum(out * grad_out)``, step by step.

    Returns the gradients of x, the linears and the bias ``(nH, N, N)`` under ``"bias"``. With ``absolute``,
    every factor is replaced by its absolute value and every difference by a sum: the cancellation-free size
    of each gradient, computed by the very same steps."""
    size = np.abs if absolute else np.asarray
    x = size(np.asarray(x, dtype=np.float64))
    n_rows, n_tokens, channels = x.shape
    num_heads, head_dim = st.q.shape[1], st.q.shape[3]
    g_out = size(np.asarray(grad_out, dtype=np.float64))
    if g_out.shape != st.out.shape:
        raise ValueError(f"grad_out has shape {g_out.shape}, expected the output's shape {st.out.shape}")
    w_proj = size(np.asarray(params["proj.weight"], dtype=np.float64))
    w_qkv = size(np.asarray(params["qkv.weight"], dtype=np.float64))
    q, k, val, context, scale = size(st.q), size(st.k), size(st.v), size(st.context), size(st.scale)

    # out = context @ Wp^T + bp
    g_w_proj = np.einsum("bno,bnc->oc", g_out, context)
    g_b_proj = g_out.sum(axis=(0, 1))
    g_context = np.einsum("bno,oc->bnc", g_out, w_proj).reshape(n_rows, n_tokens, num_heads, head_dim)

    # context[b, i, h, e] = sum_j probs[b, h, i, j] * v[b, h, j, e]
    g_probs = np.einsum("bihe,bhje->bhij", g_context, val)
    g_v = np.einsum("bhij,bihe->bhje", st.probs, g_context)

    # softmax over j: dL/dlogit = p * (dL/dp - sum_j p * dL/dp)
    row_term = np.sum(st.probs * g_probs, axis=-1, keepdims=True)
    g_logits = st.probs * (g_probs + row_term if absolute else g_probs - row_term)

    # logits = scale * q k^T + bias + mask  (the mask is an input, not a parameter)
    g_q = scale * np.einsum("bhij,bhje->bhie", g_logits, k)
    g_k = scale * np.einsum("bhij,bhie->bhje", g_logits, q)

    # qkv[b, n, s, h, e] -> q/k/v[b, h, n, e]
    g_qkv = np.stack([np.einsum("bhne->bnhe", g) for g in (g_q, g_k, g_v)], axis=2)
    g_qkv = g_qkv.reshape(n_rows, n_tokens, 3 * channels)
    return {
        "x": np.einsum("bno,oc->bnc", g_qkv, w_qkv),
        "qkv.weight": np.einsum("bno,bnc->oc", g_qkv, x),
        "qkv.bias": g_qkv.sum(axis=(0, 1)),
        "proj.weight": g_w_proj,
        "proj.bias": g_b_proj,
        "bias": g_logits.sum(axis=0),  # (nH, N, N)
    }


def _per_key(grads: dict, params: Mapping) -> dict[str, np.ndarray]:
    """``"x"`` and one entry per key of ``params``; keys the output does not depend on get zeros."""
    return {key: grads[key] if key in grads else np.zeros(np.shape(params[key])) for key in ["x", *params]}


def window_attention_vjp(
    x,
    params: Mapping,
    *,
    num_heads: int,
    window_size,
    mask=None,
    temporal: bool = False,
    qk_scale=None,
    grad_out,
) -> dict[str, np.ndarray]:
    """Gradients of ``sum(window_attention(x, params, ...) * grad_out)``, written out by hand.

    Returns ``{"x": (B_, N, C), key: array shaped like params[key] for every key of params}``; keys the
    output does not depend on (the unused bias table, index buffers) get zeros.
    """
    st = window_attention_stages(
        x, params, num_heads=num_heads, window_size=window_size, mask=mask, temporal=temporal, qk_scale=qk_scale
    )
    grads = _backward(st, x, params, grad_out, absolute=False)
    g_bias = grads.pop("bias")

    # Bias[h, i, j] = table[index[i, j], h], so the table gradient scatter-adds over the index.
    n_tokens = st.out.shape[1]
    if temporal:
        table_key = "temporal_position_bias_table"
        index = temporal_relative_index(n_tokens)
    else:
        table_key = "relative_position_bias_table"
        index = relative_position_index(window_size)
    g_table = np.zeros(np.shape(params[table_key]))
    for i in range(n_tokens):
        for j in range(n_tokens):
            g_table[index[i, j]] += g_bias[:, i, j]
    grads[table_key] = g_table
    return _per_key(grads, params)


def window_attention_vjp_magnitudes(
    x, params: Mapping, *, num_heads: int, window_size, mask=None, temporal: bool = False, qk_scale=None, grad_out
) -> dict[str, np.ndarray]:
    """The cancellation-free size of each gradient of ``window_attention_vjp``: the same steps with every
    factor replaced by its absolute value and every difference by a sum. Rounding noise in any order of
    evaluation is a few ulps of these, even where the gradient itself cancels to ~0 (a softmax row whose mass
    sits on one key, e.g. behind a -100 mask). Used by the tolerance policy as the floor's magnitude; a bias
    table gets the largest bias-entry size for all of its rows."""
    st = window_attention_stages(
        x, params, num_heads=num_heads, window_size=window_size, mask=mask, temporal=temporal, qk_scale=qk_scale
    )
    magnitudes = _backward(st, x, params, grad_out, absolute=True)
    g_bias = magnitudes.pop("bias")
    table_key = "temporal_position_bias_table" if temporal else "relative_position_bias_table"
    magnitudes[table_key] = np.full(np.shape(params[table_key]), g_bias.max())
    return _per_key(magnitudes, params)


# --------------------------------------------------------------------------------------------------
# Windows and the shifted-window mask
# --------------------------------------------------------------------------------------------------


def window_partition(x, window_size: int) -> np.ndarray:
    """``(B, H, W, C) -> (B*nW, ws, ws, C)``; window row ``b*nW + wr*(W//ws) + wc`` (batch-major)."""
    x = np.asarray(x, dtype=np.float64)
    b, h, w, c = v.map_bhwc("x", x.shape)
    ws = v.positive_int("window_size", window_size)
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
    ws = v.positive_int("window_size", window_size)
    H, W = v.positive_int("H", H), v.positive_int("W", W)
    b = v.windows_shape("windows", windows.shape, window_size=ws, H=H, W=W)
    x = np.zeros((b, H, W, windows.shape[-1]))
    per_image = (H // ws) * (W // ws)
    for n in range(windows.shape[0]):
        i, rest = divmod(n, per_image)
        r, q = divmod(rest, W // ws)
        x[i, r * ws : (r + 1) * ws, q * ws : (q + 1) * ws] = windows[n]
    return x


def _band(position: int, size: int, window_size: int, shift_size: int) -> int:
    """Swin's slices over one axis of the rolled map: [0, size-ws), [size-ws, size-s), [size-s, size)."""
    if position < size - window_size:
        return 0
    return 1 if position < size - shift_size else 2


def shifted_window_regions(H: int, W: int, window_size: int, shift_size: int) -> np.ndarray:
    """Swin's region ids on the *rolled* ``H x W`` map, int64: ``3 * row band + column band`` (0..8); all zero
    when ``shift_size == 0``. Tokens may attend to each other iff they share a window and a region."""
    H, W, ws, s = v.shifted_window_geometry(H, W, window_size, shift_size)
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
    fill = v.mask_fill(fill)
    regions = shifted_window_regions(H, W, window_size, shift_size)
    ws = int(window_size)
    labels = window_partition(regions[None, :, :, None], ws).reshape(-1, ws * ws)  # (nW, N)
    same_region = labels[:, :, None] == labels[:, None, :]
    return np.where(same_region, 0.0, fill)


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
    x = np.asarray(x, dtype=np.float64)
    _, H, W, _ = v.map_bhwc("x", x.shape)
    H, W, ws, s = v.shifted_window_geometry(H, W, window_size, shift_size)
    mask = shifted_window_mask(H, W, ws, s, fill) if s > 0 else None  # Swin passes no mask when s == 0
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


def shifted_window_attention_vjp_magnitudes(
    x, params: Mapping, *, num_heads: int, window_size: int, shift_size: int, qk_scale=None, fill: float = -100.0,
    grad_out,
) -> dict[str, np.ndarray]:
    """The cancellation-free sizes of ``shifted_window_attention_vjp`` (see ``window_attention_vjp_magnitudes``)."""
    x, H, W, ws, s, mask = _check_map(x, window_size, shift_size, fill)
    sizes = window_attention_vjp_magnitudes(
        _shifted_windows(x, ws, s), params, num_heads=num_heads, window_size=(ws, ws), mask=mask, qk_scale=qk_scale,
        grad_out=_shifted_windows(np.asarray(grad_out, dtype=np.float64), ws, s),
    )
    sizes["x"] = _unshifted_map(sizes["x"], ws, s, H, W)
    return sizes


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
    b, H, W, c = v.map_bhwc("x", x.shape)
    H, W, ws, s = v.shifted_window_geometry(H, W, window_size, shift_size)
    num_heads = v.positive_int("num_heads", num_heads)
    d = v.head_dim(c, num_heads)
    w_qkv, b_qkv = v.linear_params(params, "qkv", in_features=c, out_features=3 * c)
    w_proj, b_proj = v.linear_params(params, "proj", in_features=c, out_features=c)
    table = v.param(params, "relative_position_bias_table", ndim=2)
    v.table_shape("relative_position_bias_table", table, ((2 * ws - 1) ** 2, num_heads))
    scale = _attention_scale(d, qk_scale)

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


# --------------------------------------------------------------------------------------------------
# FLOP formulas
# --------------------------------------------------------------------------------------------------


def window_attention_flops(dim: int, num_heads: int, N: int, T: int, temporal: bool = False) -> int:
    """AIM's ``WindowAttention.flops(N, T, temporal)``, in **MACs** (multiply-accumulates, as the "FLOPs" of Swin
    and AIM): ``q@k^T`` and ``attn@v`` only (AIM comments out qkv and proj).

    ``N`` is tokens per spatial window (ws^2), ``T`` the number of temporal tokens. Temporal: ``2*C*N*T^2`` (N
    positions, each attending over T tokens); spatial: ``2 * nH * d * N^2 * T`` (one window over T frames).
    Raises ``ValueError`` when ``dim % num_heads != 0``, where upstream's floor division silently undercounts
    (a configuration whose forward cannot run); ``window_attention_flops_upstream`` keeps that behaviour."""
    v.head_dim(v.positive_int("dim", dim), v.positive_int("num_heads", num_heads), "dim")
    return window_attention_flops_upstream(dim, num_heads, N, T, temporal)


def window_attention_flops_upstream(dim: int, num_heads: int, N: int, T: int, temporal: bool = False) -> int:
    """AIM's formula exactly as upstream writes it (MACs), floor division included: for ``dim % num_heads != 0``
    it counts ``nH * (dim // nH)`` channels, not ``dim`` (C=10, nH=3: 345,744 instead of 384,160)."""
    dim, num_heads = v.positive_int("dim", dim), v.positive_int("num_heads", num_heads)
    N, T = v.positive_int("N", N), v.positive_int("T", T)
    if temporal:
        return dim * N * T * T * 2
    head_dim = dim // num_heads
    return num_heads * N * head_dim * N * T + num_heads * N * N * head_dim * T


def swin_window_attention_macs(dim: int, num_heads: int, N: int) -> int:
    """Swin's ``WindowAttention.flops(N)`` in MACs for one window of ``N`` tokens: qkv ``3*N*C^2`` + ``q@k^T``
    ``nH*N*d*N`` + ``attn@v`` ``nH*N*N*d`` + proj ``N*C^2`` = ``4*N*C^2 + 2*N^2*C`` (biases not counted)."""
    dim, num_heads, N = v.positive_int("dim", dim), v.positive_int("num_heads", num_heads), v.positive_int("N", N)
    head_dim = v.head_dim(dim, num_heads, "dim")
    return 3 * N * dim * dim + 2 * num_heads * N * N * head_dim + N * dim * dim


def aim_block_attention_macs(dim, num_heads, H, W, window_size, T, t_attn=True) -> float:
    """AIM's ``SwinTransformerBlock.flops()`` in MACs for one clip: ``nW * flops(ws^2, T, True)`` (when
    ``t_attn``) + ``nW * flops(ws^2, T, False)`` with ``nW = H * W / ws / ws``, a true division, so the result is a
    **float**, as upstream. Counts the attention matmuls only (no qkv, proj, MLP, norms): ``2*C*H*W*T^2`` +
    ``2*C*H*W*ws^2*T``."""
    H, W, ws = v.positive_int("H", H), v.positive_int("W", W), v.positive_int("window_size", window_size)
    n_windows = H * W / ws / ws
    temporal = n_windows * window_attention_flops(dim, num_heads, ws * ws, T, True) if t_attn else 0
    return temporal + n_windows * window_attention_flops(dim, num_heads, ws * ws, T, False)


def _stage_resolutions(image_size, patch_size, n_stages):
    """The token map side of each Swin stage: ``image / patch``, halved by each PatchMerging."""
    side = v.positive_int("image_size", image_size) // v.positive_int("patch_size", patch_size)
    return [side // 2**i for i in range(n_stages)]


def aim_model_attention_macs(embed_dim, depths, num_heads, window_size, image_size, patch_size, T,
                             t_attn=True) -> float:
    """AIM's ``model.flops()`` for a Swin-style backbone, in MACs per clip: the sum of ``aim_block_attention_macs``
    over every block (AIM's PatchMerging and PatchEmbed3D report 0). The window shrinks to the map when the map is
    smaller, as Swin's blocks do. A float, like upstream."""
    total = 0.0
    for stage, (depth, side) in enumerate(zip(depths, _stage_resolutions(image_size, patch_size, len(depths)))):
        ws = min(window_size, side)
        dim = embed_dim * 2**stage
        total += depth * aim_block_attention_macs(dim, num_heads[stage], side, side, ws, T, t_attn)
    return total


def swin_model_mac_terms(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                         image_size=224, patch_size=4, in_chans=3, mlp_ratio=4.0, num_classes=1000,
                         patch_norm=True) -> dict[str, float]:
    """Swin's ``SwinTransformer.flops()`` split into its terms, in MACs (defaults: Swin-T at 224x224):
    ``patch_embed`` (the conv), ``attention`` (every block's ``nW * WindowAttention.flops(ws^2)``, qkv and proj
    included), ``mlp`` (``2*H*W*C^2*mlp_ratio``), ``patch_merging`` (the reduction linear), ``head`` (the
    classifier), and two terms that are not multiply-adds of a matmul, so no counter sees them: ``norms``
    (upstream charges ``C`` per token per LayerNorm, also in PatchMerging and PatchEmbed) and ``pooling``
    (upstream's ``num_features * H * W // 2^L`` for the final average pool). ``nW = H*W/ws/ws`` is a true division: the terms are floats."""
    side = _stage_resolutions(image_size, patch_size, len(depths))
    terms = dict.fromkeys(["patch_embed", "attention", "mlp", "patch_merging", "head", "norms", "pooling"], 0.0)
    terms["patch_embed"] = side[0] * side[0] * embed_dim * in_chans * patch_size * patch_size
    terms["norms"] += side[0] * side[0] * embed_dim if patch_norm else 0
    for stage, depth in enumerate(depths):
        dim, res = embed_dim * 2**stage, side[stage]
        ws = min(window_size, res)
        n_windows = res * res / ws / ws
        terms["attention"] += depth * n_windows * swin_window_attention_macs(dim, num_heads[stage], ws * ws)
        terms["mlp"] += depth * 2 * res * res * dim * dim * mlp_ratio
        terms["norms"] += depth * 2 * dim * res * res
        if stage < len(depths) - 1:  # PatchMerging: LayerNorm over 4C, then the 4C -> 2C linear
            terms["norms"] += res * res * dim
            terms["patch_merging"] += (res // 2) * (res // 2) * 4 * dim * 2 * dim
    num_features = embed_dim * 2 ** (len(depths) - 1)
    terms["pooling"] = num_features * side[0] * side[0] // 2 ** len(depths)
    terms["head"] = num_features * num_classes
    return terms


def swin_model_macs(**config) -> float:
    """Swin's ``SwinTransformer.flops()`` in MACs (the "4.5G FLOPs" of Swin-T are these); see
    ``swin_model_mac_terms`` for the terms and the defaults."""
    return sum(swin_model_mac_terms(**config).values())


def temporal_model_macs(in_channels, receptive_field, input_shape, start_out_channels=64, extra_in_channels=0,
                        n_spatial_layers_between_temporal_layers=0, use_pyramid_pooling=True, *, batch, frames,
                        height, width) -> int:
    """MACs of FIERY's ``TemporalModel`` forward on a ``(batch, frames, C, height, width)`` clip: every
    convolution, ``B * out positions * Cout * Cin * kt * kh * kw`` (the zero padding charged like real input, as
    ``torch.utils.flop_counter`` does), the pooling branch's on its ``(T + 1) x (H // ph) x (W // pw)`` grid. Not
    counted (no multiply-adds of a matmul): BatchNorm, ReLU, average pooling, the bilinear resize, the residual
    adds. FIERY's work: the first ``R - 1`` output steps are computed and then sliced off."""
    _, layers = _model_layers(in_channels, receptive_field, input_shape, start_out_channels, extra_in_channels,
                              n_spatial_layers_between_temporal_layers, use_pyramid_pooling)
    batch, frames = v.positive_int("batch", batch), v.positive_int("frames", frames)
    height, width = v.positive_int("height", height), v.positive_int("width", width)
    ph, pw = v.window_pair("input_shape", input_shape)
    positions = batch * frames * height * width
    pooled_positions = batch * (frames + 1) * (height // ph) * (width // pw)
    macs = 0
    for _, _, units in layers:
        for name, u in units.items():
            per_position = u.c_out * u.c_in * math.prod(u.kernel)
            macs += per_position * (pooled_positions if name == "pool" else positions)
    return macs


def macs_to_flops(macs):
    """FLOPs counting a multiply and an add separately (``torch.utils.flop_counter``): ``2 * MACs``."""
    return 2 * macs


def flops_to_macs(flops):
    """MACs (Swin's, AIM's and fvcore's "FLOPs") from ``2 * MAC`` FLOPs: ``flops / 2``."""
    return flops / 2


# --------------------------------------------------------------------------------------------------
# FIERY temporal model
# --------------------------------------------------------------------------------------------------
#
# Layout inside: ``(B, C, T, H, W)``, the layout of upstream's Conv3d calls; the public functions take and
# return FIERY's ``(B, T, C, H, W)``. Parameters are FIERY state-dict keys (spec.md §3.1-3.2).

BATCH_NORM_EPS = 1e-5


def conv3d(x, weight) -> np.ndarray:
    """Unpadded 3-D cross-correlation (stride 1, dilation 1, no bias), one einsum per kernel offset.

    ``x`` ``(B, Cin, T, H, W)``, ``weight`` ``(Cout, Cin, kt, kh, kw)`` -> ``(B, Cout, T-kt+1, H-kh+1, W-kw+1)``:
    ``out[b, o, t, i, j] = sum_{c, dt, di, dj} x[b, c, t+dt, i+di, j+dj] * weight[o, c, dt, di, dj]``."""
    x, weight = np.asarray(x, dtype=np.float64), np.asarray(weight, dtype=np.float64)
    kt, kh, kw = weight.shape[2:]
    t, h, w = x.shape[2] - kt + 1, x.shape[3] - kh + 1, x.shape[4] - kw + 1
    out = np.zeros((x.shape[0], weight.shape[0], t, h, w))
    for dt in range(kt):
        for di in range(kh):
            for dj in range(kw):
                window = x[:, :, dt : dt + t, di : di + h, dj : dj + w]
                out += _contract("bcthw,oc->bothw", window, weight[:, :, dt, di, dj])
    return out


def conv3d_vjp(x, weight, grad_out) -> tuple[np.ndarray, np.ndarray]:
    """Gradients ``(of x, of weight)`` of ``sum(conv3d(x, weight) * grad_out)``: the same offsets, transposed."""
    x, weight = np.asarray(x, dtype=np.float64), np.asarray(weight, dtype=np.float64)
    kt, kh, kw = weight.shape[2:]
    t, h, w = grad_out.shape[2:]
    grad_x, grad_w = np.zeros_like(x), np.zeros_like(weight)
    for dt in range(kt):
        for di in range(kh):
            for dj in range(kw):
                window = (slice(None), slice(None), slice(dt, dt + t), slice(di, di + h), slice(dj, dj + w))
                grad_x[window] += np.einsum("bothw,oc->bcthw", grad_out, weight[:, :, dt, di, dj])
                grad_w[:, :, dt, di, dj] = np.einsum("bothw,bcthw->oc", grad_out, x[window])
    return grad_x, grad_w


def _causal_padding(kernel_size) -> tuple:
    """FIERY's CausalConv3d pad: time ``kt-1`` in front only, H and W ``(k-1)//2`` on both sides."""
    kt, kh, kw = kernel_size
    return ((0, 0), (0, 0), (kt - 1, 0), ((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2)


def causal_pad(x, kernel_size) -> np.ndarray:
    """Zero-pad ``(B, C, T, H, W)`` for a causal convolution with ``kernel_size`` ``(kt, kh, kw)``."""
    return np.pad(np.asarray(x, dtype=np.float64), _causal_padding(kernel_size))


def causal_conv3d(x, weight) -> np.ndarray:
    """FIERY's CausalConv3d convolution (before its BatchNorm): ``conv3d(causal_pad(x), weight)``; keeps T, and
    H, W for odd spatial kernels. Output time ``t`` reads input times ``t-kt+1 .. t`` (zeros before 0)."""
    weight = np.asarray(weight, dtype=np.float64)
    return conv3d(causal_pad(x, weight.shape[2:]), weight)


def causal_conv3d_vjp(x, weight, grad_out) -> tuple[np.ndarray, np.ndarray]:
    weight = np.asarray(weight, dtype=np.float64)
    pads = _causal_padding(weight.shape[2:])
    grad_padded, grad_w = conv3d_vjp(causal_pad(x, weight.shape[2:]), weight, grad_out)
    keep = tuple(slice(before, n - after) for (before, after), n in zip(pads, grad_padded.shape))
    return grad_padded[keep], grad_w


def batch_statistics(x) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel ``(mean, biased variance, count)`` of ``(B, C, T, H, W)`` over ``(B, T, H, W)``."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=(0, 2, 3, 4))
    var = ((x - mean[None, :, None, None, None]) ** 2).mean(axis=(0, 2, 3, 4))
    return mean, var, x.size // x.shape[1]


def _per_channel(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)[None, :, None, None, None]


def batch_norm_3d(x, running_mean, running_var, gamma, beta, *, training: bool, eps: float = BATCH_NORM_EPS):
    """BatchNorm3d on ``(B, C, T, H, W)``: ``gamma * (x - mean) / sqrt(var + eps) + beta`` per channel, with the
    running statistics (eval) or the batch's mean and *biased* variance over ``(B, T, H, W)`` (train)."""
    x = np.asarray(x, dtype=np.float64)
    if training:
        mean, var, count = batch_statistics(x)
        if count < 2:
            raise ValueError(
                f"BatchNorm in train mode needs more than 1 value per channel, got input shape {x.shape}"
            )
    else:
        mean, var = running_mean, running_var
    return _per_channel(gamma) * (x - _per_channel(mean)) / np.sqrt(_per_channel(var) + eps) + _per_channel(beta)


def batch_norm_3d_vjp(x, running_mean, running_var, gamma, grad_out, *, training: bool, eps: float = BATCH_NORM_EPS):
    """Gradients ``(of x, of gamma, of beta)`` of ``sum(batch_norm_3d(...) * grad_out)``. In train mode the batch
    statistics depend on x: ``dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)`` with
    ``g = grad_out * gamma``, means over ``(B, T, H, W)``."""
    x, grad_out = np.asarray(x, dtype=np.float64), np.asarray(grad_out, dtype=np.float64)
    if training:
        mean, var, _ = batch_statistics(x)
    else:
        mean, var = running_mean, running_var
    inv_std = 1.0 / np.sqrt(_per_channel(var) + eps)
    x_hat = (x - _per_channel(mean)) * inv_std
    axes = (0, 2, 3, 4)
    grad_gamma, grad_beta = (grad_out * x_hat).sum(axis=axes), grad_out.sum(axis=axes)
    g = grad_out * _per_channel(gamma)
    if not training:
        return g * inv_std, grad_gamma, grad_beta
    centred = g - g.mean(axis=axes, keepdims=True) - x_hat * (g * x_hat).mean(axis=axes, keepdims=True)
    return centred * inv_std, grad_gamma, grad_beta


def updated_running_stats(running_mean, running_var, num_batches_tracked, x, momentum):
    """torch's BatchNorm update after a train-mode forward on ``x``: ``new = (1 - m) * old + m * batch`` with the
    batch mean and the *unbiased* variance (``n / (n - 1)`` times the biased one); ``num_batches_tracked + 1``.
    ``momentum=None`` means the cumulative average, ``m = 1 / (num_batches_tracked + 1)``."""
    mean, var, count = batch_statistics(x)
    tracked = int(num_batches_tracked) + 1
    m = 1.0 / tracked if momentum is None else float(momentum)
    new_mean = (1 - m) * np.asarray(running_mean, dtype=np.float64) + m * mean
    new_var = (1 - m) * np.asarray(running_var, dtype=np.float64) + m * var * count / (count - 1)
    return new_mean, new_var, tracked


def relu(x) -> np.ndarray:
    return np.maximum(np.asarray(x, dtype=np.float64), 0.0)


def _pool_windows(x_shape, kernel_size, stride, padding):
    """Yield ``(output index, input slices, in-range count)`` of a 3-D pooling over the last three axes."""
    ranges = []
    for n, k, s, p in zip(x_shape[-3:], kernel_size, stride, padding):
        n_out = (n + 2 * p - k) // s + 1
        ranges.append([(o, max(o * s - p, 0), min(o * s - p + k, n)) for o in range(n_out)])
    for ot, t0, t1 in ranges[0]:
        for oh, h0, h1 in ranges[1]:
            for ow, w0, w1 in ranges[2]:
                yield (ot, oh, ow), (slice(t0, t1), slice(h0, h1), slice(w0, w1)), (t1 - t0) * (h1 - h0) * (w1 - w0)


def avg_pool3d(x, kernel_size, stride, padding) -> np.ndarray:
    """AvgPool3d with ``count_include_pad=False`` (floor mode) on ``(B, C, T, H, W)``: each output is the mean of
    the *in-range* inputs of its window; padded positions count neither in the sum nor in the divisor."""
    x = np.asarray(x, dtype=np.float64)
    sizes = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(x.shape[2:], kernel_size, stride, padding)]
    out = np.zeros((*x.shape[:2], *sizes))
    for index, window, count in _pool_windows(x.shape, kernel_size, stride, padding):
        out[(..., *index)] = x[(..., *window)].sum(axis=(2, 3, 4)) / count
    return out


def avg_pool3d_vjp(x_shape, kernel_size, stride, padding, grad_out) -> np.ndarray:
    """Gradient of ``sum(avg_pool3d(x) * grad_out)`` with respect to x: each output spreads ``g / count``."""
    grad_x = np.zeros(x_shape)
    for index, window, count in _pool_windows(x_shape, kernel_size, stride, padding):
        grad_x[(..., *window)] += grad_out[(..., *index)][..., None, None, None] / count
    return grad_x


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of 1-D linear interpolation with ``align_corners=False`` (PyTorch's rule):
    ``src = max((dst + 0.5) * n_in / n_out - 0.5, 0)``, ``i0 = floor(src)``, ``i1 = min(i0 + 1, n_in - 1)``,
    weights ``1 - (src - i0)`` and ``src - i0``."""
    matrix = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for dst in range(n_out):
        src = max((dst + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        matrix[dst, i0] += 1.0 - frac
        matrix[dst, i1] += frac
    return matrix


def bilinear_resize(x, size) -> np.ndarray:
    """Bilinear resize of the last two axes to ``size = (H, W)`` (``align_corners=False``), plane by plane."""
    x = np.asarray(x, dtype=np.float64)
    rows, cols = bilinear_matrix(x.shape[-2], size[0]), bilinear_matrix(x.shape[-1], size[1])
    return np.einsum("ij,...jk,lk->...il", rows, x, cols)


def bilinear_resize_vjp(in_size, grad_out) -> np.ndarray:
    rows = bilinear_matrix(in_size[0], grad_out.shape[-2])
    cols = bilinear_matrix(in_size[1], grad_out.shape[-1])
    return np.einsum("ij,...il,lk->...jk", rows, grad_out, cols)


# ---- the model's structure: layers, units (conv -> BatchNorm [-> ReLU]) and their state-dict keys ----


def temporal_model_out_channels(in_channels, receptive_field, start_out_channels=64, extra_in_channels=0) -> int:
    """FIERY's ``out_channels``: ``start_out + (R - 2) * extra_in`` for ``R >= 2``, ``in_channels`` for ``R = 1``
    (the model is then the identity)."""
    c_in = v.positive_int("in_channels", in_channels)
    r = v.positive_int("receptive_field", receptive_field)
    start = v.positive_int("start_out_channels", start_out_channels)
    extra = v.non_negative_int("extra_in_channels", extra_in_channels)
    return c_in if r == 1 else start + (r - 2) * extra


@dataclass(frozen=True)
class _Unit:
    """A convolution (causal padding for its kernel), its BatchNorm3d, and a ReLU unless ``relu`` is False."""

    conv: str  # state-dict key of the conv weight
    norm: str  # state-dict prefix of the BatchNorm3d
    c_in: int
    c_out: int
    kernel: tuple = (1, 1, 1)
    relu: bool = True


def _block_units(kind: str, prefix: str, c_in: int, c_out: int, pooling: bool) -> dict[str, _Unit]:
    """The units of one ``model.<k>`` layer under FIERY's submodule names (spec.md §3.1)."""
    if kind == "spatial":  # Bottleneck3D(c, c, kernel (1, 3, 3)): no projection since out == in
        mid, p = c_in // 2, f"{prefix}.layers"
        return {
            "down": _Unit(f"{p}.conv_down_project.conv.weight", f"{p}.conv_down_project.norm", c_in, mid),
            "conv": _Unit(f"{p}.conv.conv.weight", f"{p}.conv.norm", mid, mid, (1, 3, 3)),
            "up": _Unit(f"{p}.conv_up_project.conv.weight", f"{p}.conv_up_project.norm", mid, c_out),
        }
    half, p = c_in // 2, f"{prefix}.convolution_paths"
    units = {
        "a_entry": _Unit(f"{p}.0.0.conv.weight", f"{p}.0.0.norm", c_in, half),
        "a_conv": _Unit(f"{p}.0.1.conv.weight", f"{p}.0.1.norm", half, half, (2, 3, 3)),
        "b_entry": _Unit(f"{p}.1.0.conv.weight", f"{p}.1.0.norm", c_in, half),
        "b_conv": _Unit(f"{p}.1.1.conv.weight", f"{p}.1.1.norm", half, half, (1, 3, 3)),
        "c_entry": _Unit(f"{p}.2.conv.weight", f"{p}.2.norm", c_in, half),
    }
    agg_in = 3 * half
    if pooling:
        q = f"{prefix}.pyramid_pooling.features.0.conv_bn_relu"
        units["pool"] = _Unit(f"{q}.conv.weight", f"{q}.norm", c_in, c_in // 3)
        agg_in += c_in // 3
    units["aggregation"] = _Unit(f"{prefix}.aggregation.0.conv.weight", f"{prefix}.aggregation.0.norm", agg_in, c_out)
    if c_out != c_in:
        units["projection"] = _Unit(f"{prefix}.projection.0.weight", f"{prefix}.projection.1", c_in, c_out, relu=False)
    return units


def _model_layers(in_channels, receptive_field, input_shape, start_out_channels, extra_in_channels,
                  n_spatial_layers_between_temporal_layers, use_pyramid_pooling):
    """``(config tuple, [(kind, prefix, units)])`` for a checked FIERY configuration."""
    config = v.temporal_model_config(in_channels, receptive_field, input_shape, start_out_channels,
                                     extra_in_channels, n_spatial_layers_between_temporal_layers)
    c_in, r, _, start, extra, n_spatial = config
    layers = v.temporal_model_layers(c_in, r, start, extra, n_spatial, bool(use_pyramid_pooling))
    return config, [
        (kind, f"model.{k}", _block_units(kind, f"model.{k}", i, o, bool(use_pyramid_pooling)))
        for k, (kind, i, o) in enumerate(layers)
    ]


def temporal_model_state_shapes(
    in_channels, receptive_field, input_shape, start_out_channels=64, extra_in_channels=0,
    n_spatial_layers_between_temporal_layers=0, use_pyramid_pooling=True,
) -> dict[str, tuple[int, ...]]:
    """Every key of FIERY's ``TemporalModel.state_dict()`` with its shape (parameters and BatchNorm buffers;
    ``num_batches_tracked`` is a 0-d int64), in module order."""
    _, layers = _model_layers(in_channels, receptive_field, input_shape, start_out_channels, extra_in_channels,
                              n_spatial_layers_between_temporal_layers, use_pyramid_pooling)
    order = ["a_entry", "a_conv", "b_entry", "b_conv", "c_entry", "pool", "aggregation", "projection",
             "down", "conv", "up"]
    shapes = {}
    for _, _, units in layers:
        for name in order:
            if name in units:
                u = units[name]
                shapes[u.conv] = (u.c_out, u.c_in, *u.kernel)
                for leaf in ("weight", "bias", "running_mean", "running_var"):
                    shapes[f"{u.norm}.{leaf}"] = (u.c_out,)
                shapes[f"{u.norm}.num_batches_tracked"] = ()
    return shapes


# ---- forward ----


@dataclass
class _Run:
    """What one forward needs besides the input: params, mode, and where train mode writes new statistics."""

    params: Mapping
    training: bool
    momentum: float | None = 0.1
    running_stats: dict = None

    def weight(self, u: _Unit) -> np.ndarray:
        w = v.param(self.params, u.conv, ndim=5)
        v.table_shape(f"params[{u.conv!r}]", w, (u.c_out, u.c_in, *u.kernel))
        return w

    def norm(self, u: _Unit) -> tuple[np.ndarray, ...]:
        """``(running_mean, running_var, gamma, beta)`` of a unit's BatchNorm3d."""
        arrays = []
        for leaf in ("running_mean", "running_var", "weight", "bias"):
            a = v.param(self.params, f"{u.norm}.{leaf}", ndim=1)
            v.table_shape(f"params[{u.norm + '.' + leaf!r}]", a, (u.c_out,))
            arrays.append(a)
        return tuple(arrays)


def _unit_pre_norm(x, run: _Run, u: _Unit) -> np.ndarray:
    return causal_conv3d(x, run.weight(u))


def _unit_forward(x, run: _Run, u: _Unit) -> np.ndarray:
    z = _unit_pre_norm(x, run, u)
    mean, var, gamma, beta = run.norm(u)
    y = batch_norm_3d(z, mean, var, gamma, beta, training=run.training)
    if run.training and run.running_stats is not None:
        tracked = np.asarray(run.params.get(f"{u.norm}.num_batches_tracked", 0))
        new_mean, new_var, new_tracked = updated_running_stats(mean, var, tracked, z, run.momentum)
        run.running_stats[f"{u.norm}.running_mean"] = new_mean
        run.running_stats[f"{u.norm}.running_var"] = new_var
        run.running_stats[f"{u.norm}.num_batches_tracked"] = np.asarray(new_tracked, dtype=np.int64)
    return relu(y) if u.relu else y


def _pool_geometry(input_shape) -> tuple:
    ph, pw = input_shape
    return (2, ph, pw), (1, ph, pw), (1, 0, 0)  # kernel, stride, padding: FIERY's single global pool


def _pyramid_pooling(x, run: _Run, u: _Unit, input_shape) -> np.ndarray:
    """Average over frames ``{t-1, t}`` in range and over the pool cell, conv + BN + ReLU on all ``T+1`` pooled
    steps (train-mode statistics include the last one), drop the last step, resize back to ``(H, W)``."""
    pooled = avg_pool3d(x, *_pool_geometry(input_shape))  # (B, C, T+1, h', w')
    reduced = _unit_forward(pooled, run, u)[:, :, :-1]
    return bilinear_resize(reduced, x.shape[-2:])


def _block_paths(units, x, run: _Run, input_shape) -> np.ndarray:
    """A TemporalBlock's concatenated paths A, B, C (and the pooling branch): the aggregation's input."""
    parts = [
        _unit_forward(_unit_forward(x, run, units["a_entry"]), run, units["a_conv"]),
        _unit_forward(_unit_forward(x, run, units["b_entry"]), run, units["b_conv"]),
        _unit_forward(x, run, units["c_entry"]),
    ]
    if "pool" in units:
        parts.append(_pyramid_pooling(x, run, units["pool"], input_shape))
    return np.concatenate(parts, axis=1)


def _layer_forward(kind, units, x, run: _Run, input_shape) -> np.ndarray:
    """One ``model.<k>``: a TemporalBlock or a Bottleneck3D on ``(B, C, T, H, W)``."""
    if kind == "spatial":
        main = _unit_forward(_unit_forward(_unit_forward(x, run, units["down"]), run, units["conv"]), run, units["up"])
        return main + x
    residual = _unit_forward(_block_paths(units, x, run, input_shape), run, units["aggregation"])
    skip = _unit_forward(x, run, units["projection"]) if "projection" in units else x
    return skip + residual


@dataclass(frozen=True)
class TemporalModelForward:
    """One oracle forward of the temporal model.

    ``out``: ``(B, T-R+1, C', H, W)``, what FIERY returns; ``full``: ``(B, T, C', H, W)``, every time step before
    the slice ``[:, R-1:]`` (the first ``R-1`` depend on the temporal zero padding); ``running_stats``: each
    BatchNorm's ``running_mean``, ``running_var`` and ``num_batches_tracked`` under its state-dict key, after
    this forward (updated in train mode, unchanged copies in eval mode)."""

    out: np.ndarray
    full: np.ndarray
    running_stats: dict


def _prepare(x, params, in_channels, receptive_field, input_shape, start_out_channels, extra_in_channels,
             n_spatial_layers_between_temporal_layers, use_pyramid_pooling):
    config, layers = _model_layers(in_channels, receptive_field, input_shape, start_out_channels, extra_in_channels,
                                   n_spatial_layers_between_temporal_layers, use_pyramid_pooling)
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"x must be a real numeric array, got {type(x).__name__}") from None
    v.temporal_model_input("x", x.shape, in_channels=config[0], receptive_field=config[1],
                           input_shape=config[2], use_pyramid_pooling=bool(use_pyramid_pooling))
    return config, layers, np.einsum("btchw->bcthw", x)


def temporal_model_forward(
    x, params: Mapping, *, in_channels, receptive_field, input_shape, start_out_channels=64, extra_in_channels=0,
    n_spatial_layers_between_temporal_layers=0, use_pyramid_pooling=True, training=False, momentum=0.1,
) -> TemporalModelForward:
    """FIERY ``TemporalModel.forward`` in float64, with the pre-slice output and the BatchNorm statistics after the
    call (``momentum`` as ``BatchNorm3d.momentum``: FIERY sets 0.05; ``None`` is the cumulative average).

    ``x``: ``(B, T, C, H, W)``. ``params``: FIERY state-dict keys (``temporal_model_state_shapes``); the running
    statistics are used in eval mode, batch statistics over ``(B, T, H, W)`` with biased variance in train mode;
    a missing ``num_batches_tracked`` counts as 0. ``T < R`` gives an empty time axis, as upstream."""
    config, layers, h = _prepare(x, params, in_channels, receptive_field, input_shape, start_out_channels,
                                 extra_in_channels, n_spatial_layers_between_temporal_layers, use_pyramid_pooling)
    run = _Run(params, bool(training), momentum, running_stats={})
    for kind, _, units in layers:
        h = _layer_forward(kind, units, h, run, config[2])
    stats = {}
    for key in temporal_model_state_shapes(*config[:2], config[2], *config[3:], use_pyramid_pooling):
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            old = np.asarray(params.get(key, 0), dtype=np.int64 if key.endswith("tracked") else np.float64)
            stats[key] = run.running_stats.get(key, old.copy())
    full = np.einsum("bcthw->btchw", h)
    return TemporalModelForward(full[:, config[1] - 1 :], full, stats)


def temporal_model(
    x, params: Mapping, *, in_channels, receptive_field, input_shape, start_out_channels=64, extra_in_channels=0,
    n_spatial_layers_between_temporal_layers=0, use_pyramid_pooling=True, training=False,
) -> np.ndarray:
    """FIERY ``TemporalModel`` forward in float64: ``(B, T, C, H, W) -> (B, T-R+1, C', H, W)`` (see
    ``temporal_model_forward`` for the running statistics a train-mode call produces)."""
    return temporal_model_forward(
        x, params, in_channels=in_channels, receptive_field=receptive_field, input_shape=input_shape,
        start_out_channels=start_out_channels, extra_in_channels=extra_in_channels,
        n_spatial_layers_between_temporal_layers=n_spatial_layers_between_temporal_layers,
        use_pyramid_pooling=use_pyramid_pooling, training=training,
    ).out


# ---- backward (hand-written; every step recomputes the forward values it needs) ----


def _unit_backward(x, run: _Run, u: _Unit, grad_out, grads: dict) -> np.ndarray:
    """Adds the unit's parameter gradients to ``grads``; returns the gradient of its input."""
    z = _unit_pre_norm(x, run, u)
    mean, var, gamma, beta = run.norm(u)
    if u.relu:
        y = batch_norm_3d(z, mean, var, gamma, beta, training=run.training)
        grad_out = grad_out * (y > 0)  # torch's ReLU passes no gradient at 0
    grad_z, grad_gamma, grad_beta = batch_norm_3d_vjp(z, mean, var, gamma, grad_out, training=run.training)
    grad_x, grad_w = causal_conv3d_vjp(x, run.weight(u), grad_z)
    grads[u.conv] = grads.get(u.conv, 0) + grad_w
    grads[f"{u.norm}.weight"] = grads.get(f"{u.norm}.weight", 0) + grad_gamma
    grads[f"{u.norm}.bias"] = grads.get(f"{u.norm}.bias", 0) + grad_beta
    return grad_x


def _chain_backward(x, run, chain: list[_Unit], grad_out, grads) -> np.ndarray:
    """Backward through units applied one after the other to ``x``."""
    inputs = [x]
    for u in chain[:-1]:
        inputs.append(_unit_forward(inputs[-1], run, u))
    for u, inp in zip(reversed(chain), reversed(inputs)):
        grad_out = _unit_backward(inp, run, u, grad_out, grads)
    return grad_out


def _layer_backward(kind, units, x, run: _Run, input_shape, grad_out, grads) -> np.ndarray:
    if kind == "spatial":
        return grad_out + _chain_backward(x, run, [units["down"], units["conv"], units["up"]], grad_out, grads)
    half = x.shape[1] // 2
    grad_cat = _unit_backward(_block_paths(units, x, run, input_shape), run, units["aggregation"], grad_out, grads)
    grad_a, grad_b, grad_c = (grad_cat[:, i * half : (i + 1) * half] for i in range(3))
    grad_x = _chain_backward(x, run, [units["a_entry"], units["a_conv"]], grad_a, grads)
    grad_x += _chain_backward(x, run, [units["b_entry"], units["b_conv"]], grad_b, grads)
    grad_x += _unit_backward(x, run, units["c_entry"], grad_c, grads)
    if "pool" in units:
        kernel, stride, padding = _pool_geometry(input_shape)
        pooled = avg_pool3d(x, kernel, stride, padding)
        grad_reduced = np.zeros((x.shape[0], units["pool"].c_out, *pooled.shape[2:]))  # (B, r, T+1, h', w')
        grad_reduced[:, :, :-1] = bilinear_resize_vjp(pooled.shape[-2:], grad_cat[:, 3 * half :])  # dropped step: 0
        grad_pooled = _unit_backward(pooled, run, units["pool"], grad_reduced, grads)
        grad_x += avg_pool3d_vjp(x.shape, kernel, stride, padding, grad_pooled)
    if "projection" in units:
        return grad_x + _unit_backward(x, run, units["projection"], grad_out, grads)
    return grad_x + grad_out


def temporal_model_vjp(
    x, params: Mapping, *, in_channels, receptive_field, input_shape, start_out_channels=64, extra_in_channels=0,
    n_spatial_layers_between_temporal_layers=0, use_pyramid_pooling=True, training=False, grad_out,
) -> dict[str, np.ndarray]:
    """Gradients of ``sum(temporal_model(x, params, ...) * grad_out)``, written out by hand (train mode
    differentiates through the batch statistics, as autograd does).

    Returns ``{"x": (B, T, C, H, W), key: array shaped like params[key] for every key of params}``; BatchNorm
    buffers (running statistics, ``num_batches_tracked``) get zeros."""
    config, layers, h = _prepare(x, params, in_channels, receptive_field, input_shape, start_out_channels,
                                 extra_in_channels, n_spatial_layers_between_temporal_layers, use_pyramid_pooling)
    run = _Run(params, bool(training))
    inputs = [h]
    for kind, _, units in layers[:-1]:
        inputs.append(_layer_forward(kind, units, inputs[-1], run, config[2]))
    grad_out = np.asarray(grad_out, dtype=np.float64)
    r = config[1]
    c_out = temporal_model_out_channels(config[0], r, config[3], config[4])
    expected = (h.shape[0], max(h.shape[2] - r + 1, 0), c_out, *h.shape[3:])
    if grad_out.shape != expected:
        raise ValueError(f"grad_out has shape {grad_out.shape}, expected the output's shape {expected}")
    grad = np.zeros((h.shape[0], c_out, h.shape[2], *h.shape[3:]))
    grad[:, :, r - 1 :] = np.einsum("btchw->bcthw", grad_out)  # the slice [:, R-1:] passes nothing to t < R-1
    grads: dict = {}
    for (kind, _, units), inp in zip(reversed(layers), reversed(inputs)):
        grad = _layer_backward(kind, units, inp, run, config[2], grad, grads)
    grads["x"] = np.einsum("bcthw->btchw", grad)
    return {key: np.asarray(grads[key], dtype=np.float64) if key in grads else np.zeros(np.shape(params[key]))
            for key in ["x", *params]}
