"""Shifted-window mask mutants: functions ``(H, W, window_size, shift_size) -> (nW, N, N)`` with one realistic bug
each."""

from __future__ import annotations

import torch

from refimpl.baselines.shifted_window import shifted_window_mask as swin_shifted_window_mask
from refimpl.mutants._mutant import Mutant

# --------------------------------------------------------------------------------------------------
# Shifted-window mask functions (H, W, window_size, shift_size) -> (nW, N, N)
# --------------------------------------------------------------------------------------------------


def _labels(H, W, bands):
    labels = torch.zeros(H, W)
    region = 0
    for rows in bands(H):
        for cols in bands(W):
            labels[rows, cols] = region
            region += 1
    return labels


def _mask_from_labels(labels, ws, window_major=False):
    H, W = labels.shape
    windows = labels.view(H // ws, ws, W // ws, ws).permute(0, 2, 1, 3)
    if window_major:
        windows = windows.transpose(0, 1)  # column-major window order
    windows = windows.reshape(-1, ws * ws)
    return (windows[:, None, :] != windows[:, :, None]).float() * -100.0


def mask_labelled_before_the_roll(H, W, window_size, shift_size):
    """Regions labelled on the unrolled map: bands (0, s), (s, H - ws + s)... in the original frame."""
    s, ws = shift_size, window_size
    bands = lambda n: (slice(0, s), slice(s, n - ws + s), slice(n - ws + s, None)) if s else (slice(0, n),)  # noqa
    return _mask_from_labels(_labels(H, W, bands), ws)


def mask_windows_column_major(H, W, window_size, shift_size):
    return swin_shifted_window_mask(H, W, window_size, shift_size).view(H // window_size, W // window_size,
                                                                          window_size**2, -1).transpose(0, 1) \
        .reshape(-1, window_size**2, window_size**2)


def mask_bands_from_half_window(H, W, window_size, shift_size):
    """Swin's slices with ws // 2 where the shift belongs (right only when shift = ws / 2)."""
    ws, s = window_size, shift_size
    half = ws // 2 if s else 0
    bands = lambda n: (slice(0, -ws), slice(-ws, -half), slice(-half, None)) if half else (slice(0, n),)  # noqa
    return _mask_from_labels(_labels(H, W, bands), ws)


def mask_allows_across_regions(H, W, window_size, shift_size):
    mask = swin_shifted_window_mask(H, W, window_size, shift_size)
    return torch.where(mask == 0, torch.tensor(-100.0), torch.tensor(0.0))  # the fill on the wrong side


CATALOG = [
    Mutant("shifted_window_mask", "labelled_before_the_roll", "regions labelled on the unrolled map",
           mask_labelled_before_the_roll, "shift > 0"),
    Mutant("shifted_window_mask", "windows_column_major", "windows listed column-major", mask_windows_column_major,
           "more than one window per side"),
    Mutant("shifted_window_mask", "bands_from_half_window", "bands cut at ws // 2 instead of the shift",
           mask_bands_from_half_window, "shift != ws / 2"),
    Mutant("shifted_window_mask", "allows_across_regions", "0 and the fill swapped", mask_allows_across_regions),
]
