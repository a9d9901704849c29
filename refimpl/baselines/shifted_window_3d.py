"""Video Swin's 3-D window geometry (``get_window_size``, ``window_partition``, ``window_reverse``,
``compute_mask``) and the attention part of ``SwinTransformerBlock3D.forward_part1`` around any window-attention
module, written the way upstream writes them (``mmaction/models/backbones/swin_transformer.py``).

The map-level function drives the targets of the 3-D map-level properties and is the "before" side of the
benchmarks. Written fresh from upstream's semantics (docs/window-attention-3d.md), not copied; torch only.

What it keeps and what it leaves to the caller:

* the shrink rule is decided on the *unpadded* size, per axis, with ``<=``: an axis no longer than the window uses
  its length as the window and loses its shift;
* the map is zero-padded at the end of each axis to a multiple of the used window, *then* rolled by ``-shift``
  (pad tokens are not masked: they are keys like any other, in whatever region they fall);
* the mask labels come from the 3 x 3 x 3 loop over slice triples ``slice(-W), slice(-W, -s), slice(-s, None)`` of
  a float ``img_mask`` on the padded size, in the rolled frame; on an axis with shift 0 the last slice
  ``slice(-0, None)`` is the whole axis and is written last, so that axis has a single band;
* ``compute_mask`` returns float32 ``(nW, N, N)``, 0 within a region and -100.0 across, ``lru_cache``d as
  upstream's: repeated calls return the same shared tensor (never modify it);
* the mask is used only when some used shift is > 0 (``any(i > 0 for i in shift_size)``); otherwise no roll and
  no mask;
* no validation beyond upstream's: sizes the window does not tile break in ``window_partition``'s view.
"""

from functools import lru_cache

import torch
import torch.nn.functional as F


def window_partition(x, window_size):
    """``(B, D, H, W, C)`` -> ``(B*nW, Wd*Wh*Ww, C)``: windows batch-major, ``(wd, wh, ww)`` row-major over the
    window grid, tokens ``(d, h, w)`` row-major within a window."""
    B, D, H, W, C = x.shape
    x = x.view(B, D // window_size[0], window_size[0], H // window_size[1], window_size[1],
               W // window_size[2], window_size[2], C)
    windows = x.permute(0, 1, 3, 5, 2, 4, 6, 7).contiguous().view(-1, window_size[0] * window_size[1]
                                                                  * window_size[2], C)
    return windows


def window_reverse(windows, window_size, B, D, H, W):
    """``(B*nW, Wd, Wh, Ww, C)`` (or any shape that views as it) -> ``(B, D, H, W, C)``, the inverse of
    ``window_partition``. ``window_size`` must be a tuple (it is unpacked into a view)."""
    x = windows.view(B, D // window_size[0], H // window_size[1], W // window_size[2],
                     window_size[0], window_size[1], window_size[2], -1)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).contiguous().view(B, D, H, W, -1)
    return x


def get_window_size(x_size, window_size, shift_size=None):
    """Video Swin's shrink rule: per axis, if ``x_size[a] <= window_size[a]`` the used window is ``x_size[a]`` and
    the used shift 0. Returns the used window (a tuple), and the used shift too when ``shift_size`` is given."""
    use_window_size = list(window_size)
    if shift_size is not None:
        use_shift_size = list(shift_size)
    for i in range(len(x_size)):
        if x_size[i] <= window_size[i]:
            use_window_size[i] = x_size[i]
            if shift_size is not None:
                use_shift_size[i] = 0

    if shift_size is None:
        return tuple(use_window_size)
    return tuple(use_window_size), tuple(use_shift_size)


@lru_cache
def compute_mask(D, H, W, window_size, shift_size, device):
    """Video Swin's shifted-window mask on the padded sizes ``(D, H, W)`` with the used window and shift:
    ``(nW, N, N)`` float32 on ``device``, 0 within a region and -100.0 across (up to 27 regions). Cached: the
    same tensor for the same arguments (``window_size`` and ``shift_size`` must be tuples, as upstream's)."""
    img_mask = torch.zeros((1, D, H, W, 1), device=device)  # 1 Dp Hp Wp 1
    cnt = 0
    for d in slice(-window_size[0]), slice(-window_size[0], -shift_size[0]), slice(-shift_size[0], None):
        for h in slice(-window_size[1]), slice(-window_size[1], -shift_size[1]), slice(-shift_size[1], None):
            for w in slice(-window_size[2]), slice(-window_size[2], -shift_size[2]), slice(-shift_size[2], None):
                img_mask[:, d, h, w, :] = cnt  # region id 9 * d band + 3 * h band + w band
                cnt += 1
    mask_windows = window_partition(img_mask, window_size)  # nW, ws[0]*ws[1]*ws[2], 1
    mask_windows = mask_windows.squeeze(-1)  # nW, ws[0]*ws[1]*ws[2]
    attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    attn_mask = attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)
    return attn_mask


def shifted_window_attention_3d(x, attn, *, window_size, shift_size, fill=-100.0):
    """``SwinTransformerBlock3D.forward_part1`` without ``norm1`` around ``attn``: ``(B, D, H, W, C)`` ->
    ``(B, D, H, W, C)``.

    Shrink rule on the unpadded size, zero-pad at the end to a multiple of the used window, roll by ``-shift`` and
    use Video Swin's mask (its -100 replaced by ``fill``, cast to ``x``'s dtype) when some used shift is > 0,
    partition, ``attn(windows, mask=mask)``, reverse, roll back, crop. The geometry comes from the arguments, never
    from ``attn``.
    """
    B, D, H, W, C = x.shape
    window_size, shift_size = get_window_size((D, H, W), window_size, shift_size)

    # pad at the end of each axis to a multiple of the used window (upstream pads after norm1: pad tokens are 0)
    pad_d0 = pad_t = pad_l = 0
    pad_d1 = (window_size[0] - D % window_size[0]) % window_size[0]
    pad_b = (window_size[1] - H % window_size[1]) % window_size[1]
    pad_r = (window_size[2] - W % window_size[2]) % window_size[2]
    x = F.pad(x, (0, 0, pad_l, pad_r, pad_t, pad_b, pad_d0, pad_d1))
    _, Dp, Hp, Wp, _ = x.shape

    # cyclic shift; BasicLayer builds the mask once per stage on the padded size with the used window and shift
    if any(i > 0 for i in shift_size):
        shifted_x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1], -shift_size[2]), dims=(1, 2, 3))
        attn_mask = compute_mask(Dp, Hp, Wp, window_size, shift_size, x.device)
        if fill != -100.0:  # a new tensor: the cached one is shared
            attn_mask = attn_mask.masked_fill(attn_mask != 0, fill)
        attn_mask = attn_mask.to(x.dtype)  # the same tensor when x is float32, as upstream passes it
    else:
        shifted_x = x
        attn_mask = None

    x_windows = window_partition(shifted_x, window_size)  # B*nW, Wd*Wh*Ww, C
    attn_windows = attn(x_windows, mask=attn_mask)  # B*nW, Wd*Wh*Ww, C

    attn_windows = attn_windows.view(-1, *(window_size + (C,)))
    shifted_x = window_reverse(attn_windows, window_size, B, Dp, Hp, Wp)  # B D' H' W' C

    if any(i > 0 for i in shift_size):
        x = torch.roll(shifted_x, shifts=(shift_size[0], shift_size[1], shift_size[2]), dims=(1, 2, 3))
    else:
        x = shifted_x

    if pad_d1 > 0 or pad_r > 0 or pad_b > 0:
        x = x[:, :D, :H, :W, :].contiguous()
    return x
