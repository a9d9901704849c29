"""``refimpl.kernels.triton_window_attention`` against the float64 oracle: under Triton's interpreter on CPU
tensors, or on a CUDA device (the GPU run, ``.ci/gpu``), compiled for real.

Not collected by default (the name does not start with ``test_``): ``TRITON_INTERPRET=1`` must be set before triton
is imported, so ``properties/test_kernels.py`` runs this module in a process of its own, with the interpreter on
CPU and (where a CUDA device is present) without it on CUDA::

    TRITON_INTERPRET=1 python -m pytest properties/kernels_interpreted.py -q     # CPU tensors, interpreted
    python -m pytest properties/kernels_interpreted.py -q                        # CUDA tensors

Every comparison goes through the project's tolerance policy (``refimpl.tolerance``), with the naive same-dtype
torch computation (``refimpl.kernels.testing.naive_core``) as baseline and the cancellation-free magnitudes as
the floor's scale. Each interpreter call costs 0.05-3 s, so the example counts are small
(``REFIMPL_INTERPRETED_EXAMPLES``, default 20 per dtype) and Hypothesis' explain phase, which reruns a failing
example many times, is off.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if not (INTERPRETED or torch.cuda.is_available()):
    pytest.skip("run with TRITON_INTERPRET=1 (CPU tensors) or on a CUDA device (properties/test_kernels.py starts "
                "such a process)", allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
DEVICE = "cpu" if INTERPRETED else "cuda"

from refimpl import strategies as rst  # noqa: E402
from refimpl.kernels import HEAD_DIMS, supports, triton_window_attention, unsupported_reason  # noqa: E402
from refimpl.kernels import _triton_window_attention as impl  # noqa: E402
from refimpl.kernels.testing import core_stages, core_vjp, core_vjp_magnitudes, naive_core  # noqa: E402
from refimpl.tolerance import assert_close, assert_close_mapping  # noqa: E402

EXAMPLES = int(os.environ.get("REFIMPL_INTERPRETED_EXAMPLES", "20"))
PHASES = [Phase.explicit, Phase.generate, Phase.shrink]  # no Phase.explain: it reruns the kernel many times
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MASKS = (None, "-100", "-inf", "-inf, rows with no allowed key")


@dataclass(frozen=True)
class KernelCase:
    """One call: ``images * n_windows`` windows of ``Wh x Ww`` tokens, ``heads`` heads of ``head_dim``; the
    arrays (float64, drawn from ``seed``) are rounded to ``dtype`` before anyone sees them."""

    dtype: str
    images: int
    n_windows: int
    heads: int
    window: tuple[int, int]
    head_dim: int
    mask: str | None
    sharp: bool  # logits 4x the default scale: peaked rows, where a -100 mask and exp underflow matter
    bias_scale: float
    seed: int
    arrays: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        n_rows, n = self.images * self.n_windows, self.window[0] * self.window[1]
        shape = (n_rows, self.heads, n, self.head_dim)
        arrays = {name: rng.standard_normal(shape) for name in ("q", "k", "v", "grad_out")}
        arrays["bias"] = self.bias_scale * rng.standard_normal((self.heads, n, n))
        if self.mask is not None:
            convention = "-100" if self.mask == "-100" else "-inf"
            arrays["mask"] = rst.random_window_mask(self.n_windows, n, rng, convention=convention,
                                                    fully_masked_rows=self.mask.endswith("no allowed key"))
        torch_dtype = DTYPES[self.dtype]
        rounded = {k: torch.as_tensor(a).to(torch_dtype).double().numpy() for k, a in arrays.items()}
        object.__setattr__(self, "arrays", rounded)

    @property
    def scale(self) -> float:
        return (4.0 if self.sharp else 1.0) * self.head_dim**-0.5

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def tensor(self, name: str, requires_grad: bool = False) -> torch.Tensor:
        return torch.tensor(self.arrays[name], dtype=self.torch_dtype, device=DEVICE, requires_grad=requires_grad)

    def mask_tensor(self):
        return None if self.mask is None else self.tensor("mask")

    def oracle_args(self):
        a = self.arrays
        return a["q"], a["k"], a["v"], a["bias"], a.get("mask"), self.scale


@st.composite
def kernel_cases(draw, dtype: str):
    n_windows = draw(st.integers(1, 3))
    return KernelCase(
        dtype=dtype,
        images=draw(st.integers(1, 2)),
        n_windows=n_windows,
        heads=draw(st.integers(1, 2)),
        window=(draw(st.integers(1, 12)), draw(st.integers(1, 12))),  # N up to 144: five 32-token tiles
        head_dim=draw(st.sampled_from(HEAD_DIMS)),
        mask=draw(st.sampled_from(MASKS)),
        sharp=draw(st.booleans()),
        bias_scale=draw(st.sampled_from([1.0, 0.02, 5.0])),
        seed=draw(rst.seeds),
    )


def run_kernel(case: KernelCase):
    """The kernel's output and its gradients of ``sum(out * grad_out)``."""
    q, k, v, bias = (case.tensor(n, requires_grad=True) for n in ("q", "k", "v", "bias"))
    out = triton_window_attention(q, k, v, bias, case.mask_tensor(), scale=case.scale)
    assert out.dtype == case.torch_dtype and out.shape == q.shape
    out.backward(case.tensor("grad_out"))
    return out.detach(), {"q": q.grad, "k": k.grad, "v": v.grad, "bias": bias.grad}


