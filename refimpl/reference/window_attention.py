"""AIM's ``WindowAttention`` in float64: Swin's index tables, the forward with every stage kept, and its VJP.

Notation: ``B_`` rows of ``N`` tokens with ``C`` channels, ``nH`` heads of ``d = C // nH`` channels, ``nW``
windows per image. docs/semantics.md states the semantics these functions implement.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from refimpl import _validate as validate
from refimpl.reference._common import attention_scale, softmax

__all__ = [
    "window_sides",
    "window_coordinates",
    "relative_index_of_offsets",
    "relative_position_index",
    "temporal_relative_index",
    "additive_mask",
    "WindowAttentionStages",
    "window_attention_stages",
    "window_attention",
    "window_attention_vjp",
]


# ---- index tables ----


def window_sides(name: str, value) -> tuple[int, ...]:
    """A window size for ``relative_position_index``: an int ``ws`` (meaning ``(ws, ws)``), a pair ``(Wh, Ww)`` or a
    triple ``(Wd, Wh, Ww)``, each side >= 1."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return validate.window_pair(name, value)
    try:
        sides = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, a pair (Wh, Ww) or a triple (Wd, Wh, Ww), got {value!r}") from None
    if len(sides) not in (2, 3):
        raise ValueError(f"{name} must be a pair (Wh, Ww) or a triple (Wd, Wh, Ww), got {value!r} with "
                         f"{len(sides)} entries")
    return tuple(validate.positive_int(f"{name}[{a}]", side) for a, side in enumerate(sides))


def relative_index_of_offsets(window_size, offsets) -> np.ndarray:
    """The row of the bias table for a relative position: ``offsets[a]`` (any shape, one array per axis, query
    minus key, each in ``(-W_a, W_a)``) shifted by ``W_a - 1`` and read as the digits of a mixed-radix number with
    radices ``2*W_a - 1``, the first axis most significant. Pairs: ``(Δr + Wh-1)(2Ww-1) + (Δc + Ww-1)``; triples:
    ``((Δd + Wd-1)(2Wh-1) + (Δh + Wh-1))(2Ww-1) + (Δw + Ww-1)`` (the table is D-major)."""
    sides = window_sides("window_size", window_size)
    if len(offsets) != len(sides):
        raise ValueError(f"offsets has {len(offsets)} axes, window_size {sides} has {len(sides)}")
    index = np.zeros(np.shape(offsets[0]), dtype=np.int64)
    for side, offset in zip(sides, offsets, strict=True):
        offset = np.asarray(offset, dtype=np.int64)
        if np.any(np.abs(offset) > side - 1):
            raise ValueError(f"an offset of {int(np.abs(offset).max())} does not fit a window side of {side}")
        index = index * (2 * side - 1) + (offset + side - 1)
    return index


def window_coordinates(window_size) -> np.ndarray:
    """``(A, N)`` int64: the coordinates of the ``N`` tokens of a window with ``A`` axes, flattened row-major
    (meshgrid 'ij', the last axis varying fastest: token ``p = r*Ww + c``, or ``p = (d*Wh + h)*Ww + w``)."""
    sides = window_sides("window_size", window_size)
    grids = np.meshgrid(*[np.arange(side) for side in sides], indexing="ij")
    return np.stack([grid.reshape(-1) for grid in grids]).astype(np.int64)


def relative_position_index(window_size) -> np.ndarray:
    """Swin's ``relative_position_index``: int64 ``(N, N)`` for a window of 2 or 3 axes, ``N`` its token count.

    Token ``p`` has the coordinates ``window_coordinates(window_size)[:, p]``; entry ``(i, j)`` is the table row of
    the offset query minus key (``relative_index_of_offsets``). For a pair ``(Wh, Ww)``, with ``p = r*Ww + c``:
    ``(r_i - r_j + Wh - 1) * (2*Ww - 1) + (c_i - c_j + Ww - 1)``, in ``[0, (2Wh-1)(2Ww-1))``. For a triple
    ``(Wd, Wh, Ww)`` (Video Swin), the same with a leading D digit: in ``[0, (2Wd-1)(2Wh-1)(2Ww-1))``.
    """
    coords = window_coordinates(window_size)  # (A, N)
    offsets = [axis[:, None] - axis[None, :] for axis in coords]  # (N, N) per axis, query minus key
    return relative_index_of_offsets(window_size, offsets)


