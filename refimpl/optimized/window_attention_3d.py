"""Video Swin's ``WindowAttention3D`` as a drop-in torch module: a cached position bias and one fused attention call.

The trick, as for the 2-D drop-ins: the relative-position bias gathered to ``(nH, N, N)`` (plus the window mask,
when one is given) depends on parameters only, so it is built once per used window and cached as the additive
mask of ``F.scaled_dot_product_attention``; a forward is then the qkv linear, one SDPA call per image (exactly one
for a single clip; the per-window mask is never copied B-fold) and the proj linear. On CPU the linears run oneDNN's
GEMM in float32 (``refimpl.optimized._linear``), and while a gradient must flow into the bias, matmul-softmax-matmul
with the mask broadcast per window replaces SDPA (whose CPU fused kernel refuses a mask that requires grad).

Index conventions (Video Swin's shrink rule makes the used window ``W'`` smaller than ``W`` on a short clip):

* ``"truncated"`` (the default, upstream's lookup): the bias of a used window of ``N`` tokens is
  ``table[rho(W)[:N, :N]]``, the first ``N`` rows and columns of the module window's index, whatever the used
  window's shape. It is the geometric bias exactly when the used window is a row-major prefix of ``W``;
* ``"geometric"``: ``table[rho(W; delta)]`` at the true displacement ``delta`` of each token pair of the used window
  (needs the used window's shape: ``forward(..., used_window=(Wd', Wh', Ww'))`` when ``N < Wd*Wh*Ww``).

Built by the module, not loaded: the gather indices are computed from the constructor's geometry. The persistent
``relative_position_index`` ``(N0, N0)`` buffer exists so that a Video Swin checkpoint loads with ``strict=True`` (and
this module's state dict loads into Video Swin's); its loaded value is never read, so a corrupted index in a
checkpoint cannot change what the module computes (upstream reads it in every forward).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from refimpl import _validate as validate
from refimpl._validate import window_triple
from refimpl.optimized._compiling import is_compiling
from refimpl.optimized._derived_cache import DerivedTensorCache, mask_state, tensor_state, untracked
from refimpl.optimized._linear import linear

__all__ = ["WindowAttention3D", "INDEX_CONVENTIONS", "relative_position_index_3d"]

INDEX_CONVENTIONS = ("truncated", "geometric")


# --------------------------------------------------------------------------------------------------
# Argument checks (3-D geometry)
# --------------------------------------------------------------------------------------------------

def check_index_convention(value) -> str:
    if value not in INDEX_CONVENTIONS:
        raise ValueError(f"index_convention must be one of {list(INDEX_CONVENTIONS)}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# The relative-position index
# --------------------------------------------------------------------------------------------------

def _token_coords(window, device) -> torch.Tensor:
    """``(N, 3)`` coordinates ``(d, h, w)`` of a window's tokens in row-major order (token ``(d*Wh + h)*Ww + w``)."""
    axes = [torch.arange(side, device=device) for side in window]
    return torch.stack([c.flatten() for c in torch.meshgrid(*axes, indexing="ij")], dim=-1)


def _index_of_offsets(offsets: torch.Tensor, window) -> torch.Tensor:
    """Row of the ``((2Wd-1)(2Wh-1)(2Ww-1), nH)`` table holding the offset ``(dd, dh, dw)`` (query minus key):
    ``(dd+Wd-1)(2Wh-1)(2Ww-1) + (dh+Wh-1)(2Ww-1) + (dw+Ww-1)``, D-major. ``offsets`` ``(..., 3)``."""
    wd, wh, ww = window
    return ((offsets[..., 0] + wd - 1) * (2 * wh - 1) * (2 * ww - 1)
            + (offsets[..., 1] + wh - 1) * (2 * ww - 1)
            + (offsets[..., 2] + ww - 1))


def relative_position_index_3d(window_size, used_window=None, *, index_convention="geometric",
                               device=None) -> torch.Tensor:
    """int64 ``(N, N)``: the table row of each (query, key) token pair of a used window inside the module window
    ``window_size``; ``N = prod(used_window)`` (default: the whole window, then both conventions give Video Swin's
    ``relative_position_index``). ``"truncated"``: the first ``N`` rows and columns of the whole window's index;
    ``"geometric"``: the row of the true displacement of the two tokens in the used window."""
    window = window_triple("window_size", window_size)
    used = window if used_window is None else window_triple("used_window", used_window)
    if any(used[a] > window[a] for a in range(3)):
        raise ValueError(f"used_window={used} must fit inside window_size={window}")
    convention = check_index_convention(index_convention)
    n = used[0] * used[1] * used[2]
    coords = _token_coords(window if convention == "truncated" else used, device)
    index = _index_of_offsets(coords[:, None, :] - coords[None, :, :], window)
    return index[:n, :n].contiguous().to(torch.int64)


