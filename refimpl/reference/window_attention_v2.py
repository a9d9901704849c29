"""Swin V2's ``WindowAttention`` (microsoft ``swin_transformer_v2.py``) in float64: the log-spaced coordinates, the
continuous position bias, the cosine-attention forward with every stage kept, its VJP, and the map-level operation.

Notation: ``B_`` rows of ``N = Wh*Ww`` tokens with ``C`` channels, ``nH`` heads of ``d = C // nH`` channels, ``M =
(2Wh-1)(2Ww-1)`` relative offsets, ``Δ = pos_i - pos_j`` (query minus key). docs/window-attention-v2.md states the
semantics.

Exact float64 throughout. Upstream builds two values in float32 even inside a float64 module: the coordinate table
(a persistent buffer) and the clamp bound ``ln(1/0.01)`` (``4.605170249938965``, so its largest scale is
``100.0000064``). The oracle computes both exactly, and ignores any ``relative_coords_table`` and
``relative_position_index`` in ``params`` (it derives its own); a faithful float64 port therefore differs from it by
up to about 1e-6 at unit-scale parameters, which the tolerance policy's upstream-faithful baseline carries.

Bad input: a window side of 1 with ``pretrained_window_size=(0, 0)``, or a pretrained side of 1, would divide 0 by 0
(upstream's whole output is NaN); the oracle raises ``ValueError`` naming the argument instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from refimpl import _validate as validate
from refimpl.reference._common import softmax
from refimpl.reference.shifted_window import _check_map, _shifted_windows, _unshifted_map
from refimpl.reference.window_attention import _mask_rows, relative_position_index

__all__ = [
    "LOGIT_SCALE_MAX",
    "NORMALIZE_EPS",
    "CPB_BOUND",
    "log_spaced_coordinate",
    "relative_coords_table",
    "ContinuousPositionBias",
    "continuous_position_bias_stages",
    "continuous_position_bias",
    "WindowAttentionV2Stages",
    "window_attention_v2_stages",
    "window_attention_v2",
    "window_attention_v2_vjp",
    "shifted_window_attention_v2",
    "shifted_window_attention_v2_vjp",
]

LOGIT_SCALE_MAX = math.log(100.0)  # the clamp bound of the log-scale, exact (upstream's float32 value is larger)
NORMALIZE_EPS = 1e-12  # F.normalize's default: q / max(|q|, eps)
CPB_BOUND = 16.0  # the bias is CPB_BOUND * sigmoid(MLP output), in (0, 16)
_LOG_RANGE = 8.0  # coordinates are scaled to [-8, 8] before the log: sign(t) log2(1 + |t|) / log2(8)


# ---- continuous position bias ----


def log_spaced_coordinate(delta, divisor) -> np.ndarray:
    """``sign(t) * log2(1 + |t|) / log2(8)`` with ``t = 8 * delta / divisor``: one axis of Swin V2's coordinates."""
    t = _LOG_RANGE * np.asarray(delta, dtype=np.float64) / divisor
    return np.sign(t) * np.log2(1.0 + np.abs(t)) / np.log2(_LOG_RANGE)


def relative_coords_table(window_size, pretrained_window_size=(0, 0)) -> np.ndarray:
    """Swin V2's log-spaced relative coordinates, float64 ``(2Wh-1, 2Ww-1, 2)``: entry ``(a, b)`` is the
    offset ``(a - (Wh-1), b - (Ww-1))`` (channel 0 the row offset, channel 1 the column offset), each axis through
    ``log_spaced_coordinate`` with divisor ``P - 1`` for a pretrained window ``P``, else ``window - 1``."""
    (wh, ww), (dh, dw) = validate.cpb_geometry(window_size, pretrained_window_size)
    table = np.zeros((2 * wh - 1, 2 * ww - 1, 2))
    for a in range(2 * wh - 1):
        for b in range(2 * ww - 1):
            table[a, b, 0] = log_spaced_coordinate(a - (wh - 1), dh)
            table[a, b, 1] = log_spaced_coordinate(b - (ww - 1), dw)
    return table


