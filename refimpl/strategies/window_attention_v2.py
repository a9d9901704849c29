"""Swin V2 window attention (microsoft ``WindowAttention``): configs, parameters, and whole cases.

Default initialization hides most V2 bugs (every head's ``logit_scale`` is ``ln 10``, the q/v biases are 0, and the
CPB MLP's output is small), so parameters are drawn to expose them: per-head log-scales spread over ``[-1, 6]``,
straddling the clamp at ``ln 100`` (heads above it must behave exactly as heads at it), a CPB MLP whose output
spans the sigmoid, and unit-scale q/v biases. With the clamp active the cosine logits reach ±100, so Swin's -100
mask does not always mask (the oracle computes exactly what -100 does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from hypothesis import strategies as st

from refimpl import magnitudes, reference
from refimpl.strategies._common import seeds
from refimpl.strategies.shifted_window import ShiftedWindowConfig, shifted_window_configs
from refimpl.strategies.window_attention import random_window_mask

__all__ = [
    "CPB_HIDDEN",
    "LN_100",
    "WindowAttentionV2Config",
    "WindowAttentionV2Case",
    "ShiftedWindowAttentionV2Case",
    "random_window_attention_v2_params",
    "random_logit_scales",
    "window_attention_v2_configs",
    "window_attention_v2_cases",
    "shifted_window_attention_v2_cases",
]

CPB_HIDDEN = 512  # microsoft's cpb_mlp: Linear(2, 512), ReLU, Linear(512, nH, bias=False)
LN_100 = math.log(100.0)
# Drawn log-scales stay this far from ln 100: upstream's float32 bound (ln 100 + 6.4e-8) and the rounding of a
# log-scale to float16 / bfloat16 (spacing 2^-8 / 2^-5 near 4.6) must not decide on which side of the clamp it is.
CLAMP_MARGIN = 0.02


@dataclass(frozen=True)
class WindowAttentionV2Config:
    """Constructor arguments of microsoft's Swin V2 ``WindowAttention``."""

    dim: int
    num_heads: int
    window_size: tuple[int, int]
    qkv_bias: bool = True
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    pretrained_window_size: tuple[int, int] = (0, 0)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def window_tokens(self) -> int:
        return self.window_size[0] * self.window_size[1]

    def kwargs(self) -> dict:
        """Keyword arguments for ``WindowAttentionV2(**config.kwargs())``."""
        return dict(dim=self.dim, window_size=self.window_size, num_heads=self.num_heads, qkv_bias=self.qkv_bias,
                    attn_drop=self.attn_drop, proj_drop=self.proj_drop,
                    pretrained_window_size=self.pretrained_window_size)

    def oracle_kwargs(self) -> dict:
        return dict(num_heads=self.num_heads, window_size=self.window_size,
                    pretrained_window_size=self.pretrained_window_size)


def random_logit_scales(num_heads: int, rng: np.random.Generator) -> np.ndarray:
    """``(nH, 1, 1)`` log-scales, each head in one of three bands: below the clamp ``[-1, ln 100)`` (a negative one
    gives a scale below 1), just around it, and above it ``(ln 100, 6]`` (clamped to 100); never within
    ``CLAMP_MARGIN`` of ``ln 100``."""
    band = rng.integers(3, size=num_heads)
    below = rng.uniform(-1.0, LN_100 - CLAMP_MARGIN, size=num_heads)
    near = LN_100 + rng.choice([-1.0, 1.0], size=num_heads) * rng.uniform(CLAMP_MARGIN, 0.2, size=num_heads)
    above = rng.uniform(LN_100 + CLAMP_MARGIN, 6.0, size=num_heads)
    return np.choose(band, [below, near, above]).reshape(num_heads, 1, 1)


