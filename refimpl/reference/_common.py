"""What both attention oracles (window attention and the per-token shifted-window oracle) share."""

from __future__ import annotations

import numpy as np


def softmax(x, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64 (the row maximum is subtracted before ``exp``).

    A row whose every entry is ``-inf`` (a query with no key it may attend to) gives all-zero probabilities:
    it attends to nothing. That is refimpl's decision for fully masked rows (docs/semantics.md); plain softmax
    would give NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    row_max = np.max(x, axis=axis, keepdims=True)
    attends_to_nothing = row_max == -np.inf
    e = np.exp(x - np.where(attends_to_nothing, 0.0, row_max))  # exp(-inf) = 0
    total = np.sum(e, axis=axis, keepdims=True)
    return np.where(attends_to_nothing, 0.0, e / np.where(attends_to_nothing, 1.0, total))


def attention_scale(head_dim: int, qk_scale) -> float:
    """The factor of ``q k^T``: ``qk_scale``, or ``head_dim ** -0.5`` when it is None or 0."""
    # AIM writes ``qk_scale or head_dim ** -0.5``: a qk_scale of 0 (or None) means the default.
    return float(qk_scale) if qk_scale else head_dim**-0.5
