"""Temporal-model mutants: FIERY's model (``refimpl.baselines.temporal_model``) with one realistic bug each."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refimpl.baselines.temporal_model import CausalConv3d
from refimpl.baselines.temporal_model import TemporalModel as FieryTemporalModel
from refimpl.mutants._mutant import Mutant

# --------------------------------------------------------------------------------------------------
# FIERY temporal model
# --------------------------------------------------------------------------------------------------


def _causal_convs(model):
    return [m for m in model.modules() if isinstance(m, CausalConv3d)]


class TimePaddedAtTheEnd(FieryTemporalModel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for conv in _causal_convs(self):
            w, h, t = conv.pad.padding[0], conv.pad.padding[2], conv.pad.padding[4]
            conv.pad = torch.nn.ConstantPad3d((w, w, h, h, 0, t), 0.0)  # the future frame instead of the past


class SliceOffsetR(FieryTemporalModel):
    def forward(self, x):
        h = self.model(x.permute(0, 2, 1, 3, 4)).permute(0, 2, 1, 3, 4).contiguous()
        return torch.cat([h[:, self.receptive_field - 2 : self.receptive_field - 1], h[:, self.receptive_field :]], 1) \
            if self.receptive_field >= 2 else h  # keeps one padding-contaminated step, drops the first clean one


class BatchStatisticsInEval(FieryTemporalModel):
    def forward(self, x):
        if self.training:
            return super().forward(x)
        norms = [m for m in self.modules() if isinstance(m, torch.nn.BatchNorm3d)]
        for norm in norms:
            norm.train()
            norm.momentum = 0.0  # batch statistics, running statistics left alone
        try:
            return super().forward(x)
        finally:
            for norm in norms:
                norm.eval()


class PoolCountsPadding(FieryTemporalModel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for layer in self.model:
            pooling = getattr(layer, "pyramid_pooling", None)
            for feature in getattr(pooling, "features", []):
                feature.avgpool.count_include_pad = True


def _pool_forward(pooling, *, keep, align_corners):
    """PyramidSpatioTemporalPooling's forward with the pooled steps ``keep`` and the upsample's corner rule."""

    def forward(x):
        b, _, t, h, w = x.shape
        out = []
        for feature in pooling.features:
            pooled = feature(x)[:, :, keep]
            planes = pooled.permute(0, 2, 1, 3, 4).reshape(b * t, pooled.shape[1], *pooled.shape[-2:])
            planes = F.interpolate(planes, (h, w), mode="bilinear", align_corners=align_corners)
            out.append(planes.reshape(b, t, -1, h, w).permute(0, 2, 1, 3, 4))
        return torch.cat(out, 1)

    return forward


class _PoolingMutant(FieryTemporalModel):
    keep, align_corners = slice(None, -1), False  # FIERY's: drop the last pooled step, align_corners=False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for layer in self.model:
            pooling = getattr(layer, "pyramid_pooling", None)
            if pooling is not None:
                pooling.forward = _pool_forward(pooling, keep=self.keep, align_corners=self.align_corners)


class PoolKeepsTheFirstStep(_PoolingMutant):
    keep = slice(1, None)  # drops the first pooled step: P[t] averages frames t and t+1


class UpsampleAlignCorners(_PoolingMutant):
    align_corners = True


class ReluAfterTheResidual(FieryTemporalModel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for layer in self.model:
            layer.register_forward_hook(lambda module, args, out: torch.relu(out))


CATALOG = [
    Mutant("temporal_model", "time_padded_at_the_end", "causal convs pad time at the back (reads the future)",
           TimePaddedAtTheEnd, "R >= 2"),
    Mutant("temporal_model", "slice_offset", "keeps output R-2 and drops output R-1 (slice off by one)",
           SliceOffsetR, "R >= 2"),
    Mutant("temporal_model", "batch_statistics_in_eval", "BatchNorm uses batch statistics in eval mode",
           BatchStatisticsInEval),
    Mutant("temporal_model", "pool_counts_padding", "AvgPool3d with count_include_pad=True (first step halved)",
           PoolCountsPadding, "pooling on; train mode (eval hides it behind the slice)"),
    Mutant("temporal_model", "pool_keeps_the_first_step", "drops the first pooled step, not the last (P[t] sees t+1)",
           PoolKeepsTheFirstStep, "pooling on"),
    Mutant("temporal_model", "relu_after_the_residual", "ReLU applied after skip + aggregation",
           ReluAfterTheResidual, "R >= 2"),
    Mutant("temporal_model", "upsample_align_corners", "bilinear upsample with align_corners=True",
           UpsampleAlignCorners, "maps larger than input_shape (a non-constant upsample)"),
]
