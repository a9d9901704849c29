"""Properties of a 3-D shifted-window mask function ``(D, H, W, window_size, shift_size) -> (nW, N, N)`` (kind
``shifted_window_mask_3d``, Video Swin's ``compute_mask``), against the mask's definition and a closed-form count of
the pairs it allows.

The arguments are what Video Swin's ``BasicLayer`` passes: the *padded* clip size, and the window and shift *in
use* (after the per-axis ``<=`` shrink rule), drawn together from clips that shrink, equal the window or need
padding, with shifts that are zero on some axes.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from hypothesis import strategies as st

from refimpl import reference
from refimpl.baselines.shifted_window_3d import compute_mask
from refimpl.strategies import window_attention_3d as st3d
from refimpl.suite._core import Kind, register, register_kind
from refimpl.suite._protocol import ProtocolError, call_target

MASK_KIND = "shifted_window_mask_3d"


def video_swin_compute_mask(D, H, W, window_size, shift_size):
    """Video Swin's ``compute_mask`` (``refimpl.baselines``) on the CPU, in the kind's protocol (no ``device``)."""
    return compute_mask(D, H, W, tuple(window_size), tuple(shift_size), torch.device("cpu"))


# --------------------------------------------------------------------------------------------------
# Properties of a 3-D shifted-window mask function
# --------------------------------------------------------------------------------------------------

# half the geometries shift every axis of side > 1: regions of two shifted axes meet only in corner windows
geometries = st.one_of(st3d.clip_geometries_3d(), st3d.clip_geometries_3d(shift="all"))
with_a_zero_shift = st3d.clip_geometries_3d().filter(lambda g: 0 in g.used[1])


def _mask_of(impl, geometry, **kwargs) -> np.ndarray:
    """The implementation's mask for ``geometry`` as a NumPy array (bool stays bool, floats become float64)."""
    mask = impl.factory(*geometry.mask_args, **kwargs)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu()
        mask = mask.numpy() if mask.dtype == torch.bool else mask.double().numpy()
    mask = np.asarray(mask)
    n = int(np.prod(geometry.used[0]))
    expected_shape = (geometry.n_windows, n, n)
    assert mask.shape == expected_shape, (f"mask{geometry.mask_args} has shape {mask.shape}, expected (nW, N, N) = "
                                          f"{expected_shape}")
    return mask


def _allowed(mask: np.ndarray) -> np.ndarray:
    return mask if mask.dtype == bool else mask == 0


def _accepts_fill(factory) -> bool:
    try:
        return "fill" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


@register(MASK_KIND, geometries, dtypes=("float32",))
def mask_equals_its_definition(impl, geometry, device, dtype):
    """The mask allows exactly the pairs of the definition (same region of the rolled, padded clip; per axis the
    bands ``[0, L-W)``, ``[L-W, L-s)``, ``[L-s, L)``, a single band where ``s = 0``; label ``9 b_d + 3 b_h + b_w``)
    and uses one convention: boolean "may attend", or 0 where allowed and one fill of at most -100 (Video Swin's
    -100) elsewhere. A target that takes ``fill=`` puts exactly that value (checked with -inf)."""
    mask = _mask_of(impl, geometry)
    expected = reference.shifted_window_mask_3d(*geometry.mask_args) == 0
    allowed = _allowed(mask)
    wrong = np.argwhere(allowed != expected)
    if wrong.size:
        first = tuple(int(i) for i in wrong[0])
        got, want = ("allowed", "blocked") if allowed[first] else ("blocked", "allowed")
        raise AssertionError(f"{len(wrong)} of {allowed.size} entries disagree with the definition; first at (window, "
                             f"query, key) = {first}: got {got}, expected {want}")
    if mask.dtype != bool:
        fills = np.unique(mask[~allowed])
        assert fills.size <= 1, f"blocked entries use several values {fills[:4]}: one fill expected"
        assert fills.size == 0 or fills[0] <= -100.0, f"fill {fills[0]} is too weak to mask (Video Swin uses -100)"
        if _accepts_fill(impl.factory):
            filled = _mask_of(impl, geometry, fill=-np.inf)
            assert np.array_equal(filled == 0, expected), "with fill=-inf the allowed pairs changed"
            assert (filled[~expected] == -np.inf).all(), "fill=-inf was not the value between regions"