@dataclass(frozen=True)
class ContinuousPositionBias:
    """The stages of the CPB: ``coords`` ``(M, 2)`` (the table flattened row-major), ``hidden_pre`` ``(M, H1)`` =
    ``coords W1^T + b1``, ``hidden`` = ReLU of it, ``table`` ``(M, nH)`` = ``hidden W2^T`` (no bias), ``index``
    ``(N, N)`` (``relative_position_index``), ``bias`` ``(nH, N, N)`` = ``16 sigmoid(table[index[i, j], h])``."""

    coords: np.ndarray
    hidden_pre: np.ndarray
    hidden: np.ndarray
    table: np.ndarray
    index: np.ndarray
    bias: np.ndarray


def _cpb_params(params: Mapping, num_heads: int):
    w1 = validate.param(params, "cpb_mlp.0.weight", ndim=2)
    if w1.shape[1] != 2:
        raise ValueError(f"params['cpb_mlp.0.weight'] has shape {w1.shape}, expected (hidden, 2)")
    b1 = validate.param(params, "cpb_mlp.0.bias", ndim=1)
    validate.table_shape("params['cpb_mlp.0.bias']", b1, (w1.shape[0],))
    w2 = validate.param(params, "cpb_mlp.2.weight", ndim=2)
    validate.table_shape("params['cpb_mlp.2.weight']", w2, (num_heads, w1.shape[0]))
    return w1, b1, w2


def continuous_position_bias_stages(
    params: Mapping, *, num_heads: int, window_size, pretrained_window_size=(0, 0)
) -> ContinuousPositionBias:
    """``continuous_position_bias`` with every stage kept (see ``ContinuousPositionBias``)."""
    num_heads = validate.positive_int("num_heads", num_heads)
    coords = relative_coords_table(window_size, pretrained_window_size).reshape(-1, 2)  # row a*(2Ww-1) + b
    w1, b1, w2 = _cpb_params(params, num_heads)
    hidden_pre = np.einsum("mi,oi->mo", coords, w1) + b1
    hidden = np.maximum(hidden_pre, 0.0)
    table = np.einsum("mo,ho->mh", hidden, w2)
    index = relative_position_index(validate.window_pair("window_size", window_size))
    bias = CPB_BOUND * _sigmoid(np.einsum("ijh->hij", table[index]))
    return ContinuousPositionBias(coords, hidden_pre, hidden, table, index, bias)


def continuous_position_bias(params: Mapping, *, num_heads: int, window_size, pretrained_window_size=(0, 0)):
    """Swin V2's position bias, float64 ``(nH, N, N)``: ``16 * sigmoid(MLP(coords))`` gathered by
    ``relative_position_index``, with ``MLP(c) = W2 ReLU(W1 c + b1)`` (``cpb_mlp.0``, ``cpb_mlp.2``). Each value is
    in (0, 16)."""
    return continuous_position_bias_stages(
        params, num_heads=num_heads, window_size=window_size, pretrained_window_size=pretrained_window_size
    ).bias


def _sigmoid(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))  # stable on both sides
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# ---- forward ----


