"""FIERY's ``TemporalModel`` as a drop-in torch module, with a folded eval path and streaming inference.

The module tree, and so the state-dict keys, are FIERY's (``fiery/models/temporal_model.py`` and the blocks of
``fiery/layers/temporal.py``; docs/semantics.md): an upstream checkpoint loads with ``strict=True``.

* Train mode runs the blocks exactly as FIERY writes them (unfused), so batch statistics and running-statistic
  updates (with each BatchNorm's own ``momentum``) are FIERY's.
* Inference (eval mode, autograd not recording: ``torch.no_grad``/``inference_mode``, or nothing requires grad)
  runs a folded path on channels-last clips: every BatchNorm is folded into the convolution before it (scale into
  the weight, shift into a bias), recomputed from the current parameters and buffers on every call, so nothing can
  go stale; the 1x1x1 convolutions that read the block input (the three path entries, and the projection when
  there is one) run as one GEMM; the pooled branch is reduced on the pooled grid and its share of the aggregation
  applied there, before the upsampling; and only the outputs FIERY's slice keeps are computed (each block drops
  the first frame, which it needs only as history). Eval mode under autograd runs the unfolded blocks (see
  ``TemporalModel._can_fold``).
* ``TemporalModel.stream()`` feeds one frame at a time: each block keeps the previous frame of its path-A entry
  activation and of its pooled cell means, the whole state the causal receptive field needs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from refimpl import _validate as validate
from refimpl._temporal_layers import temporal_model_layers
from refimpl.optimized._linear import linear

__all__ = [
    "conv_1x1x1_norm_activated",
    "CausalConv3d",
    "Bottleneck3D",
    "PyramidSpatioTemporalPooling",
    "TemporalBlock",
    "TemporalModel",
    "TemporalModelStream",
]


def conv_1x1x1_norm_activated(in_channels, out_channels) -> nn.Sequential:
    """FIERY's ``Conv3d(k=1, no bias) -> BatchNorm3d -> ReLU`` with submodules ``conv``, ``norm``, ``activation``."""
    return nn.Sequential(
        OrderedDict(
            [
                ("conv", nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=False)),
                ("norm", nn.BatchNorm3d(out_channels)),
                ("activation", nn.ReLU(inplace=True)),
            ]
        )
    )


