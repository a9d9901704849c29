"""Swin V2's ``WindowAttention`` (microsoft) as a drop-in torch module: a cached position bias and one attention call.

The continuous position bias ``16 * sigmoid(cpb_mlp(coords))`` gathered to ``(nH, N, N)`` depends on parameters
only, so it is built once and cached, keyed on the very MLP tensors (identity, ``_version``, device, dtype) it was
built from: ``load_state_dict``, optimizer steps, in-place edits, ``.data`` swaps and ``.to()`` all move the key, so
a cached bias is never stale. While a gradient must flow into the MLP (training with grad enabled) it is rebuilt in
every forward, so gradients flow. A forward is then the qkv linear, q and k normalized (q pre-multiplied by the
per-head scale ``exp(min(logit_scale, ln 100))``), and one attention call with the bias (plus the window mask) as
its additive mask: ``F.scaled_dot_product_attention(..., scale=1)`` (on CPU, matmul-softmax-matmul while the CPB is
trained: ``_cpu_sdpa_is_faster``). Every part is covered by a property against
``refimpl.reference.window_attention_v2``.

Built by the module, not loaded: the log-spaced coordinates and the index are computed from the constructor's
geometry, exactly (in float64, then cast to the MLP's dtype). The persistent buffers ``relative_coords_table`` and
``relative_position_index`` exist so that a microsoft checkpoint loads with ``strict=True`` (and this module's
state dict loads into microsoft's); their loaded values are never read. Upstream reads them, and its table holds
float32 values even in a float64 module; this module computes the exact ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from refimpl import _validate as validate
from refimpl.optimized._compiling import is_compiling
from refimpl.optimized._derived_cache import DerivedTensorCache, mask_state, tensor_state, untracked
from refimpl.optimized._linear import linear

__all__ = ["WindowAttentionV2", "relative_coords_table"]

LOGIT_SCALE_MAX = math.log(100.0)
CPB_HIDDEN = 512
_NORMALIZE_EPS = 1e-12  # F.normalize's default


def relative_coords_table(window_size, pretrained_window_size=(0, 0), *, device=None,
                          dtype=torch.float64) -> torch.Tensor:
    """Swin V2's log-spaced coordinates ``(2Wh-1, 2Ww-1, 2)``, computed in float64 and cast to ``dtype``; see
    ``refimpl.reference.relative_coords_table``. A window side of 1 with ``pretrained_window_size=(0, 0)``, or a
    pretrained side of 1, raises ``ValueError`` (upstream divides 0 by 0 there)."""
    (wh, ww), (dh, dw) = validate.cpb_geometry(window_size, pretrained_window_size)
    rows = torch.arange(-(wh - 1), wh, dtype=torch.float64) * (8.0 / dh)
    cols = torch.arange(-(ww - 1), ww, dtype=torch.float64) * (8.0 / dw)
    table = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)  # t = 8 * offset / divisor
    table = torch.sign(table) * torch.log2(1.0 + table.abs()) / 3.0  # log2(8) = 3
    return table.to(device=device, dtype=dtype)


def _relative_position_index(wh: int, ww: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    return ((rows[:, None] - rows[None, :] + wh - 1) * (2 * ww - 1) + (cols[:, None] - cols[None, :] + ww - 1)).long()


def _normalize(t: torch.Tensor) -> torch.Tensor:
    """``t / max(|t|, 1e-12)`` over the last axis (``F.normalize``): zero vectors map to 0, never NaN. Half dtypes
    are normalized in float32: in float16 the floor 1e-12 is 0 (F.normalize gives NaN for a zero vector there), and
    the backward ``g / |t|`` of a short vector overflows float16 (inf - inf = NaN, where the exact gradient is
    finite)."""
    if t.dtype in (torch.float16, torch.bfloat16):
        return _normalize(t.float()).to(t.dtype)
    return t / torch.linalg.vector_norm(t, dim=-1, keepdim=True).clamp_min(_NORMALIZE_EPS)


def _per_row(t: torch.Tensor, other: torch.Tensor, op) -> torch.Tensor:
    """``op(t, other)`` for ``t`` ``(B_, ...)`` and ``other`` ``(1 | B_ | nW, ...)``: row ``b`` gets
    ``other[b % nW]`` (batch-major rows) through a 5-D broadcast, never a B-fold copy."""
    rows, windows = t.shape[0], other.shape[0]
    if windows in (1, rows):
        return op(t, other)
    return op(t.view(rows // windows, windows, *t.shape[1:]), other).view(t.shape)


def _explicit_attention(q, k, v, attn_mask, dropout_p: float) -> torch.Tensor:
    """``softmax(q k^T + attn_mask) v`` (q already scaled), dropout on the probabilities; ``attn_mask``
    ``(1 | B_ | nW, nH, N, N)``, per window for ``nW``."""
    probs = _per_row(torch.matmul(q, k.transpose(-2, -1)), attn_mask, torch.add).softmax(dim=-1)
    if dropout_p:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)


def _cpu_sdpa_is_faster(mask_needs_grad: bool) -> bool:
    """Whether CPU SDPA's fused kernel beats ``_explicit_attention``. Measured at Swin-V2-T stage-1 shapes (window 8,
    C 96, 3 heads, 128 windows; torch 2.13; docs/window-attention-v2.md): in inference it wins in every dtype, on one
    thread and on two, by the most with a -100 mask (10 ms against 87 ms in float32: the explicit softmax turns the
    masked logits into float32 subnormals, whose arithmetic is slow; the fused kernel does not); when a gradient must
    flow into the mask (training the CPB) SDPA runs its math backend, which is the explicit computation plus checks,
    and the two measured alike."""
    return not mask_needs_grad


class WindowAttentionV2(nn.Module):
    """Swin V2 window multi-head self-attention (microsoft ``WindowAttention``): cosine attention with a learned
    per-head log-scale clamped at ``ln 100``, and a continuous position bias in (0, 16) from a small MLP over
    log-spaced relative coordinates.

    Same constructor, state-dict keys (persistent ``relative_coords_table`` and ``relative_position_index``
    buffers) and forward as microsoft's, so a checkpoint loads with ``strict=True``.

    ``forward(x, mask=None)``: ``x`` ``(B_, N, C)`` with ``N == Wh*Ww``; ``mask`` ``(nW, N, N)`` additive float (0
    where allowed, Swin's -100 or -inf where not), row ``b`` of ``x`` gets ``mask[b % nW]``, added once.

    Differences from upstream, all on input upstream computes nonsense for: a window side of 1 with
    ``pretrained_window_size=(0, 0)``, or a pretrained side of 1, raises ``ValueError`` (upstream: 0/0 in the
    coordinates, an all-NaN output); ``pretrained_window_size`` with one side 0 raises (upstream divides by -1);
    other bad arguments and inputs raise ``TypeError``/``ValueError`` at the boundary; a zero q or k vector maps to
    0 in float16 too, and short q or k vectors keep finite gradients there (half dtypes are normalized in float32;
    upstream's F.normalize eps is 0 in float16, giving NaN, and its backward overflows); the coordinates are exact
    (see the module docstring). ``window_size`` and ``pretrained_window_size`` may be given as one int.
    """

    _CACHE_SLOTS = 8

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0,
                 pretrained_window_size=(0, 0)):
        super().__init__()
        self.dim = validate.positive_int("dim", dim)
        self.num_heads = validate.positive_int("num_heads", num_heads)
        validate.head_dim(self.dim, self.num_heads, channels_name="dim")
        self.window_size, _ = validate.cpb_geometry(window_size, pretrained_window_size)
        self.pretrained_window_size = validate.pretrained_window_pair("pretrained_window_size",
                                                                      pretrained_window_size)
        wh, ww = self.window_size

        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((self.num_heads, 1, 1))))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, CPB_HIDDEN, bias=True), nn.ReLU(inplace=True),
                                     nn.Linear(CPB_HIDDEN, self.num_heads, bias=False))
        # microsoft's persistent buffers, for its checkpoints: never read (see the module docstring)
        coords = relative_coords_table(self.window_size, self.pretrained_window_size)
        self.register_buffer("relative_coords_table", coords.to(torch.get_default_dtype()).unsqueeze(0))
        index = _relative_position_index(wh, ww)
        self.register_buffer("relative_position_index", index)
        # what the module does read: the exact coordinates (float64, cast per use) and the flat gather index
        self._coords = coords.reshape(-1, 2)
        self.register_buffer("_gather_index", index.reshape(-1).clone(), persistent=False)

        self.qkv = nn.Linear(self.dim, 3 * self.dim, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(self.dim))
            self.v_bias = nn.Parameter(torch.zeros(self.dim))
        else:
            self.q_bias = None
            self.v_bias = None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(self.dim, self.dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self._cache = DerivedTensorCache(self._CACHE_SLOTS)

    # ----------------------------------------------------------------------------------------------
    # The position bias
    # ----------------------------------------------------------------------------------------------

    def position_bias(self) -> torch.Tensor:
        """``(nH, N, N)``: ``16 * sigmoid(cpb_mlp(coords))`` gathered by the relative-position index, in the MLP's
        dtype, built now (differentiable; not cached)."""
        weight = self.cpb_mlp[0].weight
        coords = self._coords.to(device=weight.device, dtype=weight.dtype)
        table = self.cpb_mlp(coords)  # (M, nH)
        n = self.window_size[0] * self.window_size[1]
        return 16.0 * torch.sigmoid(table[self._gather_index].view(n, n, self.num_heads).permute(2, 0, 1))

    def _mlp_state(self):
        return tensor_state(self.cpb_mlp[0].weight, self.cpb_mlp[0].bias, self.cpb_mlp[2].weight)

    def _bias_needs_grad(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.cpb_mlp.parameters())

    def _attention_mask(self, mask, n_rows: int, dtype: torch.dtype, per_window: bool) -> torch.Tensor:
        """The additive mask of the attention call: ``(1, nH, N, N)`` without a window mask; with one, bias + mask
        as ``(nW, nH, N, N)`` (``per_window``) or expanded to ``(B_, nH, N, N)`` for SDPA. Cached unless a gradient
        must flow into it, keyed on the MLP's tensors and the mask's identity and version."""
        if self._bias_needs_grad() or untracked(mask, *self.cpb_mlp.parameters()):
            return self._combine(self.position_bias(), mask, n_rows, dtype, per_window)

        def build():
            if mask is not None and (torch.isnan(mask).any() or torch.isposinf(mask).any()):
                raise ValueError("mask must not contain NaN or +inf (0 where allowed, a negative value or -inf "
                                 "where not)")
            return self._combine(self.position_bias(), mask, n_rows, dtype, per_window)

        rows = None if mask is None else "window" if per_window else n_rows
        return self._cache.get((self._mlp_state(), dtype, mask_state(mask), rows), mask, build)

    @staticmethod
    def _combine(bias, mask, n_rows: int, dtype: torch.dtype, per_window: bool) -> torch.Tensor:
        bias = bias.to(dtype).unsqueeze(0)
        if mask is None:
            return bias
        windows = bias + mask.to(dtype).unsqueeze(1)  # (nW, nH, N, N): the mask is added once
        if per_window:
            return windows
        return windows.repeat(n_rows // mask.shape[0], 1, 1, 1)  # contiguous (B_, nH, N, N) for SDPA

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()  # .to() / .half(): entries built on the old device or dtype go
        return super()._apply(fn, *args, **kwargs)

    # ----------------------------------------------------------------------------------------------
    # Forward
    # ----------------------------------------------------------------------------------------------

    def _check_input(self, x, mask):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        n_rows, n_tokens, channels = validate.rows_tokens_channels("x", x.shape)
        if channels != self.dim:
            raise ValueError(f"x has C={channels} channels, but the module was built with dim={self.dim}")
        n_window = self.window_size[0] * self.window_size[1]
        if n_tokens != n_window:
            raise ValueError(f"x has N={n_tokens} tokens but needs N == Wh*Ww == {n_window} for "
                             f"window_size={self.window_size}")
        if mask is None:
            return None
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if not mask.is_floating_point():
            raise TypeError(f"mask must be a floating additive mask (0 where allowed, e.g. -100 or -inf where not), "
                            f"got dtype {mask.dtype}")
        if mask.device != x.device:
            raise ValueError(f"mask is on {mask.device} but x is on {x.device}")
        validate.window_mask_shape("mask", mask.shape, n_rows=n_rows, n_tokens=n_tokens)
        return mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B_, N, C) -> (B_, N, C)``; see the class docstring for ``mask``."""
        mask = self._check_input(x, mask)
        n_rows, n_tokens, channels = x.shape
        qkv_bias = None
        if self.q_bias is not None:  # no k bias exists: its third is a constant 0
            qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias))
        qkv = linear(x, self.qkv.weight, qkv_bias)
        qkv = qkv.reshape(n_rows, n_tokens, 3, self.num_heads, channels // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, val = qkv.unbind(0)  # each (B_, nH, N, d)
        scale = torch.clamp(self.logit_scale, max=LOGIT_SCALE_MAX).exp().to(x.dtype)  # (nH, 1, 1)
        q = _normalize(q) * scale  # the per-head logit scale rides on q: the attention call uses scale 1
        k = _normalize(k)
        dropout_p = self.attn_drop.p if self.training else 0.0
        if is_compiling():  # no caches, no host reads: inductor fuses the explicit route
            explicit = True
            attn_mask = self._combine(self.position_bias(), mask, n_rows, x.dtype, per_window=True)
        else:
            explicit = x.device.type == "cpu" and not _cpu_sdpa_is_faster(self._bias_needs_grad())
            attn_mask = self._attention_mask(mask, n_rows, x.dtype, per_window=explicit)
        if explicit:
            out = _explicit_attention(q, k, val, attn_mask, dropout_p)
        else:
            out = F.scaled_dot_product_attention(q, k, val, attn_mask=attn_mask, dropout_p=dropout_p, scale=1.0)
        out = out.transpose(1, 2).reshape(n_rows, n_tokens, channels)  # head-major channels, as upstream
        return self.proj_drop(linear(out, self.proj.weight, self.proj.bias))

    def flops(self, N):
        """microsoft's count for one window of ``N`` tokens (V1's formula, MACs: qkv, q@k^T, attn@v, proj); the
        CPB MLP's cost is ``refimpl.flops.swin_v2_cpb_macs`` (once per cache miss here)."""
        from refimpl.flops import swin_window_attention_macs

        return swin_window_attention_macs(self.dim, self.num_heads, N)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, window_size={self.window_size}, "
                f"pretrained_window_size={self.pretrained_window_size}, num_heads={self.num_heads}")
