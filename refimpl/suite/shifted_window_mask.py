"""Properties of a shifted-window mask function ``(H, W, window_size, shift_size) -> (nW, N, N)`` (kind
``shifted_window_mask``), against the mask's definition and against a closed-form count of the pairs it allows."""

from __future__ import annotations

import numpy as np
import torch

from refimpl import reference
from refimpl import strategies as rst
from refimpl.suite._core import Kind, register, register_kind
from refimpl.suite._protocol import ProtocolError, call_target

MASK_KIND = "shifted_window_mask"


# --------------------------------------------------------------------------------------------------
# Properties of a shifted-window mask function
# --------------------------------------------------------------------------------------------------


def _mask_of(impl, geometry) -> np.ndarray:
    """The implementation's mask for ``geometry`` as a NumPy array (bool stays bool, floats become float64)."""
    mask = impl.factory(*geometry.args)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu()
        mask = mask.numpy() if mask.dtype == torch.bool else mask.double().numpy()
    mask = np.asarray(mask)
    expected_shape = (geometry.n_windows, geometry.window_size**2, geometry.window_size**2)
    assert mask.shape == expected_shape, f"mask has shape {mask.shape}, expected (nW, N, N) = {expected_shape}"
    return mask


def _allowed(mask: np.ndarray) -> np.ndarray:
    return mask if mask.dtype == bool else mask == 0


@register(MASK_KIND, rst.shifted_window_configs(), dtypes=("float32",))
def mask_equals_its_definition(impl, geometry, device, dtype):
    """The mask allows exactly the pairs of the definition (same region of the rolled map, region ids
    3 * row band + column band) and uses one convention throughout: boolean "may attend", or 0 where allowed and
    one common fill of at most -100 (Swin's -100, or -inf) everywhere else."""
    mask = _mask_of(impl, geometry)
    expected = reference.shifted_window_mask(*geometry.args) == 0
    allowed = _allowed(mask)
    wrong = np.argwhere(allowed != expected)
    if wrong.size:
        first = tuple(int(i) for i in wrong[0])
        got, want = ("allowed", "blocked") if allowed[first] else ("blocked", "allowed")
        raise AssertionError(
            f"{len(wrong)} of {allowed.size} entries disagree with the definition; first at (window, query, key) = "
            f"{first}: got {got}, expected {want}"
        )
    if mask.dtype != bool:
        fills = np.unique(mask[~allowed])
        assert fills.size <= 1, f"blocked entries use several values {fills[:4]}: one fill expected"
        assert fills.size == 0 or fills[0] <= -100.0, f"fill {fills[0]} is too weak to mask (Swin uses -100)"


def swin_allowed_pairs(geometry: rst.ShiftedWindowConfig) -> np.ndarray:
    """Allowed (query, key) pairs per window, in closed form: along an axis a window holds ws tokens of one
    band, except the last one when shifted, which holds ws - s and s tokens of two bands; a region is a
    row band x a column band, so a window allows (sum over its row bands of n^2) x (same over column bands)."""
    H, W, ws, s = geometry.args

    def per_axis(k: int, n_windows: int) -> int:
        return ws**2 if s == 0 or k < n_windows - 1 else (ws - s) ** 2 + s**2

    return np.array([per_axis(wr, H // ws) * per_axis(wc, W // ws) for wr in range(H // ws) for wc in range(W // ws)])


@register(MASK_KIND, rst.shifted_window_configs(), dtypes=("float32",))
def mask_is_symmetric_with_allowed_diagonal_and_counted_pairs(impl, geometry, device, dtype):
    """The mask is symmetric, always allows a token to see itself (no row is fully masked), and window w allows
    exactly the number of pairs counted in closed form (e.g. 256, 128, 128, 64 for 8x8, ws 4, shift 2)."""
    allowed = _allowed(_mask_of(impl, geometry))
    assert (allowed == allowed.transpose(0, 2, 1)).all(), "the mask is not symmetric"
    assert allowed[:, np.arange(allowed.shape[1]), np.arange(allowed.shape[1])].all(), "a token may not see itself"
    counts, expected = allowed.sum(axis=(1, 2)), swin_allowed_pairs(geometry)
    assert (counts == expected).all(), f"allowed pairs per window {counts.tolist()} != {expected.tolist()}"


# --------------------------------------------------------------------------------------------------
# The kind: Swin's mask function, checked before any property
# --------------------------------------------------------------------------------------------------


def _protocol_shifted_window_mask(factory) -> None:
    out = call_target(factory, (4, 4, 2, 1), "mask(H, W, window_size, shift_size)")
    if tuple(getattr(out, "shape", ())) != (4, 4, 4):
        raise ProtocolError(f"mask(4, 4, 2, 1) returned shape {tuple(getattr(out, 'shape', ()))}; expected "
                            f"(nW, N, N) = (4, 4, 4)")


register_kind(Kind(MASK_KIND, upstream="Swin's attn_mask", default_target="refimpl.optimized:shifted_window_mask",
                   protocol=_protocol_shifted_window_mask))
