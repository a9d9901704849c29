"""FIERY's layer structure: which blocks ``model.<k>`` a ``TemporalModel`` holds, with which widths. Shared by the
oracle, the optimized module and the FLOP formulas (torch-free), so that all three agree on one channel arithmetic."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["TemporalModelLayer", "temporal_model_layers"]


class TemporalModelLayer(NamedTuple):
    """One ``model.<k>`` of FIERY's ``TemporalModel``: a ``"temporal"`` TemporalBlock or a ``"spatial"``
    Bottleneck3D, with its input and output channels."""

    kind: str
    c_in: int
    c_out: int


def temporal_model_layers(
    in_channels: int, receptive_field: int, start_out_channels: int, extra_in_channels: int,
    n_spatial_layers_between_temporal_layers: int, use_pyramid_pooling: bool,
) -> list[TemporalModelLayer]:
    """FIERY's layer list: ``("temporal", in, out)`` and ``("spatial", c, c)`` entries in ``model.<k>`` order.

    Raises ``ValueError`` for a width that would give upstream a zero-channel convolution: a TemporalBlock input
    below 3 with pyramid pooling (``in // 3 == 0`` pooled channels) or below 2 without (``in // 2 == 0`` per path),
    a Bottleneck3D width below 2 (``c // 2 == 0`` bottleneck channels)."""
    layers = []
    block_in, block_out = in_channels, start_out_channels
    least = 3 if use_pyramid_pooling else 2
    for _ in range(receptive_field - 1):
        if block_in < least:
            name = "in_channels" if block_in == in_channels and not layers else "start_out_channels"
            raise ValueError(
                f"a TemporalBlock input of {block_in} channels ({name}) is too narrow: it needs >= {least} "
                f"(in // 2 channels per path{' and in // 3 pooled channels' if use_pyramid_pooling else ''}; "
                f"upstream fails with a zero-channel convolution)"
            )
        layers.append(TemporalModelLayer("temporal", block_in, block_out))
        for _ in range(n_spatial_layers_between_temporal_layers):
            if block_out < 2:
                raise ValueError(
                    f"a Bottleneck3D of {block_out} channels (start_out_channels) is too narrow: it needs >= 2 "
                    f"(c // 2 bottleneck channels)"
                )
            layers.append(TemporalModelLayer("spatial", block_out, block_out))
        block_in, block_out = block_out, block_out + extra_in_channels
    return layers
