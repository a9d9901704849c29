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

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from hypothesis import strategies as st

from refimpl import reference

__all__ = [
    "WindowAttentionConfig",
    "WindowAttentionCase",
    "window_attention_configs",
    "random_window_attention_params",
    "random_window_mask",
    "window_attention_cases",
    "seeds",
    "MASK_CONVENTIONS",
    "ShiftedWindowConfig",
    "ShiftedWindowAttentionCase",
    "shifted_window_configs",
    "shifted_window_attention_cases",
    # FIERY temporal model
    "TemporalModelConfig",
    "TemporalModelCase",
    "temporal_model_configs",
    "random_temporal_model_params",
    "temporal_model_cases",
]

seeds = st.integers(min_value=0, max_value=2**32 - 1)


@dataclass(frozen=True)
class WindowAttentionConfig:
    """Constructor arguments of AIM's ``WindowAttention``."""

    dim: int
    num_heads: int
    window_size: tuple[int, int]
    num_ttokens: int
    use_temporal: bool = True
    qkv_bias: bool = True
    qk_scale: float | None = None
    attn_drop: float = 0.0
    proj_drop: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def window_tokens(self) -> int:
        return self.window_size[0] * self.window_size[1]

    def kwargs(self) -> dict:
        """Keyword arguments for ``WindowAttention(**config.kwargs())``."""
        return dict(
            dim=self.dim,
            num_ttokens=self.num_ttokens,
            window_size=self.window_size,
            num_heads=self.num_heads,
            use_temporal=self.use_temporal,
            qkv_bias=self.qkv_bias,
            qk_scale=self.qk_scale,
            attn_drop=self.attn_drop,
            proj_drop=self.proj_drop,
        )


def random_window_attention_params(
    config: WindowAttentionConfig, rng: np.random.Generator, *, table_scale: float = 1.0
) -> dict[str, np.ndarray]:
    """Float64 parameters under AIM's state-dict keys (no buffers: an implementation must build its own)."""
    c, heads = config.dim, config.num_heads
    wh, ww = config.window_size
    params = {
        "relative_position_bias_table": table_scale * rng.standard_normal(((2 * wh - 1) * (2 * ww - 1), heads)),
        "qkv.weight": rng.standard_normal((3 * c, c)) / np.sqrt(c),
        "proj.weight": rng.standard_normal((c, c)) / np.sqrt(c),
        "proj.bias": rng.standard_normal(c),
    }
    if config.use_temporal:
        params["temporal_position_bias_table"] = table_scale * rng.standard_normal((2 * config.num_ttokens - 1, heads))
    if config.qkv_bias:
        params["qkv.bias"] = rng.standard_normal(3 * c)
    return params


MASK_CONVENTIONS = ("-100", "-inf", "bool")
"""How a window mask says "may not attend": Swin's additive -100, an additive -inf, or a boolean "may attend"
mask (True where allowed). ``refimpl.reference.additive_mask`` gives each its meaning."""


def random_window_mask(
    n_windows: int, n_tokens: int, rng: np.random.Generator, *, convention: str = "-100",
    fully_masked_rows: bool = False,
):
    """A ``(nW, N, N)`` window mask in ``convention`` (see ``MASK_CONVENTIONS``), each window with its own
    density, so that a wrong window assignment shows. The diagonal is allowed (no row is fully masked, as in
    Swin) unless ``fully_masked_rows``, which blocks about a third of the rows entirely."""
    if convention not in MASK_CONVENTIONS:
        raise ValueError(f"convention must be one of {MASK_CONVENTIONS}, got {convention!r}")
    density = rng.uniform(0.0, 0.8, size=(n_windows, 1, 1))
    blocked = rng.uniform(size=(n_windows, n_tokens, n_tokens)) < density
    blocked[:, np.arange(n_tokens), np.arange(n_tokens)] = False
    if fully_masked_rows:
        blocked[rng.uniform(size=(n_windows, n_tokens)) < 1 / 3] = True
    if convention == "bool":
        return ~blocked
    return np.where(blocked, -100.0 if convention == "-100" else -np.inf, 0.0)