def run_baseline(case: KernelCase):
    q, k, v, bias = (case.tensor(n, requires_grad=True) for n in ("q", "k", "v", "bias"))
    out = naive_core(q, k, v, bias, case.mask_tensor(), case.scale)
    out.backward(case.tensor("grad_out"))
    return out.detach(), {"q": q.grad, "k": k.grad, "v": v.grad, "bias": bias.grad}


def check_against_oracle(case: KernelCase) -> None:
    out, grads = run_kernel(case)
    base_out, base_grads = run_baseline(case)
    expected = core_stages(*case.oracle_args())
    expected_grads = core_vjp(*case.oracle_args(), case.arrays["grad_out"])
    sizes = core_vjp_magnitudes(*case.oracle_args(), case.arrays["grad_out"])
    assert_close(out, expected.out, baseline=base_out, dtype=case.torch_dtype, what="output",
                 magnitude=sizes["out"])
    assert_close_mapping(grads, expected_grads, baseline=base_grads, dtype=case.torch_dtype, what="gradient",
                         magnitudes={key: sizes[key] for key in expected_grads})
    # rows with no allowed key: exactly 0 out, exactly 0 gradient through them (the oracle says 0, not "small")
    dead = torch.as_tensor(np.isneginf(expected.mask_rows).all(axis=-1))[:, None, :]  # (B_, 1, N)
    dead = dead.expand(out.shape[:3])
    assert torch.all(out[dead] == 0), "a row with no allowed key must give exactly 0"
    assert torch.all(grads["q"][dead] == 0), "dq of a row with no allowed key must be exactly 0"


def _settings():
    return settings(max_examples=EXAMPLES, phases=PHASES, deadline=None)


# explicit examples: windows past one tile (7x7 = 49, 12x12 = 144), padded head dims, every mask convention
_EXAMPLES = {
    "float32": [KernelCase("float32", 2, 2, 2, (7, 7), 32, "-inf, rows with no allowed key", False, 1.0, 1),
                KernelCase("float32", 1, 1, 1, (1, 1), 16, None, False, 1.0, 2)],
    "float16": [KernelCase("float16", 1, 2, 1, (12, 12), 128, "-inf, rows with no allowed key", True, 1.0, 3),
                KernelCase("float16", 2, 1, 1, (3, 11), 80, None, False, 5.0, 4)],
    "bfloat16": [KernelCase("bfloat16", 1, 2, 1, (12, 12), 48, "-100", True, 1.0, 5),
                 KernelCase("bfloat16", 2, 3, 2, (5, 5), 64, "-inf", False, 0.02, 6)],
}


def _with_examples(dtype: str):
    def decorate(test):
        for case in _EXAMPLES[dtype]:
            test = example(case=case)(test)
        return test
    return decorate


