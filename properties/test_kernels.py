"""``refimpl.kernels``: what holds without triton (imports, the install hint, input checks, the float64 core the
kernel is compared with), and, where triton is installed, two subprocesses: the Hypothesis properties under
Triton's interpreter (``properties/kernels_interpreted.py``, with ``TRITON_INTERPRET=1``) and the ahead-of-time
compile for sm_80 and sm_90 (``python -m refimpl.kernels.aot``). docs/kernels.md says what each proves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import reference
from refimpl import strategies as rst
from refimpl.kernels import HEAD_DIMS, block_sizes, is_available, supports, triton_window_attention
from refimpl.kernels.testing import core_stages, core_vjp
from refimpl.tolerance import assert_close, assert_vjp_matches_central_differences

ROOT = Path(__file__).resolve().parent.parent
HAS_TRITON = is_available()  # importable and recent enough (torch 2.1's CUDA build brings triton 2.1.0: too old)
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton >= 3 is not installed (pip install triton)")


def _env(**changes) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(changes)
    return env


def _tensors(n_rows=4, heads=2, n=9, d=16, n_windows=2, dtype=torch.float32, device="cpu"):
    q, k, v = (torch.zeros(n_rows, heads, n, d, dtype=dtype, device=device) for _ in range(3))
    return q, k, v, torch.zeros(heads, n, n, dtype=dtype, device=device), torch.zeros(n_windows, n, n, dtype=dtype,
                                                                                     device=device)


# ---- without triton ----


_BLOCK_TRITON = """
import sys
class _NoTriton:  # `import triton` fails, as on a machine without it
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _NoTriton())
import torch
import refimpl.kernels as kernels
assert not kernels.is_available()
q, b = torch.zeros(1, 1, 4, 16), torch.zeros(1, 4, 4)
assert not kernels.supports(q, b) and "pip install triton" in kernels.unsupported_reason(q, b)
try:
    kernels.triton_window_attention(q, q, q, b, scale=0.25)
except ImportError as exc:
    print(exc)
else:
    raise SystemExit("no ImportError without triton")
"""


def test_without_triton_the_package_imports_and_a_call_names_the_install():
    """Runs whether or not triton is installed here: the subprocess hides it."""
    run = subprocess.run([sys.executable, "-c", _BLOCK_TRITON], capture_output=True, text=True, cwd=ROOT,
                         env=_env(), timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "pip install triton" in run.stdout


@pytest.mark.skipif(HAS_TRITON, reason="triton is installed here (the subprocess test above hides it)")
def test_a_call_without_triton_raises_importerror_naming_the_install():
    q, k, v, bias, _ = _tensors()
    assert not is_available() and not supports(q, bias)
    with pytest.raises(ImportError, match="pip install triton"):
        triton_window_attention(q, k, v, bias, scale=0.25)


def _bad_inputs():
    q, k, v, bias, mask = _tensors()
    meta = torch.zeros(q.shape, device="meta")
    return [
        ("q 3-D", dict(q=q[0]), ValueError, r"q must be 4-D \(B_, nH, N, d\), got shape \(2, 9, 16\)"),
        ("d=40", dict(q=torch.zeros(4, 2, 9, 40)), ValueError, r"d=40"),
        ("d=144", dict(q=torch.zeros(4, 2, 9, 144)), ValueError, r"multiple of 16 in \[16, 128\], got d=144"),
        ("empty", dict(q=torch.zeros(0, 2, 9, 16)), ValueError, r"B_, nH, N >= 1"),
        ("q float64", dict(q=q.double()), TypeError, r"q must be float16, bfloat16 or float32, got torch.float64"),
        ("q a list", dict(q=[1.0]), TypeError, r"q must be a torch.Tensor, got list"),
        ("k shape", dict(k=k[:, :1]), ValueError, r"k must have q's shape .* \(4, 2, 9, 16\), got \(4, 1, 9, 16\)"),
        ("v shape", dict(v=v[..., :8, :]), ValueError, r"v must have q's shape"),
        ("bias shape", dict(bias=bias[:1]), ValueError, r"bias must be \(nH, N, N\) = \(2, 9, 9\), got shape"),
        ("mask 2-D", dict(mask=mask[0]), ValueError, r"mask must be None or \(nW, N, N\) with N=9, got shape \(9, 9\)"),
        ("B_ % nW", dict(mask=torch.zeros(3, 9, 9)), ValueError, r"B_=4 must be a multiple of the mask's nW=3"),
        ("k dtype", dict(k=k.half()), TypeError, r"k must have q's dtype torch.float32, got torch.float16"),
        ("bias dtype", dict(bias=bias.bfloat16()), TypeError, r"bias must have q's dtype"),
        ("mask bool", dict(mask=mask.bool()), TypeError, r"mask must have an additive float mask .* got torch.bool"),
        ("k device", dict(k=meta), ValueError, r"k must be on q's device cpu, got meta"),
        ("scale nan", dict(scale=float("nan")), TypeError, r"scale must be a finite real number .* got nan"),
        ("scale str", dict(scale="0.25"), TypeError, r"scale must be a finite real number"),
    ]


@pytest.mark.parametrize(("change", "error", "message"), [c[1:] for c in _bad_inputs()],
                         ids=[c[0] for c in _bad_inputs()])
def test_bad_input_is_refused_naming_the_argument_and_value(change, error, message):
    """Checked before triton is needed, so these hold with or without it."""
    q, k, v, bias, mask = _tensors()
    args = dict(q=q, k=k, v=v, bias=bias, mask=mask, scale=0.25) | change
    with pytest.raises(error, match=message):
        triton_window_attention(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("bias"), args.pop("mask"),
                                **args)


def test_scale_is_keyword_only():
    q, k, v, bias, _ = _tensors()
    with pytest.raises(TypeError):
        triton_window_attention(q, k, v, bias, None, 0.25)


def test_block_sizes_are_at_least_16_and_cover_a_window():
    """tl.dot needs K >= 16 on the GPU: every tile dimension that becomes a dot's K is BLOCK_M, BLOCK_N or d."""
    for d in HEAD_DIMS:
        for n in range(1, 200):
            block_m, block_n = block_sizes(n, d)
            assert block_m >= 16 and block_n >= 16 and block_m & (block_m - 1) == 0 and block_n & (block_n - 1) == 0