def allowed_pairs_3d(geometry: st3d.ClipGeometry3D) -> np.ndarray:
    """Allowed (query, key) pairs per window, in closed form: along an axis a window holds ``W`` tokens of one band,
    except the last one when the shift is ``s > 0``, which holds ``W - s`` and ``s`` tokens of two bands; a region is
    a band on each axis, so a window allows the product over axes of the sums of squared band sizes."""
    used, shift = geometry.used
    per_axis = []
    for length, w, s in zip(geometry.padded, used, shift, strict=True):
        n = length // w
        per_axis.append([w**2 if s == 0 or k < n - 1 else (w - s) ** 2 + s**2 for k in range(n)])
    return np.array([a * b * c for a in per_axis[0] for b in per_axis[1] for c in per_axis[2]])


@register(MASK_KIND, geometries, dtypes=("float32",))
def mask_is_symmetric_with_allowed_diagonal_and_counted_pairs(impl, geometry, device, dtype):
    """The mask is symmetric, always allows a token to see itself, and window ``w`` allows exactly the number of
    pairs counted in closed form (e.g. 1024, 512, 512, 256, 512, 256, 256, 128 for a padded clip 4x8x8, window
    (2, 4, 4), shift (1, 2, 2))."""
    allowed = _allowed(_mask_of(impl, geometry))
    n = allowed.shape[1]
    assert (allowed == allowed.transpose(0, 2, 1)).all(), "the mask is not symmetric"
    assert allowed[:, np.arange(n), np.arange(n)].all(), "a token may not see itself"
    counts, expected = allowed.sum(axis=(1, 2)), allowed_pairs_3d(geometry)
    assert (counts == expected).all(), f"allowed pairs per window {counts.tolist()} != {expected.tolist()}"


@register(MASK_KIND, with_a_zero_shift, dtypes=("float32",))
def a_zero_shift_axis_never_splits_a_window(impl, geometry, device, dtype):
    """An axis whose shift in use is 0 has a single band (upstream's last slice ``[-0:]`` is the whole axis): two
    tokens of a window that differ only along such axes may always see each other, and with every shift 0 the mask
    allows everything (all zeros)."""
    allowed = _allowed(_mask_of(impl, geometry))
    used, shift = geometry.used
    # (3, N): the in-window coordinates of each token, (d, h, w) row-major
    coords = np.stack(np.meshgrid(*[np.arange(u) for u in used], indexing="ij")).reshape(3, -1)
    free = [a for a in range(3) if shift[a] > 0]
    same_on_shifted_axes = np.all([coords[a][:, None] == coords[a][None, :] for a in free], axis=0) if free \
        else np.ones((coords.shape[1],) * 2, dtype=bool)
    blocked = np.argwhere(~allowed & same_on_shifted_axes[None])
    assert not blocked.size, (f"window {blocked[0][0]} blocks tokens {tuple(blocked[0][1:])}, which differ only along "
                              f"axes with shift 0 (shift in use {shift})")
    if not any(shift):
        assert allowed.all(), "every shift is 0 but the mask blocks some pairs"


# --------------------------------------------------------------------------------------------------
# The kind: Video Swin's compute_mask, checked before any property
# --------------------------------------------------------------------------------------------------


def _protocol_shifted_window_mask_3d(factory) -> None:
    out = call_target(factory, (2, 4, 4, (2, 2, 2), (1, 1, 1)), "mask(D, H, W, window_size, shift_size)")
    if tuple(getattr(out, "shape", ())) != (4, 8, 8):
        raise ProtocolError(f"mask(2, 4, 4, (2, 2, 2), (1, 1, 1)) returned shape {tuple(getattr(out, 'shape', ()))}; "
                            f"expected (nW, N, N) = (4, 8, 8)")


register_kind(Kind(MASK_KIND, upstream="Video Swin's compute_mask",
                   default_target="refimpl.optimized:shifted_window_mask_3d",
                   protocol=_protocol_shifted_window_mask_3d))