@_settings()
@_with_examples("float32")
@given(case=kernel_cases("float32"))
def test_float32_matches_the_oracle(case):
    check_against_oracle(case)


@_settings()
@_with_examples("float16")
@given(case=kernel_cases("float16"))
def test_float16_matches_the_oracle(case):
    check_against_oracle(case)


@_settings()
@_with_examples("bfloat16")
@given(case=kernel_cases("bfloat16"))
def test_bfloat16_matches_the_oracle(case):
    check_against_oracle(case)


# ---- behaviours a random case may miss ----


def _case(**overrides) -> KernelCase:
    base = dict(dtype="float32", images=2, n_windows=2, heads=2, window=(5, 7), head_dim=48,
                mask="-inf, rows with no allowed key", sharp=False, bias_scale=1.0, seed=7)
    return KernelCase(**{**base, **overrides})


def test_the_gate_admits_this_device():
    """CPU tensors under the interpreter, CUDA tensors on a GPU."""
    case = _case()
    q, bias = case.tensor("q"), case.tensor("bias")
    assert supports(q, bias, case.mask_tensor()), unsupported_reason(q, bias, case.mask_tensor())
    assert supports(q)
    assert not supports(q.to(torch.float64))
    assert not supports(q[..., :40])  # d = 40: not a multiple of 16


def test_backward_is_deterministic_and_dbias_sums_over_chunks_of_windows(monkeypatch):
    """dBias is summed per chunk of windows, then over chunks: bitwise the same on every run, and the same whatever
    the chunking (one chunk per window, or uneven chunks with a short last one)."""
    case = _case(images=5, n_windows=1, heads=1, window=(3, 3), head_dim=16, mask=None)

    def dbias():
        bias = case.tensor("bias", requires_grad=True)
        triton_window_attention(case.tensor("q"), case.tensor("k"), case.tensor("v"), bias,
                                scale=case.scale).backward(case.tensor("grad_out"))
        return bias.grad

    first = dbias()
    assert torch.equal(first, dbias())
    for programs in (1, 2):  # 5 windows: one chunk of 5; chunks of 3 and 2 (the default: 5 chunks of 1)
        monkeypatch.setattr(impl, "DBIAS_TARGET_PROGRAMS", programs)
        chunked = dbias()
        torch.testing.assert_close(chunked, first, rtol=0, atol=4 * torch.finfo(torch.float32).eps * first.abs().max())
    expected = core_vjp(*case.oracle_args(), case.arrays["grad_out"])["bias"]
    base = run_baseline(case)[1]["bias"]
    assert_close(first, expected, baseline=base, dtype=torch.float32, what="dbias",
                 magnitude=core_vjp_magnitudes(*case.oracle_args(), case.arrays["grad_out"])["bias"])


def test_strided_inputs_and_partial_gradients_give_the_same_result():
    """Views of one ``qkv`` tensor (as a module produces them) and a call where only some inputs need a gradient
    give what contiguous inputs give; the gradients not asked for are not computed."""
    case = _case()
    q, k, v, bias, mask = (case.tensor(n) for n in ("q", "k", "v", "bias", "mask"))
    reference_out = triton_window_attention(q, k, v, bias, mask, scale=case.scale)
    qkv = torch.stack([q, k, v]).permute(1, 3, 0, 2, 4).contiguous()  # (B_, N, 3, nH, d), like qkv(x).reshape
    views = qkv.permute(2, 0, 3, 1, 4)  # (3, B_, nH, N, d): non-contiguous
    bias_leaf = bias.clone().requires_grad_()
    out = triton_window_attention(views[0], views[1], views[2], bias_leaf, mask, scale=case.scale)
    assert torch.equal(out, reference_out)
    out.backward(case.tensor("grad_out"))
    full = run_kernel(case)[1]
    assert torch.equal(bias_leaf.grad, full["bias"])

    v_leaf = v.clone().requires_grad_()
    triton_window_attention(q, k, v_leaf, bias, mask, scale=case.scale).backward(case.tensor("grad_out"))
    assert torch.equal(v_leaf.grad, full["v"])


# ---- WindowAttention's kernel route, through the window-attention kind's own properties ----