def _folded(conv_weight: torch.Tensor, norm: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of ``conv`` followed by ``norm`` in eval mode, computed from their current values:
    ``scale = gamma / sqrt(running_var + eps)``, ``weight * scale``, ``beta - running_mean * scale``.
    Differentiable, so eval-mode gradients reach the parameters."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    return conv_weight * scale.reshape(-1, 1, 1, 1, 1), norm.bias - norm.running_mean * scale


# The folded path works on channels-last clips ``(B, T, H, W, C)``: a 1x1x1 convolution is then one GEMM
# (``refimpl.optimized._linear.linear``), and a (kt, 3, 3) convolution is one channels-last conv2d over the frames
# with the kt time taps stacked along channels. On CPU, torch 2.13 sends Conv3d on clips of fewer than 3 frames
# (FIERY's case once the history frame is trimmed) to its slow im2col kernel; the conv2d route is several times
# faster there (measured at FIERY's sizes; docs/benchmarks.md).


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1x1 convolution on ``(B, T, H, W, Cin)``: ``weight`` ``(Cout, Cin, 1, 1, 1)`` -> ``(B, T, H, W, Cout)``."""
    return linear(x, weight.flatten(1), bias)


def _with_previous(x: torch.Tensor, previous: torch.Tensor | None, frames: int) -> torch.Tensor:
    """``x`` ``(B, T, H, W, C)`` with ``frames`` earlier frames in front: the given ones, or the causal zeros."""
    if frames == 0:
        return x
    if previous is None:
        previous = x.new_zeros(x.shape[0], frames, *x.shape[2:])
    return torch.cat([previous, x], dim=1)


def _spatial_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Valid-in-time, same-padded-in-space convolution of ``(B, T, H, W, C)`` with ``weight`` ``(O, C, kt, kh,
    kw)`` (odd kh, kw) -> ``(B, T - kt + 1, H, W, O)``: output frame t = sum over taps i of conv2d(frame t + i,
    weight[:, :, i]), computed as one conv2d of the kt frames t .. t+kt-1 stacked along channels."""
    b, t, h, w, c = x.shape
    kt = weight.shape[2]
    frames = t - kt + 1
    taps = x if kt == 1 else torch.cat([x[:, i : i + frames] for i in range(kt)], dim=-1)  # (B, T', H, W, kt*C)
    weight_2d = weight.permute(0, 2, 1, 3, 4).reshape(weight.shape[0], kt * c, *weight.shape[3:])  # tap-major
    planes = taps.reshape(b * frames, h, w, kt * c).permute(0, 3, 1, 2)  # channels_last (B*T', kt*C, H, W)
    out = F.conv2d(planes, weight_2d, bias, padding=((weight.shape[3] - 1) // 2, (weight.shape[4] - 1) // 2))
    return out.permute(0, 2, 3, 1).reshape(b, frames, h, w, -1)  # a view when conv2d kept channels_last


class CausalConv3d(nn.Module):
    """Zero pad (time ``(kt-1)*dt`` in front only, H and W ``(k-1)*d // 2`` on both sides), Conv3d, BatchNorm3d,
    ReLU: FIERY's submodules ``pad``, ``conv``, ``norm``, ``activation``."""

    def __init__(self, in_channels, out_channels, kernel_size=(2, 3, 3), dilation=(1, 1, 1), bias=False):
        super().__init__()
        if len(kernel_size) != 3:
            raise ValueError(f"kernel_size must be a 3-tuple, got {kernel_size!r}")
        time_pad = (kernel_size[0] - 1) * dilation[0]
        height_pad = ((kernel_size[1] - 1) * dilation[1]) // 2
        width_pad = ((kernel_size[2] - 1) * dilation[2]) // 2
        self.pad = nn.ConstantPad3d(padding=(width_pad, width_pad, height_pad, height_pad, time_pad, 0), value=0)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, dilation=dilation, stride=1, padding=0, bias=bias)
        self.norm = nn.BatchNorm3d(out_channels)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activation(self.norm(self.conv(self.pad(x))))

    def fused(self, x: torch.Tensor, previous: torch.Tensor | None):
        """Inference on ``(B, T, H, W, C)``: ``(relu(folded conv of x), the last kt-1 input frames)``;
        ``previous`` holds the ``kt-1`` frames before x (``None``: the causal zeros)."""
        if self.conv.dilation != (1, 1, 1) or self.conv.bias is not None:
            raise NotImplementedError("the folded path covers FIERY's CausalConv3d: dilation 1, no bias")
        past = self.conv.kernel_size[0] - 1
        extended = _with_previous(x, previous, past)
        out = torch.relu(_spatial_conv(extended, *_folded(self.conv.weight, self.norm)))
        return out, (extended[:, extended.shape[1] - past :] if past else None)


class Bottleneck3D(nn.Module):
    """FIERY's residual bottleneck: ``layers`` = ``conv_down_project`` (1x1x1 to ``in // 2``), ``conv``
    (CausalConv3d), ``conv_up_project`` (1x1x1 to ``out``), each with BatchNorm and ReLU; plus ``projection``
    (1x1x1 conv + BatchNorm, no ReLU) when ``out != in``. Output = main + skip, no activation after the sum."""

    def __init__(self, in_channels, out_channels=None, kernel_size=(2, 3, 3), dilation=(1, 1, 1)):
        super().__init__()
        bottleneck_channels = in_channels // 2
        out_channels = out_channels or in_channels
        self.layers = nn.Sequential(
            OrderedDict(
                [
                    ("conv_down_project", conv_1x1x1_norm_activated(in_channels, bottleneck_channels)),
                    ("conv", CausalConv3d(bottleneck_channels, bottleneck_channels, kernel_size=kernel_size,
                                          dilation=dilation, bias=False)),
                    ("conv_up_project", conv_1x1x1_norm_activated(bottleneck_channels, out_channels)),
                ]
            )
        )
        if out_channels != in_channels:
            self.projection = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=False), nn.BatchNorm3d(out_channels)
            )
        else:
            self.projection = None

    def forward(self, x):
        skip = self.projection(x) if self.projection is not None else x
        return self.layers(x) + skip

    def fused(self, x: torch.Tensor, state):
        down, conv, up = self.layers.conv_down_project, self.layers.conv, self.layers.conv_up_project
        entry_w, entry_b = _folded(down.conv.weight, down.norm)
        if self.projection is not None:  # the projection reads x too: one convolution for both
            proj_w, proj_b = _folded(self.projection[0].weight, self.projection[1])
            entry_w, entry_b = torch.cat([entry_w, proj_w]), torch.cat([entry_b, proj_b])
        entry = _pointwise(x, entry_w, entry_b)
        mid = down.conv.out_channels
        hidden, state = conv.fused(torch.relu(entry[..., :mid]), state)
        skip = entry[..., mid:] if self.projection is not None else x
        return torch.relu(_pointwise(hidden, *_folded(up.conv.weight, up.norm))) + skip, state


