"""Fast torch implementations: drop-in replacements for the upstream modules (same constructor, state-dict keys
and forward), each covered by properties against the NumPy oracle in ``refimpl.reference``."""

from refimpl.optimized.shifted_window import (
    shifted_window_attention,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from refimpl.optimized.shifted_window_3d import shifted_window_attention_3d, shifted_window_mask_3d
from refimpl.optimized.temporal_model import TemporalModel, TemporalModelStream
from refimpl.optimized.window_attention import WindowAttention, relative_position_index, temporal_relative_index
from refimpl.optimized.window_attention_3d import WindowAttention3D
from refimpl.optimized.window_attention_v2 import WindowAttentionV2

__all__ = [
    "WindowAttention",
    "WindowAttentionV2",
    "WindowAttention3D",
    "relative_position_index",
    "temporal_relative_index",
    "window_partition",
    "window_reverse",
    "shifted_window_mask",
    "shifted_window_attention",
    "shifted_window_mask_3d",
    "shifted_window_attention_3d",
    "TemporalModel",
    "TemporalModelStream",
]
