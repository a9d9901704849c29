"""Hypothesis strategies that draw whole, valid window-attention configurations and cases.

Public API, for users' own tests::

    from hypothesis import given
    from refimpl import strategies as rst

    @given(rst.window_attention_cases())
    def test_mine(case):
        out = my_impl(case.x, ...)            # case.params: AIM state-dict keys -> float64 arrays
        expected = case.oracle_output()       # refimpl.reference.window_attention on the same inputs

Arrays are generated from a drawn integer seed with NumPy's PCG64 (Hypothesis shrinks the sizes and flags; the
seed makes the values reproducible and keeps drawing fast). Parameters are randomized so that default
initialization cannot hide bugs: bias tables at unit scale (upstream's std .02 makes them nearly invisible),
linear weights ~ N(0, 1/fan_in) (logits stay O(1), so a -100 mask really masks), biases at unit scale.
"""

from refimpl.strategies._common import seeds
from refimpl.strategies.shifted_window import (
    ShiftedWindowAttentionCase,
    ShiftedWindowConfig,
    shifted_window_attention_cases,
    shifted_window_configs,
)
from refimpl.strategies.temporal_model import (
    TemporalModelCase,
    TemporalModelConfig,
    random_temporal_model_params,
    temporal_model_cases,
    temporal_model_configs,
)
from refimpl.strategies.window_attention import (
    MASK_CONVENTIONS,
    MEMORY_LAYOUTS,
    WindowAttentionCase,
    WindowAttentionConfig,
    logit_gains,
    memory_layouts,
    random_window_attention_params,
    random_window_mask,
    window_attention_cases,
    window_attention_configs,
)
from refimpl.strategies.window_attention_3d import (
    ClipGeometry3D,
    ShiftedWindowAttention3DCase,
    WindowAttention3DCase,
    WindowAttention3DConfig,
    clip_geometries_3d,
    random_window_attention_3d_params,
    shifted_window_attention_3d_cases,
    used_windows,
    window_attention_3d_cases,
    window_attention_3d_configs,
)
from refimpl.strategies.window_attention_v2 import (
    ShiftedWindowAttentionV2Case,
    WindowAttentionV2Case,
    WindowAttentionV2Config,
    random_window_attention_v2_params,
    shifted_window_attention_v2_cases,
    window_attention_v2_cases,
    window_attention_v2_configs,
)

__all__ = [
    "WindowAttentionConfig",
    "WindowAttentionCase",
    "window_attention_configs",
    "random_window_attention_params",
    "random_window_mask",
    "window_attention_cases",
    "seeds",
    "MASK_CONVENTIONS",
    "MEMORY_LAYOUTS",
    "memory_layouts",
    "logit_gains",
    "ShiftedWindowConfig",
    "ShiftedWindowAttentionCase",
    "shifted_window_configs",
    "shifted_window_attention_cases",
    # Swin V2 window attention
    "WindowAttentionV2Config",
    "WindowAttentionV2Case",
    "ShiftedWindowAttentionV2Case",
    "window_attention_v2_configs",
    "random_window_attention_v2_params",
    "window_attention_v2_cases",
    "shifted_window_attention_v2_cases",
    # Video Swin 3-D window attention
    "WindowAttention3DConfig",
    "WindowAttention3DCase",
    "ClipGeometry3D",
    "ShiftedWindowAttention3DCase",
    "window_attention_3d_configs",
    "random_window_attention_3d_params",
    "used_windows",
    "window_attention_3d_cases",
    "clip_geometries_3d",
    "shifted_window_attention_3d_cases",
    # FIERY temporal model
    "TemporalModelConfig",
    "TemporalModelCase",
    "temporal_model_configs",
    "random_temporal_model_params",
    "temporal_model_cases",
]

