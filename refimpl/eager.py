"""Window attention (and the map-level shifted-window operation) written the way the upstream code writes it.

Two jobs: it is the *baseline* of the tolerance policy (the error a straightforward same-dtype torch computation
makes on the same inputs, see ``refimpl.tolerance``), and the "before" side of the benchmarks. Each call gathers the
bias from the table, scales q, multiplies, adds the bias and the 5-D broadcast mask, softmaxes, multiplies by v.
"""

from __future__ import annotations

import torch

from refimpl.optimized.temporal_model import TemporalModel
from refimpl.optimized.window_attention import WindowAttention

__all__ = ["EagerWindowAttention", "eager_shifted_window_mask", "eager_shifted_window_attention", "EagerTemporalModel"]


class EagerWindowAttention(WindowAttention):
    """Same constructor, checks and state dict as ``refimpl.optimized.WindowAttention``; snippet-style forward."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, temporal: bool = False) -> torch.Tensor:
        mask = self._check_input(x, mask, temporal)
        n_rows, n_tokens, channels = x.shape
        qkv = self.qkv(x).reshape(n_rows, n_tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, val = qkv.permute(2, 0, 3, 1, 4)  # each (B_, nH, N, d)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B_, nH, N, N)
        if temporal:
            table, index = self.temporal_position_bias_table, self.t_relative_coords
        else:
            table, index = self.relative_position_bias_table, self.relative_position_index
        bias = table[index.reshape(-1)].reshape(n_tokens, n_tokens, -1).permute(2, 0, 1)  # (nH, N, N)
        attn = attn + bias.unsqueeze(0).to(attn.dtype)
        attends_to_nothing = None
        if mask is not None:
            if mask.dtype == torch.bool:  # "may attend" -> 0 / -inf
                mask = torch.zeros(mask.shape, dtype=attn.dtype, device=mask.device).masked_fill(~mask, float("-inf"))
            mask = mask.to(attn.dtype)
            attends_to_nothing = torch.isneginf(mask).all(dim=-1)  # (nW, N): softmax would give NaN there
            mask = mask.masked_fill(attends_to_nothing[..., None], 0.0)
            n_windows = mask.shape[0]
            attn = attn.view(n_rows // n_windows, n_windows, self.num_heads, n_tokens, n_tokens)
            attn = (attn + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.num_heads, n_tokens, n_tokens)
        attn = attn.softmax(dim=-1)
        if attends_to_nothing is not None:
            attn = attn.view(-1, attends_to_nothing.shape[0], self.num_heads, n_tokens, n_tokens)
            attn = attn.masked_fill(attends_to_nothing[None, :, None, :, None], 0.0)
            attn = attn.view(-1, self.num_heads, n_tokens, n_tokens)
        attn = self.attn_drop(attn)
        out = (attn @ val).transpose(1, 2).reshape(n_rows, n_tokens, channels)
        return self.proj_drop(self.proj(out))


def eager_shifted_window_mask(H: int, W: int, window_size: int, shift_size: int, fill: float = -100.0, *,
                              device=None, dtype=torch.float32) -> torch.Tensor:
    """The shifted-window mask the way Swin's block constructor builds it: count regions over the 3x3 slice
    pairs of an image-sized label map, partition it, compare labels (no caching, no vectorized bands)."""
    labels = torch.zeros(1, H, W, 1, device=device)
    slices = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    region = 0
    for rows in slices:
        for cols in slices:
            labels[:, rows, cols, :] = region
            region += 1
    ws = window_size
    windows = labels.view(1, H // ws, ws, W // ws, ws, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, fill).masked_fill(diff == 0, 0.0).to(dtype)


def eager_shifted_window_attention(x: torch.Tensor, attn, *, window_size: int, shift_size: int,
                                   fill: float = -100.0) -> torch.Tensor:
    """Map-level (shifted) window attention the way Swin's block writes it, around any window-attention module:
    roll, view/permute partition, a freshly built mask, ``attn``, reverse, roll back."""
    b, H, W, c = x.shape
    ws, s = window_size, shift_size
    mask = eager_shifted_window_mask(H, W, ws, s, fill, device=x.device, dtype=x.dtype) if s > 0 else None
    shifted = torch.roll(x, shifts=(-s, -s), dims=(1, 2)) if s > 0 else x
    windows = shifted.view(b, H // ws, ws, W // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
    out = attn(windows, mask)
    out = out.view(b, H // ws, W // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, H, W, c)
    return torch.roll(out, shifts=(s, s), dims=(1, 2)) if s > 0 else out


class EagerTemporalModel(TemporalModel):
    """FIERY's temporal model built from the FIERY layer definitions and run as FIERY runs it, in train and eval
    mode alike: every convolution, BatchNorm and ReLU separately, the three path entries as three convolutions,
    the pooling branch pooled, reduced and upsampled before the concatenation. Same constructor, checks and
    state dict as ``refimpl.optimized.TemporalModel``; the tolerance baseline and the benchmarks' "before"."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        h = self._unfused(x.permute(0, 2, 1, 3, 4))
        return h.permute(0, 2, 1, 3, 4).contiguous()[:, self.receptive_field - 1 :]
