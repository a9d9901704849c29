"""Swin V2 window-attention mutants: microsoft's computation written step by step (``SnippetWindowAttentionV2``, on
the upstream-faithful module), each mutant overriding one step with one realistic V2 bug; and one stale cache on
refimpl's own module."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from refimpl.baselines.window_attention_v2 import WindowAttention
from refimpl.mutants._mutant import Mutant
from refimpl.optimized.window_attention_v2 import WindowAttentionV2

KIND = "window_attention_v2"


class SnippetWindowAttentionV2(WindowAttention):
    """microsoft's forward, one overridable step per method (correct as is)."""

    def qkv_bias_vector(self):
        if self.q_bias is None:
            return None
        return torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))

    def normalize(self, t):
        return F.normalize(t, dim=-1)

    def scale(self):
        return torch.clamp(self.logit_scale, max=math.log(100.0)).exp()

    def position_bias(self):
        n = self.window_size[0] * self.window_size[1]
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        return 16 * torch.sigmoid(table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1))

    def add_mask(self, attn, mask):
        rows, heads, n, _ = attn.shape
        windows = mask.shape[0]
        return (attn.view(rows // windows, windows, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(attn.shape)

    def forward(self, x, mask=None):
        rows, n, c = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv_bias_vector()).reshape(rows, n, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (self.normalize(q) @ self.normalize(k).transpose(-2, -1)) * self.scale()
        attn = attn + self.position_bias().unsqueeze(0)
        if mask is not None:
            attn = self.add_mask(attn, mask)
        attn = self.attn_drop(attn.softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(rows, n, c)))


def _coords(window_size, divisors, transform, swap=False):
    """A ``(1, 2Wh-1, 2Ww-1, 2)`` float32 coordinate table: offsets divided by ``divisors``, then ``transform``."""
    wh, ww = window_size
    with np.errstate(invalid="ignore", divide="ignore"):  # a divisor of 0 gives NaN, as upstream
        h = np.arange(-(wh - 1), wh) / divisors[0]
        w = np.arange(-(ww - 1), ww) / divisors[1]
    table = np.stack(np.meshgrid(h, w, indexing="ij"), axis=-1)
    if swap:
        table = table[..., ::-1]
    return torch.as_tensor(transform(table).copy(), dtype=torch.float32).unsqueeze(0)


def _log_spaced(t):
    return np.sign(8 * t) * np.log2(1 + np.abs(8 * t)) / 3


def _divisors(module, use_pretrained=True, minus_one=True):
    p = module.pretrained_window_size
    sides = p if use_pretrained and p[0] > 0 else module.window_size
    return tuple(s - 1 if minus_one else s for s in sides)


class _CoordsMutant(SnippetWindowAttentionV2):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            self.relative_coords_table.copy_(self.mutated_coords().to(self.relative_coords_table.dtype))


class LinearCoordinates(_CoordsMutant):
    def mutated_coords(self):  # the V1-style normalized offsets, without the log spacing
        return _coords(self.window_size, _divisors(self), lambda t: t)


class PretrainedWindowIgnored(_CoordsMutant):
    def mutated_coords(self):
        return _coords(self.window_size, _divisors(self, use_pretrained=False), _log_spaced)


class DividedByWindowNotWindowMinusOne(_CoordsMutant):
    def mutated_coords(self):
        return _coords(self.window_size, _divisors(self, minus_one=False), _log_spaced)


class CoordinateChannelsSwapped(_CoordsMutant):
    def mutated_coords(self):  # (w, h) instead of (h, w): only the table's channels, the grid is (2Wh-1, 2Ww-1)
        return _coords(self.window_size, _divisors(self), _log_spaced, swap=True)


class KeyMinusQueryOffsets(SnippetWindowAttentionV2):
    def position_bias(self):  # Δ = pos_j - pos_i: the bias transposed
        return super().position_bias().transpose(-2, -1)


class NoSixteenSigmoid(SnippetWindowAttentionV2):
    def position_bias(self):
        n = self.window_size[0] * self.window_size[1]
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        return table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)


class NoClamp(SnippetWindowAttentionV2):
    def scale(self):
        return self.logit_scale.exp()


