"""FIERY's ``TemporalModel`` and its building blocks (``fiery/models/temporal_model.py``,
``fiery/layers/temporal.py``), written the way upstream writes them.

The module tree (hence every state-dict key), the layer order and the forward are FIERY's, with no input
validation beyond upstream's: ``refimpl verify`` at its defaults must pass it
(``properties/test_upstream_faithful.py``), and it is the tolerance baseline of the temporal-model properties. It
is written from upstream's semantics (docs/semantics.md), not copied.

Upstream quirks it keeps on purpose:

* ``if use_pyramid_pooling: use_pyramid_pooling = True`` does nothing but turn the flag into a bool;
* ``modules.extend(nn.Sequential(temporal, *spatial))`` flattens the Sequential, so ``self.model`` is flat
  (``model.0``, ``model.1``, ...), and the Bottleneck3D layers follow the last TemporalBlock too;
* ``extra_in_channels`` is the growth of the output width per layer, and ``receptive_field = 1`` is the identity;
* the pooled branch reshapes ``(b, c, t, h', w')`` to ``(b*t, c, h', w')`` without a permute (a memory
  reinterpretation that the inverse view undoes, harmless since interpolation is per plane);
* in-place ReLUs, no activation after a residual sum, BatchNorm with batch statistics in train mode (not causal
  there); ``T < R`` returns an empty time axis; ``T = 1`` with pooling and maps smaller than ``input_shape`` raise
  inside PyTorch.
"""

from collections import OrderedDict

import torch
from torch import nn


class CausalConv3d(nn.Module):
    """Zero pad (time on the left only), Conv3d, BatchNorm3d, ReLU: ``(B, C, T, H, W) -> (B, C', T, H', W')``."""

    def __init__(self, in_channels, out_channels, kernel_size=(2, 3, 3), dilation=(1, 1, 1), bias=False):
        super().__init__()
        assert len(kernel_size) == 3, "kernel_size must be a 3-tuple."
        time_pad = (kernel_size[0] - 1) * dilation[0]
        height_pad = ((kernel_size[1] - 1) * dilation[1]) // 2
        width_pad = ((kernel_size[2] - 1) * dilation[2]) // 2
        # ConstantPad3d orders the pad last dim first: W both sides, H both sides, T in front only (causal)
        self.pad = nn.ConstantPad3d(padding=(width_pad, width_pad, height_pad, height_pad, time_pad, 0), value=0)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, dilation=dilation, stride=1, padding=0,
                              bias=bias)
        self.norm = nn.BatchNorm3d(out_channels)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, *inputs):
        (x,) = inputs
        x = self.pad(x)
        x = self.conv(x)
        x = self.norm(x)
        x = self.activation(x)
        return x


def conv_1x1x1_norm_activated(in_channels, out_channels):
    """1x1x1 Conv3d (no bias), BatchNorm3d, ReLU, under FIERY's names ``conv``, ``norm``, ``activation``."""
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=False)),
        ("norm", nn.BatchNorm3d(out_channels)),
        ("activation", nn.ReLU(inplace=True)),
    ]))


class Bottleneck3D(nn.Module):
    """Down-project to ``in // 2``, causal conv, up-project; plus the input (projected when widths differ).
    ``(B, C, T, H, W) -> (B, C', T, H, W)`` for odd spatial kernels; no activation after the sum."""

    def __init__(self, in_channels, out_channels=None, kernel_size=(2, 3, 3), dilation=(1, 1, 1)):
        super().__init__()
        bottleneck_channels = in_channels // 2
        out_channels = out_channels or in_channels
        self.layers = nn.Sequential(OrderedDict([
            ("conv_down_project", conv_1x1x1_norm_activated(in_channels, bottleneck_channels)),
            ("conv", CausalConv3d(bottleneck_channels, bottleneck_channels, kernel_size=kernel_size,
                                  dilation=dilation, bias=False)),
            ("conv_up_project", conv_1x1x1_norm_activated(bottleneck_channels, out_channels)),
        ]))
        if out_channels != in_channels:
            self.projection = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=False),
                nn.BatchNorm3d(out_channels),
            )
        else:
            self.projection = None

    def forward(self, *args):
        (x,) = args
        x_residual = self.layers(x)
        x_features = self.projection(x) if self.projection is not None else x
        return x_residual + x_features


class PyramidSpatioTemporalPooling(nn.Module):
    """Per pool size ``(2, ph, pw)``: average over frames ``{t-1, t}`` in range and over ``ph x pw`` cells, 1x1x1
    conv + BN + ReLU, drop the last pooled step, bilinear resize back to ``(H, W)``; concatenated over sizes.
    ``(B, C, T, H, W) -> (B, len(pool_sizes) * reduction_channels, T, H, W)``."""

    def __init__(self, in_channels, reduction_channels, pool_sizes):
        super().__init__()
        self.features = []
        for pool_size in pool_sizes:
            # torch refuses a padding above half the kernel, so the time kernel must be 2 for a padding of 1
            assert pool_size[0] == 2, (
                "Time kernel should be 2 as PyTorch raises an error when padding with more than half the kernel size"
            )
            stride = (1, *pool_size[1:])
            padding = (pool_size[0] - 1, 0, 0)
            self.features.append(nn.Sequential(OrderedDict([
                # the zero time padding is left out of the average (count_include_pad=False)
                ("avgpool", torch.nn.AvgPool3d(kernel_size=pool_size, stride=stride, padding=padding,
                                               count_include_pad=False)),
                ("conv_bn_relu", conv_1x1x1_norm_activated(in_channels, reduction_channels)),
            ])))
        self.features = nn.ModuleList(self.features)

    def forward(self, *inputs):
        (x,) = inputs
        b, _, t, h, w = x.shape
        out = []
        for f in self.features:
            # T + 1 pooled steps; the last one averages frame T-1 with the right padding: dropped
            x_pool = f(x)[:, :, :-1].contiguous()
            c = x_pool.shape[1]
            # upstream views (b, c, t) as (b*t, c) without a permute; interpolation is per plane, so the inverse
            # view below restores every plane to its place
            x_pool = nn.functional.interpolate(x_pool.view(b * t, c, *x_pool.shape[-2:]), (h, w), mode="bilinear",
                                               align_corners=False)
            x_pool = x_pool.view(b, c, t, h, w)
            out.append(x_pool)
        return torch.cat(out, 1)


