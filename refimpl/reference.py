"""NumPy float64 oracles: short functions, each meant to be checked by reading it.

Semantics follow ``spec.md`` (AIM's ``WindowAttention`` and Swin's index tables). Nothing here imports torch.
Every array argument may be anything ``np.asarray`` accepts; every result is float64 (index tables int64).

Notation: ``B_`` rows of ``N`` tokens with ``C`` channels, ``nH`` heads of ``d = C // nH`` channels,
``nW`` windows per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from refimpl import _validate as v

__all__ = [
    "relative_position_index",
    "temporal_relative_index",
    "softmax",
    "WindowAttentionStages",
    "window_attention_stages",
    "window_attention",
    "window_attention_vjp",
    "window_attention_vjp_magnitudes",
    "window_attention_flops",
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
]


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

    qkv = np.einsum("bnc,oc->bno", x, w_qkv) + b_qkv  # (B_, N, 3C), channels ordered [s][h][e]
    qkv = qkv.reshape(n_rows, n_tokens, 3, num_heads, head_dim)
    q, k, val = (np.einsum("bnhe->bhne", qkv[:, :, s]) for s in range(3))  # each (B_, nH, N, d)

    logits = scale * np.einsum("bhie,bhje->bhij", q, k) + bias[None] + mask_rows[:, None]
    probs = softmax(logits, axis=-1)
    context = np.einsum("bhij,bhje->bihe", probs, val).reshape(n_rows, n_tokens, channels)  # head-major
    out = np.einsum("bnc,oc->bno", context, w_proj) + b_proj
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
    """AIM's ``WindowAttention.flops(N, T, temporal)``: multiply-accumulates (MACs) of ``q@k^T`` and
    ``attn@v`` only (qkv and proj are commented out upstream).

    ``N`` is tokens per spatial window (ws^2), ``T`` the number of temporal tokens. Temporal:
    ``2*C*N*T^2``; spatial: ``2 * nH * (C // nH) * N^2 * T``. The floor division is upstream's: it silently
    undercounts when ``dim % num_heads != 0`` (a configuration whose forward cannot run).
    """
    dim, num_heads = v.positive_int("dim", dim), v.positive_int("num_heads", num_heads)
    N, T = v.positive_int("N", N), v.positive_int("T", T)
    if temporal:
        return dim * N * T * T * 2
    head_dim = dim // num_heads
    return num_heads * N * head_dim * N * T + num_heads * N * N * head_dim * T
