"""Video Swin's 3-D windows on tensors: the shrink rule, the shifted-window mask built vectorized and cached, and
map-level (shifted) window attention on top of ``refimpl.optimized.WindowAttention3D``.

Each function means what its namesake in ``refimpl.reference`` means (and what Video Swin's block code in
``refimpl.baselines.shifted_window_3d`` computes); properties check them against both.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from refimpl import _validate as validate
from refimpl._validate import shift_triple, window_triple
from refimpl.optimized._compiling import is_compiling
from refimpl.optimized.shifted_window import _remember
from refimpl.optimized.window_attention_3d import WindowAttention3D

__all__ = ["block_window_and_shift", "shifted_window_mask_3d", "shifted_window_attention_3d"]


def block_window_and_shift(input_size, window_size, shift_size):
    """Video Swin's per-axis shrink rule on the unpadded ``(D, H, W)``: an axis no longer than the window
    (``L <= W``, equality included) uses ``L`` as its window and shift 0. Returns ``(used window, used shift)``."""
    size = window_triple("input_size", input_size)
    window = window_triple("window_size", window_size)
    shift = shift_triple("shift_size", shift_size, window)
    used_window = tuple(min(size[a], window[a]) for a in range(3))
    used_shift = tuple(0 if size[a] <= window[a] else shift[a] for a in range(3))
    return used_window, used_shift


def _padded_geometry(D, H, W, window_size, shift_size):
    """Checks padded sizes with the window and shift in use; returns ``((D, H, W), window, shift)``."""
    size = (validate.positive_int("D", D), validate.positive_int("H", H), validate.positive_int("W", W))
    window = window_triple("window_size", window_size)
    shift = shift_triple("shift_size", shift_size, window)
    for a, name in enumerate("DHW"):
        L, w = size[a], window[a]
        if L % w:
            raise ValueError(f"{name}={L} must be a multiple of the window side {w} (window {window}): the mask is "
                             f"built on the padded sizes, with the window in use")
    return size, window, shift


def _axis_bands(size: int, window: int, shift: int, device) -> torch.Tensor:
    """Band of each position of one axis of the rolled, padded clip: 0 before ``size-W``, 1 before ``size-s``, else
    2. With shift 0 every position is in band 2 (upstream's last slice ``[-0:]`` is the whole axis)."""
    position = torch.arange(size, device=device)
    if shift == 0:
        return torch.full_like(position, 2)
    return (position >= size - window).long() + (position >= size - shift).long()


def _partition_flat(values: torch.Tensor, window) -> torch.Tensor:
    """``(D, H, W)`` -> ``(nW, N)``: windows in ``(wd, wh, ww)`` row-major order, tokens ``(d, h, w)`` row-major."""
    D, H, W = values.shape
    wd, wh, ww = window
    blocks = values.reshape(D // wd, wd, H // wh, wh, W // ww, ww).permute(0, 2, 4, 1, 3, 5)
    return blocks.reshape(-1, wd * wh * ww)


def _build_mask(size, window, shift, fill: float, device, dtype) -> torch.Tensor:
    bands = [_axis_bands(size[a], window[a], shift[a], device) for a in range(3)]
    labels = 9 * bands[0][:, None, None] + 3 * bands[1][None, :, None] + bands[2][None, None, :]  # (D, H, W)
    labels = _partition_flat(labels, window)  # (nW, N)
    allowed = labels[:, :, None] == labels[:, None, :]  # (nW, N, N)
    return torch.zeros(allowed.shape, device=device, dtype=dtype).masked_fill_(~allowed, fill)


# module-level LRU caches, bounded by the 2-D module's _remember (_CACHE_SLOTS entries each)
_MASK_CACHE: OrderedDict = OrderedDict()
_ORDER_CACHE: OrderedDict = OrderedDict()


def shifted_window_mask_3d(D, H, W, window_size, shift_size, fill=-100.0, *, device=None,
                           dtype=None) -> torch.Tensor:
    """Video Swin's shifted-window mask ``(nW, N, N)`` on the padded sizes ``(D, H, W)`` with the window and shift
    in use: 0 where query and key lie in the same region of the rolled clip (up to 27: three bands per axis, one on
    an axis with shift 0), ``fill`` where not. ``dtype`` defaults to the default float dtype.

    Cached per ``(sizes, window, shift, fill, device, dtype)``: repeated calls return the same tensor, so that
    ``WindowAttention3D``'s cache of the combined bias hits as well. Treat it as read-only; a caller that modifies
    it in place anyway cannot corrupt later calls: the next call sees that its version moved and rebuilds it.
    """
    size, window, shift = _padded_geometry(D, H, W, window_size, shift_size)
    fill = validate.mask_fill(fill)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype (an additive mask), got {dtype!r}")
    device = torch.device("cpu") if device is None else torch.device(device)
    if is_compiling():  # a constant of the graph: inductor folds it; the cache is for eager calls
        return _build_mask(size, window, shift, fill, device, dtype)
    key = (size, window, shift, fill, device, dtype)
    hit = _MASK_CACHE.get(key)
    if hit is not None and hit[0]._version == hit[1]:
        _MASK_CACHE.move_to_end(key)
        return hit[0]
    with torch.inference_mode(False):  # a normal tensor: it has a version counter and works in every mode
        mask = _build_mask(size, window, shift, fill, device, dtype)
    return _remember(_MASK_CACHE, key, (mask, mask._version))[0]


def _build_window_order(size, window, shift, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gather, scatter)``: ``gather`` ``(Dp*Hp*Wp,)`` holds, for each row of the windows (batch-major order
    aside) of ``partition(roll(pad(x), -shift))``, the flat position ``(d*H + h)*W + w`` of ``x`` it reads, or
    ``D*H*W`` for a pad token (a zero row appended to ``x``); ``scatter`` ``(D*H*W,)`` is where each position of
    ``x`` lands among those rows, so one ``index_select`` reverses, rolls back and crops."""
    padded = [size[a] + (window[a] - size[a] % window[a]) % window[a] for a in range(3)]
    coords = []
    for a in range(3):  # indexing, not zip(strict=True): torch 2.1's dynamo refuses the keyword
        L, Lp, s = size[a], padded[a], shift[a]
        source = (torch.arange(Lp, device=device) + s) % Lp  # rolled position i reads padded position i + s
        coords.append(source.masked_fill(source >= L, -1))  # -1: beyond the clip, a pad token
    d, h, w = coords[0][:, None, None], coords[1][None, :, None], coords[2][None, None, :]
    D, H, W = size
    flat = (d * H + h) * W + w
    is_pad = (d < 0) | (h < 0) | (w < 0)
    gather = _partition_flat(flat.masked_fill(is_pad, D * H * W), window).reshape(-1)
    # every real position appears once in gather and pad rows hold the largest value, so the first D*H*W entries of
    # the (stable) sorting permutation are the rows of positions 0, 1, ...: no data-dependent shapes
    scatter = torch.argsort(gather, stable=True)[: D * H * W]
    return gather, scatter


def _window_order(size, window, shift, device):
    if is_compiling():
        return _build_window_order(size, window, shift, device)
    key = (size, window, shift, torch.device(device))
    hit = _ORDER_CACHE.get(key)
    if hit is not None:
        _ORDER_CACHE.move_to_end(key)
        return hit
    with torch.inference_mode(False):  # normal tensors (never modified)
        return _remember(_ORDER_CACHE, key, _build_window_order(size, window, shift, device))


def _takes_used_window(attn) -> bool:
    """Whether ``attn`` is told the used window's shape: refimpl's own module, and any module declaring the
    geometric convention (which cannot know it from ``N`` alone)."""
    if isinstance(attn, WindowAttention3D):
        return True
    declared = getattr(attn, "refimpl_capabilities", None)
    return isinstance(declared, dict) and declared.get("index_convention") == "geometric"


def shifted_window_attention_3d(x: torch.Tensor, attn, *, window_size, shift_size, fill=-100.0) -> torch.Tensor:
    """Video Swin's (shifted) 3-D window attention over a clip, the attention part of
    ``SwinTransformerBlock3D.forward_part1`` without ``norm1``: ``(B, D, H, W, C) -> (B, D, H, W, C)``.

    The shrink rule on the unpadded size (``block_window_and_shift``), zero-padding at the end of each axis to a
    multiple of the used window, roll by ``-shift`` and the mask (``shifted_window_mask_3d(..., fill)`` on the
    padded sizes) when some used shift is > 0, partition, ``attn(windows, mask=mask)``, reverse, roll back, crop.
    Pad, roll and partition are one cached gather (``index_select`` over ``x`` plus one zero row), and reverse, roll
    back and crop another. ``attn`` is a ``WindowAttention3D``-like module built with ``window_size``; refimpl's own
    module (and any declaring ``index_convention='geometric'``) also gets ``used_window=``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must have a floating dtype, got {x.dtype}")
    if x.dim() != 5:
        raise ValueError(f"x must be 5-D (B, D, H, W, C), got shape {tuple(x.shape)}")
    b, D, H, W, c = x.shape  # unpacked directly: torch 2.1's dynamo cannot unpack a generator
    if min(b, D, H, W, c) < 1:
        raise ValueError(f"x must have no empty axis, got shape {tuple(x.shape)}")
    window = window_triple("window_size", window_size)
    module_window = getattr(attn, "window_size", None)
    if module_window is not None and tuple(module_window) != window:
        raise ValueError(f"attn was built with window_size={tuple(module_window)}, but window_size={window} was given")
    used_window, used_shift = block_window_and_shift((D, H, W), window, shift_size)
    padded = tuple(L + (used_window[a] - L % used_window[a]) % used_window[a] for a, L in enumerate((D, H, W)))
    n_tokens = used_window[0] * used_window[1] * used_window[2]
    mask = None
    if any(s > 0 for s in used_shift):
        if is_compiling():  # the arguments are checked above; torch 2.1's dynamo cannot trace isinstance(dtype)
            mask = _build_mask(padded, used_window, used_shift, validate.mask_fill(fill), x.device, x.dtype)
        else:
            mask = shifted_window_mask_3d(*padded, used_window, used_shift, fill, device=x.device, dtype=x.dtype)
    gather, scatter = _window_order((D, H, W), used_window, used_shift, x.device)
    rows = x.reshape(b, D * H * W, c)
    if padded != (D, H, W):  # pad tokens read an appended zero row (upstream pads after norm1: exact zeros)
        rows = torch.cat([rows, rows.new_zeros(b, 1, c)], dim=1)
    windows = rows.index_select(1, gather).reshape(-1, n_tokens, c)  # (B*nW, N, C)
    if _takes_used_window(attn):
        out = attn(windows, mask=mask, used_window=used_window)
    else:
        out = attn(windows, mask=mask)
    return out.reshape(b, -1, c).index_select(1, scatter).reshape(b, D, H, W, c)
