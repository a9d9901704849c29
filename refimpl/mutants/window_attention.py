"""Window-attention mutants: AIM's computation written step by step (``SnippetWindowAttention``), each mutant
overriding one step with one realistic bug."""

from __future__ import annotations

import torch

from refimpl.mutants._mutant import Mutant
from refimpl.optimized.window_attention import WindowAttention

# --------------------------------------------------------------------------------------------------
# Window attention: the snippet's computation, step by step, so that each mutant overrides one step
# --------------------------------------------------------------------------------------------------


class SnippetWindowAttention(WindowAttention):
    """AIM's forward written as the source snippet does, one overridable step per method (correct as is)."""

    def heads(self, x):
        """``(B_, N, C)`` -> q, k, v, each ``(B_, nH, N, d)``."""
        rows, n, c = x.shape
        qkv = self.qkv(x).reshape(rows, n, 3, self.num_heads, c // self.num_heads)
        return qkv.permute(2, 0, 3, 1, 4)

    def qk_scale_factor(self):
        return self.scale

    def position_bias(self, n, temporal):
        """``(nH, N, N)`` gathered from the table with the module's index buffer."""
        if temporal:
            table, index = self.temporal_position_bias_table, self.t_relative_coords
        else:
            table, index = self.relative_position_bias_table, self.relative_position_index
        return table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)

    def add_mask(self, attn, mask):
        """``attn`` ``(B_, nH, N, N)`` + ``mask[b % nW]``: the 5-D view puts windows batch-major."""
        rows, heads, n, _ = attn.shape
        n_windows = mask.shape[0]
        attn = attn.view(rows // n_windows, n_windows, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        return attn.view(rows, heads, n, n)

    def normalize(self, attn):
        return attn.softmax(dim=-1)

    def merge_heads(self, context):
        """``(B_, nH, N, d)`` -> ``(B_, N, C)``, head-major channels."""
        rows, heads, n, d = context.shape
        return context.transpose(1, 2).reshape(rows, n, heads * d)

    def forward(self, x, mask=None, temporal=False):
        mask = self._check_input(x, mask, temporal)
        q, k, v = self.heads(x)
        attn = (q * self.qk_scale_factor()) @ k.transpose(-2, -1)
        attn = attn + self.position_bias(x.shape[1], temporal).unsqueeze(0).to(attn.dtype)
        dead = None
        if mask is not None and not temporal:
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=attn.dtype).masked_fill(~mask, float("-inf"))
            mask = mask.to(attn.dtype)
            dead = torch.isneginf(mask).all(-1)  # rows that may attend to nothing: output 0 (refimpl's rule)
            attn = self.add_mask(attn, mask.masked_fill(dead[..., None], 0.0))
        attn = self.normalize(attn)
        if dead is not None:
            attn = attn.view(-1, dead.shape[0], *attn.shape[1:]).masked_fill(dead[None, :, None, :, None], 0.0)
            attn = attn.view(-1, *attn.shape[2:])
        context = self.drop_attention(attn) @ v
        return self.proj_drop(self.proj(self.merge_heads(context)))

    def drop_attention(self, attn):
        """Attention dropout on the probabilities (inverted: kept values scaled by 1/(1-p))."""
        return self.attn_drop(attn)


def _replace_buffer(module, name, value):
    getattr(module, name).copy_(value)


class IndexRowStrideUsesWh(SnippetWindowAttention):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        wh, ww = self.window_size
        rows, cols = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        d_row, d_col = rows[:, None] - rows[None, :] + wh - 1, cols[:, None] - cols[None, :] + ww - 1
        index = d_row * (2 * wh - 1) + d_col  # should be (2 * Ww - 1)
        _replace_buffer(self, "relative_position_index", index.clamp(max=(2 * wh - 1) * (2 * ww - 1) - 1))


class MeshgridXY(SnippetWindowAttention):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        wh, ww = self.window_size
        cols, rows = torch.meshgrid(torch.arange(ww), torch.arange(wh), indexing="ij")  # 'xy' order by mistake
        rows, cols = rows.flatten(), cols.flatten()
        d_row, d_col = rows[:, None] - rows[None, :] + wh - 1, cols[:, None] - cols[None, :] + ww - 1
        _replace_buffer(self, "relative_position_index", d_row * (2 * ww - 1) + d_col)


class TemporalIndexReversed(SnippetWindowAttention):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.use_temporal:
            t = torch.arange(self.num_ttokens)
            _replace_buffer(self, "t_relative_coords", (t[None, :] - t[:, None] + self.num_ttokens - 1).flatten())


