"""NumPy float64 oracles: short functions, each meant to be checked by reading it.

One module per area, every public name re-exported here:

* ``window_attention``: AIM's ``WindowAttention`` (Swin's index tables, the forward with its stages, the VJP);
* ``shifted_window``: Swin's shifted windows (partition, regions, mask, map-level attention and its VJP, and a
  second, per-token map-level oracle);
* ``window_attention_3d``: Video Swin's ``WindowAttention3D`` (the bias index of a shrunk window under the geometric
  and the truncated convention, the forward, the VJP);
* ``shifted_window_3d``: Video Swin's 3-D shifted windows (partition, the shrink rule, the 27-region mask, the
  block's attention part and its VJP, and a second, per-token oracle);
* ``window_attention_v2``: Swin V2's ``WindowAttention`` (log-spaced coordinates, continuous position bias, cosine
  attention, the VJP, the map-level operation);
* ``temporal_model``: FIERY's ``TemporalModel`` (its operations, the forward, the VJP, the state-dict shapes);
* the FLOP formulas live in ``refimpl.flops`` and are re-exported here.

Nothing here imports torch. Every array argument may be anything ``np.asarray`` accepts; every result is float64
(index tables int64). docs/semantics.md states the semantics.
"""

from __future__ import annotations

import importlib
import warnings

from refimpl.flops import (
    aim_block_attention_macs,
    aim_model_attention_macs,
    flops_to_macs,
    macs_to_flops,
    stage_resolutions,
    swin_model_mac_terms,
    swin_model_macs,
    swin_v2_cpb_macs,
    swin_v2_window_attention_macs,
    swin_window_attention_macs,
    temporal_model_macs,
    video_swin_block_attention_macs,
    video_swin_window_attention_macs,
    window_attention_flops,
    window_attention_flops_upstream,
)
from refimpl.reference._common import softmax
from refimpl.reference.shifted_window import (
    shifted_window_attention,
    shifted_window_attention_per_token,
    shifted_window_attention_vjp,
    shifted_window_cell,
    shifted_window_mask,
    shifted_window_regions,
    window_partition,
    window_reverse,
)
from refimpl.reference.shifted_window_3d import (
    block_window_and_shift,
    padded_size_3d,
    shifted_window_attention_3d,
    shifted_window_attention_3d_per_token,
    shifted_window_attention_3d_vjp,
    shifted_window_mask_3d,
    shifted_window_regions_3d,
    window_partition_3d,
    window_reverse_3d,
)
from refimpl.reference.temporal_model import (
    BATCH_NORM_EPS,
    TemporalModelForward,
    avg_pool3d,
    avg_pool3d_vjp,
    batch_norm_3d,
    batch_norm_3d_vjp,
    batch_statistics,
    bilinear_matrix,
    bilinear_resize,
    bilinear_resize_vjp,
    causal_conv3d,
    causal_conv3d_vjp,
    causal_pad,
    conv3d,
    conv3d_vjp,
    relu,
    temporal_model,
    temporal_model_forward,
    temporal_model_out_channels,
    temporal_model_state_shapes,
    temporal_model_vjp,
    updated_running_stats,
)
from refimpl.reference.window_attention import (
    WindowAttentionStages,
    additive_mask,
    relative_index_of_offsets,
    relative_position_index,
    temporal_relative_index,
    window_attention,
    window_attention_stages,
    window_attention_vjp,
)
from refimpl.reference.window_attention_3d import (
    INDEX_CONVENTIONS,
    is_row_major_prefix,
    window_attention_3d,
    window_attention_3d_index,
    window_attention_3d_stages,
    window_attention_3d_vjp,
)
from refimpl.reference.window_attention_v2 import (
    WindowAttentionV2Stages,
    continuous_position_bias,
    relative_coords_table,
    shifted_window_attention_v2,
    shifted_window_attention_v2_vjp,
    window_attention_v2,
    window_attention_v2_stages,
    window_attention_v2_vjp,
)

__all__ = [
    # window attention
    "relative_position_index",
    "temporal_relative_index",
    "softmax",
    "additive_mask",
    "WindowAttentionStages",
    "window_attention_stages",
    "window_attention",
    "window_attention_vjp",
    # shifted windows
    "window_partition",
    "window_reverse",
    "shifted_window_regions",
    "shifted_window_mask",
    "shifted_window_attention",
    "shifted_window_attention_vjp",
    "shifted_window_cell",
    "shifted_window_attention_per_token",
    # Video Swin 3-D window attention
    "relative_index_of_offsets",
    "INDEX_CONVENTIONS",
    "is_row_major_prefix",
    "window_attention_3d_index",
    "window_attention_3d_stages",
    "window_attention_3d",
    "window_attention_3d_vjp",
    "window_partition_3d",
    "window_reverse_3d",
    "block_window_and_shift",
    "padded_size_3d",
    "shifted_window_regions_3d",
    "shifted_window_mask_3d",
    "shifted_window_attention_3d",
    "shifted_window_attention_3d_vjp",
    "shifted_window_attention_3d_per_token",
    # Swin V2 window attention
    "relative_coords_table",
    "continuous_position_bias",
    "WindowAttentionV2Stages",
    "window_attention_v2_stages",
    "window_attention_v2",
    "window_attention_v2_vjp",
    "shifted_window_attention_v2",
    "shifted_window_attention_v2_vjp",
    # FIERY temporal model
    "BATCH_NORM_EPS",
    "conv3d",
    "conv3d_vjp",
    "causal_pad",
    "causal_conv3d",
    "causal_conv3d_vjp",
    "batch_statistics",
    "batch_norm_3d",
    "batch_norm_3d_vjp",
    "updated_running_stats",
    "relu",
    "avg_pool3d",
    "avg_pool3d_vjp",
    "bilinear_matrix",
    "bilinear_resize",
    "bilinear_resize_vjp",
    "temporal_model_out_channels",
    "temporal_model_state_shapes",
    "TemporalModelForward",
    "temporal_model_forward",
    "temporal_model",
    "temporal_model_vjp",
    # FLOP formulas (refimpl.flops)
    "window_attention_flops",
    "window_attention_flops_upstream",
    "swin_window_attention_macs",
    "swin_v2_cpb_macs",
    "swin_v2_window_attention_macs",
    "video_swin_window_attention_macs",
    "video_swin_block_attention_macs",
    "aim_block_attention_macs",
    "aim_model_attention_macs",
    "stage_resolutions",
    "swin_model_mac_terms",
    "swin_model_macs",
    "temporal_model_macs",
    "macs_to_flops",
    "flops_to_macs",
]

# Names that moved out of the oracle: the gradient magnitudes belong to the tolerance policy. Still reachable from
# here, with a DeprecationWarning, so that old imports keep working.
_MOVED = {
    "window_attention_vjp_magnitudes": "refimpl.magnitudes",
    "shifted_window_attention_vjp_magnitudes": "refimpl.magnitudes",
}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module 'refimpl.reference' has no attribute {name!r}")
    warnings.warn(f"refimpl.reference.{name} moved to {_MOVED[name]}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)