# --------------------------------------------------------------------------------------------------
# Attention cores
# --------------------------------------------------------------------------------------------------

def _per_row(t: torch.Tensor, other: torch.Tensor, op) -> torch.Tensor:
    """``op(t, other)`` for ``t`` ``(B_, ...)`` and ``other`` ``(1 | B_ | nW, ...)``: row ``b`` gets
    ``other[b % nW]`` (batch-major rows) through a 5-D broadcast, never a B-fold copy."""
    rows, windows = t.shape[0], other.shape[0]
    if windows in (1, rows):
        return op(t, other)
    return op(t.view(rows // windows, windows, *t.shape[1:]), other).view(t.shape)


def _explicit_attention(q, k, v, bias, mask, dropout_p: float, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale + bias + mask) v``, dropout on the probabilities: q, k, v ``(B_, nH, N, d)``, ``bias``
    ``(1, nH, N, N)``, ``mask`` None or ``(nW, N, N)`` (row ``b`` gets ``mask[b % nW]``) -> ``(B_, nH, N, d)``.
    The CPU route while the bias is trained: bias and mask are added to the scores one after the other, each
    broadcast, as upstream adds them; building their ``(nW, nH, N, N)`` sum first measured slower (a broadcast on
    both sides) and its gradient costs another pass."""
    scores = torch.matmul(q * scale, k.transpose(-2, -1)) + bias
    if mask is not None:
        scores = _per_row(scores, mask.unsqueeze(1), torch.add)
    probs = scores.softmax(dim=-1)
    if dropout_p:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)


def _sdpa_per_image(q, k, v, attn_mask, dropout_p: float, scale: float) -> torch.Tensor:
    """One SDPA call per image with the per-window mask ``(nW, nH, N, N)`` as it is (a single clip: one call),
    or one call over all rows with a ``(1, nH, N, N)`` bias. A 4-D mask with a ``B_``-sized batch axis would need a
    B-fold copy (the batch-major period ``nW`` is not a stride), and a 5-D query drops CPU SDPA to its math
    backend; per-image calls need neither."""
    rows, windows = q.shape[0], attn_mask.shape[0]
    if windows in (1, rows):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    return torch.cat([
        F.scaled_dot_product_attention(q[s:s + windows], k[s:s + windows], v[s:s + windows], attn_mask=attn_mask,
                                       dropout_p=dropout_p, scale=scale)
        for s in range(0, rows, windows)
    ])


class WindowAttention3D(nn.Module):
    """Video Swin window multi-head self-attention over 3-D windows with a relative-position bias.

    Same constructor, state-dict keys (persistent ``relative_position_index`` ``(N0, N0)``, never read) and forward
    as Video Swin's ``WindowAttention3D``, so a checkpoint loads with ``strict=True``; keyword-only
    ``index_convention`` (see the module docstring) picks the bias of a shrunk window.

    ``forward(x, mask=None, *, used_window=None)``: ``x`` ``(B_, N, C)`` with ``N <= Wd*Wh*Ww`` tokens per window in
    ``(d, h, w)`` row-major order; ``mask`` ``(nW, N, N)`` additive float (0 where allowed, Swin's -100 or -inf where
    not), row ``b`` of ``x`` gets ``mask[b % nW]`` (``B_ = B*nW`` batch-major), added once. ``used_window``: the
    shape ``(Wd', Wh', Ww')`` the ``N`` tokens are laid out in; the geometric convention needs it when ``N < N0``
    (``N`` alone does not determine it); the truncated one only checks it (upstream's lookup depends on ``N``
    only). Returns ``(B_, N, C)``.

    Differences from upstream, all on invalid input: bad arguments and inputs raise ``TypeError``/``ValueError`` at
    the boundary (upstream fails inside, e.g. in the head reshape for ``dim % num_heads != 0``, or silently
    broadcasts); ``window_size`` may be one int. As upstream, ``qk_scale`` of ``None`` or ``0`` means
    ``head_dim ** -0.5``.
    """

    # Read by ``refimpl verify`` from the class (the drop-in's default) and from an instance (what it was built with).
    refimpl_capabilities = {"index_convention": "truncated"}

    # A few used windows x masks x dtypes. An entry with a mask is (nW, nH, N, N): 236 MB in float32 at Video Swin-T
    # stage 1 (128 windows of 392 tokens), as large as the scores an eager forward materializes.
    _CACHE_SLOTS = 4

    def __init__(self, dim, window_size, num_heads, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0,
                 *, index_convention="truncated"):
        super().__init__()
        self.dim = validate.positive_int("dim", dim)
        self.num_heads = validate.positive_int("num_heads", num_heads)
        head_dim = validate.head_dim(self.dim, self.num_heads, channels_name="dim")
        self.window_size = window_triple("window_size", window_size)
        self.index_convention = check_index_convention(index_convention)
        if qk_scale is not None and (isinstance(qk_scale, bool) or not isinstance(qk_scale, numbers.Real)):
            raise TypeError(f"qk_scale must be a real number or None, got {qk_scale!r}")
        self.scale = float(qk_scale) if qk_scale else head_dim**-0.5  # upstream's ``qk_scale or d**-0.5``
        self.refimpl_capabilities = {**type(self).refimpl_capabilities, "index_convention": self.index_convention}

        wd, wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), self.num_heads))
        # Video Swin's persistent buffer, for its checkpoints: never read (see the module docstring)
        self.register_buffer("relative_position_index", relative_position_index_3d(self.window_size))

        self.qkv = nn.Linear(self.dim, 3 * self.dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(self.dim, self.dim)
        self.proj_drop = nn.Dropout(proj_drop)

        # timm's trunc_normal_(std=.02) has absolute bounds (-2, 2), i.e. in effect N(0, .02^2); so does torch's.
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

        self._cache = DerivedTensorCache(self._CACHE_SLOTS)  # (geometry, table, dtype, mask) -> additive mask
        self._gather_indices: dict = {}  # (geometry, device) -> flat int64 (N*N,) index into the table

    # ----------------------------------------------------------------------------------------------
    # The position bias
    # ----------------------------------------------------------------------------------------------

    def _geometry(self, n_tokens: int, used_window) -> tuple:
        """What the bias of a call depends on: ``N`` for the truncated lookup, the used window for the geometric."""
        return n_tokens if self.index_convention == "truncated" else used_window

    def _build_gather_index(self, geometry, device) -> torch.Tensor:
        if self.index_convention == "truncated":  # upstream's lookup: the first N rows and columns
            whole = relative_position_index_3d(self.window_size, index_convention="truncated", device=device)
            return whole[:geometry, :geometry].reshape(-1)
        return relative_position_index_3d(self.window_size, geometry, index_convention="geometric",
                                          device=device).reshape(-1)

    def _gather_index(self, geometry, device) -> torch.Tensor:
        """Flat ``(N*N,)`` table rows of the used window's token pairs, built from the module's geometry (cached in
        eager calls; built afresh while compiling, where inductor folds it into a constant)."""
        if is_compiling():
            return self._build_gather_index(geometry, device)
        key = (geometry, torch.device(device))
        index = self._gather_indices.get(key)
        if index is None:
            with torch.inference_mode(False):  # a normal tensor, usable in every mode
                index = self._gather_indices[key] = self._build_gather_index(geometry, device)
        return index

    def position_bias(self, n_tokens: int | None = None, used_window=None) -> torch.Tensor:
        """``(nH, N, N)`` relative-position bias of a used window (default: the whole window) under the module's
        convention, in the table's dtype, built now (differentiable; not cached)."""
        if n_tokens is None:
            used_window = self.window_size if used_window is None else window_triple("used_window", used_window)
            n_tokens = used_window[0] * used_window[1] * used_window[2]
        table = self.relative_position_bias_table
        index = self._gather_index(self._geometry(n_tokens, used_window), table.device)
        return table[index].view(n_tokens, n_tokens, self.num_heads).permute(2, 0, 1)

    def _bias_needs_grad(self) -> bool:
        return torch.is_grad_enabled() and self.relative_position_bias_table.requires_grad

    @staticmethod
    def _combine(bias: torch.Tensor, mask, dtype: torch.dtype) -> torch.Tensor:
        """``(1, nH, N, N)`` bias alone, or bias + mask ``(nW, nH, N, N)`` (the mask added once), in ``dtype``."""
        bias = bias.to(dtype).unsqueeze(0)
        if mask is None:
            return bias.contiguous()
        return bias + mask.to(dtype).unsqueeze(1)

    def _attention_mask(self, n_tokens: int, used_window, mask, dtype: torch.dtype) -> torch.Tensor:
        """The additive mask of the attention call, cached unless a gradient must flow into it. A cached entry is
        used only while the table and the window mask are the very tensors, at the very versions, it was built
        from: ``_version`` moves on every in-place write (load_state_dict's copy_, optimizer steps, ``mul_``),
        ``data_ptr`` on ``.data =`` swaps; ``.to()`` clears the cache (``_apply``)."""
        table = self.relative_position_bias_table
        geometry = self._geometry(n_tokens, used_window)
        # Not cached: when a gradient must flow (a cached tensor would hold a freed graph after the first backward),
        # and for inference tensors (no version counter: an in-place edit could not be seen).
        if self._bias_needs_grad() or untracked(table, mask):
            return self._combine(self.position_bias(n_tokens, used_window), mask, dtype)

        def build():
            if mask is not None and (torch.isnan(mask).any() or torch.isposinf(mask).any()):
                raise ValueError("mask must not contain NaN or +inf (0 where allowed, a negative value or -inf "
                                 "where not)")
            return self._combine(self.position_bias(n_tokens, used_window), mask, dtype)

        return self._cache.get((geometry, tensor_state(table), dtype, mask_state(mask)), mask, build)

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()  # .to() / .half(): entries built on the old device or dtype go
        self._gather_indices.clear()
        return super()._apply(fn, *args, **kwargs)

    # ----------------------------------------------------------------------------------------------
    # Forward
    # ----------------------------------------------------------------------------------------------

    def _check_input(self, x, mask, used_window):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        n_rows, n_tokens, channels = validate.rows_tokens_channels("x", x.shape)
        if channels != self.dim:
            raise ValueError(f"x has C={channels} channels, but the module was built with dim={self.dim}")
        wd, wh, ww = self.window_size
        n_window = wd * wh * ww
        if used_window is not None:
            used_window = window_triple("used_window", used_window)
            if any(used_window[a] > self.window_size[a] for a in range(3)):
                raise ValueError(f"used_window={used_window} must fit inside window_size={self.window_size}")
            if used_window[0] * used_window[1] * used_window[2] != n_tokens:
                raise ValueError(f"x has N={n_tokens} tokens but used_window={used_window} has "
                                 f"{used_window[0] * used_window[1] * used_window[2]}")
        elif n_tokens == n_window:
            used_window = self.window_size
        elif not 1 <= n_tokens <= n_window:
            raise ValueError(f"x has N={n_tokens} tokens but a window holds at most Wd*Wh*Ww == {n_window} "
                             f"for window_size={self.window_size}")
        elif self.index_convention == "geometric":
            raise ValueError(f"x has N={n_tokens} < Wd*Wh*Ww == {n_window} tokens: index_convention='geometric' "
                             f"needs used_window=(Wd', Wh', Ww') to know where they lie (N alone does not say)")
        if mask is None:
            return None, used_window
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if not mask.is_floating_point():
            raise TypeError(f"mask must be a floating additive mask (0 where allowed, e.g. -100 or -inf where not), "
                            f"got dtype {mask.dtype}")
        if mask.device != x.device:
            raise ValueError(f"mask is on {mask.device} but x is on {x.device}")
        validate.window_mask_shape("mask", mask.shape, n_rows=n_rows, n_tokens=n_tokens)
        return mask, used_window

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, used_window=None) -> torch.Tensor:
        """``(B_, N, C) -> (B_, N, C)``; see the class docstring for ``mask`` and ``used_window``."""
        mask, used_window = self._check_input(x, mask, used_window)
        n_rows, n_tokens, channels = x.shape
        qkv = linear(x, self.qkv.weight, self.qkv.bias)
        qkv = qkv.reshape(n_rows, n_tokens, 3, self.num_heads, channels // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, val = qkv.unbind(0)  # each (B_, nH, N, d), strided views: SDPA takes them as they are
        dropout_p = self.attn_drop.p if self.training else 0.0
        # CPU SDPA's fused kernel refuses a mask that requires grad (its math backend is the explicit computation
        # plus checks): while the bias (or the mask) is trained, the explicit route, the mask broadcast per window.
        if x.device.type == "cpu" and (self._bias_needs_grad() or (mask is not None and mask.requires_grad)):
            bias = self.position_bias(n_tokens, used_window).to(x.dtype).unsqueeze(0)
            out = _explicit_attention(q, k, val, bias, None if mask is None else mask.to(x.dtype), dropout_p,
                                      self.scale)
        else:
            if is_compiling():  # no caches, no host reads: the bias and mask become graph constants or fused ops
                attn_mask = self._combine(self.position_bias(n_tokens, used_window), mask, x.dtype)
            else:
                attn_mask = self._attention_mask(n_tokens, used_window, mask, x.dtype)
            out = _sdpa_per_image(q, k, val, attn_mask, dropout_p, self.scale)
        out = out.transpose(1, 2).reshape(n_rows, n_tokens, channels)  # head-major channels, as upstream
        return self.proj_drop(linear(out, self.proj.weight, self.proj.bias))

    def flops(self, N):
        """MACs for one window of ``N`` tokens, Swin's count (qkv, q@k^T, attn@v, proj: ``4NC^2 + 2N^2C``; the
        bias gather is not counted). Video Swin itself has no ``flops``."""
        from refimpl.flops import swin_window_attention_macs

        return swin_window_attention_macs(self.dim, self.num_heads, N)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, "
                f"index_convention={self.index_convention!r}")
