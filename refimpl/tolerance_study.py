"""Measure what the tolerance policy must separate: ``python -m refimpl.tolerance_study [--cases N]``.

For random window-attention cases (the property suite's own generator) and each dtype, it prints, as multiples
of the naive same-dtype error (``refimpl.baselines``) and in ulps of the output magnitude:

* the noise of *correct* implementations: refimpl's module on each route it takes (inference, forward under
  autograd, gradients) and a variant that scales the logits after ``q @ k^T`` instead of before (upstream's
  ``Attention`` order; a rounding-level difference);
* the error of the smallest realistic *bug* we know: a float32/float16 module whose softmax runs in bfloat16
  (and, for float64, a module that silently computes in float32), over the cases where it can show (N > 1).

``MULTIPLE`` and ``FLOOR_ULPS`` in ``refimpl.tolerance`` must sit above the first and below the second.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from refimpl import strategies as rst
from refimpl.baselines.window_attention import EagerWindowAttention
from refimpl.optimized import WindowAttention
from refimpl.suite import window_attention as W
from refimpl.tolerance import eps


class SoftmaxInBfloat16(EagerWindowAttention):
    """Bug: the probabilities are computed in bfloat16 inside a higher-precision module."""

    def forward(self, x, mask=None, temporal=False):
        original = torch.Tensor.softmax

        def low_precision_softmax(t, dim):
            return original(t.to(torch.bfloat16), dim).to(t.dtype)

        torch.Tensor.softmax = low_precision_softmax
        try:
            return super().forward(x, mask, temporal)
        finally:
            torch.Tensor.softmax = original


class ComputesInFloat32(EagerWindowAttention):
    """Bug (float64 only): silently runs in float32 and casts back."""

    def forward(self, x, mask=None, temporal=False):
        dtype = x.dtype
        module = EagerWindowAttention(self.dim, self.num_ttokens, self.window_size, self.num_heads, self.use_temporal,
                                      self.qkv.bias is not None, self.scale)
        module.load_state_dict(self.state_dict())
        module = module.float().eval()
        return module(x.float(), None if mask is None else mask.float(), temporal).to(dtype)


def _scaled_after(module_cls):
    """Module class computing logits as (q @ k^T) * scale (correct, different rounding)."""

    class Variant(module_cls):
        def forward(self, x, mask=None, temporal=False):
            mask = self._check_input(x, mask, temporal)
            b, n, c = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
            attn = (q @ k.transpose(-2, -1)) * self.scale
            attn = attn + self.attention_mask(x.shape, mask, temporal, x.dtype)
            out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
            return self.proj(out)

    return Variant


def _ratios(impl_cls, case, dtype, what="forward"):
    impl = W.Implementation(W.KIND, impl_cls.__name__, impl_cls)
    c = W.rounded_case(case, dtype)
    if what in ("forward", "inference"):
        expected = {"out": c.oracle_output()}
        with torch.set_grad_enabled(what == "forward"):  # inference: the routes taken without autograd
            actual = {"out": W.forward(W._run(impl, c, "cpu", dtype), c, "cpu", dtype)}
        naive = {"out": W.forward(W._run(W.EAGER, c, "cpu", dtype), c, "cpu", dtype)}
    else:
        expected = c.oracle_vjp()
        actual = W.gradients(W._run(impl, c, "cpu", dtype, train=True), c, "cpu", dtype)
        naive = W.gradients(W._run(W.EAGER, c, "cpu", dtype, train=True), c, "cpu", dtype)
    worst_multiple, worst_ulps, best_multiple = 0.0, 0.0, np.inf
    for key, exp in expected.items():
        if not np.any(exp):
            continue
        act = actual[key].detach().double().cpu().numpy()
        nav = naive[key].detach().double().cpu().numpy()
        err = np.max(np.abs(act - exp))
        naive_err = np.max(np.abs(nav - exp))
        ulps = err / (eps(dtype) * np.max(np.abs(exp)))
        multiple = err / naive_err if naive_err > 0 else (np.inf if err > 0 else 0.0)
        worst_multiple, worst_ulps = max(worst_multiple, multiple), max(worst_ulps, ulps)
        best_multiple = min(best_multiple, multiple)
    return worst_multiple, worst_ulps, best_multiple


def _random_case(rng) -> rst.WindowAttentionCase:
    heads = int(rng.integers(1, 17))
    config = rst.WindowAttentionConfig(
        dim=heads * int(rng.integers(1, 9)),
        num_heads=heads,
        window_size=(int(rng.integers(1, 8)), int(rng.integers(1, 8))),
        num_ttokens=int(rng.integers(1, 17)),
        qkv_bias=bool(rng.integers(2)),
    )
    temporal = bool(rng.integers(2))
    has_mask = not temporal and bool(rng.integers(2))
    return rst.WindowAttentionCase.build(
        config, temporal=temporal, batch=int(rng.integers(1, 4)), n_windows=int(rng.integers(1, 5)) if has_mask else 1,
        has_mask=has_mask, seed=int(rng.integers(2**32)),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    rows = []
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        rng = np.random.default_rng(args.seed)
        cases = [_random_case(rng) for _ in range(args.cases)]
        measured = {
            "refimpl, inference": [_ratios(WindowAttention, c, dtype, "inference") for c in cases],
            "refimpl, forward under autograd": [_ratios(WindowAttention, c, dtype) for c in cases],
            "refimpl, gradients": [_ratios(WindowAttention, c, dtype, "grad") for c in cases],
            "scale after q@k^T, forward": [_ratios(_scaled_after(WindowAttention), c, dtype) for c in cases],
        }
        bugs = {}
        if dtype in (torch.float32, torch.float16, torch.float64):
            bugs["softmax in bfloat16"] = [_ratios(SoftmaxInBfloat16, c, dtype) for c in cases]
        if dtype == torch.float64:
            bugs["computes in float32"] = [_ratios(ComputesInFloat32, c, dtype) for c in cases]
        for name, values in measured.items():
            multiples = np.array([m for m, _, _ in values])
            ulps = np.array([u for _, u, _ in values])
            rows.append((str(dtype).removeprefix("torch."), "correct", name, f"{np.nanmax(multiples):.2f}",
                         f"{np.percentile(multiples, 99):.2f}", f"{np.nanmax(ulps):.1f}"))
        for name, values in bugs.items():
            # a softmax over one key is exactly 1 in any precision: the bug cannot show when N == 1
            values = [val for val, case in zip(values, cases, strict=True) if case.n_tokens > 1]
            multiples = np.array([m for m, _, _ in values])
            ulps = np.array([u for _, u, _ in values])
            rows.append((str(dtype).removeprefix("torch."), "bug", name, f"min {np.min(multiples):.1f}",
                         f"p1 {np.percentile(multiples, 1):.1f}", f"min {np.min(ulps):.1f}"))
    header = ("dtype", "kind", "implementation", "max x naive error", "p99 (bugs: p1)", "ulps of the largest output")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
