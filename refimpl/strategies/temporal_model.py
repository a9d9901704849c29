"""FIERY's temporal model: configs, parameters with BatchNorm statistics, and whole cases."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from hypothesis import strategies as st

from refimpl import reference
from refimpl.strategies._common import seeds


@dataclass(frozen=True)
class TemporalModelConfig:
    """Constructor arguments of FIERY's ``TemporalModel``."""

    in_channels: int
    receptive_field: int
    input_shape: tuple[int, int]
    start_out_channels: int = 64
    extra_in_channels: int = 0
    n_spatial_layers_between_temporal_layers: int = 0
    use_pyramid_pooling: bool = True

    def kwargs(self) -> dict:
        """Keyword arguments for ``TemporalModel(**config.kwargs())`` and ``reference.temporal_model``."""
        return dict(
            in_channels=self.in_channels,
            receptive_field=self.receptive_field,
            input_shape=self.input_shape,
            start_out_channels=self.start_out_channels,
            extra_in_channels=self.extra_in_channels,
            n_spatial_layers_between_temporal_layers=self.n_spatial_layers_between_temporal_layers,
            use_pyramid_pooling=self.use_pyramid_pooling,
        )

    @property
    def out_channels(self) -> int:
        return reference.temporal_model_out_channels(
            self.in_channels, self.receptive_field, self.start_out_channels, self.extra_in_channels
        )

    @property
    def min_frames(self) -> int:
        """The fewest frames a forward accepts: 2 when a pooling branch exists (it averages over 2 frames)."""
        return 2 if self.use_pyramid_pooling and self.receptive_field >= 2 else 1


