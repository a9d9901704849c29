"""What the kernel properties compare ``triton_window_attention`` with: the float64 oracle of the attention core,
its VJP, the naive same-dtype baseline the tolerance policy scales with, and the cancellation-free magnitudes.

The core ``softmax(scale * q k^T + bias[h] + mask[b % nW]) v`` is the middle of ``refimpl.reference``'s window
attention (``window_attention_stages``: ``logits``, ``probs``, then ``probs @ v``), which the oracle only reaches
from ``x`` through ``qkv``; three independent ``(B_, nH, N, d)`` inputs cannot be written as one ``x``. So these
functions take the oracle's own steps (its ``softmax``, its ``b % nW`` mask rule, the steps of its backward) on
``q, k, v`` directly; ``properties/test_kernels.py`` checks them against ``reference.window_attention_stages`` and
by central differences. Nothing here imports triton.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from refimpl import reference

__all__ = ["CoreStages", "core_stages", "core_vjp", "core_vjp_magnitudes", "naive_core"]


@dataclass(frozen=True)
class CoreStages:
    """Float64 ``logits`` / ``probs`` ``(B_, nH, N, N)``, ``out`` ``(B_, nH, N, d)`` and the mask row each window
    received (``mask_rows`` ``(B_, N, N)``, zeros without a mask)."""

    mask_rows: np.ndarray
    logits: np.ndarray
    probs: np.ndarray
    out: np.ndarray


def _f64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def core_stages(q, k, v, bias, mask, scale: float) -> CoreStages:
    """The oracle's forward from ``q, k, v`` ``(B_, nH, N, d)``, ``bias`` ``(nH, N, N)`` and an additive (or
    boolean may-attend) ``mask`` ``(nW, N, N)`` or None: row ``b`` gets ``mask[b % nW]``; a row with no allowed key
    attends to nothing (``reference.softmax``)."""
    q, k, v, bias = (_f64(a) for a in (q, k, v, bias))
    n_rows, _, n_tokens, _ = q.shape
    if mask is None:
        mask_rows = np.zeros((n_rows, n_tokens, n_tokens))
    else:
        mask = reference.additive_mask(_f64(mask) if isinstance(mask, torch.Tensor) else mask)
        mask_rows = mask[np.arange(n_rows) % mask.shape[0]]
    logits = scale * np.einsum("bhie,bhje->bhij", q, k) + bias[None] + mask_rows[:, None]
    probs = reference.softmax(logits, axis=-1)
    return CoreStages(mask_rows, logits, probs, np.einsum("bhij,bhje->bhie", probs, v))


def core_vjp(q, k, v, bias, mask, scale: float, grad_out) -> dict[str, np.ndarray]:
    """Gradients of ``sum(core_stages(...).out * grad_out)`` with respect to ``q, k, v, bias``: the steps of the
    oracle's backward (``reference.window_attention_vjp``) from ``g_context`` to ``g_q, g_k, g_v`` and the bias."""
    st = core_stages(q, k, v, bias, mask, scale)
    q, k, v, g = (_f64(a) for a in (q, k, v, grad_out))
    g_probs = np.einsum("bhie,bhje->bhij", g, v)
    g_v = np.einsum("bhij,bhie->bhje", st.probs, g)
    row_term = np.sum(st.probs * g_probs, axis=-1, keepdims=True)
    g_logits = st.probs * (g_probs - row_term)
    return {
        "q": scale * np.einsum("bhij,bhje->bhie", g_logits, k),
        "k": scale * np.einsum("bhij,bhie->bhje", g_logits, q),
        "v": g_v,
        "bias": g_logits.sum(axis=0),
    }


def core_vjp_magnitudes(q, k, v, bias, mask, scale: float, grad_out) -> dict[str, float]:
    """The cancellation-free size of ``out`` and of each gradient (``refimpl.magnitudes``' rule: every factor by
    its absolute value, every difference a sum), as the floor of ``refimpl.tolerance`` wants it."""
    st = core_stages(q, k, v, bias, mask, scale)
    q, k, v, g = (np.abs(_f64(a)) for a in (q, k, v, grad_out))
    g_probs = np.einsum("bhie,bhje->bhij", g, v)
    row_term = np.sum(st.probs * g_probs, axis=-1, keepdims=True)
    g_logits = st.probs * (g_probs + row_term)
    sizes = {
        "out": np.einsum("bhij,bhje->bhie", st.probs, v),
        "q": abs(scale) * np.einsum("bhij,bhje->bhie", g_logits, k),
        "k": abs(scale) * np.einsum("bhij,bhie->bhje", g_logits, q),
        "v": np.einsum("bhij,bhie->bhje", st.probs, g),
        "bias": g_logits.sum(axis=0),
    }
    return {key: float(np.max(a, initial=0.0)) for key, a in sizes.items()}


def naive_core(q, k, v, bias, mask, scale: float) -> torch.Tensor:
    """The same computation in the inputs' dtype, as upstream writes it (``q * scale`` first, the mask added
    through the 5-D view ``(B_ // nW, nW, nH, N, N)``, eager softmax), with ``EagerWindowAttention``'s rule for rows
    with no allowed key (0, not NaN). Differentiable: the tolerance baseline of the output and of the gradients."""
    n_rows, num_heads, n_tokens, _ = q.shape
    attn = (q * scale) @ k.transpose(-2, -1) + bias.unsqueeze(0)
    dead = None
    if mask is not None:
        dead = torch.isneginf(mask).all(dim=-1)  # (nW, N)
        n_windows = mask.shape[0]
        attn = attn.view(n_rows // n_windows, n_windows, num_heads, n_tokens, n_tokens)
        attn = (attn + mask.masked_fill(dead[..., None], 0.0).unsqueeze(1).unsqueeze(0)).view(
            n_rows, num_heads, n_tokens, n_tokens)
    out = attn.softmax(dim=-1) @ v
    if dead is not None:
        rows = dead.repeat(n_rows // mask.shape[0], 1)[:, None, :, None]  # (B_, 1, N, 1): row b, window b % nW
        out = out.masked_fill(rows, 0.0)
    return out
