"""What differs between torch versions, as far as this suite is concerned: one test per row of the table in
docs/torch-versions.md, each asserting the documented behaviour for the torch it runs under.

The first version with each behaviour is written once, in ``FIRST_WITH``; the table gives the same versions.
When a test here fails, torch behaves differently from what the table says: update both together. (The suite
itself adapts by feature detection, never by version number; only this file reads the version, because the
table is indexed by it.)
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refimpl.counting import FUSED_CPU_SDPA_OP, dispatched_ops
from refimpl.suite import Unsupported
from refimpl.suite._core import missing_kernels

FIRST_WITH = {
    "float16 kernels on CPU": (2, 2),
    "register_flop_formula": (2, 2),
    "fused CPU SDPA with a mask": (2, 3),
    "sdpa_kernel": (2, 3),
    "counter blind to CPU SDPA": (2, 3),
    "numpy 2": (2, 3),
    "fully masked row gives 0": (2, 5),
    "flex_attention": (2, 5),
}



def since(row: str) -> bool:
    """Whether the running torch is at least the first version with the behaviour of ``row``."""
    return torch.__version__ >= FIRST_WITH[row]  # TorchVersion compares with tuples; local labels are ignored


def _qkv(dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, 5, 4, generator=generator, dtype=dtype) for _ in range(3)]


# ---- which kernel CPU SDPA runs ----


@pytest.mark.parametrize("kind", ["float-4d", "bool-4d", "float-3d"])
def test_cpu_sdpa_kernel_for_a_mask(kind):
    """A 4-D mask (additive float, or boolean) runs the fused ``_scaled_dot_product_flash_attention_for_cpu``
    from torch 2.3; before, SDPA decomposes into its math backend (bmm, softmax, bmm). A 3-D mask runs the math
    backend on every version (why ``WindowAttention`` always hands SDPA a 4-D mask)."""
    q, k, v = _qkv()
    mask = torch.randn(2, 3, 5, 5) if kind != "float-3d" else torch.randn(3, 5, 5)
    if kind == "bool-4d":
        mask = mask > -1.0
    ops = dispatched_ops(F.scaled_dot_product_attention, q, k, v, attn_mask=mask)
    fused = since("fused CPU SDPA with a mask") and kind != "float-3d"
    if fused:
        assert FUSED_CPU_SDPA_OP in ops and "bmm" not in ops, ops
    else:
        assert FUSED_CPU_SDPA_OP not in ops and ops.count("bmm") == 2, ops


def test_cpu_sdpa_mask_that_requires_grad_runs_the_math_backend():
    """On every version, a mask that requires grad sends CPU SDPA to the math backend (a learnable bias table
    under autograd therefore runs math: correct, slower)."""
    q, k, v = _qkv()
    mask = torch.randn(2, 3, 5, 5, requires_grad=True)
    ops = dispatched_ops(F.scaled_dot_product_attention, q, k, v, attn_mask=mask)
    assert FUSED_CPU_SDPA_OP not in ops and ops.count("bmm") == 2, ops


# ---- a query row with no allowed key, straight from SDPA ----


def _fully_masked_row_outputs(dtype):
    """SDPA's output row 2 and q's gradient when row 2 of the mask allows nothing: as an additive -inf row and as
    an all-False boolean row."""
    results = {}
    additive = torch.zeros(1, 1, 5, 5, dtype=dtype)
    additive[..., 2, :] = float("-inf")
    allowed = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    allowed[..., 2, :] = False
    for name, mask in (("additive -inf", additive), ("boolean", allowed)):
        q, k, v = _qkv(dtype)
        q.requires_grad_()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out.sum().backward()
        results[name] = (out[:, :, 2].detach(), q.grad)
    return results


def _assert_documented_fully_masked_row(results):
    for name, (row, grad) in results.items():
        if since("fully masked row gives 0"):
            assert torch.equal(row, torch.zeros_like(row)), (name, row)
            assert not grad.isnan().any(), name
        else:
            assert row.isnan().all(), (name, row)
            assert grad.isnan().any(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_cpu_sdpa_fully_masked_row(dtype):
    """A row with no allowed key gives NaN (output and gradients) before torch 2.5 and exactly 0 from 2.5 on
    (``_safe_softmax``), on CPU's default backend. ``WindowAttention`` never hands SDPA such a row (it zeroes the
    row itself), so its output is the same on every version."""
    _assert_documented_fully_masked_row(_fully_masked_row_outputs(dtype))


@pytest.mark.parametrize("backend", ["MATH", "FLASH_ATTENTION"])
def test_cpu_sdpa_fully_masked_row_on_each_backend(backend):
    """The same answer on each CPU backend chosen explicitly (NaN on 2.3 and 2.4, 0 from 2.5)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        pytest.skip(f"torch {torch.__version__} has no torch.nn.attention.sdpa_kernel: the backend cannot be chosen "
                    "(test_cpu_sdpa_fully_masked_row checks the default)")
    with sdpa_kernel(getattr(SDPBackend, backend)):
        results = _fully_masked_row_outputs(torch.float32)
    _assert_documented_fully_masked_row(results)