def temporal_relative_index(num_ttokens: int) -> np.ndarray:
    """AIM's temporal index, int64 ``(T, T)`` with entry ``i - j + T - 1`` (in ``[0, 2T-2]``)."""
    t = validate.positive_int("num_ttokens", num_ttokens)
    i = np.arange(t)[:, None]
    j = np.arange(t)[None, :]
    return (i - j + t - 1).astype(np.int64)


def _bias_table_and_index(params, n_tokens: int, num_heads: int, window_size, temporal: bool):
    """The bias table in use, its state-dict key and the index ``(N, N)`` into its rows, all checked."""
    if temporal:
        key = "temporal_position_bias_table"
        table = validate.param(params, key, ndim=2)
        num_ttokens = (table.shape[0] + 1) // 2
        validate.table_shape(key, table, (2 * num_ttokens - 1, num_heads))
        if n_tokens != num_ttokens:
            raise ValueError(
                f"x has N={n_tokens} tokens but temporal mode needs N == num_ttokens == {num_ttokens} "
                f"(temporal_position_bias_table has {table.shape[0]} rows = 2*num_ttokens - 1)"
            )
        return key, table, temporal_relative_index(num_ttokens)
    key = "relative_position_bias_table"
    wh, ww = validate.window_pair("window_size", window_size)
    table = validate.param(params, key, ndim=2)
    validate.table_shape(key, table, ((2 * wh - 1) * (2 * ww - 1), num_heads))
    if n_tokens != wh * ww:
        raise ValueError(
            f"x has N={n_tokens} tokens but spatial mode needs N == Wh*Ww == {wh * ww} for window_size={(wh, ww)}"
        )
    return key, table, relative_position_index((wh, ww))


# ---- masks ----


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
    validate.window_mask_shape("mask", np.shape(mask), n_rows=n_rows, n_tokens=n_tokens)
    mask = additive_mask(mask)
    window_of_row = np.arange(n_rows) % mask.shape[0]
    return mask[window_of_row]


# ---- forward ----


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


def _attend(x, w_qkv, b_qkv, w_proj, b_proj, bias, mask_rows, scale: float, num_heads: int) -> WindowAttentionStages:
    """The attention shared by every window-attention oracle once its bias is known: qkv, ``scale * q k^T + bias +
    mask``, softmax over keys, proj. ``x`` ``(B_, N, C)``; ``bias`` ``(nH, N, N)``; ``mask_rows`` ``(B_, N, N)``."""
    n_rows, n_tokens, channels = x.shape
    head_dim = channels // num_heads
    qkv = np.einsum("bnc,oc->bno", x, w_qkv) + b_qkv  # (B_, N, 3C), channels ordered [s][h][e]
    qkv = qkv.reshape(n_rows, n_tokens, 3, num_heads, head_dim)
    q, k, val = (np.einsum("bnhe->bhne", qkv[:, :, s]) for s in range(3))  # each (B_, nH, N, d)

    logits = scale * np.einsum("bhie,bhje->bhij", q, k) + bias[None] + mask_rows[:, None]
    probs = softmax(logits, axis=-1)
    context = np.einsum("bhij,bhje->bihe", probs, val).reshape(n_rows, n_tokens, channels)  # head-major
    out = np.einsum("bnc,oc->bno", context, w_proj) + b_proj
    return WindowAttentionStages(scale, q, k, val, bias, mask_rows, logits, probs, context, out)


