"""The Triton kernels behind ``refimpl.kernels.triton_window_attention``. Imported only on first use: this module
imports triton, and ``TRITON_INTERPRET`` is read when the ``@triton.jit`` decorators below run.

Layout, fixed by the wrapper (``_triton_window_attention.py``), which makes every tensor contiguous:

* ``Q, K, V, Out, DO, DQ, DK, DV``: ``(B_, nH, N, D)``; program ``pid_bh = b * nH + h`` owns rows
  ``[pid_bh * N * D, (pid_bh + 1) * N * D)``;
* ``Bias``: ``(nH, N, N)``, read at head ``h``; ``Mask``: ``(nW, N, N)``, read at window ``b % nW`` (never a
  ``B_``-fold copy);
* ``LSE``, ``Delta``: float32 ``(B_, nH, N)``; ``LSE`` is ``+inf`` on rows with no allowed key, so that
  ``exp(s - lse)`` is 0 on every key of such a row (``s`` is ``-inf`` there, or finite) and the backward gives
  zero gradients through them, never NaN.

Numerics: every loaded tile is cast to float32 and every ``tl.dot`` runs with ``input_precision="ieee"``:
float32 storage must not silently drop to tf32 on the GPU, and under the interpreter a bfloat16 ``tl.dot``
multiplies raw bit patterns. Softmax statistics and accumulators are float32. Tiles: ``BLOCK_M`` query rows x
``BLOCK_N`` keys, both >= 16 (a dot with K < 16 does not compile for the GPU); ``HEAD_DIM = d`` (a multiple of 16,
<= 128) and ``BLOCK_D`` = d rounded up to a power of 2 (``tl.arange`` needs one: d = 48, 80, 96, 112 are padded,
the extra columns load as 0 and are never stored). Rows and keys past ``N`` are masked on load (``other=0``) and
their logits set to ``-inf``.

dBias is deterministic and atomic-free: ``_bwd_dbias_kernel`` gives each program one ``(query tile, key tile, head,
chunk of windows)`` and sums ``dS`` over its windows in registers; the wrapper then sums the chunks (float32).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _logits(q, k, Bias, Mask, bias_off, mask_off, offs_m, offs_n, N, scale, HAS_MASK: tl.constexpr):
    """``scale * q k^T + bias[h] + mask[b % nW]`` for one ``(BLOCK_M, BLOCK_N)`` tile, float32; ``-inf`` on keys
    past ``N`` (rows past ``N`` stay finite: their q is 0 and their bias and mask load as 0)."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    in_range = (offs_m[:, None] < N) & (offs_n[None, :] < N)
    tile = offs_m[:, None] * N + offs_n[None, :]
    s += tl.load(Bias + bias_off + tile, mask=in_range, other=0.0).to(tl.float32)
    if HAS_MASK:
        s += tl.load(Mask + mask_off + tile, mask=in_range, other=0.0).to(tl.float32)
    return tl.where(offs_n[None, :] < N, s, float("-inf"))


