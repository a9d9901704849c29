"""``triton_window_attention``: the Triton window-attention kernel's entry point, its input checks and its gate.

Nothing here imports triton at import time: the kernels (``_triton_kernels.py``) load on first use, so that this
module imports on a machine without triton, and so that ``TRITON_INTERPRET=1`` set before that first use runs them
under Triton's interpreter (CPU tensors).
"""

from __future__ import annotations

import functools
import math
import numbers

import torch

__all__ = ["triton_window_attention", "is_available", "supports", "unsupported_reason", "block_sizes",
           "launch_meta", "SUPPORTED_DTYPES", "HEAD_DIMS"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = tuple(range(16, 129, 16))  # multiples of 16 (tl.dot's smallest K) up to 128
MIN_CAPABILITY = (8, 0)  # sm_80 and sm_90 are the targets the ahead-of-time compile test covers

_INSTALL_HINT = "pip install triton"
MIN_TRITON_MAJOR = 3  # the API the kernels and the ahead-of-time compile use (interpreter on CPU tensors included)


@functools.cache
def _kernels():
    """The kernels module, imported once; a clear ImportError when triton is missing."""
    try:
        import triton

        major = int(str(getattr(triton, "__version__", "0")).split(".")[0] or 0)
        if major < MIN_TRITON_MAJOR:  # e.g. triton 2.1.0, which torch 2.1's CUDA build pulls in
            raise ImportError(f"triton {triton.__version__} is too old: the kernels use the triton >= "
                              f"{MIN_TRITON_MAJOR} API (torch 2.13 pairs with triton 3.7.1)")
        from refimpl.kernels import _triton_kernels
    except ImportError as exc:
        raise ImportError(
            f"refimpl.kernels.triton_window_attention needs triton, which is not importable here ({exc}); "
            f"install it with `{_INSTALL_HINT}` (Linux, with a CUDA GPU, or set TRITON_INTERPRET=1 before the first "
            f"call to run the kernels on CPU tensors under Triton's interpreter)"
        ) from exc
    return _triton_kernels


def is_available() -> bool:
    """Whether triton imports here (not whether a GPU is present: see ``supports``)."""
    try:
        _kernels()
    except ImportError:
        return False
    return True


def _interpreted() -> bool:
    """Whether the kernels were built under ``TRITON_INTERPRET=1`` (they then take CPU tensors only)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_kernels()._fwd_kernel, InterpretedFunction)


def block_sizes(n_tokens: int, head_dim: int) -> tuple[int, int]:
    """``(BLOCK_M, BLOCK_N)`` for ``N`` tokens (``head_dim`` is accepted for a future choice that depends on it):
    16 x 16 for windows of up to 16 tokens, else 32 x 32 (a 7x7 window is two tiles, 12x12 five). Both >= 16:
    a ``tl.dot`` with K < 16 does not compile for the GPU. Not 64: the float32 ``ieee`` dots run on FMA units,
    where a 64-wide tile gains little and quadruples the unrolled code (a dK/dV kernel at d = 64 took 5.8 s to
    compile for sm_90 and 97 KiB of shared memory)."""
    block = 16 if n_tokens <= 16 else 32
    return block, block


def _num_warps(head_dim: int) -> int:
    return 4 if head_dim <= 64 else 8


# ---- input checks ----


def _shape(t) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _check(q, k, v, bias, mask, scale, *, bias_required: bool = True) -> None:
    """Raise ``TypeError`` / ``ValueError`` naming the argument, its value and what was expected (``bias`` may be
    None only for the gate, which then judges q and the mask alone)."""
    for name, t in (("q", q), ("k", k), ("v", v)) + ((("bias", bias),) if bias_required or bias is not None else ()):
        _check_tensor(name, t)
    if q.dim() != 4:
        raise ValueError(f"q must be 4-D (B_, nH, N, d), got shape {_shape(q)}")
    n_rows, num_heads, n_tokens, head_dim = _shape(q)
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q must be float16, bfloat16 or float32, got {q.dtype}")
    if min(n_rows, num_heads, n_tokens) < 1:
        raise ValueError(f"q must have B_, nH, N >= 1, got shape {_shape(q)}")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"q's head dim d must be a multiple of 16 in [16, 128], got d={head_dim} (q shape "
                         f"{_shape(q)}); the kernel's BLOCK_D is d and tl.dot needs multiples of 16")
    for name, t in (("k", k), ("v", v)):
        if _shape(t) != _shape(q):
            raise ValueError(f"{name} must have q's shape (B_, nH, N, d) = {_shape(q)}, got {_shape(t)}")
    tensors = [("k", k), ("v", v)]
    if bias is not None:
        expected_bias = (num_heads, n_tokens, n_tokens)
        if _shape(bias) != expected_bias:
            raise ValueError(f"bias must be (nH, N, N) = {expected_bias}, got shape {_shape(bias)}")
        tensors.append(("bias", bias))
    if mask is not None:
        _check_tensor("mask", mask)
        if mask.dim() != 3 or _shape(mask)[1:] != (n_tokens, n_tokens) or mask.shape[0] < 1:
            raise ValueError(f"mask must be None or (nW, N, N) with N={n_tokens}, got shape {_shape(mask)}")
        if n_rows % mask.shape[0]:
            raise ValueError(f"q's B_={n_rows} must be a multiple of the mask's nW={mask.shape[0]} (row b uses "
                             f"mask[b % nW])")
        tensors.append(("mask", mask))
    for name, t in tensors:
        if t.dtype != q.dtype:
            what = "an additive float mask of q's dtype" if name == "mask" else "q's dtype"
            raise TypeError(f"{name} must have {what} {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite real number (e.g. d ** -0.5), got {scale!r}")


def unsupported_reason(q, bias=None, mask=None) -> str | None:
    """``None`` when the kernel can run ``triton_window_attention(q, q-shaped k, v, bias, mask)`` here, else why
    not. The gate: triton importable; ``q`` float16 / bfloat16 / float32 ``(B_, nH, N, d)`` with ``d`` in
    16, 32, ..., 128; ``bias`` ``(nH, N, N)`` and ``mask`` (``None`` or ``(nW, N, N)``, ``B_ % nW == 0``) of q's
    dtype and device; ``q`` on a CUDA device of compute capability >= 8.0, or on the CPU under Triton's
    interpreter (``TRITON_INTERPRET=1``)."""
    if not is_available():
        return f"triton is not importable (`{_INSTALL_HINT}`)"
    try:
        _check(q, q, q, bias, mask, 1.0, bias_required=False)
    except (TypeError, ValueError) as exc:
        return str(exc)
    if q.device.type == "cuda":
        if _interpreted():
            return "TRITON_INTERPRET=1: the kernels were built for the interpreter, which runs on CPU tensors"
        capability = torch.cuda.get_device_capability(q.device)
        if capability < MIN_CAPABILITY:
            return f"CUDA device {q.device} has compute capability {capability}, the kernel needs >= {MIN_CAPABILITY}"
        return None
    if q.device.type == "cpu" and _interpreted():
        return None
    return (f"q is on {q.device}: the kernel runs on CUDA devices, or on CPU tensors under Triton's interpreter "
            f"(TRITON_INTERPRET=1 set before triton is imported)")


def supports(q, bias=None, mask=None) -> bool:
    """Whether ``triton_window_attention`` runs for this ``q`` (and ``bias``, ``mask``) here: see
    ``unsupported_reason`` for the rule. Cheap: shapes, dtypes and devices only, no launch."""
    return unsupported_reason(q, bias, mask) is None


# ---- the autograd Function ----


def launch_meta(n_tokens: int, head_dim: int) -> dict:
    """The compile-time parameters of every launch for ``N`` tokens and head dim ``d`` (the ahead-of-time compile
    test enumerates these): tile sizes, ``HEAD_DIM = d``, ``BLOCK_D`` = d rounded up to a power of 2, warps, and
    two pipeline stages: Triton's default three, with float32 tiles at d > 64, needs 100-135 KiB of shared memory,
    more than sm_86 / sm_89 give a block (99 KiB); two stay at or under 82 KiB (measured by the AOT test)."""
    block_m, block_n = block_sizes(n_tokens, head_dim)
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "HEAD_DIM": head_dim,
            "BLOCK_D": 1 << (head_dim - 1).bit_length(), "num_warps": _num_warps(head_dim), "num_stages": 2}


# dBias: how many programs the dBias kernel aims for. Its programs split the B_ windows into chunks, each summed in
# registers, so that a large batch still fills a GPU; the chunks' partial sums are then added in float32 in a fixed
# order (deterministic: no atomics).
DBIAS_TARGET_PROGRAMS = 1024


def _dbias_chunks(n_rows: int, n_programs_per_chunk: int) -> tuple[int, int]:
    """``(n_chunks, windows_per_chunk)`` for the dBias kernel: about ``DBIAS_TARGET_PROGRAMS`` programs, at least
    one window per chunk, every chunk but the last full."""
    n_chunks = max(1, min(n_rows, -(-DBIAS_TARGET_PROGRAMS // max(1, n_programs_per_chunk))))
    per_chunk = -(-n_rows // n_chunks)
    return -(-n_rows // per_chunk), per_chunk


class _TritonWindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, mask, scale):
        kern = _kernels()
        q, k, v, bias = (t.contiguous() for t in (q, k, v, bias))
        mask_c = None if mask is None else mask.contiguous()
        n_rows, num_heads, n_tokens, head_dim = q.shape
        meta = launch_meta(n_tokens, head_dim)
        out = torch.empty_like(q)
        lse = torch.empty((n_rows, num_heads, n_tokens), dtype=torch.float32, device=q.device)
        n_windows = 1 if mask_c is None else mask_c.shape[0]
        grid = (n_rows * num_heads, -(-n_tokens // meta["BLOCK_M"]))
        kern._fwd_kernel[grid](
            q, k, v, bias, bias if mask_c is None else mask_c, out, lse, n_tokens, num_heads, n_windows,
            float(scale), HAS_MASK=mask_c is not None, **meta)
        ctx.save_for_backward(q, k, v, bias, mask_c, out, lse)
        ctx.scale = float(scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        kern = _kernels()
        q, k, v, bias, mask, out, lse = ctx.saved_tensors
        need_q, need_k, need_v, need_bias = ctx.needs_input_grad[:4]
        do = grad_out.contiguous().to(q.dtype)
        n_rows, num_heads, n_tokens, head_dim = q.shape
        meta = launch_meta(n_tokens, head_dim)
        has_mask = mask is not None
        mask_arg = mask if has_mask else bias  # an unused pointer when HAS_MASK is False
        n_windows = mask.shape[0] if has_mask else 1
        tiles_m = -(-n_tokens // meta["BLOCK_M"])
        tiles_n = -(-n_tokens // meta["BLOCK_N"])

        delta = torch.empty_like(lse)
        kern._bwd_preprocess_kernel[(n_rows * num_heads, tiles_m)](
            out, do, delta, n_tokens, BLOCK_M=meta["BLOCK_M"], HEAD_DIM=head_dim, BLOCK_D=meta["BLOCK_D"],
            num_warps=meta["num_warps"], num_stages=meta["num_stages"])
        common = (bias, mask_arg, do, lse, delta)
        dq = dk = dv = dbias = None
        if need_q:
            dq = torch.empty_like(q)
            kern._bwd_dq_kernel[(n_rows * num_heads, tiles_m)](
                q, k, v, *common, dq, n_tokens, num_heads, n_windows, ctx.scale, HAS_MASK=has_mask, **meta)
        if need_k or need_v:
            dk, dv = torch.empty_like(k), torch.empty_like(v)
            kern._bwd_dkdv_kernel[(n_rows * num_heads, tiles_n)](
                q, k, v, *common, dk, dv, n_tokens, num_heads, n_windows, ctx.scale, HAS_MASK=has_mask, **meta)
        if need_bias:
            n_chunks, per_chunk = _dbias_chunks(n_rows, tiles_m * tiles_n * num_heads)
            partial = torch.empty((n_chunks, num_heads, n_tokens, n_tokens), dtype=torch.float32, device=q.device)
            kern._bwd_dbias_kernel[(tiles_m * tiles_n, num_heads, n_chunks)](
                q, k, v, *common, partial, n_rows, n_tokens, num_heads, n_windows, ctx.scale, per_chunk,
                HAS_MASK=has_mask, **meta)
            dbias = partial.sum(0).to(bias.dtype)
        return dq, dk if need_k else None, dv if need_v else None, dbias, None, None


def triton_window_attention(q, k, v, bias, mask=None, *, scale):
    """``softmax(scale * q k^T + bias[h] + mask[b % nW]) v`` per window ``b`` and head ``h``, in Triton.

    ``q, k, v``: ``(B_, nH, N, d)``, float16 / bfloat16 / float32, ``d`` a multiple of 16 up to 128;
    ``bias``: ``(nH, N, N)``; ``mask``: ``None`` or additive ``(nW, N, N)`` (0 where allowed, e.g. -100 or -inf
    where not), ``B_ % nW == 0``, row ``b`` using ``mask[b % nW]``; all of q's dtype and device. A query row with no
    allowed key (all ``-inf``) gives 0 and passes zero gradient. Returns ``(B_, nH, N, d)`` in q's dtype,
    differentiable in ``q``, ``k``, ``v`` and ``bias`` (not ``mask``). Accumulates in float32; float32 inputs are
    multiplied in IEEE float32, never tf32.

    Runs on CUDA (compute capability >= 8.0), or on CPU tensors with ``TRITON_INTERPRET=1`` set before triton is
    imported. Raises ImportError (naming ``pip install triton``) without triton, ``TypeError`` / ``ValueError``
    on bad input, and ``RuntimeError`` on a device the kernel cannot run on.
    """
    _check(q, k, v, bias, mask, scale)
    _kernels()  # ImportError with the install hint before anything else
    reason = unsupported_reason(q, bias, mask)
    if reason is not None:
        raise RuntimeError(f"triton_window_attention cannot run here: {reason}")
    return _TritonWindowAttention.apply(q, k, v, bias, mask, float(scale))
