"""3-D shifted-window mask mutants: functions ``(D, H, W, window_size, shift_size) -> (nW, N, N)`` (padded sizes, the
window and shift in use), each Video Swin's ``compute_mask`` with one realistic bug."""

from __future__ import annotations

import torch

from refimpl.mutants._mutant import Mutant

KIND = "shifted_window_mask_3d"


def _upstream_slices(length, window, shift):
    return slice(-window), slice(-window, -shift), slice(-shift, None)


def _mask(D, H, W, window_size, shift_size, *, slices=_upstream_slices, label=lambda d, h, w: 9 * d + 3 * h + w,
          grid_order=(0, 1, 2), token_order=(0, 1, 2)):
    """``compute_mask`` with its steps as parameters: the per-axis slices, the region label of a band triple, the
    order of the window grid and of the tokens inside a window (axes, most significant first)."""
    img = torch.zeros(1, D, H, W, 1)
    for bd, d in enumerate(slices(D, window_size[0], shift_size[0])):
        for bh, h in enumerate(slices(H, window_size[1], shift_size[1])):
            for bw, w in enumerate(slices(W, window_size[2], shift_size[2])):
                img[:, d, h, w, :] = label(bd, bh, bw)
    wd, wh, ww = window_size
    grid = img.view(D // wd, wd, H // wh, wh, W // ww, ww)
    grid = grid.permute(*[2 * a for a in grid_order], *[2 * a + 1 for a in token_order])
    labels = grid.reshape(-1, wd * wh * ww)
    diff = labels.unsqueeze(1) - labels.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def mask_3d_labelled_before_the_roll(D, H, W, window_size, shift_size):
    """Regions cut on the unrolled clip: ``[0, s)``, ``[s, L - W + s)``, ``[L - W + s, L)``."""
    def slices(length, window, shift):
        if shift == 0:
            return (slice(None),)
        return slice(0, shift), slice(shift, length - window + shift), slice(length - window + shift, None)
    return _mask(D, H, W, window_size, shift_size, slices=slices)


def mask_3d_bands_from_half_window(D, H, W, window_size, shift_size):
    """Band edges from the layer's shift ``W // 2`` on every axis, not the shift in use."""
    def slices(length, window, shift):
        return _upstream_slices(length, window, window // 2)
    return _mask(D, H, W, window_size, shift_size, slices=slices)


def mask_3d_windows_w_major(D, H, W, window_size, shift_size):
    return _mask(D, H, W, window_size, shift_size, grid_order=(2, 1, 0))


def mask_3d_tokens_w_major(D, H, W, window_size, shift_size):
    return _mask(D, H, W, window_size, shift_size, token_order=(2, 1, 0))


def mask_3d_labels_summed(D, H, W, window_size, shift_size):
    return _mask(D, H, W, window_size, shift_size, label=lambda d, h, w: d + h + w)


def unmutated_compute_mask(D, H, W, window_size, shift_size):
    """The base of the mutants, unmutated (``properties/test_window_attention_3d.py`` checks it passes)."""
    return _mask(D, H, W, window_size, shift_size)


CATALOG = [
    Mutant(KIND, "mask_3d_labelled_before_the_roll", "regions cut on the unrolled clip",
           mask_3d_labelled_before_the_roll, "a shift in use > 0"),
    Mutant(KIND, "mask_3d_bands_from_half_window", "band edges from W // 2 on every axis instead of the shift in use",
           mask_3d_bands_from_half_window, "a shift in use other than W // 2 (a zero-shifted axis of side >= 2)"),
    Mutant(KIND, "mask_3d_windows_w_major", "windows listed W-major over the window grid", mask_3d_windows_w_major,
           "several windows along D and W"),
    Mutant(KIND, "mask_3d_tokens_w_major", "tokens flattened (w, h, d) inside a window", mask_3d_tokens_w_major,
           "a split window with Wd != Ww"),
    Mutant(KIND, "mask_3d_labels_summed", "region label b_d + b_h + b_w (regions collide)", mask_3d_labels_summed,
           "shifts in use on two axes"),
]
