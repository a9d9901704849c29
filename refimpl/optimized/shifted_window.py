"""Swin's windows on tensors: partition / reverse as views, the shifted-window mask built vectorized and cached,
and map-level (shifted) window attention on top of ``refimpl.optimized.WindowAttention``.

Each function means what its namesake in ``refimpl.reference`` means; properties check them against it (and the
map-level operation against a second oracle that shares no code with the roll, the partition or the mask).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from refimpl import _validate as validate
from refimpl.optimized._compiling import is_compiling

__all__ = ["window_partition", "window_reverse", "shifted_window_mask", "shifted_window_attention"]


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """``(B, H, W, C) -> (B*nW, ws, ws, C)``, window row ``b*nW + wr*(W//ws) + wc`` (batch-major)."""
    b, h, w, c = validate.map_bhwc("x", x.shape)
    ws = validate.positive_int("window_size", window_size)
    if h % ws or w % ws:
        raise ValueError(f"H={h} and W={w} must be multiples of window_size={ws} (nothing pads the map)")
    x = x.reshape(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of ``window_partition``: ``(B*nW, ws, ws, C) -> (B, H, W, C)``."""
    ws = validate.positive_int("window_size", window_size)
    H, W = validate.positive_int("H", H), validate.positive_int("W", W)
    b = validate.windows_shape("windows", windows.shape, window_size=ws, H=H, W=W)
    x = windows.reshape(b, H // ws, W // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, H, W, -1)


def _axis_bands(size: int, window_size: int, shift_size: int, device) -> torch.Tensor:
    """Band of each position of one axis of the rolled map: 0 before ``size-ws``, 1 before ``size-s``, else 2."""
    position = torch.arange(size, device=device)
    if shift_size == 0:
        return torch.zeros_like(position)
    return (position >= size - window_size).long() + (position >= size - shift_size).long()


def _build_mask(H: int, W: int, ws: int, s: int, fill: float, device, dtype) -> torch.Tensor:
    regions = 3 * _axis_bands(H, ws, s, device)[:, None] + _axis_bands(W, ws, s, device)[None, :]  # (H, W)
    labels = window_partition(regions[None, :, :, None], ws).reshape(-1, ws * ws)  # (nW, N)
    allowed = labels[:, :, None] == labels[:, None, :]  # (nW, N, N)
    if dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, device=device, dtype=dtype).masked_fill_(~allowed, fill)


_CACHE_SLOTS = 32  # entries per module-level cache (least recently used dropped first)
_MASK_CACHE: OrderedDict = OrderedDict()
_ORDER_CACHE: OrderedDict = OrderedDict()


def _remember(cache: OrderedDict, key, value):
    """Store ``value`` as the newest entry of ``cache``, dropping the least recently used beyond ``_CACHE_SLOTS``."""
    cache[key] = value
    while len(cache) > _CACHE_SLOTS:
        cache.popitem(last=False)
    return value


def shifted_window_mask(
    H: int, W: int, window_size: int, shift_size: int, fill: float = -100.0, *, device=None, dtype=None
) -> torch.Tensor:
    """Swin's shifted-window mask ``(nW, ws*ws, ws*ws)``: 0 inside a region of the rolled map, ``fill`` between
    regions; with ``dtype=torch.bool``, the "may attend" mask (True inside a region; ``fill`` unused).

    Cached per ``(H, W, window, shift, fill, device, dtype)``: repeated calls return the same tensor, so that
    ``WindowAttention``'s own cache of the combined bias hits as well. Treat it as read-only; if it is modified
    in place anyway, the next call notices (its version moved) and rebuilds it.
    """
    H, W, ws, s = validate.shifted_window_geometry(H, W, window_size, shift_size)
    fill = validate.mask_fill(fill)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not (dtype == torch.bool or dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating dtype (additive mask) or torch.bool (may-attend), got {dtype}")
    device = torch.device("cpu") if device is None else torch.device(device)
    if is_compiling():  # a constant of the graph: inductor folds it; the cache is for eager calls
        return _build_mask(H, W, ws, s, fill, device, dtype)
    key = (H, W, ws, s, fill if dtype != torch.bool else None, device, dtype)
    hit = _MASK_CACHE.get(key)
    if hit is not None and hit[0]._version == hit[1]:
        _MASK_CACHE.move_to_end(key)
        return hit[0]
    with torch.inference_mode(False):  # a normal tensor: it has a version counter and works in every mode
        mask = _build_mask(H, W, ws, s, fill, device, dtype)
    return _remember(_MASK_CACHE, key, (mask, mask._version))[0]


def shifted_window_attention(
    x: torch.Tensor, attn, *, window_size: int, shift_size: int, fill: float = -100.0
) -> torch.Tensor:
    """Swin's (shifted) window attention over a map: ``(B, H, W, C) -> (B, H, W, C)``.

    Roll by ``-s``, partition into ``ws x ws`` windows, ``attn(windows, mask)`` with the cached
    ``shifted_window_mask(..., fill)`` (no mask when ``s == 0``, as Swin), reverse, roll back by ``+s``; the roll
    and the partition are one cached gather (``_window_order``), and so are their reverses.
    ``attn`` is a ``WindowAttention``-like module with ``window_size == (ws, ws)`` (any module with AIM's
    forward works: this is how the properties exercise a user's module at map level).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    b, H, W, c = validate.map_bhwc("x", x.shape)
    H, W, ws, s = validate.shifted_window_geometry(H, W, window_size, shift_size)
    module_window = getattr(attn, "window_size", (ws, ws))
    if tuple(validate.window_pair("attn.window_size", module_window)) != (ws, ws):
        raise ValueError(f"attn was built with window_size={tuple(module_window)}, but window_size={ws} was given")
    mask = shifted_window_mask(H, W, ws, s, fill, device=x.device, dtype=x.dtype) if s > 0 else None
    gather, scatter = _window_order(H, W, ws, s, x.device)
    windows = x.reshape(b, H * W, c).index_select(1, gather).reshape(-1, ws * ws, c)  # (B*nW, N, C)
    out = attn(windows, mask)
    return out.reshape(b, H * W, c).index_select(1, scatter).reshape(b, H, W, c)


def _window_order(H: int, W: int, ws: int, s: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gather, scatter)``, int64 ``(H*W,)``: map position ``gather[r]`` feeds windowed row-major position ``r`` of
    ``window_partition(roll(x, -s))``, and ``scatter`` is its inverse. One ``index_select`` then does the roll and
    the partition (and one their reverse): several times faster than the two copies ``roll`` + ``permute`` make
    (docs/benchmarks.md). Cached; built as normal tensors (never modified)."""
    if is_compiling():
        return _build_window_order(H, W, ws, s, device)
    key = (H, W, ws, s, torch.device(device))
    hit = _ORDER_CACHE.get(key)
    if hit is not None:
        _ORDER_CACHE.move_to_end(key)
        return hit
    with torch.inference_mode(False):
        return _remember(_ORDER_CACHE, key, _build_window_order(H, W, ws, s, device))


def _build_window_order(H: int, W: int, ws: int, s: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The uncached ``_window_order``."""
    rows = (torch.arange(H, device=device) + s) % H  # rolled row i reads map row (i + s) mod H
    cols = (torch.arange(W, device=device) + s) % W
    source = (rows[:, None] * W + cols[None, :])[None, :, :, None]  # (1, H, W, 1) in the rolled frame
    gather = window_partition(source, ws).reshape(-1)
    return gather, torch.argsort(gather)  # the inverse permutation