@st.composite
def window_attention_configs(
    draw,
    *,
    max_heads: int = 16,
    max_head_dim: int = 6,
    max_window_side: int = 5,
    max_ttokens: int = 6,
    use_temporal=None,
    qkv_bias=None,
    dropout: bool = False,
):
    """Valid AIM ``WindowAttention`` configurations: ``dim = num_heads * head_dim`` (1..16 heads), windows
    up to ``max_window_side`` per side (non-square ones included), ``qk_scale`` None, 0 (means default, as
    upstream) or an override; non-zero dropout rates only with ``dropout=True``."""
    num_heads = draw(st.integers(1, max_heads))
    head_dim = draw(st.integers(1, max_head_dim))
    window = (draw(st.integers(1, max_window_side)), draw(st.integers(1, max_window_side)))
    drop = st.sampled_from([0.0, 0.1, 0.5]) if dropout else st.just(0.0)
    return WindowAttentionConfig(
        dim=num_heads * head_dim,
        num_heads=num_heads,
        window_size=window,
        num_ttokens=draw(st.integers(1, max_ttokens)),
        use_temporal=draw(st.booleans()) if use_temporal is None else use_temporal,
        qkv_bias=draw(st.booleans()) if qkv_bias is None else qkv_bias,
        qk_scale=draw(st.one_of(st.none(), st.just(0.0), st.floats(0.05, 2.0))),
        attn_drop=draw(drop),
        proj_drop=draw(drop),
    )


@dataclass(frozen=True)
class WindowAttentionCase:
    """One complete input: config, float64 params, ``x`` ``(B_, N, C)``, optional mask ``(nW, N, N)``,
    mode, and a ``grad_out`` for gradient checks. Printed compactly (config, shapes, seed) by Hypothesis."""

    config: WindowAttentionConfig
    temporal: bool
    batch: int
    n_windows: int  # windows per image; B_ = batch * n_windows (temporal: B_ = batch)
    has_mask: bool
    seed: int
    mask_convention: str = "-100"  # see MASK_CONVENTIONS
    fully_masked_rows: bool = False  # some query rows may attend to no key at all
    params: dict = field(repr=False, compare=False, default=None)
    x: np.ndarray = field(repr=False, compare=False, default=None)
    mask: np.ndarray | None = field(repr=False, compare=False, default=None)
    grad_out: np.ndarray = field(repr=False, compare=False, default=None)

    @classmethod
    def build(cls, config, *, temporal, batch, n_windows, has_mask, seed, mask_convention="-100",
              fully_masked_rows=False):
        """Deterministically generate the arrays of a case from its description (replayable from the repr)."""
        rng = np.random.default_rng(seed)
        n_tokens = config.num_ttokens if temporal else config.window_tokens
        n_rows = batch if temporal else batch * n_windows
        params = random_window_attention_params(config, rng)
        x = rng.standard_normal((n_rows, n_tokens, config.dim))
        mask = None
        if has_mask:
            mask = random_window_mask(
                n_windows, n_tokens, rng, convention=mask_convention, fully_masked_rows=fully_masked_rows
            )
        grad_out = rng.standard_normal((n_rows, n_tokens, config.dim))
        return cls(config, temporal, batch, n_windows, has_mask, seed, mask_convention, fully_masked_rows,
                   params, x, mask, grad_out)

    @property
    def n_tokens(self) -> int:
        return self.x.shape[1]

    def _repr_pretty_(self, printer, cycle):  # Hypothesis prints falsifying cases with this: keep it compact
        printer.text(repr(self))

    def with_arrays(self, **arrays) -> "WindowAttentionCase":
        """The same case with some arrays replaced (e.g. inputs rounded to a lower precision)."""
        return replace(self, **arrays)

    def oracle_kwargs(self) -> dict:
        return dict(
            num_heads=self.config.num_heads,
            window_size=self.config.window_size,
            mask=self.mask,
            temporal=self.temporal,
            qk_scale=self.config.qk_scale,
        )

    def oracle_stages(self) -> reference.WindowAttentionStages:
        return reference.window_attention_stages(self.x, self.params, **self.oracle_kwargs())

    def oracle_output(self) -> np.ndarray:
        return reference.window_attention(self.x, self.params, **self.oracle_kwargs())

    def oracle_vjp(self) -> dict[str, np.ndarray]:
        return reference.window_attention_vjp(self.x, self.params, **self.oracle_kwargs(), grad_out=self.grad_out)

    def oracle_vjp_magnitudes(self) -> dict[str, np.ndarray]:
        return reference.window_attention_vjp_magnitudes(
            self.x, self.params, **self.oracle_kwargs(), grad_out=self.grad_out
        )


