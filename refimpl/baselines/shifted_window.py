"""Swin's shifted-window attention mask (``SwinTransformerBlock.__init__`` in ``models/swin_transformer.py``,
copied unchanged into AIM), written the way upstream writes it, as a function ``(H, W, window_size, shift_size)``,
and the block's map-level code around any window-attention module.

``refimpl verify`` at its defaults must pass the mask function (``properties/test_upstream_faithful.py``); the
map-level function drives every target of the map-level properties. Written from upstream's semantics
(docs/semantics.md), not copied.

What it keeps and what it leaves to the caller:

* the region labels come from the 3 x 3 loop over slice pairs of a float ``img_mask``, in the *rolled* frame, and
  the mask is ``label[j] - label[i]`` turned into ``-100.0`` (finite, not -inf) / ``0.0`` by two ``masked_fill``;
  the result is float32 ``(nW, ws*ws, ws*ws)``, windows in ``window_partition`` order;
* no validation: a map that the window does not tile breaks in ``window_partition``'s view, as upstream;
* the block's clamp (``min(H, W) <= ws`` sets the shift to 0 and the window to ``min(H, W)``) is a block-level
  decision about which window and shift to use, not part of building the mask: the function takes them as given;
* with shift 0 the block stores ``attn_mask = None`` (attend everywhere); a function must return a tensor, so it
  returns the all-zero mask, which adds nothing.
"""

import torch


def window_partition(x, window_size):
    """``(B, H, W, C)`` -> ``(B*nW, ws, ws, C)``: windows batch-major, row-major within the map."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)


def shifted_window_mask(H, W, window_size, shift_size):
    """Swin's ``attn_mask`` for an ``H x W`` map: ``(nW, ws*ws, ws*ws)`` float32, 0 within a region, -100 across."""
    if shift_size > 0:
        img_mask = torch.zeros((1, H, W, 1))  # 1 H W 1
        h_slices = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
        w_slices = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
        cnt = 0
        for h in h_slices:
            for w in w_slices:
                img_mask[:, h, w, :] = cnt  # region id 3 * row band + column band
                cnt += 1
        mask_windows = window_partition(img_mask, window_size)  # nW, ws, ws, 1
        mask_windows = mask_windows.view(-1, window_size * window_size)
        attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
        return attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)
    # Swin passes mask=None here; the zero mask is its equivalent as a tensor
    n_windows = (H // window_size) * (W // window_size)
    return torch.zeros((n_windows, window_size * window_size, window_size * window_size))


def window_reverse(windows, window_size, H, W):
    """``(B*nW, ws, ws, C)`` -> ``(B, H, W, C)``, the inverse of ``window_partition``."""
    B = int(windows.shape[0] / (H * W / window_size / window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def shifted_window_attention(x, attn, *, window_size, shift_size, fill=-100.0):
    """Swin's block around ``attn`` (without its norms, MLP and residual): ``(B, H, W, C)`` -> ``(B, H, W, C)``.
    Roll by ``-shift``, partition, ``attn(windows, mask)`` with Swin's mask (its -100 replaced by ``fill``; no mask
    without a shift), reverse, roll back. The geometry comes from the arguments, never from ``attn``."""
    B, H, W, C = x.shape
    mask = None
    if shift_size > 0:
        mask = shifted_window_mask(H, W, window_size, shift_size).to(device=x.device)
        mask = mask.masked_fill(mask != 0, fill).to(x.dtype)
        x = torch.roll(x, shifts=(-shift_size, -shift_size), dims=(1, 2))
    windows = window_partition(x, window_size).view(-1, window_size * window_size, C)  # (B*nW, N, C)
    out = window_reverse(attn(windows, mask).view(-1, window_size, window_size, C), window_size, H, W)
    if shift_size > 0:
        out = torch.roll(out, shifts=(shift_size, shift_size), dims=(1, 2))
    return out
