"""The cancellation-free size of each attention gradient: the magnitude the tolerance policy's floor counts ulps of
(``refimpl.tolerance.error_bound``'s ``magnitude``; docs/tolerance.md).

A gradient can be a small difference of large terms: the softmax gradient of a row whose mass sits on one key
(behind a -100 mask, say) cancels to ~1e-44 while every term it is computed from is O(1). Rounding noise, in any
order of evaluation, is then a few ulps of the terms, not of the result. The size computed here follows the steps
of the oracle's backward (``refimpl.reference.window_attention_vjp``) with every factor replaced by its absolute
value and every difference by a sum, so it bounds each term's contribution. It is not a gradient.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from refimpl import _validate as validate
from refimpl import reference
from refimpl.reference.window_attention_v2 import CPB_BOUND, window_attention_v2_stages

__all__ = ["window_attention_output_magnitude", "window_attention_vjp_magnitudes",
           "shifted_window_attention_vjp_magnitudes", "window_attention_v2_vjp_magnitudes"]


def window_attention_output_magnitude(x, probs, params: Mapping) -> float:
    """The cancellation-free size of a window-attention output ``proj(P v)``: ``max((P (|x| |W_v|^T + |b_v|))
    |W_proj|^T + |b_proj|)``, with the oracle's probabilities ``probs`` ``(B_, nH, N, N)`` (non-negative) and
    ``x`` ``(B_, N, C)``; ``qkv.weight`` rows ``[q | k | v]``, heads inside each (AIM, Video Swin, Swin V2), the v
    bias in ``qkv.bias`` (AIM, Video Swin) or ``v_bias`` (Swin V2). An output that cancels (``proj.bias`` against
    ``W_proj context``) is rounded at the size of its terms."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    n_rows, n_tokens, channels = x.shape
    num_heads = probs.shape[1]
    w_v = np.abs(np.asarray(params["qkv.weight"], dtype=np.float64))[2 * channels:]
    b_v = 0.0
    if "qkv.bias" in params:
        b_v = np.abs(np.asarray(params["qkv.bias"], dtype=np.float64))[2 * channels:]
    elif "v_bias" in params:
        b_v = np.abs(np.asarray(params["v_bias"], dtype=np.float64))
    v_size = (x @ w_v.T + b_v).reshape(n_rows, n_tokens, num_heads, channels // num_heads)
    context_size = np.einsum("bhij,bjhe->bihe", probs, v_size).reshape(n_rows, n_tokens, channels)
    size = context_size @ np.abs(np.asarray(params["proj.weight"], dtype=np.float64)).T
    size = size + np.abs(np.asarray(params["proj.bias"], dtype=np.float64))
    return float(size.max(initial=0.0))


def window_attention_vjp_magnitudes(
    x, params: Mapping, *, num_heads: int, window_size, mask=None, temporal: bool = False, qk_scale=None, grad_out
) -> dict[str, np.ndarray]:
    """The cancellation-free size of each gradient of ``reference.window_attention_vjp`` (same arguments, same
    keys and shapes). A bias table gets the largest bias-entry size for all of its rows."""
    st = reference.window_attention_stages(
        x, params, num_heads=num_heads, window_size=window_size, mask=mask, temporal=temporal, qk_scale=qk_scale
    )
    x = np.abs(np.asarray(x, dtype=np.float64))
    n_rows, n_tokens, channels = x.shape
    num_heads, head_dim = st.q.shape[1], st.q.shape[3]
    g_out = np.abs(np.asarray(grad_out, dtype=np.float64))
    if g_out.shape != st.out.shape:
        raise ValueError(f"grad_out has shape {g_out.shape}, expected the output's shape {st.out.shape}")
    w_proj = np.abs(np.asarray(params["proj.weight"], dtype=np.float64))
    w_qkv = np.abs(np.asarray(params["qkv.weight"], dtype=np.float64))
    q, k, val, context, scale = np.abs(st.q), np.abs(st.k), np.abs(st.v), np.abs(st.context), np.abs(st.scale)

    # out = context @ Wp^T + bp
    g_w_proj = np.einsum("bno,bnc->oc", g_out, context)
    g_context = np.einsum("bno,oc->bnc", g_out, w_proj).reshape(n_rows, n_tokens, num_heads, head_dim)
    # context = probs @ v (probs are >= 0 already)
    g_probs = np.einsum("bihe,bhje->bhij", g_context, val)
    g_v = np.einsum("bhij,bihe->bhje", st.probs, g_context)
    # softmax: the gradient p * (g - sum_j p g) becomes p * (g + sum_j p g)
    row_term = np.sum(st.probs * g_probs, axis=-1, keepdims=True)
    g_logits = st.probs * (g_probs + row_term)
    # logits = scale * q k^T + bias + mask
    g_q = scale * np.einsum("bhij,bhje->bhie", g_logits, k)
    g_k = scale * np.einsum("bhij,bhie->bhje", g_logits, q)
    g_qkv = np.stack([np.einsum("bhne->bnhe", g) for g in (g_q, g_k, g_v)], axis=2)
    g_qkv = g_qkv.reshape(n_rows, n_tokens, 3 * channels)

    table_key = "temporal_position_bias_table" if temporal else "relative_position_bias_table"
    sizes = {
        "x": np.einsum("bno,oc->bnc", g_qkv, w_qkv),
        "qkv.weight": np.einsum("bno,bnc->oc", g_qkv, x),
        "qkv.bias": g_qkv.sum(axis=(0, 1)),
        "proj.weight": g_w_proj,
        "proj.bias": g_out.sum(axis=(0, 1)),
        table_key: np.full(np.shape(params[table_key]), g_logits.sum(axis=0).max()),
    }
    return {key: sizes[key] if key in sizes else np.zeros(np.shape(params[key])) for key in ["x", *params]}


def shifted_window_attention_vjp_magnitudes(
    x, params: Mapping, *, num_heads: int, window_size: int, shift_size: int, qk_scale=None, fill: float = -100.0,
    grad_out,
) -> dict[str, np.ndarray]:
    """The cancellation-free sizes of ``reference.shifted_window_attention_vjp``: roll and partition are
    permutations, so they are ``window_attention_vjp_magnitudes`` of the rolled map's windows, permuted back."""
    x = np.asarray(x, dtype=np.float64)
    _, H, W, channels = validate.map_bhwc("x", x.shape)
    H, W, ws, s = validate.shifted_window_geometry(H, W, window_size, shift_size)

    def windows(a):  # (B, H, W, C) -> (B*nW, ws*ws, C): roll by -s, partition, as the oracle does
        return reference.window_partition(np.roll(a, (-s, -s), axis=(1, 2)), ws).reshape(-1, ws * ws, channels)

    sizes = window_attention_vjp_magnitudes(
        windows(x), params, num_heads=num_heads, window_size=(ws, ws), qk_scale=qk_scale,
        mask=reference.shifted_window_mask(H, W, ws, s, fill) if s > 0 else None,  # Swin passes no mask when s == 0
        grad_out=windows(np.asarray(grad_out, dtype=np.float64)),
    )
    map_sizes = reference.window_reverse(sizes["x"].reshape(-1, ws, ws, channels), ws, H, W)
    sizes["x"] = np.roll(map_sizes, (s, s), axis=(1, 2))
    return sizes


def window_attention_v2_vjp_magnitudes(
    x, params: Mapping, *, num_heads: int, window_size, pretrained_window_size=(0, 0), mask=None, grad_out
) -> dict[str, np.ndarray]:
    """The cancellation-free size of each gradient of ``reference.window_attention_v2_vjp`` (same arguments, keys
    and shapes), following its steps with absolute values. The normalization's gradient ``(g - q̂ <q̂, g>) / |q|``
    cancels exactly for one channel per head, and nearly for short vectors: its size is ``(|g| + |q̂| <|q̂|, |g|>) /
    |q|``, which is what rounding noise scales with."""
    st = window_attention_v2_stages(x, params, num_heads=num_heads, window_size=window_size,
                                       pretrained_window_size=pretrained_window_size, mask=mask)
    x = np.abs(np.asarray(x, dtype=np.float64))
    n_rows, n_tokens, channels = x.shape
    head_dim = channels // num_heads
    g_out = np.abs(np.asarray(grad_out, dtype=np.float64))
    w_proj = np.abs(np.asarray(params["proj.weight"], dtype=np.float64))
    w_qkv = np.abs(np.asarray(params["qkv.weight"], dtype=np.float64))
    w2 = np.abs(np.asarray(params["cpb_mlp.2.weight"], dtype=np.float64))
    q_hat, k_hat, val, cosine = np.abs(st.q_hat), np.abs(st.k_hat), np.abs(st.v), np.abs(st.cosine)

    g_context = np.einsum("bno,oc->bnc", g_out, w_proj).reshape(n_rows, n_tokens, num_heads, head_dim)
    g_probs = np.einsum("bihe,bhje->bhij", g_context, val)
    g_v = np.einsum("bhij,bihe->bhje", st.probs, g_context)
    g_logits = st.probs * (g_probs + np.sum(st.probs * g_probs, axis=-1, keepdims=True))
    g_cosine = st.scale[None, :, None, None] * g_logits
    g_q_hat = np.einsum("bhij,bhje->bhie", g_cosine, k_hat)
    g_k_hat = np.einsum("bhij,bhie->bhje", g_cosine, q_hat)

    def through_normalize(t_hat, norm, g):
        return (g + t_hat * np.einsum("...e,...e->...", t_hat, g)[..., None]) / norm

    g_q, g_k = through_normalize(q_hat, st.q_norm, g_q_hat), through_normalize(k_hat, st.k_norm, g_k_hat)
    g_qkv = np.stack([np.einsum("bhne->bnhe", g) for g in (g_q, g_k, g_v)], axis=2).reshape(n_rows, n_tokens, -1)
    g_qkv_bias = g_qkv.sum(axis=(0, 1))

    cpb = st.cpb
    sig = cpb.bias / CPB_BOUND
    g_pre_sigmoid = g_logits.sum(axis=0) * CPB_BOUND * sig * (1.0 - sig)
    g_table = np.zeros(cpb.table.shape)
    np.add.at(g_table, cpb.index.reshape(-1), g_pre_sigmoid.reshape(num_heads, -1).T)
    g_hidden_pre = np.einsum("mh,ho->mo", g_table, w2) * (cpb.hidden_pre > 0)
    sizes = {
        "x": np.einsum("bno,oc->bnc", g_qkv, w_qkv),
        "qkv.weight": np.einsum("bno,bnc->oc", g_qkv, x),
        "q_bias": g_qkv_bias[:channels],
        "v_bias": g_qkv_bias[2 * channels:],
        "proj.weight": np.einsum("bno,bnc->oc", g_out, np.abs(st.context)),
        "proj.bias": g_out.sum(axis=(0, 1)),
        "logit_scale": (st.scale * np.einsum("bhij,bhij->h", g_logits, cosine)).reshape(num_heads, 1, 1),
        "cpb_mlp.2.weight": np.einsum("mh,mo->ho", g_table, cpb.hidden),
        "cpb_mlp.0.weight": np.einsum("mo,mi->oi", g_hidden_pre, np.abs(cpb.coords)),
        "cpb_mlp.0.bias": g_hidden_pre.sum(axis=0),
    }
    return {key: sizes[key] if key in sizes else np.zeros(np.shape(params[key])) for key in ["x", *params]}
