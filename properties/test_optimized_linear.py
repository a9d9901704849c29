"""refimpl.optimized._linear.linear (oneDNN's GEMM on CPU float32) against F.linear in float64: values, first and
second derivatives, within the tolerance policy (baseline: F.linear in float32)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from refimpl.optimized._linear import linear, onednn_linear_available
from refimpl.tolerance import assert_close


def _derivatives(fn, x, w, b):
    """``y = fn(x, w, b)``, the gradients of ``sum(y^2)`` and the gradients of ``sum(grad^2)`` (a second derivative
    through the first)."""
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    y = fn(x, w, b)
    first = torch.autograd.grad((y * y).sum(), (x, w, b), create_graph=True)
    second = torch.autograd.grad(sum((g * g).sum() for g in first), (x, w, b))
    return {"y": y, **{f"d{n}": g for n, g in zip("xwb", first, strict=True)},
            **{f"dd{n}": g for n, g in zip("xwb", second, strict=True)}}


@given(rows=st.integers(1, 40), k=st.integers(1, 24), m=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_linear_values_and_two_derivatives_match_float64(rows, k, m, seed):
    if not onednn_linear_available():
        pytest.skip("the oneDNN linear route is off on this torch (it is F.linear here)")
    rng = np.random.default_rng(seed)
    x, w, b = (torch.as_tensor(rng.standard_normal(s), dtype=torch.float32) for s in ((rows, k), (m, k), (m,)))
    expected = _derivatives(F.linear, x.double(), w.double(), b.double())
    baseline = _derivatives(F.linear, x, w, b)
    actual = _derivatives(linear, x, w, b)
    for name, value in expected.items():
        assert_close(actual[name], value.detach().numpy(), baseline=baseline[name], dtype=torch.float32, what=name)