def _kernel_routed(**kwargs):
    """refimpl's WindowAttention with its attention core forced onto the kernel (``attention_backend="triton"``)."""
    from refimpl.optimized import WindowAttention

    module = WindowAttention(**kwargs)
    module.attention_backend = "triton"
    return module


_kernel_routed.refimpl_capabilities = {"extensions": ["boolean_masks", "fully_masked_rows"]}

ROUTE_CASES = [  # head dims the kernel takes (the kind's strategies draw d <= 6, which it does not)
    pytest.param(dict(temporal=False, batch=2, n_windows=2, has_mask=True, mask_convention=convention,
                      fully_masked_rows=dead), (7, 7), id=f"7x7-{convention}{'-dead-rows' if dead else ''}")
    for convention, dead in [("-100", False), ("-inf", True), ("bool", True)]
] + [pytest.param(dict(temporal=True, batch=3, n_windows=1, has_mask=False), (4, 4), id="temporal"),
     pytest.param(dict(temporal=False, batch=1, n_windows=1, has_mask=False), (12, 12), id="12x12-unmasked")]


@pytest.mark.parametrize("name", ["forward_matches_oracle", "gradients_match_oracle"])
@pytest.mark.parametrize("build, window", ROUTE_CASES)
def test_window_attention_on_the_kernel_route_holds_the_kinds_properties(name, build, window):
    """WindowAttention with ``attention_backend="triton"`` (the route "auto" takes on CUDA): the kind's forward
    and gradient properties hold on cases the kernel takes (d = 16), spatial with every mask convention (rows with
    no allowed key included), temporal, and a 12x12 window (several key tiles), in float32."""
    from refimpl.suite import Implementation, properties_for
    from refimpl.suite.window_attention import KIND

    (prop,) = [p for p in properties_for(KIND) if p.name == name]
    config = rst.WindowAttentionConfig(dim=32, num_heads=2, window_size=window, num_ttokens=4)
    case = rst.WindowAttentionCase.build(config, seed=7, **build)
    prop.check(Implementation(KIND, "WindowAttention(attention_backend='triton')", _kernel_routed), case, DEVICE,
               torch.float32)


# ---- the figures in docs/kernels.md: TRITON_INTERPRET=1 python properties/kernels_interpreted.py ----


def measure(seeds=range(2)) -> None:
    """Max abs error vs float64 per dtype and quantity, the same in ulps of the cancellation-free magnitude, and
    the largest fraction of the policy's bound used, over a fixed grid of cases (windows 4x4, 7x7, 12x12; d 32,
    48, 128; every mask convention; default and 4x sharper logits)."""
    from refimpl.tolerance import compare, eps

    for dtype in DTYPES:
        worst, used, ulps = {}, {}, {}
        for seed, window, head_dim, mask in itertools.product(seeds, [(4, 4), (7, 7), (12, 12)], [32, 48, 128],
                                                               MASKS):
            case = KernelCase(dtype, 1, 2, 2, window, head_dim, mask, seed % 2 == 1, 1.0, seed)
            out, grads = run_kernel(case)
            base_out, base_grads = run_baseline(case)
            expected = {"out": core_stages(*case.oracle_args()).out,
                        **core_vjp(*case.oracle_args(), case.arrays["grad_out"])}
            sizes = core_vjp_magnitudes(*case.oracle_args(), case.arrays["grad_out"])
            for key, actual in {"out": out, **grads}.items():
                result = compare(actual, expected[key], baseline=(base_out if key == "out" else base_grads[key]),
                                 dtype=case.torch_dtype, magnitude=sizes[key])
                worst[key] = max(worst.get(key, 0.0), result.max_error)
                used[key] = max(used.get(key, 0.0), result.max_error / result.bound)
                ulps[key] = max(ulps.get(key, 0.0), result.max_error / (eps(case.torch_dtype) * sizes[key]))
        print(f"{dtype:9s} " + "  ".join(f"{k}: {worst[k]:.2e} = {ulps[k]:.1f} ulps, {used[k]:.0%} of bound"
                                         for k in worst))


if __name__ == "__main__":
    measure()