class TemporalBlock(nn.Module):
    """Paths 2x3x3 and 1x3x3 (each after a 1x1x1 entry) and 1x1x1, at ``in // 2`` channels each, plus the pyramid
    pooling (``in // 3`` per pool size) when enabled; concatenated, aggregated by a 1x1x1 conv + BN + ReLU, plus the
    input (projected when widths differ). ``(B, C, T, H, W) -> (B, C', T, H, W)``; no dropout, despite upstream's
    docstring, and no activation after the sum."""

    def __init__(self, in_channels, out_channels=None, use_pyramid_pooling=False, pool_sizes=None):
        super().__init__()
        self.in_channels = in_channels
        self.half_channels = in_channels // 2
        self.out_channels = out_channels or self.in_channels
        self.kernels = [(2, 3, 3), (1, 3, 3)]
        self.use_pyramid_pooling = use_pyramid_pooling

        self.convolution_paths = []
        for kernel_size in self.kernels:
            self.convolution_paths.append(nn.Sequential(
                conv_1x1x1_norm_activated(self.in_channels, self.half_channels),
                CausalConv3d(self.half_channels, self.half_channels, kernel_size=kernel_size),
            ))
        self.convolution_paths.append(conv_1x1x1_norm_activated(self.in_channels, self.half_channels))
        self.convolution_paths = nn.ModuleList(self.convolution_paths)

        agg_in_channels = len(self.convolution_paths) * self.half_channels
        if self.use_pyramid_pooling:
            assert pool_sizes is not None, "setting must contain the list of kernel_size, but is None."
            reduction_channels = self.in_channels // 3
            self.pyramid_pooling = PyramidSpatioTemporalPooling(self.in_channels, reduction_channels, pool_sizes)
            agg_in_channels += len(pool_sizes) * reduction_channels

        # a one-element Sequential, hence the keys aggregation.0.conv / aggregation.0.norm
        self.aggregation = nn.Sequential(conv_1x1x1_norm_activated(agg_in_channels, self.out_channels))

        if self.out_channels != self.in_channels:
            self.projection = nn.Sequential(
                nn.Conv3d(self.in_channels, self.out_channels, kernel_size=1, bias=False),
                nn.BatchNorm3d(self.out_channels),
            )
        else:
            self.projection = None

    def forward(self, *inputs):
        (x,) = inputs
        x_paths = [conv(x) for conv in self.convolution_paths]
        x_residual = torch.cat(x_paths, dim=1)
        if self.use_pyramid_pooling:
            x_pool = self.pyramid_pooling(x)
            x_residual = torch.cat([x_residual, x_pool], dim=1)
        x_residual = self.aggregation(x_residual)
        if self.out_channels != self.in_channels:
            x = self.projection(x)
        x = x + x_residual
        return x


class TemporalModel(nn.Module):
    """FIERY's temporal model: ``receptive_field - 1`` TemporalBlocks (each followed by
    ``n_spatial_layers_between_temporal_layers`` Bottleneck3D layers) over ``(B, T, C, H, W)``; returns the outputs
    whose causal receptive field lies inside the clip, ``(B, T - R + 1, out_channels, H, W)``."""

    def __init__(self, in_channels, receptive_field, input_shape, start_out_channels=64, extra_in_channels=0,
                 n_spatial_layers_between_temporal_layers=0, use_pyramid_pooling=True):
        super().__init__()
        self.receptive_field = receptive_field
        n_temporal_layers = receptive_field - 1

        h, w = input_shape  # used only for the pooling kernel: one global pool over 2 frames
        modules = []

        block_in_channels = in_channels
        block_out_channels = start_out_channels

        for _ in range(n_temporal_layers):
            if use_pyramid_pooling:
                use_pyramid_pooling = True  # upstream's no-op, kept
                pool_sizes = [(2, h, w)]
            else:
                use_pyramid_pooling = False
                pool_sizes = None
            temporal = TemporalBlock(block_in_channels, block_out_channels, use_pyramid_pooling=use_pyramid_pooling,
                                     pool_sizes=pool_sizes)
            spatial = [
                Bottleneck3D(block_out_channels, block_out_channels, kernel_size=(1, 3, 3))
                for _ in range(n_spatial_layers_between_temporal_layers)
            ]
            temporal_spatial_layers = nn.Sequential(temporal, *spatial)
            # list.extend iterates the Sequential's children: the wrapper is dropped, model.<k> stays flat
            modules.extend(temporal_spatial_layers)

            block_in_channels = block_out_channels
            block_out_channels += extra_in_channels

        self.out_channels = block_in_channels
        self.model = nn.Sequential(*modules)

    def forward(self, x):
        """``x`` ``(B, T, C, H, W)`` -> ``(B, T - R + 1, out_channels, H, W)`` (a view: not contiguous for B > 1)."""
        x = x.permute(0, 2, 1, 3, 4)  # (B, C, T, H, W): Conv3d reads time as depth
        x = self.model(x)
        x = x.permute(0, 2, 1, 3, 4).contiguous()
        # the first R-1 outputs depend on the temporal zero padding
        return x[:, (self.receptive_field - 1):]