@dataclass(frozen=True)
class WindowAttentionV2Stages:
    """Every intermediate of one oracle forward, float64.

    ``q, k, v``: ``(B_, nH, N, d)`` before normalization; ``q_norm, k_norm``: ``(B_, nH, N, 1)`` the divisors
    ``max(|q|, eps)``; ``q_hat, k_hat``: the normalized vectors; ``logit_scale``: ``(nH,)`` as given; ``scale``:
    ``(nH,)`` = ``exp(min(logit_scale, ln 100))``; ``cosine``: ``(B_, nH, N, N)``; ``cpb``: the position-bias
    stages; ``mask_rows``: ``(B_, N, N)``; ``logits`` = ``scale[h] * cosine + bias + mask_rows``; ``probs``;
    ``context``: ``(B_, N, C)`` head-major; ``out``: ``(B_, N, C)``."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    q_norm: np.ndarray
    k_norm: np.ndarray
    q_hat: np.ndarray
    k_hat: np.ndarray
    logit_scale: np.ndarray
    scale: np.ndarray
    cosine: np.ndarray
    cpb: ContinuousPositionBias
    mask_rows: np.ndarray
    logits: np.ndarray
    probs: np.ndarray
    context: np.ndarray
    out: np.ndarray


def qkv_bias_v2(params: Mapping, channels: int) -> np.ndarray:
    """The ``(3C,)`` bias of the qkv linear: ``[q_bias ; 0 ; v_bias]`` (no k bias exists), or zeros without
    ``q_bias``/``v_bias`` (qkv_bias off)."""
    has = ("q_bias" in params, "v_bias" in params)
    if has == (False, False):
        return np.zeros(3 * channels)
    if has != (True, True):
        raise ValueError("params must have both 'q_bias' and 'v_bias' (qkv_bias=True) or neither (qkv_bias=False)")
    q_bias = validate.param(params, "q_bias", ndim=1)
    v_bias = validate.param(params, "v_bias", ndim=1)
    validate.table_shape("params['q_bias']", q_bias, (channels,))
    validate.table_shape("params['v_bias']", v_bias, (channels,))
    return np.concatenate([q_bias, np.zeros(channels), v_bias])


def _normalized(t) -> tuple[np.ndarray, np.ndarray]:
    """``(t / max(|t|, eps), max(|t|, eps))`` over the last axis (``F.normalize``)."""
    norm = np.maximum(np.sqrt(np.sum(t * t, axis=-1, keepdims=True)), NORMALIZE_EPS)
    return t / norm, norm


def window_attention_v2_stages(
    x, params: Mapping, *, num_heads: int, window_size, pretrained_window_size=(0, 0), mask=None
) -> WindowAttentionV2Stages:
    """Swin V2 ``WindowAttention.forward(x, mask)`` in float64, keeping every intermediate (eval mode)."""
    x = validate.array3d("x", x)
    n_rows, n_tokens, channels = x.shape
    num_heads = validate.positive_int("num_heads", num_heads)
    head_dim = validate.head_dim(channels, num_heads)
    (wh, ww), _ = validate.cpb_geometry(window_size, pretrained_window_size)
    if n_tokens != wh * ww:
        raise ValueError(f"x has N={n_tokens} tokens but needs N == Wh*Ww == {wh * ww} for window_size={(wh, ww)}")
    w_qkv = validate.param(params, "qkv.weight", ndim=2)
    validate.table_shape("params['qkv.weight']", w_qkv, (3 * channels, channels))
    b_qkv = qkv_bias_v2(params, channels)
    w_proj, b_proj = validate.linear_params(params, "proj", in_features=channels, out_features=channels)
    logit_scale = validate.param(params, "logit_scale", ndim=3)
    validate.table_shape("params['logit_scale']", logit_scale, (num_heads, 1, 1))
    logit_scale = logit_scale.reshape(num_heads)

    cpb = continuous_position_bias_stages(params, num_heads=num_heads, window_size=(wh, ww),
                                          pretrained_window_size=pretrained_window_size)
    mask_rows = _mask_rows(mask, n_rows, n_tokens)

    qkv = np.einsum("bnc,oc->bno", x, w_qkv) + b_qkv  # (B_, N, 3C), channels ordered [s][h][e]
    qkv = qkv.reshape(n_rows, n_tokens, 3, num_heads, head_dim)
    q, k, val = (np.einsum("bnhe->bhne", qkv[:, :, s]) for s in range(3))  # each (B_, nH, N, d)
    q_hat, q_norm = _normalized(q)
    k_hat, k_norm = _normalized(k)
    scale = np.exp(np.minimum(logit_scale, LOGIT_SCALE_MAX))  # (nH,): the clamp acts on the log-scale
    cosine = np.einsum("bhie,bhje->bhij", q_hat, k_hat)
    logits = scale[None, :, None, None] * cosine + cpb.bias[None] + mask_rows[:, None]
    probs = softmax(logits, axis=-1)
    context = np.einsum("bhij,bhje->bihe", probs, val).reshape(n_rows, n_tokens, channels)  # head-major
    out = np.einsum("bnc,oc->bno", context, w_proj) + b_proj
    return WindowAttentionV2Stages(q, k, val, q_norm, k_norm, q_hat, k_hat, logit_scale, scale, cosine, cpb,
                                   mask_rows, logits, probs, context, out)


def window_attention_v2(
    x, params: Mapping, *, num_heads: int, window_size, pretrained_window_size=(0, 0), mask=None
) -> np.ndarray:
    """Swin V2 ``WindowAttention.forward(x, mask)`` in float64: ``(B_, N, C) -> (B_, N, C)``.

    ``params`` maps microsoft's state-dict keys to arrays: ``logit_scale`` ``(nH, 1, 1)``, ``q_bias`` and
    ``v_bias`` ``(C,)`` (both absent when qkv_bias is off), ``qkv.weight``, ``proj.weight``, ``proj.bias``,
    ``cpb_mlp.0.weight``, ``cpb_mlp.0.bias``, ``cpb_mlp.2.weight``; buffers are ignored. ``mask``: ``(nW, N, N)``
    additive (or boolean may-attend), row ``b`` gets ``mask[b % nW]``, added once.

    ``out = proj(softmax_j(exp(min(ls_h, ln 100)) <q̂_i, k̂_j> + 16 sigmoid(cpb)[h, i, j] + mask) v)`` with
    ``q̂ = q / max(|q|, 1e-12)``; no ``d^-1/2``.
    """
    return window_attention_v2_stages(
        x, params, num_heads=num_heads, window_size=window_size, pretrained_window_size=pretrained_window_size,
        mask=mask,
    ).out


# ---- backward ----


def _normalize_vjp(t, t_hat, norm, g_hat) -> np.ndarray:
    """Gradient through ``t / max(|t|, eps)``: ``(g - t̂ <t̂, g>) / |t|`` where ``|t| >= eps``; ``g / eps`` where
    the floor acts (the floor is a constant there)."""
    floored = norm > np.sqrt(np.sum(t * t, axis=-1, keepdims=True))  # the clamp replaced |t| by eps
    radial = np.sum(t_hat * g_hat, axis=-1, keepdims=True)
    return np.where(floored, g_hat / norm, (g_hat - t_hat * radial) / norm)


def window_attention_v2_vjp(
    x, params: Mapping, *, num_heads: int, window_size, pretrained_window_size=(0, 0), mask=None, grad_out
) -> dict[str, np.ndarray]:
    """Gradients of ``sum(window_attention_v2(x, params, ...) * grad_out)``, written out by hand.

    Returns ``{"x": (B_, N, C), key: array shaped like params[key] for every key of params}``; buffers get zeros.
    ``logit_scale`` gets no gradient where it is above ``ln 100`` (the clamp), and the full one at and below it.
    """
    st = window_attention_v2_stages(x, params, num_heads=num_heads, window_size=window_size,
                                    pretrained_window_size=pretrained_window_size, mask=mask)
    x = np.asarray(x, dtype=np.float64)
    n_rows, n_tokens, channels = x.shape
    head_dim = channels // num_heads
    g_out = np.asarray(grad_out, dtype=np.float64)
    if g_out.shape != st.out.shape:
        raise ValueError(f"grad_out has shape {g_out.shape}, expected the output's shape {st.out.shape}")
    w_proj = np.asarray(params["proj.weight"], dtype=np.float64)
    w_qkv = np.asarray(params["qkv.weight"], dtype=np.float64)
    w2 = np.asarray(params["cpb_mlp.2.weight"], dtype=np.float64)
    grads: dict[str, np.ndarray] = {}

    # out = context @ Wp^T + bp
    grads["proj.weight"] = np.einsum("bno,bnc->oc", g_out, st.context)
    grads["proj.bias"] = g_out.sum(axis=(0, 1))
    g_context = np.einsum("bno,oc->bnc", g_out, w_proj).reshape(n_rows, n_tokens, num_heads, head_dim)

    # context[b, i, h, e] = sum_j probs[b, h, i, j] v[b, h, j, e]
    g_probs = np.einsum("bihe,bhje->bhij", g_context, st.v)
    g_v = np.einsum("bhij,bihe->bhje", st.probs, g_context)

    # softmax over j
    g_logits = st.probs * (g_probs - np.sum(st.probs * g_probs, axis=-1, keepdims=True))

    # logits = scale[h] * cosine + bias + mask
    g_cosine = st.scale[None, :, None, None] * g_logits
    g_scale = np.einsum("bhij,bhij->h", g_logits, st.cosine)
    below_clamp = st.logit_scale <= LOGIT_SCALE_MAX  # d exp(min(l, c)) / dl = exp(l) for l <= c, else 0
    grads["logit_scale"] = np.where(below_clamp, g_scale * st.scale, 0.0).reshape(num_heads, 1, 1)

    # cosine = q̂ k̂^T, then the normalizations
    g_q_hat = np.einsum("bhij,bhje->bhie", g_cosine, st.k_hat)
    g_k_hat = np.einsum("bhij,bhie->bhje", g_cosine, st.q_hat)
    g_q = _normalize_vjp(st.q, st.q_hat, st.q_norm, g_q_hat)
    g_k = _normalize_vjp(st.k, st.k_hat, st.k_norm, g_k_hat)

    # qkv[b, n, s, h, e] -> q/k/v[b, h, n, e]; the k third of the bias is the constant 0
    g_qkv = np.stack([np.einsum("bhne->bnhe", g) for g in (g_q, g_k, g_v)], axis=2)
    g_qkv = g_qkv.reshape(n_rows, n_tokens, 3 * channels)
    grads["x"] = np.einsum("bno,oc->bnc", g_qkv, w_qkv)
    grads["qkv.weight"] = np.einsum("bno,bnc->oc", g_qkv, x)
    g_qkv_bias = g_qkv.sum(axis=(0, 1))
    grads["q_bias"], grads["v_bias"] = g_qkv_bias[:channels], g_qkv_bias[2 * channels:]

    # bias[h, i, j] = 16 sigmoid(table[index[i, j], h]); table = ReLU(coords W1^T + b1) W2^T
    cpb = st.cpb
    g_bias = g_logits.sum(axis=0)  # (nH, N, N)
    sig = cpb.bias / CPB_BOUND
    g_pre_sigmoid = g_bias * CPB_BOUND * sig * (1.0 - sig)
    g_table = np.zeros(cpb.table.shape)  # scatter-add over the index
    for i in range(n_tokens):
        for j in range(n_tokens):
            g_table[cpb.index[i, j]] += g_pre_sigmoid[:, i, j]
    grads["cpb_mlp.2.weight"] = np.einsum("mh,mo->ho", g_table, cpb.hidden)
    g_hidden_pre = np.einsum("mh,ho->mo", g_table, w2) * (cpb.hidden_pre > 0)
    grads["cpb_mlp.0.weight"] = np.einsum("mo,mi->oi", g_hidden_pre, cpb.coords)
    grads["cpb_mlp.0.bias"] = g_hidden_pre.sum(axis=0)
    # "x" and one entry per key of params; keys the output does not depend on (buffers) get zeros
    return {key: grads[key] if key in grads else np.zeros(np.shape(params[key])) for key in ["x", *params]}


# ---- map level ----


def shifted_window_attention_v2(
    x, params: Mapping, *, num_heads: int, window_size: int, shift_size: int, pretrained_window_size=(0, 0),
    fill: float = -100.0,
) -> np.ndarray:
    """Swin V2's (shifted) window attention over a map in float64, ``(B, H, W, C) -> (B, H, W, C)``: the attention
    part of ``SwinTransformerBlock`` (V1's sequence): roll by ``-s``, partition into ``ws x ws`` windows,
    ``window_attention_v2`` with ``shifted_window_mask(H, W, ws, s, fill)`` (no mask when ``s == 0``), reverse,
    roll back by ``+s``. ``window_size`` and ``shift_size`` are the ones in use: Swin V2's block shrinks the window
    to ``min(H, W)`` and zeroes the shift when ``min(H, W) <= ws``, and builds its attention for the shrunk window
    (so the CPB is evaluated on that grid); do that before calling."""
    x, H, W, ws, s, mask = _check_map(x, window_size, shift_size, fill)
    windows = _shifted_windows(x, ws, s)
    out = window_attention_v2(windows, params, num_heads=num_heads, window_size=(ws, ws),
                              pretrained_window_size=pretrained_window_size, mask=mask)
    return _unshifted_map(out, ws, s, H, W)


def shifted_window_attention_v2_vjp(
    x, params: Mapping, *, num_heads: int, window_size: int, shift_size: int, pretrained_window_size=(0, 0),
    fill: float = -100.0, grad_out,
) -> dict[str, np.ndarray]:
    """Gradients of ``sum(shifted_window_attention_v2(x, params, ...) * grad_out)``: roll and partition are
    permutations, so this is ``window_attention_v2_vjp`` on the rolled map's windows with ``x``'s entry permuted
    back."""
    x, H, W, ws, s, mask = _check_map(x, window_size, shift_size, fill)
    channels = x.shape[-1]
    grads = window_attention_v2_vjp(
        _shifted_windows(x, ws, s), params, num_heads=num_heads, window_size=(ws, ws),
        pretrained_window_size=pretrained_window_size, mask=mask,
        grad_out=_shifted_windows(np.asarray(grad_out, dtype=np.float64), ws, s),
    )
    grads["x"] = _unshifted_map(grads["x"].reshape(-1, ws * ws, channels), ws, s, H, W)
    return grads