@st.composite
def window_attention_cases(
    draw,
    configs=None,
    *,
    temporal=None,
    mask=None,
    max_batch: int = 3,
    max_windows: int = 4,
    mask_conventions=MASK_CONVENTIONS,
    fully_masked_rows=None,
):
    """Complete cases. ``temporal``/``mask``: force the mode / the presence of a window mask (None: draw).
    A mask is only drawn in spatial mode unless ``mask=True`` (then it is passed in temporal mode as well,
    where it must be ignored). The mask's convention is drawn from ``mask_conventions``; rows that may attend
    to nothing are drawn unless ``fully_masked_rows`` says otherwise."""
    config = draw(configs if configs is not None else window_attention_configs())
    is_temporal = config.use_temporal and (draw(st.booleans()) if temporal is None else temporal)
    if temporal and not config.use_temporal:
        config = replace(config, use_temporal=True)
        is_temporal = True
    has_mask = draw(st.booleans()) if mask is None else mask
    if is_temporal and mask is None:
        has_mask = False
    n_windows = draw(st.integers(1, max_windows)) if has_mask else 1
    convention = draw(st.sampled_from(mask_conventions)) if has_mask else "-100"
    dead_rows = has_mask and (draw(st.booleans()) if fully_masked_rows is None else fully_masked_rows)
    return WindowAttentionCase.build(
        config,
        temporal=is_temporal,
        batch=draw(st.integers(1, max_batch)),
        n_windows=n_windows,
        has_mask=has_mask,
        seed=draw(seeds),
        mask_convention=convention,
        fully_masked_rows=dead_rows,
    )