def random_temporal_model_params(config: TemporalModelConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A whole FIERY state dict as arrays: conv weights ~ N(0, 1/fan_in); BatchNorm gamma ~ N(1, 0.5^2) (some
    negative), beta and running_mean ~ N(0, 0.5^2), running_var ~ U(0.25, 2), num_batches_tracked (int64) in
    [0, 1000). Default init (mean 0, var 1, gamma 1, beta 0) would make every BatchNorm nearly the identity."""
    params = {}
    for key, shape in reference.temporal_model_state_shapes(**config.kwargs()).items():
        leaf = key.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            params[key] = np.asarray(rng.integers(0, 1000), dtype=np.int64)
        elif leaf == "running_var":
            params[key] = rng.uniform(0.25, 2.0, shape)
        elif leaf in ("running_mean", "bias"):
            params[key] = 0.5 * rng.standard_normal(shape)
        elif len(shape) == 1:  # BatchNorm weight (gamma)
            params[key] = 1.0 + 0.5 * rng.standard_normal(shape)
        else:  # conv weight (out, in, kt, kh, kw)
            params[key] = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    return params


@st.composite
def temporal_model_configs(
    draw,
    *,
    max_in_channels: int = 9,
    max_start_out_channels: int = 8,
    min_receptive_field: int = 1,
    max_receptive_field: int = 5,
    max_extra_in_channels: int = 3,
    max_spatial_layers: int = 1,
    max_side: int = 6,
    use_pyramid_pooling=None,
):
    """Valid FIERY ``TemporalModel`` configurations, small enough for the float64 oracle: odd and even widths
    down to the floors (a TemporalBlock input >= 3 with pooling, >= 2 without; Bottleneck3D >= 2),
    ``input_shape`` up to ``max_side`` (a map of at least that size is drawn with it)."""
    pooling = draw(st.booleans()) if use_pyramid_pooling is None else bool(use_pyramid_pooling)
    r = draw(st.integers(min_receptive_field, max_receptive_field))
    n_spatial = draw(st.integers(0, max_spatial_layers))
    least = 3 if pooling else 2
    # start_out feeds the second block (R >= 3) and the bottlenecks; a lone last block may narrow to 1 channel
    least_start = least if r >= 3 else (2 if n_spatial else 1)
    return TemporalModelConfig(
        in_channels=draw(st.integers(least, max(least, max_in_channels))),
        receptive_field=r,
        input_shape=(draw(st.integers(1, max_side)), draw(st.integers(1, max_side))),
        start_out_channels=draw(st.integers(least_start, max(least_start, max_start_out_channels))),
        extra_in_channels=draw(st.integers(0, max_extra_in_channels)),
        n_spatial_layers_between_temporal_layers=n_spatial,
        use_pyramid_pooling=pooling,
    )


@dataclass(frozen=True)
class TemporalModelCase:
    """One complete input: config, a whole state dict ``params`` (parameters and BatchNorm buffers, float64 and
    int64), ``x`` ``(B, T, C, H, W)``, a ``grad_out`` shaped like the output, and the BatchNorm ``momentum`` for
    train-mode calls. Printed compactly (config, sizes, seed); ``TemporalModelCase.build(...)`` replays it."""

    config: TemporalModelConfig
    batch: int
    frames: int
    height: int
    width: int
    momentum: float | None
    seed: int
    params: dict = field(repr=False, compare=False, default=None)
    x: np.ndarray = field(repr=False, compare=False, default=None)
    grad_out: np.ndarray = field(repr=False, compare=False, default=None)

    @classmethod
    def build(cls, config, *, batch, frames, height, width, momentum, seed):
        rng = np.random.default_rng(seed)
        params = random_temporal_model_params(config, rng)
        x = rng.standard_normal((batch, frames, config.in_channels, height, width))
        kept = max(frames - config.receptive_field + 1, 0)
        grad_out = rng.standard_normal((batch, kept, config.out_channels, height, width))
        return cls(config, batch, frames, height, width, momentum, seed, params, x, grad_out)

    def _repr_pretty_(self, printer, cycle):
        printer.text(repr(self))

    def with_arrays(self, **arrays) -> TemporalModelCase:
        return replace(self, **arrays)

    @property
    def output_shape(self) -> tuple[int, ...]:
        kept = max(self.frames - self.config.receptive_field + 1, 0)
        return (self.batch, kept, self.config.out_channels, self.height, self.width)

    def oracle_forward(self, *, training: bool = False, x=None, params=None) -> reference.TemporalModelForward:
        return reference.temporal_model_forward(
            self.x if x is None else x, self.params if params is None else params, **self.config.kwargs(),
            training=training, momentum=self.momentum,
        )

    def oracle_output(self, *, training: bool = False) -> np.ndarray:
        return self.oracle_forward(training=training).out

    def oracle_vjp(self, *, training: bool = False) -> dict[str, np.ndarray]:
        return reference.temporal_model_vjp(
            self.x, self.params, **self.config.kwargs(), training=training, grad_out=self.grad_out
        )


@st.composite
def temporal_model_cases(draw, configs=None, *, max_batch: int = 2, extra_frames: int = 2, short_clips: bool = False):
    """Complete cases with ``T`` from ``R`` to ``R + extra_frames`` (``short_clips=True``: from the fewest frames
    the model accepts, so ``T < R`` and its empty output are drawn too), a map at least ``input_shape`` with
    pooling, and a momentum among 0.1 (torch's default), 0.05 (FIERY's), 0.5 and None (cumulative average)."""
    config = draw(configs if configs is not None else temporal_model_configs())
    r = config.receptive_field
    low = config.min_frames if short_clips else max(r, config.min_frames)
    frames = draw(st.integers(low, max(low, r + extra_frames)))
    ph, pw = config.input_shape
    max_side = max(ph, pw, 6)
    return TemporalModelCase.build(
        config,
        batch=draw(st.integers(1, max_batch)),
        frames=frames,
        height=draw(st.integers(ph if config.use_pyramid_pooling else 1, max_side)),
        width=draw(st.integers(pw if config.use_pyramid_pooling else 1, max_side)),
        momentum=draw(st.sampled_from([0.1, 0.05, 0.5, None])),
        seed=draw(seeds),
    )