def window_attention_stages(
    x, params: Mapping, *, num_heads: int, window_size, mask=None, temporal: bool = False, qk_scale=None
) -> WindowAttentionStages:
    """AIM ``WindowAttention.forward`` in float64, keeping every intermediate (eval mode: no dropout).

    ``x``: ``(B_, N, C)``. Spatial mode: ``N == Wh*Ww``, optional ``mask`` ``(nW, N, N)`` with ``B_ % nW == 0``.
    Temporal mode: ``N == num_ttokens`` (read off the temporal table), and ``mask`` is ignored, as upstream.
    """
    x = validate.array3d("x", x)
    n_rows, n_tokens, channels = x.shape
    num_heads = validate.positive_int("num_heads", num_heads)
    head_dim = validate.head_dim(channels, num_heads)
    w_qkv, b_qkv = validate.linear_params(params, "qkv", in_features=channels, out_features=3 * channels)
    w_proj, b_proj = validate.linear_params(params, "proj", in_features=channels, out_features=channels)
    if not temporal:
        validate.window_pair("window_size", window_size)

    _, table, index = _bias_table_and_index(params, n_tokens, num_heads, window_size, temporal)
    bias = np.einsum("ijh->hij", table[index])  # Bias[h, i, j] = table[index[i, j], h]
    mask_rows = np.zeros((n_rows, n_tokens, n_tokens)) if temporal else _mask_rows(mask, n_rows, n_tokens)
    scale = attention_scale(head_dim, qk_scale)

    return _attend(x, w_qkv, b_qkv, w_proj, b_proj, bias, mask_rows, scale, num_heads)


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


# ---- backward ----


def _backward(st: WindowAttentionStages, x, params: Mapping, grad_out) -> dict[str, np.ndarray]:
    """The backward pass of ``window_attention_stages`` for the loss ``sum(out * grad_out)``, step by step.

    Returns the gradients of x ``(B_, N, C)``, the linears and the bias ``(nH, N, N)`` under ``"bias"``."""
    x = np.asarray(x, dtype=np.float64)
    n_rows, n_tokens, channels = x.shape
    num_heads, head_dim = st.q.shape[1], st.q.shape[3]
    g_out = np.asarray(grad_out, dtype=np.float64)
    if g_out.shape != st.out.shape:
        raise ValueError(f"grad_out has shape {g_out.shape}, expected the output's shape {st.out.shape}")
    w_proj = np.asarray(params["proj.weight"], dtype=np.float64)
    w_qkv = np.asarray(params["qkv.weight"], dtype=np.float64)

    # out = context @ Wp^T + bp
    g_w_proj = np.einsum("bno,bnc->oc", g_out, st.context)
    g_b_proj = g_out.sum(axis=(0, 1))
    g_context = np.einsum("bno,oc->bnc", g_out, w_proj).reshape(n_rows, n_tokens, num_heads, head_dim)

    # context[b, i, h, e] = sum_j probs[b, h, i, j] * v[b, h, j, e]
    g_probs = np.einsum("bihe,bhje->bhij", g_context, st.v)
    g_v = np.einsum("bhij,bihe->bhje", st.probs, g_context)

    # softmax over j: dL/dlogit = p * (dL/dp - sum_j p * dL/dp)
    row_term = np.sum(st.probs * g_probs, axis=-1, keepdims=True)
    g_logits = st.probs * (g_probs - row_term)

    # logits = scale * q k^T + bias + mask  (the mask is an input, not a parameter)
    g_q = st.scale * np.einsum("bhij,bhje->bhie", g_logits, st.k)
    g_k = st.scale * np.einsum("bhij,bhie->bhje", g_logits, st.q)

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
    grads = _backward(st, x, params, grad_out)
    g_bias = grads.pop("bias")

    # Bias[h, i, j] = table[index[i, j], h], so the table gradient scatter-adds over the index.
    table_key, table, index = _bias_table_and_index(params, st.out.shape[1], st.q.shape[1], window_size, temporal)
    g_table = np.zeros(table.shape)
    for i in range(index.shape[0]):
        for j in range(index.shape[1]):
            g_table[index[i, j]] += g_bias[:, i, j]
    grads[table_key] = g_table
    # "x" and one entry per key of params; keys the output does not depend on get zeros
    return {key: grads[key] if key in grads else np.zeros(np.shape(params[key])) for key in ["x", *params]}
