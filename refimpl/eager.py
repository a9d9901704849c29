"""Window attention written the way the source snippet writes it, in torch eager.

Two jobs: it is the *baseline* of the tolerance policy (the error a straightforward same-dtype torch computation
makes on the same inputs, see ``refimpl.tolerance``), and the "before" side of the benchmarks. Each call gathers the
bias from the table, scales q, multiplies, adds the bias and the 5-D broadcast mask, softmaxes, multiplies by v.
"""

from __future__ import annotations

import torch

from refimpl.optimized.temporal_model import TemporalModel
from refimpl.optimized.window_attention import WindowAttention

__all__ = ["EagerWindowAttention", "EagerTemporalModel"]


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
        if mask is not None:
            n_windows = mask.shape[0]
            attn = attn.view(n_rows // n_windows, n_windows, self.num_heads, n_tokens, n_tokens)
            attn = (attn + mask.to(attn.dtype).unsqueeze(1).unsqueeze(0)).view(-1, self.num_heads, n_tokens, n_tokens)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ val).transpose(1, 2).reshape(n_rows, n_tokens, channels)
        return self.proj_drop(self.proj(out))


class EagerTemporalModel(TemporalModel):
    """FIERY's temporal model built from the FIERY layer definitions and run as FIERY runs it, in train and eval
    mode alike: every convolution, BatchNorm and ReLU separately, the three path entries as three convolutions,
    the pooling branch pooled, reduced and upsampled before the concatenation. Same constructor, checks and
    state dict as ``refimpl.optimized.TemporalModel``; the tolerance baseline and the benchmarks' "before"."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        h = self._unfused(x.permute(0, 2, 1, 3, 4))
        return h.permute(0, 2, 1, 3, 4).contiguous()[:, self.receptive_field - 1 :]