class ClampAt100NotLn100(SnippetWindowAttentionV2):
    def scale(self):
        return torch.clamp(self.logit_scale, max=100.0).exp()


class ClampOnTheScaleNotItsLog(SnippetWindowAttentionV2):
    def scale(self):  # min(exp(l), ln 100): the bound applied after exp
        return torch.clamp(self.logit_scale.exp(), max=math.log(100.0))


class InverseSqrtHeadDimKept(SnippetWindowAttentionV2):
    def scale(self):  # V1's d^-1/2 on top of the cosine logits
        return super().scale() * (self.dim // self.num_heads) ** -0.5


class KBiasNotZero(SnippetWindowAttentionV2):
    def qkv_bias_vector(self):  # a fused 3C bias whose k third was never zeroed (here it holds v_bias)
        if self.q_bias is None:
            return None
        return torch.cat((self.q_bias, self.v_bias, self.v_bias))


class MaskAddedTwice(SnippetWindowAttentionV2):
    def add_mask(self, attn, mask):  # HF Swinv2's double add: -100 becomes -200
        return super().add_mask(super().add_mask(attn, mask), mask)


class NormalizeWithoutEps(SnippetWindowAttentionV2):
    def normalize(self, t):  # q / |q|: a zero vector gives NaN
        return t / t.norm(dim=-1, keepdim=True)


class StaleCachedBias(WindowAttentionV2):
    """refimpl's module with a cache keyed on dtype and device only: it misses in-place edits and loaded weights."""

    def _mlp_state(self):
        weight = self.cpb_mlp[0].weight
        return (weight.dtype, weight.device)


CATALOG = [
    Mutant(KIND, "v2-no-clamp", "the logit scale is exp(logit_scale), never clamped", NoClamp,
           "heads with logit_scale above ln 100"),
    Mutant(KIND, "v2-clamp-at-100", "the log-scale is clamped at 100 instead of ln 100", ClampAt100NotLn100,
           "heads with logit_scale above ln 100"),
    Mutant(KIND, "v2-clamp-after-exp", "the bound ln 100 is applied to the scale, not to its log (scale <= 4.6)",
           ClampOnTheScaleNotItsLog, "heads with logit_scale above ln ln 100"),
    Mutant(KIND, "v2-no-16-sigmoid", "the CPB MLP output is used as the bias without 16 * sigmoid",
           NoSixteenSigmoid),
    Mutant(KIND, "v2-k-bias", "the k third of the qkv bias is not zero (v_bias there)", KBiasNotZero,
           "qkv_bias=True"),
    Mutant(KIND, "v2-mask-twice", "the window mask is added twice (-100 acts as -200)", MaskAddedTwice,
           "a -100 mask where a masked key's logit exceeds the others by more than 100"),
    Mutant(KIND, "v2-d-scaling", "V1's head_dim^-1/2 is kept on the cosine logits", InverseSqrtHeadDimKept,
           "head_dim > 1"),
    Mutant(KIND, "v2-linear-coords", "the coordinates are the normalized offsets, not log-spaced",
           LinearCoordinates, "windows or pretrained windows of side > 1"),
    Mutant(KIND, "v2-pretrained-ignored", "the coordinates are divided by window - 1 even with a pretrained window",
           PretrainedWindowIgnored, "a pretrained window other than the window"),
    Mutant(KIND, "v2-divide-by-window", "the coordinates are divided by P (or the window), not P - 1",
           DividedByWindowNotWindowMinusOne),
    Mutant(KIND, "v2-coords-channels-swapped", "the coordinate table holds (w, h) offsets instead of (h, w)",
           CoordinateChannelsSwapped, "windows or divisors that differ between the axes, or a CPB MLP that is "
           "not symmetric in its inputs"),
    Mutant(KIND, "v2-key-minus-query", "offsets are key minus query: the bias is transposed", KeyMinusQueryOffsets,
           "N > 1"),
    Mutant(KIND, "v2-normalize-no-eps", "q and k are divided by their norm without F.normalize's eps floor",
           NormalizeWithoutEps, "zero q or k vectors (zero tokens without q bias)"),
    Mutant(KIND, "v2-stale-cache", "the cached position bias is keyed on dtype and device only (never rebuilt "
           "after load_state_dict or an in-place edit)", StaleCachedBias),
]
