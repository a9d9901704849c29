"""AIM ``WindowAttention`` as a drop-in torch module, on ``F.scaled_dot_product_attention``.

The trick: the relative-position bias (plus the window mask, when one is given) is gathered once into a 4-D
additive mask and cached, so a forward is ``qkv`` linear -> one SDPA call -> ``proj`` linear. A 4-D mask keeps
CPU SDPA on its fused flash kernel (torch >= 2.3; a 3-D mask or a 5-D query silently drops to the math
backend). On CPU the linears run oneDNN's GEMM in float32 (``refimpl.optimized._linear``),
and matmul-softmax-matmul replaces SDPA wherever it measured faster (``_cpu_sdpa_is_faster``: more than one thread,
bfloat16, training of the bias). Every part of this is covered by a property against ``refimpl.reference``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refimpl import _validate as validate
from refimpl.optimized._compiling import is_compiling
from refimpl.optimized._derived_cache import DerivedTensorCache, mask_state, tensor_state, untracked
from refimpl.optimized._linear import linear

__all__ = ["WindowAttention", "relative_position_index", "temporal_relative_index"]


def relative_position_index(window_size, *, device=None) -> torch.Tensor:
    """Swin's index table, int64 ``(Wh*Ww, Wh*Ww)``; see ``refimpl.reference.relative_position_index``."""
    wh, ww = validate.window_pair("window_size", window_size)
    rows, cols = torch.meshgrid(torch.arange(wh, device=device), torch.arange(ww, device=device), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    d_row = rows[:, None] - rows[None, :] + (wh - 1)
    d_col = cols[:, None] - cols[None, :] + (ww - 1)
    return (d_row * (2 * ww - 1) + d_col).to(torch.int64)


def temporal_relative_index(num_ttokens: int, *, device=None) -> torch.Tensor:
    """AIM's temporal index, int64 ``(T, T)`` with entry ``i - j + T - 1``."""
    t = validate.positive_int("num_ttokens", num_ttokens)
    steps = torch.arange(t, device=device)
    return (steps[:, None] - steps[None, :] + (t - 1)).to(torch.int64)


def _explicit_attention(q, k, v, attn_mask, dropout_p: float, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale + attn_mask) v`` with dropout on the probabilities: q, k, v ``(B_, nH, N, d)``,
    ``attn_mask`` ``(1 | B_ | nW, nH, N, N)`` (per window: row ``b`` gets ``attn_mask[b % nW]``) -> ``(B_, nH, N, d)``.

    The CPU route wherever SDPA loses (``_cpu_sdpa_is_faster``). Rows with no allowed key never reach here as an all
    ``-inf`` row (the caller zeroes their mask row and their output)."""
    scores = _per_row(torch.matmul(q, k.transpose(-2, -1)).mul_(scale), attn_mask, torch.add)
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p) if dropout_p else scores.softmax(dim=-1)
    return torch.matmul(probs, v)


def _cpu_sdpa_is_faster(dtype: torch.dtype, mask_needs_grad: bool) -> bool:
    """Whether CPU SDPA's fused kernel beats ``_explicit_attention``, as measured at the benchmark shapes
    (torch 2.13, attention core; the figures are in docs/benchmarks.md):
      * float32 on one thread: it wins, narrowly (against a per-window mask for the explicit route);
      * more threads: it loses at every shape, because it barely uses them (a second thread hardly speeds it up at
        Swin-T stage 1 and slows it down at temporal T=8, while the explicit route gains from it);
      * bfloat16: it loses at every shape, by the most at temporal T=8;
      * training with a learned bias: a mask that requires grad sends it to its math backend, which is the explicit
        computation plus an all-masked-row check (``isneginf``/``all``/``where``, a small share of a step) and, for
        half types, float32 arithmetic.
    """
    return dtype != torch.bfloat16 and not mask_needs_grad and torch.get_num_threads() == 1


def _per_row(t: torch.Tensor, other: torch.Tensor, op) -> torch.Tensor:
    """``op(t, other)`` for ``t`` ``(B_, ...)`` and ``other`` ``(1 | B_ | nW, ...)``: a per-window ``other`` applies to
    row ``b`` as ``other[b % nW]`` (batch-major rows) through a 5-D broadcast, never a B-fold copy."""
    rows, windows = t.shape[0], other.shape[0]
    if windows in (1, rows):
        return op(t, other)
    return op(t.view(rows // windows, windows, *t.shape[1:]), other).view(t.shape)


class WindowAttention(nn.Module):
    """Window multi-head self-attention with relative-position bias (AIM / Swin), spatial or temporal.

    Same constructor, state-dict keys (``relative_position_index`` and ``t_relative_coords`` are persistent
    buffers) and forward as AIM's ``WindowAttention``, so an upstream checkpoint loads with ``strict=True``.

    ``forward(x, mask=None, temporal=False)``:
      * spatial: ``x`` ``(B_, N, C)`` with ``N == Wh*Ww``; ``mask`` ``(nW, N, N)``, row ``b`` of ``x`` gets
        ``mask[b % nW]`` (``B_ = B*nW`` batch-major, as ``window_partition`` lays it out). The mask is additive
        float (0 where allowed; Swin's -100 or -inf where not) or boolean "may attend" (True where allowed).
        A query row with no allowed key (all -inf / all False) attends to nothing: its attention output is 0,
        so its output token is ``proj.bias``, on every backend and torch version;
      * temporal: ``x`` ``(B*H*W, T', C)`` with ``T' == num_ttokens``; full (bidirectional) attention over time
        with the temporal bias; ``mask`` is ignored, as upstream.

    Differences from upstream, all on invalid input: errors are raised at the boundary with a message, where
    upstream fails deep inside or (``num_ttokens == 1``) silently broadcasts the bias over any ``N``.
    ``window_size`` may also be given as one int. As upstream, ``qk_scale`` of ``None`` or ``0`` means
    ``head_dim ** -0.5``.
    """

    # What refimpl defines beyond AIM's protocol, checked by ``refimpl verify`` (``refimpl.suite``).
    refimpl_capabilities = {"extensions": ["boolean_masks", "fully_masked_rows"]}

    # The attention core of an eager call: "auto" takes refimpl's Triton kernel
    # (``refimpl.kernels.triton_window_attention``) on CUDA where ``refimpl.kernels.supports`` the call, no dropout
    # acts and the window mask is not being learned, and SDPA (or matmul-softmax-matmul on CPU) otherwise; "sdpa"
    # never takes the kernel; "triton" always does, or raises ValueError saying why it cannot (on CPU tensors it
    # runs under Triton's interpreter: how the tests exercise this route without a GPU). Calls under
    # torch.compile never take it. Set per instance: ``module.attention_backend = "sdpa"``.
    attention_backend = "auto"

    _CACHE_SLOTS = 8  # spatial and temporal calls alternate in AIM blocks; a few batch sizes on top

    def __init__(
        self,
        dim,
        num_ttokens,
        window_size,
        num_heads,
        use_temporal=True,
        qkv_bias=True,
        qk_scale=None,
        attn_drop=0.0,
        proj_drop=0.0,
    ):
        super().__init__()
        self.dim = validate.positive_int("dim", dim)
        self.num_heads = validate.positive_int("num_heads", num_heads)
        head_dim = validate.head_dim(self.dim, self.num_heads, channels_name="dim")
        self.window_size = validate.window_pair("window_size", window_size)
        self.num_ttokens = validate.positive_int("num_ttokens", num_ttokens)
        self.use_temporal = bool(use_temporal)
        self.scale = float(qk_scale) if qk_scale else head_dim**-0.5  # upstream's ``qk_scale or d**-0.5``

        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), self.num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        if self.use_temporal:
            self.temporal_position_bias_table = nn.Parameter(torch.zeros(2 * self.num_ttokens - 1, self.num_heads))
            self.register_buffer("t_relative_coords", temporal_relative_index(self.num_ttokens).flatten())

        self.qkv = nn.Linear(self.dim, 3 * self.dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(self.dim, self.dim)
        self.proj_drop = nn.Dropout(proj_drop)

        # timm's trunc_normal_(std=.02) has absolute bounds (-2, 2), i.e. in effect N(0, .02^2); so does torch's.
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        if self.use_temporal:
            nn.init.trunc_normal_(self.temporal_position_bias_table, std=0.02)

        self._bias_cache = DerivedTensorCache(self._CACHE_SLOTS)
        self._mask_terms_cache = None  # (mask, key, terms) of the last window mask seen

    # ----------------------------------------------------------------------------------------------
    # The additive attention mask (position bias, plus the window mask)
    # ----------------------------------------------------------------------------------------------

    def _position_bias(self, temporal: bool, dtype: torch.dtype) -> torch.Tensor:
        """``(1, nH, N, N)`` bias gathered from the module's own table and index buffer."""
        if temporal:
            table, index, n = self.temporal_position_bias_table, self.t_relative_coords, self.num_ttokens
        else:
            table, index = self.relative_position_bias_table, self.relative_position_index
            n = self.window_size[0] * self.window_size[1]
        bias = table[index.reshape(-1)].reshape(n, n, self.num_heads).permute(2, 0, 1)
        return bias.unsqueeze(0).to(dtype).contiguous()

    def _window_mask_terms(self, mask: torch.Tensor, dtype: torch.dtype):
        """``(additive (nW, 1, N, N), attends_to_nothing (nW, 1, N, 1) or None)`` for a window mask, cached by
        the mask's identity and version: the checks below synchronize with the device, so they run once per
        mask, not once per training step.

        A row with no key it may attend to (all ``-inf`` / all False) attends to nothing: its attention output is
        zero. Its mask row is set to 0 here, so that no backend sees an all ``-inf`` row (NaN in eager softmax and
        in older SDPA math backends, 0 in newer ones), and the output row is zeroed after SDPA.
        """
        # An inference tensor has no version counter: an in-place edit could not be seen, so it is never cached.
        cacheable = not (mask.requires_grad or mask.is_inference())
        key = (id(mask), mask._version if cacheable else None, dtype)
        hit = self._mask_terms_cache
        if cacheable and hit is not None and hit[0] is mask and hit[1] == key:
            return hit[2]
        # inference_mode(False) switches grad mode back on, so no_grad must come after it (innermost): the other
        # order records a graph into the cached terms.
        with torch.inference_mode(False), torch.no_grad():  # cached tensors must work outside inference mode too
            if mask.dtype == torch.bool:
                additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
            else:
                if torch.isnan(mask).any() or torch.isposinf(mask).any():
                    raise ValueError(
                        "mask must not contain NaN or +inf (0 where allowed, a negative value or -inf where not)"
                    )
                additive = mask.to(dtype)
            attends_to_nothing = torch.isneginf(additive).all(dim=-1)[:, None, :, None]  # (nW, 1, N, 1)
            if attends_to_nothing.any():
                additive = additive.unsqueeze(1).masked_fill(attends_to_nothing, 0.0)
            else:
                additive, attends_to_nothing = additive.unsqueeze(1), None
        if mask.requires_grad:  # an additive mask being learned: keep its graph
            additive = mask.to(dtype).unsqueeze(1)
            if attends_to_nothing is not None:
                additive = additive.masked_fill(attends_to_nothing, 0.0)
        if not cacheable:
            return additive, attends_to_nothing
        self._mask_terms_cache = (mask, key, (additive, attends_to_nothing))
        return additive, attends_to_nothing

    def _combined_mask(self, temporal: bool, mask, n_rows: int, dtype: torch.dtype, per_window: bool = False):
        """The 4-D additive SDPA mask, ``(1, nH, N, N)`` without a window mask, else ``(B_, nH, N, N)``, and the
        ``(B_, 1, N, 1)`` factor that zeroes rows attending to nothing (None when there are none). With
        ``per_window`` the window-masked ones stay ``(nW, nH, N, N)`` and ``(nW, 1, N, 1)`` (see ``_per_row``)."""
        bias = self._position_bias(temporal, dtype)
        if mask is None:
            return bias, None
        n_windows = mask.shape[0]
        additive, attends_to_nothing = self._window_mask_terms(mask, dtype)
        windows = bias + additive  # (nW, nH, N, N)
        keep = None if attends_to_nothing is None else (~attends_to_nothing).to(dtype)  # (nW, 1, N, 1)
        if per_window:
            return windows, keep
        # Materialized contiguous for SDPA: a stride-0 batch expand cannot merge (B, nW) into one B_ axis.
        copies = n_rows // n_windows
        return windows.repeat(copies, 1, 1, 1), None if keep is None else keep.repeat(copies, 1, 1, 1)

    def _traceable_mask(self, temporal: bool, mask, dtype: torch.dtype):
        """``_combined_mask(..., per_window=True)`` for ``torch.compile``: ``(1 | nW, nH, N, N)`` and the
        ``(nW, 1, N, 1)`` row factor (None without a window mask), built on every call, without caches and without
        reading values on the host (inductor folds it into the graph, and nothing breaks it). The factor is always
        applied, so no branch depends on whether some row attends to nothing. The NaN/+inf check of the mask is
        not run here: it reads the mask on the host; eager calls run it."""
        bias = self._position_bias(temporal, dtype)
        if mask is None:
            return bias, None
        if mask.dtype == torch.bool:
            additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
        else:
            additive = mask.to(dtype)
        attends_to_nothing = torch.isneginf(additive).all(dim=-1)[:, None, :, None]  # (nW, 1, N, 1)
        additive = additive.unsqueeze(1).masked_fill(attends_to_nothing, 0.0)
        return bias + additive, (~attends_to_nothing).to(dtype)

    def _cache_key(self, temporal: bool, mask, n_rows, dtype: torch.dtype):
        table = self.temporal_position_bias_table if temporal else self.relative_position_bias_table
        index = self.t_relative_coords if temporal else self.relative_position_index
        # refimpl/optimized/_derived_cache.py: what the entry was built from, at the versions it saw
        return (temporal, dtype, 1 if mask is None else n_rows, tensor_state(table, index), mask_state(mask))

    def attention_mask(self, x_shape, mask=None, temporal: bool = False, dtype=None) -> torch.Tensor:
        """The additive mask handed to SDPA for an input of shape ``x_shape`` (rows that attend to nothing show
        as 0 here; their output is zeroed after SDPA)."""
        return self._attention_inputs(x_shape, mask, temporal, dtype)[0]

    def _mask_needs_grad(self, temporal: bool, mask) -> bool:
        table = self.temporal_position_bias_table if temporal else self.relative_position_bias_table
        return torch.is_grad_enabled() and (table.requires_grad or (mask is not None and mask.requires_grad))

    def _attention_inputs(self, x_shape, mask, temporal: bool, dtype=None, per_window: bool = False):
        """``(combined additive mask, row factor or None)`` (``per_window``: see ``_combined_mask``), cached when no
        gradient flows into them. A cached entry is used only while the table, index buffer and window mask are
        the very tensors, at the very versions, it was built from."""
        dtype = dtype or self.relative_position_bias_table.dtype
        n_rows = x_shape[0]
        table = self.temporal_position_bias_table if temporal else self.relative_position_bias_table
        needs_grad = self._mask_needs_grad(temporal, mask)
        # Not cached: when a gradient must flow (a cached tensor would hold a freed autograd graph after the first
        # backward), and when an input is an inference tensor (it has no version counter to detect edits with).
        index = self.t_relative_coords if temporal else self.relative_position_index
        if needs_grad or untracked(table, index, mask):
            return self._combined_mask(temporal, mask, n_rows, dtype, per_window)
        # Built under no_grad: a cached mask that required grad would hold a graph and send CPU SDPA to its math
        # backend on every call.
        key = self._cache_key(temporal, mask, "per window" if per_window else n_rows, dtype)
        return self._bias_cache.get(key, mask, lambda: self._combined_mask(temporal, mask, n_rows, dtype, per_window))

    def _apply(self, fn, *args, **kwargs):
        self._bias_cache.clear()  # .to() / .cuda() / .half(): drop entries built on the old device or dtype
        self._mask_terms_cache = None
        return super()._apply(fn, *args, **kwargs)

    # ----------------------------------------------------------------------------------------------
    # Forward
    # ----------------------------------------------------------------------------------------------

    def _check_input(self, x, mask, temporal: bool):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        n_rows, n_tokens, channels = validate.rows_tokens_channels("x", x.shape)
        if channels != self.dim:
            raise ValueError(f"x has C={channels} channels, but the module was built with dim={self.dim}")
        if temporal:
            if not self.use_temporal:
                raise ValueError("temporal=True, but the module was built with use_temporal=False (no temporal table)")
            if n_tokens != self.num_ttokens:
                raise ValueError(
                    f"x has N={n_tokens} tokens but temporal mode needs N == num_ttokens == {self.num_ttokens}"
                )
            return None  # upstream ignores the mask in temporal mode
        n_window = self.window_size[0] * self.window_size[1]
        if n_tokens != n_window:
            raise ValueError(
                f"x has N={n_tokens} tokens but spatial mode needs N == Wh*Ww == {n_window} "
                f"for window_size={self.window_size}"
            )
        if mask is None:
            return None
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if not (mask.is_floating_point() or mask.dtype == torch.bool):
            raise TypeError(
                f"mask must be a floating additive mask (0 where allowed, e.g. -100 or -inf where not) or a boolean "
                f"'may attend' mask (True where allowed), got dtype {mask.dtype}"
            )
        if mask.device != x.device:
            raise ValueError(f"mask is on {mask.device} but x is on {x.device}")
        validate.window_mask_shape("mask", mask.shape, n_rows=n_rows, n_tokens=n_tokens)
        return mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, temporal: bool = False) -> torch.Tensor:
        """``(B_, N, C) -> (B_, N, C)``; see the class docstring for ``mask`` and ``temporal``."""
        mask = self._check_input(x, mask, temporal)
        n_rows, n_tokens, channels = x.shape
        head_dim = channels // self.num_heads
        qkv = linear(x, self.qkv.weight, self.qkv.bias)
        qkv = qkv.reshape(n_rows, n_tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, val = qkv.unbind(0)  # each (B_, nH, N, d), strided views: CPU flash takes them as they are
        dropout_p = self.attn_drop.p if self.training else 0.0
        out = self._kernel_attention(q, k, val, mask, temporal, dropout_p)
        if out is not None:
            out = out.transpose(1, 2).reshape(n_rows, n_tokens, channels)
            return self.proj_drop(linear(out, self.proj.weight, self.proj.bias))
        if is_compiling():  # docs/gpu.md: SDPA with the mask repeated over the images (as eager calls do)
            attn_mask, keep_rows = self._traceable_mask(temporal, mask, x.dtype)
            # as eager on CPU: SDPA loses in bfloat16 and with a learned bias (its math backend); torch 2.1's
            # compiled SDPA also got the bias gradient wrong at tiny shapes (docs/gpu.md)
            explicit = x.device.type == "cpu" and (x.dtype == torch.bfloat16 or self._mask_needs_grad(temporal, mask))
            if not explicit and attn_mask.shape[0] not in (1, n_rows):
                attn_mask = attn_mask.repeat(n_rows // attn_mask.shape[0], 1, 1, 1)
        else:
            # On CPU, matmul-softmax-matmul (``_explicit_attention``, the mask per window) wherever it is the
            # faster route; otherwise one SDPA call with the B_-expanded 4-D mask.
            needs_grad = self._mask_needs_grad(temporal, mask)
            explicit = x.device.type == "cpu" and not _cpu_sdpa_is_faster(x.dtype, needs_grad)
            attn_mask, keep_rows = self._attention_inputs(x.shape, mask, temporal, dtype=x.dtype, per_window=explicit)
        if explicit:
            out = _explicit_attention(q, k, val, attn_mask, dropout_p, self.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, val, attn_mask=attn_mask, dropout_p=dropout_p, scale=self.scale)
        if keep_rows is not None:  # rows with no allowed key attend to nothing
            out = _per_row(out, keep_rows, torch.mul)
        out = out.transpose(1, 2).reshape(n_rows, n_tokens, channels)  # channels head-major, as upstream
        return self.proj_drop(linear(out, self.proj.weight, self.proj.bias))

    def _takes_kernel(self, q, mask, dropout_p: float) -> bool:
        """Whether this call's attention core is the Triton kernel, by ``attention_backend`` (shapes aside)."""
        backend = self.attention_backend
        if backend not in ("auto", "sdpa", "triton"):
            raise ValueError(f"attention_backend must be 'auto', 'sdpa' or 'triton', got {backend!r}")
        if backend == "sdpa" or is_compiling() or (backend == "auto" and q.device.type != "cuda"):
            return False
        blocked = ("dropout acts (train mode, attn_drop > 0)" if dropout_p
                   else "the window mask requires grad" if mask is not None and mask.requires_grad else None)
        if blocked and backend == "triton":
            raise ValueError(f"attention_backend='triton', but {blocked}: the kernel has no dropout and does not "
                             f"differentiate the mask; use 'auto' to fall back to SDPA there")
        return blocked is None

    def _kernel_attention(self, q, k, val, mask, temporal: bool, dropout_p: float):
        """The attention output ``(B_, nH, N, d)`` from refimpl's Triton kernel, or None where it does not apply
        (see ``attention_backend``). The kernel reads the bias ``(nH, N, N)`` by head and the mask ``(nW, N, N)``
        by ``b % nW`` (no B_-fold copy), and gives rows with no allowed key a zero output itself."""
        if not self._takes_kernel(q, mask, dropout_p):
            return None
        from refimpl import kernels

        additive = None
        if mask is not None:
            self._window_mask_terms(mask, q.dtype)  # the mask's value checks (NaN, +inf), cached per mask
            if mask.dtype == torch.bool:
                additive = torch.zeros(mask.shape, dtype=q.dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
            else:
                additive = mask.to(q.dtype)
        bias = self._position_bias(temporal, q.dtype)[0]  # (nH, N, N); differentiable in the table
        reason = kernels.unsupported_reason(q, bias, additive)
        if reason is None:
            return kernels.triton_window_attention(q, k, val, bias, additive, scale=self.scale)
        if self.attention_backend == "triton":
            raise ValueError(f"attention_backend='triton', but the kernel does not support this call: {reason}")
        return None

    def flops(self, N, T, temporal=False):
        """AIM's count: MACs of ``q@k^T`` and ``attn@v`` for one window of ``N`` tokens over ``T`` frames
        (``temporal=False``), or of temporal attention over ``T`` tokens at ``N`` positions (``temporal=True``)."""
        from refimpl.flops import window_attention_flops

        return window_attention_flops(self.dim, self.num_heads, N, T, temporal)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, "
            f"num_ttokens={self.num_ttokens}, use_temporal={self.use_temporal}"
        )