class PyramidSpatioTemporalPooling(nn.Module):
    """FIERY's pooling branch: per pool size ``(2, ph, pw)``, ``features.<i>`` = ``avgpool`` (AvgPool3d, stride
    ``(1, ph, pw)``, time padding 1, ``count_include_pad=False``) then ``conv_bn_relu``; the last pooled time step
    is dropped and each plane is resized bilinearly back to the input's ``(H, W)``."""

    def __init__(self, in_channels, reduction_channels, pool_sizes):
        super().__init__()
        features = []
        for pool_size in pool_sizes:
            if pool_size[0] != 2:
                raise ValueError(f"pool_sizes must have time kernel 2 (as upstream asserts), got {pool_size!r}")
            stride = (1, *pool_size[1:])
            padding = (pool_size[0] - 1, 0, 0)
            features.append(
                nn.Sequential(
                    OrderedDict(
                        [
                            ("avgpool", nn.AvgPool3d(kernel_size=pool_size, stride=stride, padding=padding,
                                                     count_include_pad=False)),
                            ("conv_bn_relu", conv_1x1x1_norm_activated(in_channels, reduction_channels)),
                        ]
                    )
                )
            )
        self.features = nn.ModuleList(features)

    def forward(self, x):
        b, _, t, h, w = x.shape
        out = []
        for feature in self.features:
            pooled = feature(x)[:, :, :-1]  # the step after the last frame averages the last frame alone
            c, ph, pw = pooled.shape[1], pooled.shape[-2], pooled.shape[-1]
            planes = pooled.permute(0, 2, 1, 3, 4).reshape(b * t, c, ph, pw)
            planes = F.interpolate(planes, (h, w), mode="bilinear", align_corners=False)
            out.append(planes.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4))
        return torch.cat(out, 1)

    def cell_means(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per pool size, the means ``(B, T, h', w', C)`` of each frame of ``(B, T, H, W, C)`` over the pool
        cells (``h' = H // ph``: floor mode drops the rows and columns that fill no cell, as AvgPool3d)."""
        b, t, h, w, c = x.shape
        means = []
        for f in self.features:
            ph, pw = f.avgpool.kernel_size[1:]
            cells = x[:, :, : h // ph * ph, : w // pw * pw].reshape(b, t, h // ph, ph, w // pw, pw, c)
            means.append(cells.mean(dim=(3, 5)))
        return means


class TemporalBlock(nn.Module):
    """FIERY's TemporalBlock with ``half = in // 2``: ``convolution_paths`` = [1x1x1 -> CausalConv3d (2,3,3)],
    [1x1x1 -> CausalConv3d (1,3,3)], [1x1x1], concatenated with ``pyramid_pooling`` (``in // 3`` channels per
    pool size) when on; ``aggregation`` (1x1x1 + BN + ReLU); ``projection`` (1x1x1 + BN) when ``out != in``.
    Output = skip + aggregation, no activation after the sum; no dropout (despite upstream's docstring)."""

    def __init__(self, in_channels, out_channels=None, use_pyramid_pooling=False, pool_sizes=None):
        super().__init__()
        self.in_channels = in_channels
        self.half_channels = in_channels // 2
        self.out_channels = out_channels or self.in_channels
        self.kernels = [(2, 3, 3), (1, 3, 3)]
        self.use_pyramid_pooling = use_pyramid_pooling

        paths = [
            nn.Sequential(
                conv_1x1x1_norm_activated(self.in_channels, self.half_channels),
                CausalConv3d(self.half_channels, self.half_channels, kernel_size=kernel_size),
            )
            for kernel_size in self.kernels
        ]
        paths.append(conv_1x1x1_norm_activated(self.in_channels, self.half_channels))
        self.convolution_paths = nn.ModuleList(paths)
        agg_in_channels = len(self.convolution_paths) * self.half_channels

        if self.use_pyramid_pooling:
            if pool_sizes is None:
                raise ValueError("use_pyramid_pooling=True needs pool_sizes (a list of (2, h, w)), got None")
            reduction_channels = self.in_channels // 3
            self.pyramid_pooling = PyramidSpatioTemporalPooling(self.in_channels, reduction_channels, pool_sizes)
            agg_in_channels += len(pool_sizes) * reduction_channels

        self.aggregation = nn.Sequential(conv_1x1x1_norm_activated(agg_in_channels, self.out_channels))
        if self.out_channels != self.in_channels:
            self.projection = nn.Sequential(
                nn.Conv3d(self.in_channels, self.out_channels, kernel_size=1, bias=False),
                nn.BatchNorm3d(self.out_channels),
            )
        else:
            self.projection = None

    def forward(self, x):
        residual = torch.cat([path(x) for path in self.convolution_paths], dim=1)
        if self.use_pyramid_pooling:
            residual = torch.cat([residual, self.pyramid_pooling(x)], dim=1)
        residual = self.aggregation(residual)
        skip = self.projection(x) if self.projection is not None else x
        return skip + residual

    def fused(self, x: torch.Tensor, state):
        """Inference on ``(B, T, H, W, C)``. ``state`` is ``None`` (frames before ``x`` are the causal zeros) or
        ``(path-A entry activation of the frame before x, [pool cell means of that frame])``, as returned by the
        previous call or by ``history_state``. Returns ``(output, state after the last frame of x)``."""
        half = self.half_channels
        paths = self.convolution_paths  # indexed, not unpacked: torch 2.1's dynamo cannot unpack a Sequential
        a_entry, a_conv, b_entry, b_conv, c_entry = paths[0][0], paths[0][1], paths[1][0], paths[1][1], paths[2]
        folded = [_folded(m[0].weight, m[1]) for m in (a_entry, b_entry, c_entry)]
        if self.projection is not None:  # the projection reads x too: one GEMM for all four
            folded.append(_folded(self.projection[0].weight, self.projection[1]))
        entry = _pointwise(x, torch.cat([w for w, _ in folded]), torch.cat([b for _, b in folded]))
        a, a_state = a_conv.fused(torch.relu(entry[..., :half]), None if state is None else state[0])
        b, _ = b_conv.fused(torch.relu(entry[..., half : 2 * half]), None)
        c = torch.relu(entry[..., 2 * half : 3 * half])
        skip = entry[..., 3 * half :] if self.projection is not None else x

        agg = self.aggregation[0]
        agg_w, agg_b = _folded(agg.conv.weight, agg.norm)
        pre = _pointwise(torch.cat([a, b, c], dim=-1), agg_w[:, : 3 * half], agg_b)
        cell_state = []
        if self.use_pyramid_pooling:
            column = 3 * half
            cells = self.pyramid_pooling.cell_means(x)
            for i, feature in enumerate(self.pyramid_pooling.features):  # no zip(strict=): torch 2.1 dynamo lacks it
                cell = cells[i]
                previous = None if state is None else state[1][i]
                if previous is None:  # the first frame averages itself alone (count_include_pad=False)
                    pooled = torch.cat([cell[:, :1], (cell[:, :-1] + cell[:, 1:]) / 2], dim=1)
                else:
                    both = torch.cat([previous, cell], dim=1)
                    pooled = (both[:, :-1] + both[:, 1:]) / 2
                cell_state.append(cell[:, -1:])
                unit = feature.conv_bn_relu
                reduced = torch.relu(_pointwise(pooled, *_folded(unit.conv.weight, unit.norm)))
                # the aggregation's columns for this branch, applied before the upsample: both are linear and
                # act on different axes (channels vs. the plane), and the map is far larger than the pooled grid
                share = _pointwise(reduced, agg_w[:, column : column + reduced.shape[-1]])  # (B, T, h', w', out)
                column += reduced.shape[-1]
                pre = pre + self._upsample(share, x.shape[2:4])
        return torch.relu(pre) + skip, (a_state, cell_state)

    def history_state(self, frame: torch.Tensor):
        """The state ``fused`` needs to continue after ``frame`` ``(B, 1, H, W, C)``: its path-A entry activation
        and its pool cell means, and nothing else of it is computed."""
        a_entry = self.convolution_paths[0][0]
        a_state = torch.relu(_pointwise(frame, *_folded(a_entry.conv.weight, a_entry.norm)))
        cells = self.pyramid_pooling.cell_means(frame) if self.use_pyramid_pooling else []
        return a_state, cells

    @staticmethod
    def _upsample(share: torch.Tensor, size) -> torch.Tensor:
        """Bilinear (``align_corners=False``) resize of each ``(b, t, c)`` plane of ``(B, T, h', w', C)`` to
        ``size``; from 1x1 it is a broadcast (in the sum)."""
        if tuple(share.shape[2:4]) in (tuple(size), (1, 1)):
            return share
        b, t, h, w, c = share.shape
        planes = share.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w)
        planes = F.interpolate(planes, size, mode="bilinear", align_corners=False)
        return planes.reshape(b, t, c, *size).permute(0, 1, 3, 4, 2)


class TemporalModel(nn.Module):
    """FIERY's temporal model: ``R - 1`` TemporalBlocks, each followed by ``n_spatial_layers_between_temporal_layers``
    Bottleneck3D (kernel (1, 3, 3)), in one flat ``model`` Sequential (``model.0``, ``model.1``, ...).

    ``forward(x)``: ``(B, T, C, H, W) -> (B, T-R+1, out_channels, H, W)``, the outputs whose causal receptive field
    of ``R`` frames lies inside the input. ``T < R`` gives an empty time axis, as upstream. ``out_channels`` is
    ``start_out + (R - 2) * extra_in`` (``in_channels`` for ``R = 1``, the identity).

    Differences from upstream, all on input upstream cannot run: ``ValueError``/``TypeError`` at the boundary for
    a non-5-D ``x``, ``C != in_channels``, a map smaller than ``input_shape`` or ``T == 1`` with pooling, block
    widths that would give a zero-channel convolution (at construction), ``receptive_field < 1``.
    """

    # What refimpl defines beyond FIERY's protocol, checked by ``refimpl verify`` (``refimpl.suite``).
    refimpl_capabilities = {"extensions": ["streaming"]}

    def __init__(
        self,
        in_channels,
        receptive_field,
        input_shape,
        start_out_channels=64,
        extra_in_channels=0,
        n_spatial_layers_between_temporal_layers=0,
        use_pyramid_pooling=True,
    ):
        super().__init__()
        in_channels, receptive_field, (h, w), start_out_channels, extra_in_channels, n_spatial = (
            validate.temporal_model_config(in_channels, receptive_field, input_shape, start_out_channels,
                                    extra_in_channels, n_spatial_layers_between_temporal_layers)
        )
        use_pyramid_pooling = bool(use_pyramid_pooling)
        temporal_model_layers(in_channels, receptive_field, start_out_channels, extra_in_channels, n_spatial,
                                use_pyramid_pooling)  # refuses widths that give zero-channel convolutions
        self.in_channels = in_channels
        self.receptive_field = receptive_field
        self.input_shape = (h, w)
        self.use_pyramid_pooling = use_pyramid_pooling
        self._start_out_channels, self._extra_in_channels = start_out_channels, extra_in_channels
        self._n_spatial = n_spatial

        modules = []
        block_in_channels, block_out_channels = in_channels, start_out_channels
        for _ in range(receptive_field - 1):
            pool_sizes = [(2, h, w)] if use_pyramid_pooling else None
            modules.append(TemporalBlock(block_in_channels, block_out_channels, use_pyramid_pooling, pool_sizes))
            modules.extend(
                Bottleneck3D(block_out_channels, block_out_channels, kernel_size=(1, 3, 3)) for _ in range(n_spatial)
            )
            block_in_channels = block_out_channels
            block_out_channels += extra_in_channels
        self.out_channels = block_in_channels
        self.model = nn.Sequential(*modules)

    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        validate.temporal_model_input("x", x.shape, in_channels=self.in_channels, receptive_field=self.receptive_field,
                               input_shape=self.input_shape, use_pyramid_pooling=self.use_pyramid_pooling)

    def _unfused(self, x: torch.Tensor) -> torch.Tensor:
        """FIERY's forward on ``(B, C, T, H, W)``, block by block (train mode, and the eager baseline)."""
        return self.model(x)

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        """Inference on ``(B, T, H, W, C)``, computing only the kept outputs ``(B, T-R+1, H, W, C')``.

        Output time s of a TemporalBlock reads its input at s-1 and s only, so the k-th block (from 0) need only
        produce times k+1 .. T-1: it takes its first input frame as history (``history_state``: the path-A entry
        and the pool cell means of that frame) and runs the rest. After R-1 blocks exactly the times R-1 .. T-1
        that FIERY's slice keeps are left: with FIERY's T = R = 3 this skips about half the work."""
        if x.shape[1] < self.receptive_field:  # FIERY: an empty time axis
            return x.new_zeros(x.shape[0], 0, *x.shape[2:4], self.out_channels)
        for layer in self.model:
            if isinstance(layer, TemporalBlock):
                state = layer.history_state(x[:, :1])
                x = x[:, 1:]
            else:
                state = None  # Bottleneck3D (1, 3, 3): no temporal extent
            x, _ = layer.fused(x, state)
        return x

    def _can_fold(self, x: torch.Tensor) -> bool:
        """Fold only for inference: eval mode with autograd not recording. Under autograd the folded BatchNorm
        gives gamma the gradient ``(sum(g * z) - mean * sum(g)) / sigma``, which cancels in float32 where FIERY's
        ``sum(g * (z - mean)) / sigma`` does not (measured: 20x the eager error), so eval-mode training
        (frozen BatchNorm statistics) runs the blocks as FIERY writes them, with the running statistics."""
        if self.training:
            return False
        return not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self._can_fold(x):
            out = self._fused(x.permute(0, 1, 3, 4, 2).contiguous())  # (B, T-R+1, H, W, C')
            return out.permute(0, 1, 4, 2, 3).contiguous()
        h = self._unfused(x.permute(0, 2, 1, 3, 4))  # (B, C, T, H, W): channels second, time as depth
        return h.permute(0, 2, 1, 3, 4).contiguous()[:, self.receptive_field - 1 :]

    def flops(self, frames: int, height: int, width: int, batch: int = 1) -> int:
        """MACs of FIERY's forward on a ``(batch, frames, C, height, width)`` clip (every convolution; see
        ``refimpl.flops.temporal_model_macs`` for what is not counted). This is FIERY's work: the inference
        path here skips the outputs the slice drops and does about half of it when ``frames == R``."""
        from refimpl.flops import temporal_model_macs

        return temporal_model_macs(self.in_channels, self.receptive_field, self.input_shape,
                                   self._start_out_channels, self._extra_in_channels, self._n_spatial,
                                   self.use_pyramid_pooling, batch=batch, frames=frames, height=height, width=width)

    def stream(self) -> TemporalModelStream:
        """A frame-by-frame runner over this model (eval mode; see ``TemporalModelStream``)."""
        return TemporalModelStream(self)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, receptive_field={self.receptive_field}, "
                f"input_shape={self.input_shape}, out_channels={self.out_channels}")


@dataclass
class TemporalModelStream:
    """Streaming inference: ``step(frame)`` takes the newest frame ``(B, C, H, W)`` and returns the present output
    ``(B, out_channels, H, W)``, equal to ``model(last R frames)[:, 0]``, or ``None`` while fewer than ``R`` frames
    have been seen (the model returns an empty time axis then).

    State: per TemporalBlock, the previous frame's path-A entry activation ``(B, in // 2, 1, H, W)`` and pooled
    cell means ``(B, in, 1, h', w')``; Bottleneck3D layers (kernel (1, 3, 3)) keep nothing. A step costs one frame
    of the model. Uses the model's parameters at each step (a weight update applies from the next step on; the
    state already computed stays). Eval mode only, without autograd (``torch.no_grad``). ``reset()`` starts over.
    """

    model: TemporalModel

    def __post_init__(self):
        self.reset()

    def reset(self) -> None:
        self.frames_seen = 0
        self._frame_shape = None
        self._states = [None] * len(self.model.model)

    def step(self, frame: torch.Tensor) -> torch.Tensor | None:
        model = self.model
        if model.training:
            raise RuntimeError(
                "TemporalModelStream.step needs the model in eval mode (call model.eval()): in train mode BatchNorm "
                "uses statistics over the whole clip, which a stream never has"
            )
        if not isinstance(frame, torch.Tensor):
            raise TypeError(f"frame must be a torch.Tensor, got {type(frame).__name__}")
        if frame.dim() != 4:
            raise ValueError(f"frame must be 4-D (B, C, H, W), got shape {tuple(frame.shape)}")
        if self._frame_shape is not None and tuple(frame.shape) != self._frame_shape:
            raise ValueError(
                f"frame has shape {tuple(frame.shape)}, but this stream has seen frames of shape {self._frame_shape} "
                f"(call reset() to start a new stream)"
            )
        b, c, h, w = frame.shape
        # a one-frame clip passes the map and channel checks; T == 1 is fine here since pooling state carries over
        validate.temporal_model_input("frame", (b, 2, c, h, w), in_channels=model.in_channels,
                               receptive_field=model.receptive_field, input_shape=model.input_shape,
                               use_pyramid_pooling=model.use_pyramid_pooling)
        self._frame_shape = tuple(frame.shape)
        with torch.no_grad():
            x = frame.permute(0, 2, 3, 1).unsqueeze(1).contiguous()  # (B, 1, H, W, C)
            for i, layer in enumerate(model.model):
                x, self._states[i] = layer.fused(x, self._states[i])
        self.frames_seen += 1
        if self.frames_seen < model.receptive_field:
            return None
        return x[:, 0].permute(0, 3, 1, 2).contiguous()