def random_window_attention_v2_params(config: WindowAttentionV2Config, rng: np.random.Generator,
                                      *, cpb_scale: float | None = None) -> dict[str, np.ndarray]:
    """Float64 parameters under microsoft's state-dict keys (no buffers: an implementation builds its own).

    ``cpb_mlp.2.weight`` has std ``cpb_scale / sqrt(512)`` (drawn in [0.5, 6] unless given), so the MLP's output,
    and with it ``16 sigmoid(.)``, spans most of (0, 16) rather than sitting near 8."""
    c, heads = config.dim, config.num_heads
    cpb_scale = rng.uniform(0.5, 6.0) if cpb_scale is None else cpb_scale
    params = {
        "logit_scale": random_logit_scales(heads, rng),
        "qkv.weight": rng.standard_normal((3 * c, c)) / np.sqrt(c),
        "proj.weight": rng.standard_normal((c, c)) / np.sqrt(c),
        "proj.bias": rng.standard_normal(c),
        "cpb_mlp.0.weight": rng.standard_normal((CPB_HIDDEN, 2)),
        "cpb_mlp.0.bias": rng.standard_normal(CPB_HIDDEN),
        "cpb_mlp.2.weight": cpb_scale * rng.standard_normal((heads, CPB_HIDDEN)) / np.sqrt(CPB_HIDDEN),
    }
    if config.qkv_bias:
        params["q_bias"] = rng.standard_normal(c)
        params["v_bias"] = rng.standard_normal(c)
    return params


@st.composite
def pretrained_windows(draw, window_size, *, required: bool = False, max_side: int = 8):
    """``(0, 0)`` or a pretrained window with sides >= 2 (smaller, equal or larger than the window)."""
    if not required and draw(st.booleans()):
        return (0, 0)
    return (draw(st.integers(2, max_side)), draw(st.integers(2, max_side)))


@st.composite
def window_attention_v2_configs(draw, *, max_heads: int = 6, max_head_dim: int = 5, max_window_side: int = 5,
                                window_size=None, min_head_dim: int = 1, qkv_bias=None, dropout: bool = False,
                                pretrained=None):
    """Valid Swin V2 ``WindowAttention`` configurations: ``dim = num_heads * head_dim``, windows up to
    ``max_window_side`` per side (non-square included), a pretrained window (drawn, or forced with
    ``pretrained=True`` / ``False``; always one when a window side is 1, where ``(0, 0)`` would divide by 0), the
    q/v biases on or off; non-zero dropout rates only with ``dropout=True``."""
    num_heads = draw(st.integers(1, max_heads))
    head_dim = draw(st.integers(min_head_dim, max(min_head_dim, max_head_dim)))
    if window_size is None:
        window_size = (draw(st.integers(1, max_window_side)), draw(st.integers(1, max_window_side)))
    needs_pretrained = min(window_size) == 1
    if pretrained is False and needs_pretrained:
        window_size = (max(2, window_size[0]), max(2, window_size[1]))
        needs_pretrained = False
    if pretrained is False:
        pretrained_size = (0, 0)
    else:
        pretrained_size = draw(pretrained_windows(window_size, required=bool(pretrained) or needs_pretrained))
    drop = st.sampled_from([0.0, 0.1, 0.5]) if dropout else st.just(0.0)
    return WindowAttentionV2Config(
        dim=num_heads * head_dim, num_heads=num_heads, window_size=tuple(window_size),
        qkv_bias=draw(st.booleans()) if qkv_bias is None else qkv_bias,
        attn_drop=draw(drop), proj_drop=draw(drop), pretrained_window_size=pretrained_size,
    )


@dataclass(frozen=True)
class WindowAttentionV2Case:
    """One complete input: config, float64 params, ``x`` ``(B_, N, C)``, optional mask ``(nW, N, N)`` (Swin's
    0/-100 or 0/-inf), and a ``grad_out``. Printed compactly (config, shapes, seed) by Hypothesis."""

    config: WindowAttentionV2Config
    batch: int
    n_windows: int
    has_mask: bool
    seed: int
    mask_convention: str = "-100"
    params: dict = field(repr=False, compare=False, default=None)
    x: np.ndarray = field(repr=False, compare=False, default=None)
    mask: np.ndarray | None = field(repr=False, compare=False, default=None)
    grad_out: np.ndarray = field(repr=False, compare=False, default=None)

    @classmethod
    def build(cls, config, *, batch, n_windows, has_mask, seed, mask_convention="-100"):
        """Deterministically generate the arrays of a case from its description (replayable from the repr)."""
        rng = np.random.default_rng(seed)
        n_tokens, n_rows = config.window_tokens, batch * n_windows
        params = random_window_attention_v2_params(config, rng)
        x = rng.standard_normal((n_rows, n_tokens, config.dim))
        mask = random_window_mask(n_windows, n_tokens, rng, convention=mask_convention) if has_mask else None
        grad_out = rng.standard_normal((n_rows, n_tokens, config.dim))
        return cls(config, batch, n_windows, has_mask, seed, mask_convention, params, x, mask, grad_out)

    @property
    def n_tokens(self) -> int:
        return self.x.shape[1]

    def _repr_pretty_(self, printer, cycle):
        printer.text(repr(self))

    def with_arrays(self, **arrays) -> WindowAttentionV2Case:
        return replace(self, **arrays)

    def oracle_kwargs(self) -> dict:
        return dict(self.config.oracle_kwargs(), mask=self.mask)

    def oracle_stages(self) -> reference.WindowAttentionV2Stages:
        return reference.window_attention_v2_stages(self.x, self.params, **self.oracle_kwargs())

    def oracle_output(self, **overrides) -> np.ndarray:
        return reference.window_attention_v2(self.x, self.params, **{**self.oracle_kwargs(), **overrides})

    def oracle_vjp(self) -> dict[str, np.ndarray]:
        return reference.window_attention_v2_vjp(self.x, self.params, **self.oracle_kwargs(), grad_out=self.grad_out)

    def oracle_vjp_magnitudes(self) -> dict[str, np.ndarray]:
        return magnitudes.window_attention_v2_vjp_magnitudes(self.x, self.params, **self.oracle_kwargs(),
                                                             grad_out=self.grad_out)

    def oracle_bias(self) -> np.ndarray:
        return reference.continuous_position_bias(self.params, **self.config.oracle_kwargs())


