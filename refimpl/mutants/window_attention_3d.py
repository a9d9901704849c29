"""Video Swin 3-D window-attention mutants: ``WindowAttention3D``'s computation written step by step
(``SnippetWindowAttention3D``, on the upstream-faithful module), each mutant overriding one step with one realistic
3-D bug; and the block's attention part written step by step (``SnippetBlock3D``), whose mutants carry the map-level
bugs (shrink rule, padding, roll order, crop, mask geometry).

The window-level mutants are targets of the ``window_attention_3d`` kind and sit in ``CATALOG`` (``refimpl verify``
runs them). The block mutants are not targets of any kind: every ``window_attention_3d`` target is driven through
Video Swin's own block code, so a block bug is a bug of the code around the module. They sit in
``BLOCK_MUTANTS``, and ``properties/test_window_attention_3d.py`` requires ``block_matches_oracle`` (the check of
``map_level_matches_oracle``, with the block as the parameter) to catch each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refimpl.baselines.shifted_window_3d import compute_mask, get_window_size, window_partition, window_reverse
from refimpl.baselines.window_attention_3d import WindowAttention3D
from refimpl.mutants._mutant import Mutant

KIND = "window_attention_3d"


# --------------------------------------------------------------------------------------------------
# Window level: the module's computation, step by step
# --------------------------------------------------------------------------------------------------


class SnippetWindowAttention3D(WindowAttention3D):
    """Video Swin's ``WindowAttention3D.forward``, one overridable step per method (correct as is)."""

    def gather_index(self, n):
        """``(N, N)``: upstream's truncated lookup."""
        return self.relative_position_index[:n, :n]

    def position_bias(self, n):
        """``(nH, N, N)``: ``table[index[i, j], h]``."""
        index = self.gather_index(n)
        return self.relative_position_bias_table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)

    def scale_factor(self):
        return self.scale

    def add_mask(self, attn, mask):
        """``attn`` ``(B_, nH, N, N)`` + ``mask[b % nW]`` through the batch-major 5-D view."""
        rows, heads, n, _ = attn.shape
        windows = mask.shape[0]
        return (attn.view(rows // windows, windows, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(attn.shape)

    def attention_dropout(self, attn):
        return self.attn_drop(attn)

    def forward(self, x, mask=None):
        rows, n, c = x.shape
        q, k, v = self.qkv(x).reshape(rows, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale_factor()) @ k.transpose(-2, -1)
        attn = attn + self.position_bias(n).unsqueeze(0)
        if mask is not None:
            attn = self.add_mask(attn, mask)
        attn = self.attention_dropout(attn.softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(rows, n, c)))


def _index_3d(window, radices_order=(0, 1, 2), indexing="ij"):
    """An ``(N0, N0)`` index over ``window`` whose digits are the axes in ``radices_order`` (most significant first),
    with the token grid built by ``torch.meshgrid(..., indexing=indexing)``."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in window], indexing=indexing)).flatten(1)
    offsets = coords[:, :, None] - coords[:, None, :]
    index = torch.zeros_like(offsets[0])
    for axis in radices_order:
        index = index * (2 * window[axis] - 1) + offsets[axis] + window[axis] - 1
    return index


class _IndexMutant(SnippetWindowAttention3D):
    radices_order = (0, 1, 2)
    indexing = "ij"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.relative_position_index = _index_3d(tuple(self.window_size), self.radices_order, self.indexing)


class TableWMajor(_IndexMutant):
    radices_order = (2, 1, 0)  # (Δw, Δh, Δd): the table read W-major instead of D-major


class MeshgridXY(_IndexMutant):
    indexing = "xy"  # meshgrid 'xy' swaps the first two axes of the token grid: tokens flattened (h, d, w)


class BiasKeyMinusQuery(SnippetWindowAttention3D):
    def position_bias(self, n):
        return super().position_bias(n).transpose(1, 2)  # Bias[h, j, i]: offsets key minus query


class UsedWindowIndexIntoModuleTable(SnippetWindowAttention3D):
    """A shrunk window gets the index of a window of N tokens laid out along W alone, read with the module table's
    radices: the row-major index of a ``(1, 1, N)`` box, wrong wherever the window in use is not that."""

    def gather_index(self, n):
        if n == self.relative_position_index.shape[0]:
            return super().gather_index(n)
        wd, wh, ww = self.window_size
        cols = torch.arange(n)
        offsets = (cols[:, None] - cols[None, :]).clamp(-(ww - 1), ww - 1)
        return (wd - 1) * (2 * wh - 1) * (2 * ww - 1) + (wh - 1) * (2 * ww - 1) + offsets + ww - 1


class DeclaresGeometricComputesTruncated(SnippetWindowAttention3D):
    """Declares the geometric convention and takes ``used_window``, but still reads ``index[:N, :N]``."""

    refimpl_capabilities = {"index_convention": "geometric"}

    def forward(self, x, mask=None, *, used_window=None):
        return super().forward(x, mask)


class QkScaleZeroTakenLiterally(SnippetWindowAttention3D):
    def __init__(self, dim, window_size, num_heads, qkv_bias=False, qk_scale=None, **kwargs):
        super().__init__(dim, window_size, num_heads, qkv_bias, qk_scale, **kwargs)
        self.scale = qk_scale if qk_scale is not None else (dim // num_heads) ** -0.5


class MaskWindowMajor(SnippetWindowAttention3D):
    def add_mask(self, attn, mask):
        return attn + mask.repeat_interleave(attn.shape[0] // mask.shape[0], dim=0).unsqueeze(1)  # row b: b // B


class TableDetached(SnippetWindowAttention3D):
    def position_bias(self, n):
        index = self.gather_index(n)
        return self.relative_position_bias_table.detach()[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)


class DropoutInEvalMode(SnippetWindowAttention3D):
    def attention_dropout(self, attn):
        return F.dropout(attn, self.attn_drop.p)  # F.dropout's training=True default: drops in eval mode too


CATALOG = [
    Mutant(KIND, "table_w_major_3d", "bias table read W-major (Δw most significant) instead of D-major", TableWMajor,
           "windows with Wd != Ww"),
    Mutant(KIND, "meshgrid_xy_3d", "token grid built with meshgrid 'xy': tokens flattened (h, d, w)", MeshgridXY,
           "windows with Wd > 1 and Wh > 1"),
    Mutant(KIND, "bias_key_minus_query_3d", "bias of the offset key minus query (Bias transposed)", BiasKeyMinusQuery,
           "windows of more than one token"),
    Mutant(KIND, "used_window_index_along_w", "a shrunk window's index built as if its N tokens lay along W",
           UsedWindowIndexIntoModuleTable, "windows in use smaller than the module's, other than (1, 1, N)"),
    Mutant(KIND, "declares_geometric_computes_truncated",
           "declares index_convention 'geometric' but reads index[:N, :N]", DeclaresGeometricComputesTruncated,
           "windows in use that are not a row-major prefix (H or W shrunk with an earlier axis above 1)"),
    Mutant(KIND, "qk_scale_zero_taken_literally_3d", "qk_scale=0 scales every logit by 0 (not the default)",
           QkScaleZeroTakenLiterally, "qk_scale=0"),
    Mutant(KIND, "mask_window_major_3d", "row b gets mask[b // B] (window-major) instead of mask[b % nW]",
           MaskWindowMajor, "masked calls with B > 1 and nW > 1"),
    Mutant(KIND, "bias_table_detached_3d", "the bias table gets no gradient", TableDetached),
    Mutant(KIND, "dropout_in_eval_mode_3d", "attention dropout through F.dropout without training=",
           DropoutInEvalMode, "attn_drop > 0"),
]


# --------------------------------------------------------------------------------------------------
# Block level: SwinTransformerBlock3D.forward_part1 without norm1, step by step
# --------------------------------------------------------------------------------------------------


class SnippetBlock3D:
    """The block's attention part around ``attn``, one overridable step per method (correct as is): call as
    ``block(x, attn, window_size=..., shift_size=..., fill=-100.0)`` with ``x`` ``(B, D, H, W, C)``."""

    def window_and_shift(self, size, window_size, shift_size):
        return get_window_size(size, window_size, shift_size)

    def pad(self, x, window):
        _, D, H, W, _ = x.shape
        pads = [(w - s % w) % w for s, w in zip((D, H, W), window, strict=True)]
        return F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))

    def crop(self, x, size):
        D, H, W = size
        return x[:, :D, :H, :W]

    def mask(self, padded, size, window, used_window, shift, device):
        return compute_mask(*padded, used_window, shift, device)

    def roll(self, x, shift, sign):
        return torch.roll(x, shifts=tuple(sign * s for s in shift), dims=(1, 2, 3))

    def attend(self, windows, attn, mask, padded, size, used_window):
        return attn(windows, mask=mask)

    def __call__(self, x, attn, *, window_size, shift_size, fill=-100.0):
        B, D, H, W, C = x.shape
        used_window, shift = self.window_and_shift((D, H, W), window_size, shift_size)
        x = self.pad(x, used_window)
        padded = tuple(x.shape[1:4])
        mask = None
        if any(s > 0 for s in shift):
            x = self.roll(x, shift, -1)
            mask = self.mask(padded, (D, H, W), tuple(window_size), used_window, shift, x.device)
            mask = mask.masked_fill(mask != 0, fill).to(x.dtype)
        out = self.attend(window_partition(x, used_window), attn, mask, padded, (D, H, W), used_window)
        x = window_reverse(out.reshape(-1, *used_window, C), used_window, B, *padded)
        if any(s > 0 for s in shift):
            x = self.roll(x, shift, +1)
        return self.crop(x, (D, H, W))


class ShrinkRuleStrict(SnippetBlock3D):
    def window_and_shift(self, size, window_size, shift_size):
        used = tuple(s if s < w else w for s, w in zip(size, window_size, strict=True))  # `<`: equality not shrunk
        shift = tuple(0 if s < w else t for s, w, t in zip(size, window_size, shift_size, strict=True))
        return used, shift


class ShiftKeptOnShrunkAxis(SnippetBlock3D):
    def window_and_shift(self, size, window_size, shift_size):
        used = get_window_size(size, window_size)
        return used, tuple(min(t, u - 1) for t, u in zip(shift_size, used, strict=True))  # not zeroed, only clamped


class RollBeforePad(SnippetBlock3D):
    """timm's order: roll the unpadded clip, then pad; crop, then roll back."""

    def __call__(self, x, attn, *, window_size, shift_size, fill=-100.0):
        B, D, H, W, C = x.shape
        used_window, shift = self.window_and_shift((D, H, W), window_size, shift_size)
        rolled = any(s > 0 for s in shift)
        x = self.pad(self.roll(x, shift, -1) if rolled else x, used_window)
        padded = tuple(x.shape[1:4])
        mask = None
        if rolled:
            mask = compute_mask(*padded, used_window, shift, x.device)
            mask = mask.masked_fill(mask != 0, fill).to(x.dtype)
        out = attn(window_partition(x, used_window), mask=mask)
        x = self.crop(window_reverse(out.reshape(-1, *used_window, C), used_window, B, *padded), (D, H, W))
        return self.roll(x, shift, +1) if rolled else x


class PadAtStart(SnippetBlock3D):
    def pad(self, x, window):
        _, D, H, W, _ = x.shape
        pads = [(w - s % w) % w for s, w in zip((D, H, W), window, strict=True)]
        return F.pad(x, (0, 0, pads[2], 0, pads[1], 0, pads[0], 0))

    def crop(self, x, size):
        D, H, W = size
        return x[:, -D:, -H:, -W:]


class CropBeforeRollBack(SnippetBlock3D):
    """Pads and rolls as upstream, but crops the padding off before rolling back (the roll then wraps over the
    cropped size)."""

    def __call__(self, x, attn, *, window_size, shift_size, fill=-100.0):
        B, D, H, W, C = x.shape
        used_window, shift = self.window_and_shift((D, H, W), window_size, shift_size)
        rolled = any(s > 0 for s in shift)
        x = self.pad(x, used_window)
        padded = tuple(x.shape[1:4])
        mask = None
        if rolled:
            x = self.roll(x, shift, -1)
            mask = compute_mask(*padded, used_window, shift, x.device)
            mask = mask.masked_fill(mask != 0, fill).to(x.dtype)
        out = attn(window_partition(x, used_window), mask=mask)
        x = self.crop(window_reverse(out.reshape(-1, *used_window, C), used_window, B, *padded), (D, H, W))
        return self.roll(x, shift, +1) if rolled else x


class PadTokensMasked(SnippetBlock3D):
    def attend(self, windows, attn, mask, padded, size, used_window):
        real = torch.zeros(1, *padded, 1, device=windows.device)
        real[:, : size[0], : size[1], : size[2]] = 1.0
        keys = window_partition(real, used_window)[..., 0]  # (nW, N): 1 at real tokens
        n = keys.shape[1]
        pad_keys = torch.where(keys[:, None, :] > 0, 0.0, -100.0).expand(-1, n, -1).to(windows.dtype)
        return attn(windows, mask=pad_keys if mask is None else torch.minimum(pad_keys, mask))


class MaskFromUnpaddedSizes(SnippetBlock3D):
    def mask(self, padded, size, window, used_window, shift, device):
        # regions cut from the unpadded sizes, then laid on the padded clip (pad tokens join the last band)
        img = torch.zeros(1, *padded, 1, device=device)
        count = 0
        bands = [(slice(0, n - w), slice(n - w, n - s), slice(n - s, None)) if s else (slice(None),) * 3
                 for n, w, s in zip(size, used_window, shift, strict=True)]
        for d in bands[0]:
            for h in bands[1]:
                for w in bands[2]:
                    img[:, d, h, w, :] = count
                    count += 1
        labels = window_partition(img, used_window).squeeze(-1)
        diff = labels.unsqueeze(1) - labels.unsqueeze(2)
        return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


BLOCK_KIND = "shifted_window_attention_3d (block code)"
BLOCK_MUTANTS = [
    Mutant(BLOCK_KIND, "shrink_rule_strict", "shrink rule `L < W` instead of `L <= W`", ShrinkRuleStrict(),
           "a clip side equal to the window side with a shift on that axis"),
    Mutant(BLOCK_KIND, "shift_kept_on_shrunk_axis", "the window shrinks but the shift is only clamped, not zeroed",
           ShiftKeptOnShrunkAxis(), "a shrunk axis with a shift of at least 1 and a used window of at least 2"),
    Mutant(BLOCK_KIND, "roll_before_pad", "roll, then pad; crop, then roll back (timm's order)", RollBeforePad(),
           "padding on an axis with a shift in use"),
    Mutant(BLOCK_KIND, "pad_at_start", "zero padding at the start of each axis", PadAtStart(), "padded clips"),
    Mutant(BLOCK_KIND, "crop_before_roll_back", "the padded clip cropped before rolling back", CropBeforeRollBack(),
           "padding on an axis with a shift in use"),
    Mutant(BLOCK_KIND, "pad_tokens_masked", "pad tokens masked out as keys", PadTokensMasked(), "padded clips"),
    Mutant(BLOCK_KIND, "mask_from_unpadded_sizes", "the mask's regions cut on the unpadded sizes",
           MaskFromUnpaddedSizes(), "padding on an axis with a shift in use"),
]