@triton.jit
def _fwd_kernel(Q, K, V, Bias, Mask, Out, LSE, N, nH, nW, scale,
                HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """Grid ``(B_ * nH, cdiv(N, BLOCK_M))``: one query tile of one (window, head); online softmax over key tiles."""
    pid_bh = tl.program_id(0)  # axis 0: B_ * nH may pass 65535, the limit of grid axes 1 and 2
    pid_m = tl.program_id(1)
    b = pid_bh // nH
    h = pid_bh % nH
    qkv_off = pid_bh.to(tl.int64) * N * HEAD_DIM  # int64: B_ * nH * N * D may pass 2^31
    bias_off = h.to(tl.int64) * N * N
    mask_off = (b % nW).to(tl.int64) * N * N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM  # BLOCK_D is d rounded up to a power of 2 (tl.arange needs one)
    row_ok = offs_m < N
    rows = offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    rows_ok = row_ok[:, None] & d_ok[None, :]

    q = tl.load(Q + qkv_off + rows, mask=rows_ok, other=0.0).to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv = offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        keys_ok = (offs_n[:, None] < N) & d_ok[None, :]
        k = tl.load(K + qkv_off + kv, mask=keys_ok, other=0.0).to(tl.float32)
        v = tl.load(V + qkv_off + kv, mask=keys_ok, other=0.0).to(tl.float32)
        s = _logits(q, k, Bias, Mask, bias_off, mask_off, offs_m, offs_n, N, scale, HAS_MASK)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row whose keys so far are all -inf has m_new = -inf; subtracting 0 instead keeps exp(-inf - -inf)
        # (NaN) out: its p and alpha are then exp(-inf) = 0.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        m_i = m_new

    dead = l_i == 0.0  # no allowed key: output 0, LSE +inf
    out = acc / tl.where(dead, 1.0, l_i)[:, None]
    tl.store(Out + qkv_off + rows, out.to(Out.dtype.element_ty), mask=rows_ok)
    lse = tl.where(dead, float("inf"), m_i + tl.log(tl.where(dead, 1.0, l_i)))
    tl.store(LSE + pid_bh.to(tl.int64) * N + offs_m, lse, mask=row_ok)


@triton.jit
def _bwd_preprocess_kernel(Out, DO, Delta, N,
                           BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid ``(B_ * nH, cdiv(N, BLOCK_M))``: ``delta = rowsum(dO * O)``, float32."""
    pid_bh = tl.program_id(0)  # axis 0: B_ * nH may pass 65535, the limit of grid axes 1 and 2
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM  # BLOCK_D is d rounded up to a power of 2 (tl.arange needs one)
    row_ok = offs_m < N
    ptrs = pid_bh.to(tl.int64) * N * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    rows_ok = row_ok[:, None] & d_ok[None, :]
    o = tl.load(Out + ptrs, mask=rows_ok, other=0.0).to(tl.float32)
    do = tl.load(DO + ptrs, mask=rows_ok, other=0.0).to(tl.float32)
    tl.store(Delta + pid_bh.to(tl.int64) * N + offs_m, tl.sum(o * do, 1), mask=row_ok)


@triton.jit
def _probs_and_dlogits(q, k, v, do, lse, delta, Bias, Mask, bias_off, mask_off, offs_m, offs_n, N, scale,
                       HAS_MASK: tl.constexpr):
    """The tile's probabilities ``P = exp(s - lse)`` and ``dS = P * (dO V^T - delta)`` (the softmax VJP)."""
    s = _logits(q, k, Bias, Mask, bias_off, mask_off, offs_m, offs_n, N, scale, HAS_MASK)
    p = tl.exp(s - lse[:, None])  # 0 on masked keys, keys past N, and every key of a dead row (lse = +inf)
    dp = tl.dot(do, tl.trans(v), input_precision="ieee")
    return p, p * (dp - delta[:, None])


@triton.jit
def _bwd_dq_kernel(Q, K, V, Bias, Mask, DO, LSE, Delta, DQ, N, nH, nW, scale,
                   HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    """Grid ``(B_ * nH, cdiv(N, BLOCK_M))``: ``dQ = scale * dS K`` for one query tile, looping over key tiles."""
    pid_bh = tl.program_id(0)  # axis 0: B_ * nH may pass 65535, the limit of grid axes 1 and 2
    pid_m = tl.program_id(1)
    b = pid_bh // nH
    h = pid_bh % nH
    qkv_off = pid_bh.to(tl.int64) * N * HEAD_DIM
    bias_off = h.to(tl.int64) * N * N
    mask_off = (b % nW).to(tl.int64) * N * N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM  # BLOCK_D is d rounded up to a power of 2 (tl.arange needs one)
    row_ok = offs_m < N
    rows = offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    rows_ok = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + qkv_off + rows, mask=rows_ok, other=0.0).to(tl.float32)
    do = tl.load(DO + qkv_off + rows, mask=rows_ok, other=0.0).to(tl.float32)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * N + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(Delta + pid_bh.to(tl.int64) * N + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv = offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        keys_ok = (offs_n[:, None] < N) & d_ok[None, :]
        k = tl.load(K + qkv_off + kv, mask=keys_ok, other=0.0).to(tl.float32)
        v = tl.load(V + qkv_off + kv, mask=keys_ok, other=0.0).to(tl.float32)
        p, ds = _probs_and_dlogits(q, k, v, do, lse, delta, Bias, Mask, bias_off, mask_off, offs_m, offs_n, N,
                                   scale, HAS_MASK)
        dq += tl.dot(ds, k, input_precision="ieee")
    dq = dq * scale  # d(scale q k^T)/dq: the scale belongs in dQ (and in dK)
    tl.store(DQ + qkv_off + rows, dq.to(DQ.dtype.element_ty), mask=rows_ok)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, Bias, Mask, DO, LSE, Delta, DK, DV, N, nH, nW, scale,
                     HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    """Grid ``(B_ * nH, cdiv(N, BLOCK_N))``: ``dV = P^T dO`` and ``dK = scale * dS^T Q`` for one key tile, looping
    over query tiles."""
    pid_bh = tl.program_id(0)  # axis 0: B_ * nH may pass 65535, the limit of grid axes 1 and 2
    pid_n = tl.program_id(1)
    b = pid_bh // nH
    h = pid_bh % nH
    qkv_off = pid_bh.to(tl.int64) * N * HEAD_DIM
    bias_off = h.to(tl.int64) * N * N
    mask_off = (b % nW).to(tl.int64) * N * N
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM  # BLOCK_D is d rounded up to a power of 2 (tl.arange needs one)
    key_ok = offs_n < N
    kv = offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    keys_ok = key_ok[:, None] & d_ok[None, :]
    k = tl.load(K + qkv_off + kv, mask=keys_ok, other=0.0).to(tl.float32)
    v = tl.load(V + qkv_off + kv, mask=keys_ok, other=0.0).to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N
        rows = offs_m[:, None] * HEAD_DIM + offs_d[None, :]
        rows_ok = row_ok[:, None] & d_ok[None, :]
        q = tl.load(Q + qkv_off + rows, mask=rows_ok, other=0.0).to(tl.float32)
        do = tl.load(DO + qkv_off + rows, mask=rows_ok, other=0.0).to(tl.float32)
        lse = tl.load(LSE + pid_bh.to(tl.int64) * N + offs_m, mask=row_ok, other=float("inf"))  # P = 0 past N
        delta = tl.load(Delta + pid_bh.to(tl.int64) * N + offs_m, mask=row_ok, other=0.0)
        p, ds = _probs_and_dlogits(q, k, v, do, lse, delta, Bias, Mask, bias_off, mask_off, offs_m, offs_n, N,
                                   scale, HAS_MASK)
        dv += tl.dot(tl.trans(p), do, input_precision="ieee")
        dk += tl.dot(tl.trans(ds), q, input_precision="ieee")
    dk = dk * scale
    tl.store(DK + qkv_off + kv, dk.to(DK.dtype.element_ty), mask=keys_ok)
    tl.store(DV + qkv_off + kv, dv.to(DV.dtype.element_ty), mask=keys_ok)


@triton.jit
def _bwd_dbias_kernel(Q, K, V, Bias, Mask, DO, LSE, Delta, DBiasPartial, B, N, nH, nW, scale, windows_per_chunk,
                      HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    """Grid ``(cdiv(N, BLOCK_M) * cdiv(N, BLOCK_N), nH, n_chunks)``: ``sum_b dS[b, h]`` over windows
    ``b`` in ``[chunk * windows_per_chunk, (chunk + 1) * windows_per_chunk)`` for one ``(query tile, key tile)``
    of head ``h``, written to ``DBiasPartial[chunk, h]`` (float32 ``(n_chunks, nH, N, N)``). Each output element
    has exactly one writer, so the sum is deterministic and needs no atomics."""
    pid_tile = tl.program_id(0)
    h = tl.program_id(1)
    chunk = tl.program_id(2)
    n_tiles_n = tl.cdiv(N, BLOCK_N)
    offs_m = (pid_tile // n_tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid_tile % n_tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM  # BLOCK_D is d rounded up to a power of 2 (tl.arange needs one)
    row_ok = offs_m < N
    key_ok = offs_n < N
    rows = offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    rows_ok = row_ok[:, None] & d_ok[None, :]
    kv = offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    keys_ok = key_ok[:, None] & d_ok[None, :]
    bias_off = h.to(tl.int64) * N * N
    dbias = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    b_start = chunk * windows_per_chunk
    for i in range(0, tl.minimum(windows_per_chunk, B - b_start)):
        b = b_start + i  # a tensor in both modes (the interpreter's loop index is a Python int)
        pid_bh = b.to(tl.int64) * nH + h
        qkv_off = pid_bh * N * HEAD_DIM
        mask_off = (b % nW).to(tl.int64) * N * N
        q = tl.load(Q + qkv_off + rows, mask=rows_ok, other=0.0).to(tl.float32)
        do = tl.load(DO + qkv_off + rows, mask=rows_ok, other=0.0).to(tl.float32)
        k = tl.load(K + qkv_off + kv, mask=keys_ok, other=0.0).to(tl.float32)
        v = tl.load(V + qkv_off + kv, mask=keys_ok, other=0.0).to(tl.float32)
        lse = tl.load(LSE + pid_bh * N + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(Delta + pid_bh * N + offs_m, mask=row_ok, other=0.0)
        p, ds = _probs_and_dlogits(q, k, v, do, lse, delta, Bias, Mask, bias_off, mask_off, offs_m, offs_n, N,
                                   scale, HAS_MASK)
        dbias += ds
    out = (chunk.to(tl.int64) * nH + h) * N * N + offs_m[:, None] * N + offs_n[None, :]
    tl.store(DBiasPartial + out, dbias, mask=row_ok[:, None] & key_ok[None, :])