@st.composite
def window_attention_v2_cases(draw, configs=None, *, mask=None, max_batch: int = 3, max_windows: int = 4,
                              mask_conventions=("-100", "-inf")):
    """Complete cases: a config (``window_attention_v2_configs()`` unless given), a batch of ``B_ = batch * nW``
    windows, and a mask (drawn unless ``mask`` says) in one of ``mask_conventions``, with the diagonal allowed."""
    config = draw(configs if configs is not None else window_attention_v2_configs())
    has_mask = draw(st.booleans()) if mask is None else mask
    return WindowAttentionV2Case.build(
        config, batch=draw(st.integers(1, max_batch)),
        n_windows=draw(st.integers(1, max_windows)) if has_mask else 1, has_mask=has_mask, seed=draw(seeds),
        mask_convention=draw(st.sampled_from(mask_conventions)) if has_mask else "-100",
    )


@dataclass(frozen=True)
class ShiftedWindowAttentionV2Case:
    """A map-level case: attention config (window ``(ws, ws)``), geometry, batch, mask fill and seed; arrays
    ``params``, ``x`` ``(B, H, W, C)`` and ``grad_out``."""

    config: WindowAttentionV2Config
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
        params = random_window_attention_v2_params(config, rng)
        shape = (batch, geometry.H, geometry.W, config.dim)
        return cls(config, geometry, batch, fill, seed, params, rng.standard_normal(shape), rng.standard_normal(shape))

    def _repr_pretty_(self, printer, cycle):
        printer.text(repr(self))

    def with_arrays(self, **arrays) -> ShiftedWindowAttentionV2Case:
        return replace(self, **arrays)

    def oracle_kwargs(self, **overrides) -> dict:
        kwargs = dict(num_heads=self.config.num_heads, window_size=self.geometry.window_size,
                      shift_size=self.geometry.shift_size,
                      pretrained_window_size=self.config.pretrained_window_size, fill=self.fill)
        return {**kwargs, **overrides}

    def oracle_output(self, **overrides) -> np.ndarray:
        return reference.shifted_window_attention_v2(self.x, self.params, **self.oracle_kwargs(**overrides))

    def oracle_vjp(self) -> dict[str, np.ndarray]:
        return reference.shifted_window_attention_v2_vjp(self.x, self.params, **self.oracle_kwargs(),
                                                         grad_out=self.grad_out)


@st.composite
def shifted_window_attention_v2_cases(draw, geometries=None, *, fills=(-100.0, -np.inf), max_batch: int = 2,
                                      max_heads: int = 4, max_head_dim: int = 4):
    """Map-level cases: a geometry (``shifted_window_configs()`` unless given), a V2 attention config with the
    matching ``(ws, ws)`` window (a pretrained window whenever ``ws == 1``), a batch, and a mask fill."""
    geometry = draw(geometries if geometries is not None else shifted_window_configs())
    ws = geometry.window_size
    config = draw(window_attention_v2_configs(max_heads=max_heads, max_head_dim=max_head_dim, window_size=(ws, ws)))
    return ShiftedWindowAttentionV2Case.build(config, geometry, batch=draw(st.integers(1, max_batch)),
                                              fill=draw(st.sampled_from(fills)), seed=draw(seeds))