# --------------------------------------------------------------------------------------------------
# Shifted windows over a map
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShiftedWindowConfig:
    """A valid map / window / shift combination: ``H`` and ``W`` multiples of ``window_size``, the window no
    larger than the map, ``0 <= shift_size < window_size``. ``config.args`` is ``(H, W, window_size, shift_size)``."""

    H: int
    W: int
    window_size: int
    shift_size: int

    @property
    def args(self) -> tuple[int, int, int, int]:
        return (self.H, self.W, self.window_size, self.shift_size)

    @property
    def n_windows(self) -> int:
        return (self.H // self.window_size) * (self.W // self.window_size)


@st.composite
def shifted_window_configs(draw, *, max_window: int = 5, max_windows_per_side: int = 3, shift=None):
    """Valid ``(H, W, window_size, shift_size)`` drawn together, biased toward the edge cases: shift ``ws // 2``
    (Swin's odd blocks) and ``ws - 1``, a single window along an axis (``H == ws``), non-square maps.
    ``shift``: None (draw), or ``"zero"`` / ``"nonzero"`` to force one kind (``"nonzero"`` needs ``ws >= 2``)."""
    ws = draw(st.integers(2 if shift == "nonzero" else 1, max_window))
    if shift == "zero":
        s = 0
    else:
        low = 1 if shift == "nonzero" else 0
        s = draw(st.one_of(st.sampled_from(sorted({max(ws // 2, low), ws - 1})), st.integers(low, ws - 1)))
    windows_per_side = st.one_of(st.just(1), st.integers(1, max_windows_per_side))
    return ShiftedWindowConfig(ws * draw(windows_per_side), ws * draw(windows_per_side), ws, s)


@dataclass(frozen=True)
class ShiftedWindowAttentionCase:
    """A map-level case: attention config (window ``(ws, ws)``), geometry, batch, mask fill and seed; arrays
    ``params``, ``x`` ``(B, H, W, C)`` and ``grad_out``. Printed compactly by Hypothesis."""

    config: WindowAttentionConfig
    geometry: ShiftedWindowConfig
    batch: int
    fill: float
    seed: int
    params: dict = field(repr=False, compare=False, default=None)
    x: np.ndarray = field(repr=False, compare=False, default=None)
    grad_out: np.ndarray = field(repr=False, compare=False, default=None)

    @classmethod
    def build(cls, config, geometry, *, batch, fill, seed):
        rng = np.random.default_rng(seed)
        params = random_window_attention_params(config, rng)
        shape = (batch, geometry.H, geometry.W, config.dim)
        x, grad_out = rng.standard_normal(shape), rng.standard_normal(shape)
        return cls(config, geometry, batch, fill, seed, params, x, grad_out)

    def _repr_pretty_(self, printer, cycle):
        printer.text(repr(self))

    def with_arrays(self, **arrays) -> "ShiftedWindowAttentionCase":
        return replace(self, **arrays)

    def oracle_kwargs(self, **overrides) -> dict:
        kwargs = dict(
            num_heads=self.config.num_heads,
            window_size=self.geometry.window_size,
            shift_size=self.geometry.shift_size,
            qk_scale=self.config.qk_scale,
            fill=self.fill,
        )
        return {**kwargs, **overrides}

    def oracle_output(self, **overrides) -> np.ndarray:
        return reference.shifted_window_attention(self.x, self.params, **self.oracle_kwargs(**overrides))

    def oracle_vjp(self) -> dict[str, np.ndarray]:
        return reference.shifted_window_attention_vjp(self.x, self.params, **self.oracle_kwargs(), grad_out=self.grad_out)

    def oracle_vjp_magnitudes(self) -> dict[str, np.ndarray]:
        return reference.shifted_window_attention_vjp_magnitudes(
            self.x, self.params, **self.oracle_kwargs(), grad_out=self.grad_out
        )

    def oracle_per_token(self) -> np.ndarray:
        """The second oracle (exact masking, no roll, partition or mask involved)."""
        kwargs = self.oracle_kwargs()
        del kwargs["fill"]
        return reference.shifted_window_attention_per_token(self.x, self.params, **kwargs)


@st.composite
def shifted_window_attention_cases(
    draw, geometries=None, *, fills=(-100.0, -np.inf), max_batch: int = 2, max_heads: int = 4, max_head_dim: int = 4
):
    """Map-level cases: a geometry (``shifted_window_configs()`` unless given), an attention config with the
    matching ``(ws, ws)`` window (small heads keep the oracles fast), a batch, and a mask fill from ``fills``."""
    geometry = draw(geometries if geometries is not None else shifted_window_configs())
    config = draw(window_attention_configs(max_heads=max_heads, max_head_dim=max_head_dim, max_window_side=1))
    ws = geometry.window_size
    config = replace(config, window_size=(ws, ws))
    return ShiftedWindowAttentionCase.build(
        config, geometry, batch=draw(st.integers(1, max_batch)), fill=draw(st.sampled_from(fills)), seed=draw(seeds)
    )


# --------------------------------------------------------------------------------------------------
# Temporal model (FIERY)
# --------------------------------------------------------------------------------------------------


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

    def with_arrays(self, **arrays) -> "TemporalModelCase":
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