# ---- the float64 core the kernel is compared with is the oracle's ----


@settings(max_examples=15)
@given(rst.window_attention_cases(temporal=False))
def test_the_core_oracle_is_the_reference_forward(case):
    """``core_stages`` on the oracle's own q, k, v, bias and mask gives the oracle's probabilities and context."""
    stages = case.oracle_stages()
    core = core_stages(stages.q, stages.k, stages.v, stages.bias, case.mask, stages.scale)
    assert np.array_equal(core.mask_rows, stages.mask_rows)
    assert_close(core.probs, stages.probs, baseline=None, dtype=torch.float64, what="probs")
    n_rows, n_tokens, channels = stages.context.shape
    context = core.out.transpose(0, 2, 1, 3).reshape(n_rows, n_tokens, channels)  # (B_, N, nH*d), head-major
    assert_close(context, stages.context, baseline=None, dtype=torch.float64, what="context")


@settings(max_examples=15)
@given(n_rows=st.sampled_from([2, 4]), heads=st.integers(1, 2), n=st.integers(1, 7), d=st.integers(1, 4),
       convention=st.sampled_from([None, "-100", "-inf", "dead rows"]), seed=rst.seeds)
def test_the_core_vjp_matches_central_differences(n_rows, heads, n, d, convention, seed):
    rng = np.random.default_rng(seed)
    inputs = {name: rng.standard_normal((n_rows, heads, n, d)) for name in ("q", "k", "v")}
    inputs["bias"] = rng.standard_normal((heads, n, n))
    mask = None if convention is None else rst.random_window_mask(
        2, n, rng, convention="-100" if convention == "-100" else "-inf", fully_masked_rows=convention == "dead rows")
    grad_out, scale = rng.standard_normal((n_rows, heads, n, d)), 0.7

    def loss(a):
        return float(np.sum(core_stages(a["q"], a["k"], a["v"], a["bias"], mask, scale).out * grad_out))

    grads = core_vjp(inputs["q"], inputs["k"], inputs["v"], inputs["bias"], mask, scale, grad_out)
    assert_vjp_matches_central_differences(loss, grads, inputs, rng)


def test_the_core_gives_zero_on_rows_with_no_allowed_key():
    q = np.ones((2, 1, 3, 2))
    mask = np.zeros((1, 3, 3))
    mask[0, 1] = -np.inf
    out = core_stages(q, q, q, np.zeros((1, 3, 3)), mask, 1.0).out
    assert np.all(out[:, :, 1] == 0) and np.all(out[:, :, 0] == 1)
    assert reference.softmax(np.full(3, -np.inf)).tolist() == [0.0, 0.0, 0.0]


# ---- with triton: the interpreter properties and the ahead-of-time compile, each in a process of its own ----


@needs_triton
def test_the_kernel_matches_the_oracle_under_the_triton_interpreter():
    """``TRITON_INTERPRET=1`` must be set before triton is imported, hence a process of its own."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "properties/kernels_interpreted.py", "-q", "-p", "no:cacheprovider",
         "-p", "no:randomly", "--durations=5"],
        capture_output=True, text=True, cwd=ROOT, env=_env(TRITON_INTERPRET="1"), timeout=1800)
    output = run.stdout[-6000:] + run.stderr[-3000:]
    assert run.returncode == 0, output
    assert re.search(r"\b\d+ passed\b", output) and " skipped" not in output and " failed" not in output, output


@pytest.mark.cuda
@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_kernel_matches_the_oracle_on_cuda():
    """The same properties on CUDA tensors, the kernels compiled for the device (no interpreter)."""
    env = _env()
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "properties/kernels_interpreted.py", "-q", "-p", "no:cacheprovider",
         "-p", "no:randomly", "--durations=5"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
    output = run.stdout[-6000:] + run.stderr[-3000:]
    assert run.returncode == 0, output
    assert re.search(r"\b\d+ passed\b", output) and " skipped" not in output and " failed" not in output, output


@needs_triton
def test_the_kernels_compile_ahead_of_time_for_sm80_and_sm90(tmp_path):
    """Every configuration the gate admits (``REFIMPL_AOT_SCOPE=full``; by default the covering third) compiles to
    PTX and a cubin for sm_80 and sm_90 and fits in 99 KiB of shared memory. A fresh Triton cache: every compile is
    real. No GPU needed."""
    scope = os.environ.get("REFIMPL_AOT_SCOPE", "cover")
    run = subprocess.run(
        [sys.executable, "-m", "refimpl.kernels.aot", "--targets", "80,90", "--scope", scope],
        capture_output=True, text=True, cwd=ROOT, env=_env(TRITON_CACHE_DIR=str(tmp_path / "triton-cache")),
        timeout=3600)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-4000:]
    summary = json.loads(run.stdout)
    assert summary["configurations"] > 0 and not summary["failures"], summary