# ---- the FLOP counter and CPU SDPA ----

_COUNT_SDPA_WITHOUT_REGISTRATION = textwrap.dedent("""
    import torch, torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode
    q = torch.randn(2, 3, 5, 4)
    for mask in (None, torch.randn(2, 3, 5, 5)):
        with FlopCounterMode(display=False) as counter:
            F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
        print(counter.get_total_flops())
""")


def test_flop_counter_on_cpu_sdpa_without_registration():
    """Torch's own ``FlopCounterMode``, before ``refimpl.counting`` registers anything (a fresh interpreter): CPU
    SDPA is counted (4 * B * nH * Sq * Sk * d) before torch 2.3, with and without a mask, and counted as 0 from 2.3,
    whose fused CPU op has no formula. ``refimpl.counting.count_flops`` registers one where the op exists, so it
    is right on every version (test_flops.py::test_cpu_sdpa_is_counted)."""
    run = subprocess.run([sys.executable, "-c", _COUNT_SDPA_WITHOUT_REGISTRATION], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    counts = [int(line) for line in run.stdout.split()]
    expected = 0 if since("counter blind to CPU SDPA") else 4 * 2 * 3 * 5 * 5 * 4
    assert counts == [expected, expected], counts


# ---- numpy ----


def test_numpy_interop():
    """Torch before 2.3 was compiled against numpy 1.x: under numpy 2, ``torch.from_numpy`` and ``Tensor.numpy``
    raise "Numpy is not available" (hence ``numpy<2`` in tox's torch 2.1 environment; the py311-torch21-numpy2
    environment runs this test under numpy 2). From 2.3 both numpy 1 and 2 work."""
    works = since("numpy 2") or int(np.__version__.split(".")[0]) < 2
    array = np.arange(6.0).reshape(2, 3)
    if works:
        assert np.array_equal(torch.from_numpy(array).numpy(), array)
        assert torch.as_tensor(array).dtype == torch.float64
    else:
        with pytest.raises(RuntimeError, match="Numpy is not available"):
            torch.from_numpy(array)
        with pytest.raises(RuntimeError, match="Numpy is not available"):
            torch.ones(2).numpy()


# ---- float16 on CPU ----


def test_float16_kernels_on_cpu():
    """Torch 2.1 has no CPU float16 kernels for matmul, softmax or convolution ("not implemented for 'Half'"), so
    ``run_property`` reports the float16 properties as unsupported there (a skip with that reason) before running
    any example; from 2.2 they run. bfloat16 runs on every version."""
    from refimpl.suite import load_implementation, properties_for, run_property

    missing = missing_kernels("cpu", "float16")
    assert missing_kernels("cpu", "bfloat16") is None
    if since("float16 kernels on CPU"):
        assert missing is None, missing
        return
    assert missing is not None and "not implemented for 'Half'" in missing, missing
    (prop,) = [p for p in properties_for("window_attention") if p.name == "forward_matches_oracle"]
    impl = load_implementation("window_attention", "refimpl.optimized:WindowAttention")
    with pytest.raises(Unsupported, match="has no float16"):
        run_property(prop, impl, "cpu", "float16")


# ---- APIs the suite and its tools use where present ----


def _has_register_flop_formula():
    from torch.utils import flop_counter

    return hasattr(flop_counter, "register_flop_formula")


def _importable(module):
    def probe():
        try:
            __import__(module)
        except ImportError:
            return False
        return True

    return probe


@pytest.mark.parametrize("row, present", [
    ("register_flop_formula", _has_register_flop_formula),
    ("sdpa_kernel", _importable("torch.nn.attention")),
    ("flex_attention", _importable("torch.nn.attention.flex_attention")),
], ids=["register_flop_formula", "sdpa_kernel", "flex_attention"])
def test_api_is_present_from_its_first_version(row, present):
    """``register_flop_formula`` from 2.2 (``refimpl.counting`` needs it only where CPU SDPA has its fused op,
    2.3+), ``torch.nn.attention.sdpa_kernel`` from 2.3 (the per-backend tests skip without it),
    ``torch.nn.attention.flex_attention`` from 2.5 (not used by the suite)."""
    assert present() == since(row)
