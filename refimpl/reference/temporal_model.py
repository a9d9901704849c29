"""FIERY's ``TemporalModel`` in float64: its operations (causal 3-D convolution, BatchNorm3d, average pooling,
bilinear resize), each with its VJP, and the model's forward, VJP and state-dict shapes.

Layout inside: ``(B, C, T, H, W)``, the layout of upstream's Conv3d calls; the public model functions take and
return FIERY's ``(B, T, C, H, W)``. Parameters are FIERY's state-dict keys (the module tree of FIERY's
``TemporalModel``, ``TemporalBlock`` and ``Bottleneck3D``); docs/semantics.md states the semantics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from refimpl import _validate as validate
from refimpl._temporal_layers import temporal_model_layers

__all__ = [
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
]

BATCH_NORM_EPS = 1e-5


# ---- operations, each with its VJP ----


def conv3d(x, weight) -> np.ndarray:
    """Unpadded 3-D cross-correlation (stride 1, dilation 1, no bias), one einsum per kernel offset.

    ``x`` ``(B, Cin, T, H, W)``, ``weight`` ``(Cout, Cin, kt, kh, kw)`` -> ``(B, Cout, T-kt+1, H-kh+1, W-kw+1)``:
    ``out[b, o, t, i, j] = sum_{c, dt, di, dj} x[b, c, t+dt, i+di, j+dj] * weight[o, c, dt, di, dj]``."""
    x, weight = np.asarray(x, dtype=np.float64), np.asarray(weight, dtype=np.float64)
    kt, kh, kw = weight.shape[2:]
    t, h, w = x.shape[2] - kt + 1, x.shape[3] - kh + 1, x.shape[4] - kw + 1
    out = np.zeros((x.shape[0], weight.shape[0], t, h, w))
    for dt in range(kt):
        for di in range(kh):
            for dj in range(kw):
                window = x[:, :, dt : dt + t, di : di + h, dj : dj + w]
                out += np.einsum("bcthw,oc->bothw", window, weight[:, :, dt, di, dj])
    return out


def conv3d_vjp(x, weight, grad_out) -> tuple[np.ndarray, np.ndarray]:
    """Gradients ``(of x, of weight)`` of ``sum(conv3d(x, weight) * grad_out)``: the same offsets, transposed."""
    x, weight = np.asarray(x, dtype=np.float64), np.asarray(weight, dtype=np.float64)
    kt, kh, kw = weight.shape[2:]
    t, h, w = grad_out.shape[2:]
    grad_x, grad_w = np.zeros_like(x), np.zeros_like(weight)
    for dt in range(kt):
        for di in range(kh):
            for dj in range(kw):
                window = (slice(None), slice(None), slice(dt, dt + t), slice(di, di + h), slice(dj, dj + w))
                grad_x[window] += np.einsum("bothw,oc->bcthw", grad_out, weight[:, :, dt, di, dj])
                grad_w[:, :, dt, di, dj] = np.einsum("bothw,bcthw->oc", grad_out, x[window])
    return grad_x, grad_w


def _causal_padding(kernel_size) -> tuple:
    """FIERY's CausalConv3d pad: time ``kt-1`` in front only, H and W ``(k-1)//2`` on both sides."""
    kt, kh, kw = kernel_size
    return ((0, 0), (0, 0), (kt - 1, 0), ((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2)


def causal_pad(x, kernel_size) -> np.ndarray:
    """Zero-pad ``(B, C, T, H, W)`` for a causal convolution with ``kernel_size`` ``(kt, kh, kw)``."""
    return np.pad(np.asarray(x, dtype=np.float64), _causal_padding(kernel_size))


def causal_conv3d(x, weight) -> np.ndarray:
    """FIERY's CausalConv3d convolution (before its BatchNorm): ``conv3d(causal_pad(x), weight)``; keeps T, and
    H, W for odd spatial kernels. Output time ``t`` reads input times ``t-kt+1 .. t`` (zeros before 0)."""
    weight = np.asarray(weight, dtype=np.float64)
    return conv3d(causal_pad(x, weight.shape[2:]), weight)


def causal_conv3d_vjp(x, weight, grad_out) -> tuple[np.ndarray, np.ndarray]:
    """Gradients ``(of x, of weight)`` of ``sum(causal_conv3d(x, weight) * grad_out)``: ``conv3d_vjp`` on the
    padded input, the padding's share of the input gradient cut off."""
    weight = np.asarray(weight, dtype=np.float64)
    pads = _causal_padding(weight.shape[2:])
    grad_padded, grad_w = conv3d_vjp(causal_pad(x, weight.shape[2:]), weight, grad_out)
    keep = tuple(slice(before, n - after) for (before, after), n in zip(pads, grad_padded.shape, strict=True))
    return grad_padded[keep], grad_w


def batch_statistics(x) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel ``(mean, biased variance, count)`` of ``(B, C, T, H, W)`` over ``(B, T, H, W)``."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=(0, 2, 3, 4))
    var = ((x - mean[None, :, None, None, None]) ** 2).mean(axis=(0, 2, 3, 4))
    return mean, var, x.size // x.shape[1]


def _per_channel(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)[None, :, None, None, None]


def batch_norm_3d(x, running_mean, running_var, gamma, beta, *, training: bool, eps: float = BATCH_NORM_EPS):
    """BatchNorm3d on ``(B, C, T, H, W)``: ``gamma * (x - mean) / sqrt(var + eps) + beta`` per channel, with the
    running statistics (eval) or the batch's mean and *biased* variance over ``(B, T, H, W)`` (train)."""
    x = np.asarray(x, dtype=np.float64)
    if training:
        mean, var, count = batch_statistics(x)
        if count < 2:
            raise ValueError(
                f"BatchNorm in train mode needs more than 1 value per channel, got input shape {x.shape}"
            )
    else:
        mean, var = running_mean, running_var
    return _per_channel(gamma) * (x - _per_channel(mean)) / np.sqrt(_per_channel(var) + eps) + _per_channel(beta)


def batch_norm_3d_vjp(x, running_mean, running_var, gamma, grad_out, *, training: bool, eps: float = BATCH_NORM_EPS):
    """Gradients ``(of x, of gamma, of beta)`` of ``sum(batch_norm_3d(...) * grad_out)``. In train mode the batch
    statistics depend on x: ``dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)`` with
    ``g = grad_out * gamma``, means over ``(B, T, H, W)``."""
    x, grad_out = np.asarray(x, dtype=np.float64), np.asarray(grad_out, dtype=np.float64)
    if training:
        mean, var, _ = batch_statistics(x)
    else:
        mean, var = running_mean, running_var
    inv_std = 1.0 / np.sqrt(_per_channel(var) + eps)
    x_hat = (x - _per_channel(mean)) * inv_std
    axes = (0, 2, 3, 4)
    grad_gamma, grad_beta = (grad_out * x_hat).sum(axis=axes), grad_out.sum(axis=axes)
    g = grad_out * _per_channel(gamma)
    if not training:
        return g * inv_std, grad_gamma, grad_beta
    centred = g - g.mean(axis=axes, keepdims=True) - x_hat * (g * x_hat).mean(axis=axes, keepdims=True)
    return centred * inv_std, grad_gamma, grad_beta


def updated_running_stats(running_mean, running_var, num_batches_tracked, x, momentum):
    """torch's BatchNorm update after a train-mode forward on ``x``: ``new = (1 - m) * old + m * batch`` with the
    batch mean and the *unbiased* variance (``n / (n - 1)`` times the biased one); ``num_batches_tracked + 1``.
    ``momentum=None`` means the cumulative average, ``m = 1 / (num_batches_tracked + 1)``."""
    mean, var, count = batch_statistics(x)
    tracked = int(num_batches_tracked) + 1
    m = 1.0 / tracked if momentum is None else float(momentum)
    new_mean = (1 - m) * np.asarray(running_mean, dtype=np.float64) + m * mean
    new_var = (1 - m) * np.asarray(running_var, dtype=np.float64) + m * var * count / (count - 1)
    return new_mean, new_var, tracked


def relu(x) -> np.ndarray:
    return np.maximum(np.asarray(x, dtype=np.float64), 0.0)


def _pool_windows(x_shape, kernel_size, stride, padding):
    """Yield ``(output index, input slices, in-range count)`` of a 3-D pooling over the last three axes."""
    ranges = []
    for n, k, s, p in zip(x_shape[-3:], kernel_size, stride, padding, strict=True):
        n_out = (n + 2 * p - k) // s + 1
        ranges.append([(o, max(o * s - p, 0), min(o * s - p + k, n)) for o in range(n_out)])
    for ot, t0, t1 in ranges[0]:
        for oh, h0, h1 in ranges[1]:
            for ow, w0, w1 in ranges[2]:
                yield (ot, oh, ow), (slice(t0, t1), slice(h0, h1), slice(w0, w1)), (t1 - t0) * (h1 - h0) * (w1 - w0)


def avg_pool3d(x, kernel_size, stride, padding) -> np.ndarray:
    """AvgPool3d with ``count_include_pad=False`` (floor mode) on ``(B, C, T, H, W)``: each output is the mean of
    the *in-range* inputs of its window; padded positions count neither in the sum nor in the divisor."""
    x = np.asarray(x, dtype=np.float64)
    sizes = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(x.shape[2:], kernel_size, stride, padding, strict=True)]
    out = np.zeros((*x.shape[:2], *sizes))
    for index, window, count in _pool_windows(x.shape, kernel_size, stride, padding):
        out[(..., *index)] = x[(..., *window)].sum(axis=(2, 3, 4)) / count
    return out


def avg_pool3d_vjp(x_shape, kernel_size, stride, padding, grad_out) -> np.ndarray:
    """Gradient of ``sum(avg_pool3d(x) * grad_out)`` with respect to x: each output spreads ``g / count``."""
    grad_x = np.zeros(x_shape)
    for index, window, count in _pool_windows(x_shape, kernel_size, stride, padding):
        grad_x[(..., *window)] += grad_out[(..., *index)][..., None, None, None] / count
    return grad_x


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of 1-D linear interpolation with ``align_corners=False`` (PyTorch's rule):
    ``src = max((dst + 0.5) * n_in / n_out - 0.5, 0)``, ``i0 = floor(src)``, ``i1 = min(i0 + 1, n_in - 1)``,
    weights ``1 - (src - i0)`` and ``src - i0``."""
    matrix = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for dst in range(n_out):
        src = max((dst + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        matrix[dst, i0] += 1.0 - frac
        matrix[dst, i1] += frac
    return matrix


def bilinear_resize(x, size) -> np.ndarray:
    """Bilinear resize of the last two axes to ``size = (H, W)`` (``align_corners=False``), plane by plane: each
    ``(h, w)`` plane ``P`` becomes ``rows @ P @ cols^T`` (interpolate along H, then along W)."""
    x = np.asarray(x, dtype=np.float64)
    rows, cols = bilinear_matrix(x.shape[-2], size[0]), bilinear_matrix(x.shape[-1], size[1])
    return rows @ x @ cols.T


def bilinear_resize_vjp(in_size, grad_out) -> np.ndarray:
    """Gradient of ``sum(bilinear_resize(x, size) * grad_out)`` with respect to x, whose last two axes are
    ``in_size``: each plane ``G`` of ``grad_out`` gives ``rows^T @ G @ cols``."""
    rows = bilinear_matrix(in_size[0], grad_out.shape[-2])
    cols = bilinear_matrix(in_size[1], grad_out.shape[-1])
    return rows.T @ np.asarray(grad_out, dtype=np.float64) @ cols


# ---- the model's structure: layers, units (conv -> BatchNorm [-> ReLU]) and their state-dict keys ----


def temporal_model_out_channels(in_channels, receptive_field, start_out_channels=64, extra_in_channels=0) -> int:
    """FIERY's ``out_channels``: ``start_out + (R - 2) * extra_in`` for ``R >= 2``, ``in_channels`` for ``R = 1``
    (the model is then the identity)."""
    c_in = validate.positive_int("in_channels", in_channels)
    r = validate.positive_int("receptive_field", receptive_field)
    start = validate.positive_int("start_out_channels", start_out_channels)
    extra = validate.non_negative_int("extra_in_channels", extra_in_channels)
    return c_in if r == 1 else start + (r - 2) * extra


@dataclass(frozen=True)
class _Unit:
    """A convolution (causal padding for its kernel), its BatchNorm3d, and a ReLU unless ``relu`` is False."""

    conv: str  # state-dict key of the conv weight
    norm: str  # state-dict prefix of the BatchNorm3d
    c_in: int
    c_out: int
    kernel: tuple = (1, 1, 1)
    relu: bool = True


def _block_units(kind: str, prefix: str, c_in: int, c_out: int, pooling: bool) -> dict[str, _Unit]:
    """The units of one ``model.<k>`` layer under FIERY's submodule names, in module (state-dict) order: a
    Bottleneck3D's ``layers.conv_down_project``, ``layers.conv``, ``layers.conv_up_project``; a TemporalBlock's
    three ``convolution_paths`` (A: 1x1x1 then 2x3x3, B: 1x1x1 then 1x3x3, C: 1x1x1, each to ``c_in // 2``
    channels), its ``pyramid_pooling`` branch (1x1x1 to ``c_in // 3``), ``aggregation`` and, when the width
    changes, a ``projection`` of the skip (conv and BatchNorm without ReLU)."""
    if kind == "spatial":  # Bottleneck3D(c, c, kernel (1, 3, 3)): no projection since out == in
        mid, p = c_in // 2, f"{prefix}.layers"
        return {
            "down": _Unit(f"{p}.conv_down_project.conv.weight", f"{p}.conv_down_project.norm", c_in, mid),
            "conv": _Unit(f"{p}.conv.conv.weight", f"{p}.conv.norm", mid, mid, (1, 3, 3)),
            "up": _Unit(f"{p}.conv_up_project.conv.weight", f"{p}.conv_up_project.norm", mid, c_out),
        }
    half, p = c_in // 2, f"{prefix}.convolution_paths"
    units = {
        "a_entry": _Unit(f"{p}.0.0.conv.weight", f"{p}.0.0.norm", c_in, half),
        "a_conv": _Unit(f"{p}.0.1.conv.weight", f"{p}.0.1.norm", half, half, (2, 3, 3)),
        "b_entry": _Unit(f"{p}.1.0.conv.weight", f"{p}.1.0.norm", c_in, half),
        "b_conv": _Unit(f"{p}.1.1.conv.weight", f"{p}.1.1.norm", half, half, (1, 3, 3)),
        "c_entry": _Unit(f"{p}.2.conv.weight", f"{p}.2.norm", c_in, half),
    }
    agg_in = 3 * half
    if pooling:
        q = f"{prefix}.pyramid_pooling.features.0.conv_bn_relu"
        units["pool"] = _Unit(f"{q}.conv.weight", f"{q}.norm", c_in, c_in // 3)
        agg_in += c_in // 3
    units["aggregation"] = _Unit(f"{prefix}.aggregation.0.conv.weight", f"{prefix}.aggregation.0.norm", agg_in, c_out)
    if c_out != c_in:
        units["projection"] = _Unit(f"{prefix}.projection.0.weight", f"{prefix}.projection.1", c_in, c_out, relu=False)
    return units


@dataclass(frozen=True)
class _Layer:
    """One ``model.<k>``: ``kind`` is ``"temporal"`` (a TemporalBlock) or ``"spatial"`` (a Bottleneck3D)."""

    kind: str
    units: dict[str, _Unit]


def _model_layers(in_channels, receptive_field, input_shape, start_out_channels, extra_in_channels,
                  n_spatial_layers_between_temporal_layers, use_pyramid_pooling):
    """``(checked sizes, [_Layer for model.0, model.1, ...])`` of a FIERY configuration."""
    sizes = validate.temporal_model_config(in_channels, receptive_field, input_shape, start_out_channels,
                                           extra_in_channels, n_spatial_layers_between_temporal_layers)
    pooling = bool(use_pyramid_pooling)
    layers = temporal_model_layers(sizes.in_channels, sizes.receptive_field, sizes.start_out_channels,
                                   sizes.extra_in_channels, sizes.n_spatial_layers_between_temporal_layers, pooling)
    return sizes, [
        _Layer(layer.kind, _block_units(layer.kind, f"model.{k}", layer.c_in, layer.c_out, pooling))
        for k, layer in enumerate(layers)
    ]


def temporal_model_state_shapes(
    in_channels, receptive_field, input_shape, start_out_channels=64, extra_in_channels=0,
    n_spatial_layers_between_temporal_layers=0, use_pyramid_pooling=True,
) -> dict[str, tuple[int, ...]]:
    """Every key of FIERY's ``TemporalModel.state_dict()`` with its shape (parameters and BatchNorm buffers;
    ``num_batches_tracked`` is a 0-d int64), in module order."""
    _, layers = _model_layers(in_channels, receptive_field, input_shape, start_out_channels, extra_in_channels,
                              n_spatial_layers_between_temporal_layers, use_pyramid_pooling)
    shapes = {}
    for layer in layers:
        for u in layer.units.values():  # module order (see _block_units)
            shapes[u.conv] = (u.c_out, u.c_in, *u.kernel)
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{u.norm}.{leaf}"] = (u.c_out,)
            shapes[f"{u.norm}.num_batches_tracked"] = ()
    return shapes


# ---- forward ----


@dataclass
class _Run:
    """What one forward needs besides the input: params, mode, and where train mode writes new statistics."""

    params: Mapping
    training: bool
    momentum: float | None = 0.1
    running_stats: dict | None = None  # train mode writes each BatchNorm's new statistics here, when given

    def weight(self, u: _Unit) -> np.ndarray:
        w = validate.param(self.params, u.conv, ndim=5)
        validate.table_shape(f"params[{u.conv!r}]", w, (u.c_out, u.c_in, *u.kernel))
        return w

    def norm(self, u: _Unit) -> tuple[np.ndarray, ...]:
        """``(running_mean, running_var, gamma, beta)`` of a unit's BatchNorm3d."""
        arrays = []
        for leaf in ("running_mean", "running_var", "weight", "bias"):
            a = validate.param(self.params, f"{u.norm}.{leaf}", ndim=1)
            validate.table_shape(f"params[{u.norm + '.' + leaf!r}]", a, (u.c_out,))
            arrays.append(a)
        return tuple(arrays)


def _unit_pre_norm(x, run: _Run, u: _Unit) -> np.ndarray:
    return causal_conv3d(x, run.weight(u))


def _unit_forward(x, run: _Run, u: _Unit) -> np.ndarray:
    z = _unit_pre_norm(x, run, u)
    mean, var, gamma, beta = run.norm(u)
    y = batch_norm_3d(z, mean, var, gamma, beta, training=run.training)
    if run.training and run.running_stats is not None:
        tracked = np.asarray(run.params.get(f"{u.norm}.num_batches_tracked", 0))
        new_mean, new_var, new_tracked = updated_running_stats(mean, var, tracked, z, run.momentum)
        run.running_stats[f"{u.norm}.running_mean"] = new_mean
        run.running_stats[f"{u.norm}.running_var"] = new_var
        run.running_stats[f"{u.norm}.num_batches_tracked"] = np.asarray(new_tracked, dtype=np.int64)
    return relu(y) if u.relu else y


def _pool_geometry(input_shape) -> tuple:
    ph, pw = input_shape
    return (2, ph, pw), (1, ph, pw), (1, 0, 0)  # kernel, stride, padding: FIERY's single global pool


def _pyramid_pooling(x, run: _Run, u: _Unit, input_shape) -> np.ndarray:
    """Average over frames ``{t-1, t}`` in range and over the pool cell, conv + BN + ReLU on all ``T+1`` pooled
    steps (train-mode statistics include the last one), drop the last step, resize back to ``(H, W)``."""
    pooled = avg_pool3d(x, *_pool_geometry(input_shape))  # (B, C, T+1, h', w')
    reduced = _unit_forward(pooled, run, u)[:, :, :-1]
    return bilinear_resize(reduced, x.shape[-2:])


def _block_paths(units, x, run: _Run, input_shape) -> np.ndarray:
    """A TemporalBlock's concatenated paths A, B, C (and the pooling branch): the aggregation's input."""
    parts = [
        _unit_forward(_unit_forward(x, run, units["a_entry"]), run, units["a_conv"]),
        _unit_forward(_unit_forward(x, run, units["b_entry"]), run, units["b_conv"]),
        _unit_forward(x, run, units["c_entry"]),
    ]
    if "pool" in units:
        parts.append(_pyramid_pooling(x, run, units["pool"], input_shape))
    return np.concatenate(parts, axis=1)


def _layer_forward(layer: _Layer, x, run: _Run, input_shape) -> np.ndarray:
    """One ``model.<k>``: a TemporalBlock or a Bottleneck3D on ``(B, C, T, H, W)``."""
    units = layer.units
    if layer.kind == "spatial":
        main = _unit_forward(_unit_forward(_unit_forward(x, run, units["down"]), run, units["conv"]), run, units["up"])
        return main + x
    residual = _unit_forward(_block_paths(units, x, run, input_shape), run, units["aggregation"])
    skip = _unit_forward(x, run, units["projection"]) if "projection" in units else x
    return skip + residual


@dataclass(frozen=True)
class TemporalModelForward:
    """One oracle forward of the temporal model.

    ``out``: ``(B, T-R+1, C', H, W)``, what FIERY returns; ``full``: ``(B, T, C', H, W)``, every time step before
    the slice ``[:, R-1:]`` (the first ``R-1`` depend on the temporal zero padding); ``running_stats``: each
    BatchNorm's ``running_mean``, ``running_var`` and ``num_batches_tracked`` under its state-dict key, after
    this forward (updated in train mode, unchanged copies in eval mode)."""

    out: np.ndarray
    full: np.ndarray
    running_stats: dict


def _prepare(x, in_channels, receptive_field, input_shape, start_out_channels, extra_in_channels,
             n_spatial_layers_between_temporal_layers, use_pyramid_pooling):
    """``(checked sizes, layers, x as float64 (B, C, T, H, W))``."""
    sizes, layers = _model_layers(in_channels, receptive_field, input_shape, start_out_channels, extra_in_channels,
                                  n_spatial_layers_between_temporal_layers, use_pyramid_pooling)
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"x must be a real numeric array, got {type(x).__name__}") from None
    validate.temporal_model_input("x", x.shape, in_channels=sizes.in_channels, receptive_field=sizes.receptive_field,
                                  input_shape=sizes.input_shape, use_pyramid_pooling=bool(use_pyramid_pooling))
    return sizes, layers, np.einsum("btchw->bcthw", x)


def temporal_model_forward(
    x, params: Mapping, *, in_channels, receptive_field, input_shape, start_out_channels=64, extra_in_channels=0,
    n_spatial_layers_between_temporal_layers=0, use_pyramid_pooling=True, training=False, momentum=0.1,
) -> TemporalModelForward:
    """FIERY ``TemporalModel.forward`` in float64, with the pre-slice output and the BatchNorm statistics after the
    call (``momentum`` as ``BatchNorm3d.momentum``: FIERY sets 0.05; ``None`` is the cumulative average).

    ``x``: ``(B, T, C, H, W)``. ``params``: FIERY state-dict keys (``temporal_model_state_shapes``); the running
    statistics are used in eval mode, batch statistics over ``(B, T, H, W)`` with biased variance in train mode;
    a missing ``num_batches_tracked`` counts as 0. ``T < R`` gives an empty time axis, as upstream."""
    sizes, layers, h = _prepare(x, in_channels, receptive_field, input_shape, start_out_channels,
                                extra_in_channels, n_spatial_layers_between_temporal_layers, use_pyramid_pooling)
    run = _Run(params, bool(training), momentum, running_stats={})
    for layer in layers:
        h = _layer_forward(layer, h, run, sizes.input_shape)
    stats = {}
    for key in temporal_model_state_shapes(**sizes._asdict(), use_pyramid_pooling=use_pyramid_pooling):
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            old = np.asarray(params.get(key, 0), dtype=np.int64 if key.endswith("tracked") else np.float64)
            stats[key] = run.running_stats.get(key, old.copy())
    full = np.einsum("bcthw->btchw", h)
    return TemporalModelForward(full[:, sizes.receptive_field - 1 :], full, stats)


def temporal_model(
    x, params: Mapping, *, in_channels, receptive_field, input_shape, start_out_channels=64, extra_in_channels=0,
    n_spatial_layers_between_temporal_layers=0, use_pyramid_pooling=True, training=False,
) -> np.ndarray:
    """FIERY ``TemporalModel`` forward in float64: ``(B, T, C, H, W) -> (B, T-R+1, C', H, W)`` (see
    ``temporal_model_forward`` for the running statistics a train-mode call produces)."""
    return temporal_model_forward(
        x, params, in_channels=in_channels, receptive_field=receptive_field, input_shape=input_shape,
        start_out_channels=start_out_channels, extra_in_channels=extra_in_channels,
        n_spatial_layers_between_temporal_layers=n_spatial_layers_between_temporal_layers,
        use_pyramid_pooling=use_pyramid_pooling, training=training,
    ).out


# ---- backward (hand-written; every step recomputes the forward values it needs) ----


def _unit_backward(x, run: _Run, u: _Unit, grad_out, grads: dict) -> np.ndarray:
    """Adds the unit's parameter gradients to ``grads``; returns the gradient of its input."""
    z = _unit_pre_norm(x, run, u)
    mean, var, gamma, beta = run.norm(u)
    if u.relu:
        y = batch_norm_3d(z, mean, var, gamma, beta, training=run.training)
        grad_out = grad_out * (y > 0)  # torch's ReLU passes no gradient at 0
    grad_z, grad_gamma, grad_beta = batch_norm_3d_vjp(z, mean, var, gamma, grad_out, training=run.training)
    grad_x, grad_w = causal_conv3d_vjp(x, run.weight(u), grad_z)
    grads[u.conv] = grads.get(u.conv, 0) + grad_w
    grads[f"{u.norm}.weight"] = grads.get(f"{u.norm}.weight", 0) + grad_gamma
    grads[f"{u.norm}.bias"] = grads.get(f"{u.norm}.bias", 0) + grad_beta
    return grad_x


def _chain_backward(x, run, chain: list[_Unit], grad_out, grads) -> np.ndarray:
    """Backward through units applied one after the other to ``x``."""
    inputs = [x]
    for u in chain[:-1]:
        inputs.append(_unit_forward(inputs[-1], run, u))
    for u, inp in zip(reversed(chain), reversed(inputs), strict=True):
        grad_out = _unit_backward(inp, run, u, grad_out, grads)
    return grad_out


def _layer_backward(layer: _Layer, x, run: _Run, input_shape, grad_out, grads) -> np.ndarray:
    """Adds the layer's parameter gradients to ``grads``; returns the gradient of its input."""
    units = layer.units
    if layer.kind == "spatial":
        return grad_out + _chain_backward(x, run, [units["down"], units["conv"], units["up"]], grad_out, grads)
    half = x.shape[1] // 2
    grad_cat = _unit_backward(_block_paths(units, x, run, input_shape), run, units["aggregation"], grad_out, grads)
    grad_a, grad_b, grad_c = (grad_cat[:, i * half : (i + 1) * half] for i in range(3))
    grad_x = _chain_backward(x, run, [units["a_entry"], units["a_conv"]], grad_a, grads)
    grad_x += _chain_backward(x, run, [units["b_entry"], units["b_conv"]], grad_b, grads)
    grad_x += _unit_backward(x, run, units["c_entry"], grad_c, grads)
    if "pool" in units:
        kernel, stride, padding = _pool_geometry(input_shape)
        pooled = avg_pool3d(x, kernel, stride, padding)
        grad_reduced = np.zeros((x.shape[0], units["pool"].c_out, *pooled.shape[2:]))  # (B, r, T+1, h', w')
        grad_reduced[:, :, :-1] = bilinear_resize_vjp(pooled.shape[-2:], grad_cat[:, 3 * half :])  # dropped step: 0
        grad_pooled = _unit_backward(pooled, run, units["pool"], grad_reduced, grads)
        grad_x += avg_pool3d_vjp(x.shape, kernel, stride, padding, grad_pooled)
    if "projection" in units:
        return grad_x + _unit_backward(x, run, units["projection"], grad_out, grads)
    return grad_x + grad_out


def temporal_model_vjp(
    x, params: Mapping, *, in_channels, receptive_field, input_shape, start_out_channels=64, extra_in_channels=0,
    n_spatial_layers_between_temporal_layers=0, use_pyramid_pooling=True, training=False, grad_out,
) -> dict[str, np.ndarray]:
    """Gradients of ``sum(temporal_model(x, params, ...) * grad_out)``, written out by hand (train mode
    differentiates through the batch statistics, as autograd does).

    Returns ``{"x": (B, T, C, H, W), key: array shaped like params[key] for every key of params}``; BatchNorm
    buffers (running statistics, ``num_batches_tracked``) get zeros."""
    sizes, layers, h = _prepare(x, in_channels, receptive_field, input_shape, start_out_channels,
                                extra_in_channels, n_spatial_layers_between_temporal_layers, use_pyramid_pooling)
    run = _Run(params, bool(training))
    inputs = [h]
    for layer in layers[:-1]:
        inputs.append(_layer_forward(layer, inputs[-1], run, sizes.input_shape))
    grad_out = np.asarray(grad_out, dtype=np.float64)
    r = sizes.receptive_field
    c_out = temporal_model_out_channels(sizes.in_channels, r, sizes.start_out_channels, sizes.extra_in_channels)
    expected = (h.shape[0], max(h.shape[2] - r + 1, 0), c_out, *h.shape[3:])
    if grad_out.shape != expected:
        raise ValueError(f"grad_out has shape {grad_out.shape}, expected the output's shape {expected}")
    grad = np.zeros((h.shape[0], c_out, h.shape[2], *h.shape[3:]))
    grad[:, :, r - 1 :] = np.einsum("btchw->bcthw", grad_out)  # the slice [:, R-1:] passes nothing to t < R-1
    grads: dict = {}
    for layer, inp in zip(reversed(layers), reversed(inputs), strict=False):  # R = 1: no layer, one input
        grad = _layer_backward(layer, inp, run, sizes.input_shape, grad, grads)
    grads["x"] = np.einsum("bcthw->btchw", grad)
    return {key: np.asarray(grads[key], dtype=np.float64) if key in grads else np.zeros(np.shape(params[key]))
            for key in ["x", *params]}