class ScaleFromWholeDim(SnippetWindowAttention):
    def qk_scale_factor(self):
        return self.scale if self.scale != (self.dim // self.num_heads) ** -0.5 else self.dim**-0.5


class QkScaleZeroTakenLiterally(SnippetWindowAttention):
    def __init__(self, dim, num_ttokens, window_size, num_heads, use_temporal=True, qkv_bias=True, qk_scale=None,
                 attn_drop=0.0, proj_drop=0.0):
        super().__init__(dim, num_ttokens, window_size, num_heads, use_temporal, qkv_bias, qk_scale, attn_drop,
                         proj_drop)
        if qk_scale == 0:  # `qk_scale if qk_scale is not None else d**-0.5`
            self.scale = 0.0


class HeadSplitQkvOrderSwapped(SnippetWindowAttention):
    def heads(self, x):
        rows, n, c = x.shape  # (B_, N, nH, 3, d) instead of (B_, N, 3, nH, d)
        return self.qkv(x).reshape(rows, n, self.num_heads, 3, c // self.num_heads).permute(3, 0, 2, 1, 4)


class HeadsMergedWithoutTranspose(SnippetWindowAttention):
    def merge_heads(self, context):
        rows, heads, n, d = context.shape
        return context.reshape(rows, n, heads * d)


class MaskWindowMajor(SnippetWindowAttention):
    def add_mask(self, attn, mask):
        rows, heads, n, _ = attn.shape  # row b gets mask[b // B] instead of mask[b % nW]
        n_windows = mask.shape[0]
        return attn + mask.repeat_interleave(rows // n_windows, dim=0).unsqueeze(1)


class MaskIgnored(SnippetWindowAttention):
    def add_mask(self, attn, mask):
        return attn


class MaskAlsoInTemporalMode(SnippetWindowAttention):
    def forward(self, x, mask=None, temporal=False):
        if temporal and mask is not None and x.shape[0] % mask.shape[0] == 0 and mask.shape[-1] == x.shape[1]:
            q, k, v = self.heads(x)
            attn = (q * self.scale) @ k.transpose(-2, -1) + self.position_bias(x.shape[1], True).unsqueeze(0)
            attn = self.normalize(self.add_mask(attn, mask.to(attn.dtype)))
            return self.proj(self.merge_heads(attn @ v))
        return super().forward(x, mask, temporal)


class SoftmaxOverQueries(SnippetWindowAttention):
    def normalize(self, attn):
        return attn.softmax(dim=-2)


class SoftmaxInBfloat16(SnippetWindowAttention):
    def normalize(self, attn):
        return attn.to(torch.bfloat16).softmax(dim=-1).to(attn.dtype)


class BiasTableForFourHeads(SnippetWindowAttention):
    def position_bias(self, n, temporal):
        bias = super().position_bias(n, temporal)  # a kernel unrolled for at most 4 heads reuses head 3's bias
        return torch.cat([bias[:4], bias[3:4].expand(max(bias.shape[0] - 4, 0), n, n)], dim=0)


class TemporalTableForFourFrames(SnippetWindowAttention):
    def position_bias(self, n, temporal):
        if not temporal:
            return super().position_bias(n, temporal)
        offset = self.t_relative_coords.reshape(n, n) - (n - 1)  # i - j, clamped to a 7-entry table (T <= 4)
        index = offset.clamp(-3, 3) + (n - 1)
        return self.temporal_position_bias_table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)


class DropoutInEvalMode(SnippetWindowAttention):
    def forward(self, x, mask=None, temporal=False):
        self.attn_drop.train()  # dropout left on by a hand-written kernel
        return super().forward(x, mask, temporal)


class DropoutWithoutRescale(SnippetWindowAttention):
    def drop_attention(self, attn):  # a hand-written dropout: zeroes with probability p, forgets the 1/(1-p)
        p = self.attn_drop.p
        if not self.training or p == 0:
            return attn
        return attn * (torch.rand_like(attn) >= p)


class MaskEditedInPlace(SnippetWindowAttention):
    def forward(self, x, mask=None, temporal=False):
        if mask is not None and mask.is_floating_point() and not temporal:
            with torch.no_grad():  # "-100 does not mask reliably": turned into -inf in the caller's tensor
                mask.masked_fill_(mask < 0, float("-inf"))
        return super().forward(x, mask, temporal)


class StridesIgnored(SnippetWindowAttention):
    def forward(self, x, mask=None, temporal=False):
        # a raw-pointer kernel: reads x's storage as if x were contiguous
        x = x.as_strided(x.shape, torch.empty(x.shape, device="meta").stride())
        return super().forward(x, mask, temporal)


class SoftmaxWithoutMaxSubtraction(SnippetWindowAttention):
    def normalize(self, attn):  # a hand-written softmax: exp of the raw logits
        weights = attn.exp()
        return weights / weights.sum(dim=-1, keepdim=True)


class ProjBiasDropped(SnippetWindowAttention):
    def forward(self, x, mask=None, temporal=False):
        return super().forward(x, mask, temporal) - self.proj.bias


class FullyMaskedRowsNaN(SnippetWindowAttention):
    def forward(self, x, mask=None, temporal=False):
        mask = self._check_input(x, mask, temporal)
        if mask is None or temporal:
            return super().forward(x, mask, temporal)
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(~mask, float("-inf"))
        q, k, v = self.heads(x)  # eager softmax on -inf rows: NaN
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.position_bias(x.shape[1], False).unsqueeze(0)
        attn = self.normalize(self.add_mask(attn, mask.to(attn.dtype)))
        return self.proj(self.merge_heads(attn @ v))


CATALOG = [
    Mutant("window_attention", "index_row_stride_uses_wh", "relative index row stride (2*Wh-1) instead of (2*Ww-1)",
           IndexRowStrideUsesWh, "non-square windows"),
    Mutant("window_attention", "meshgrid_xy",
           "index coordinates from meshgrid in 'xy' order (rows and columns swapped)", MeshgridXY,
           "windows with more than one row and column"),
    Mutant("window_attention", "temporal_index_reversed", "temporal index j - i instead of i - j",
           TemporalIndexReversed, "temporal mode, T > 1"),
    Mutant("window_attention", "scale_from_whole_dim", "q scaled by C^-1/2 instead of d^-1/2",
           ScaleFromWholeDim, "more than one head"),
    Mutant("window_attention", "qk_scale_zero_taken_literally",
           "qk_scale=0 scales logits by 0 (upstream: 0 means default)", QkScaleZeroTakenLiterally, "qk_scale = 0"),
    Mutant("window_attention", "head_split_qkv_order_swapped", "qkv reshaped (N, nH, 3, d) instead of (N, 3, nH, d)",
           HeadSplitQkvOrderSwapped, "every input"),
    Mutant("window_attention", "heads_merged_without_transpose",
           "context (B_, nH, N, d) reshaped to (B_, N, C) without the transpose", HeadsMergedWithoutTranspose,
           "more than one head and token"),
    Mutant("window_attention", "mask_window_major", "row b gets mask[b // B] (window-major) instead of mask[b % nW]",
           MaskWindowMajor, "batches of more than one image with more than one window"),
    Mutant("window_attention", "mask_ignored", "the window mask is never added", MaskIgnored, "masked calls"),
    Mutant("window_attention", "mask_also_in_temporal_mode",
           "the mask is added in temporal mode too (upstream ignores it)", MaskAlsoInTemporalMode,
           "temporal calls with a mask"),
    Mutant("window_attention", "softmax_over_queries", "softmax along the query axis", SoftmaxOverQueries),
    Mutant("window_attention", "softmax_in_bfloat16", "softmax computed in bfloat16 inside a float32/float64 module",
           SoftmaxInBfloat16, "float32 and float64"),
    Mutant("window_attention", "bias_table_for_four_heads", "heads beyond the 4th reuse head 3's bias",
           BiasTableForFourHeads, "more than 4 heads"),
    Mutant("window_attention", "temporal_table_for_four_frames", "temporal offsets clamped to +-3 (a table for T <= 4)",
           TemporalTableForFourFrames, "long clips, T > 4"),
    Mutant("window_attention", "dropout_in_eval_mode", "attention dropout stays on in eval mode",
           DropoutInEvalMode, "non-zero attn_drop"),
    Mutant("window_attention", "softmax_without_max_subtraction",
           "softmax as exp(logits) / sum exp(logits), without subtracting the row maximum",
           SoftmaxWithoutMaxSubtraction, "logits past exp's overflow (11 in float16, 88.7 in float32)"),
    Mutant("window_attention", "dropout_without_rescale",
           "train-mode attention dropout zeroes weights without the 1/(1-p) rescale", DropoutWithoutRescale,
           "non-zero attn_drop in train mode"),
    Mutant("window_attention", "mask_edited_in_place", "the caller's -100 mask is turned into -inf in place",
           MaskEditedInPlace, "spatial calls with a -100 mask"),
    Mutant("window_attention", "strides_ignored", "x's storage read as if x were contiguous", StridesIgnored,
           "non-contiguous x"),
    Mutant("window_attention", "proj_bias_dropped", "the output projection's bias is not added", ProjBiasDropped),
    Mutant("window_attention", "fully_masked_rows_nan", "rows with no allowed key give NaN (eager softmax of -inf)",
           FullyMaskedRowsNaN, "-inf / boolean masks with fully masked rows"),
]
