"""Video Swin 3-D window attention (``WindowAttention3D``) and its block geometry: configs, parameters, clips and
whole cases.

Default initialization hides 3-D bugs (the bias table has std .02, so a wrongly strided or transposed index is
nearly invisible; ``WindowAttention3D`` has no qkv bias by default, so pad tokens are exact zeros as keys), so the
table is drawn at unit scale and the qkv bias is on in most cases. Windows are drawn with unequal sides (a swapped
axis shows), used windows that are a row-major prefix of the module window (where the two index conventions agree)
and ones that are not (where they differ), clips that shrink along each axis, equal the window (the ``<=`` edge),
or need padding, and shifts that are zero on some axes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from hypothesis import strategies as st

from refimpl import reference
from refimpl.magnitudes import window_attention_output_magnitude
from refimpl.strategies._common import seeds
from refimpl.strategies.window_attention import random_window_mask

__all__ = [
    "WindowAttention3DConfig",
    "WindowAttention3DCase",
    "ClipGeometry3D",
    "ShiftedWindowAttention3DCase",
    "random_window_attention_3d_params",
    "window_attention_3d_configs",
    "used_windows",
    "window_attention_3d_cases",
    "clip_geometries_3d",
    "shifted_window_attention_3d_cases",
    "window_attention_3d_vjp_magnitudes",
]

MASK_CONVENTIONS_3D = ("-100", "-inf")  # additive masks, the diagonal allowed: what Video Swin's blocks pass


@dataclass(frozen=True)
class WindowAttention3DConfig:
    """Constructor arguments of Video Swin's ``WindowAttention3D``."""

    dim: int
    num_heads: int
    window_size: tuple[int, int, int]
    qkv_bias: bool = True
    qk_scale: float | None = None
    attn_drop: float = 0.0
    proj_drop: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def window_tokens(self) -> int:
        return int(np.prod(self.window_size))

    def kwargs(self) -> dict:
        """Keyword arguments for ``WindowAttention3D(**config.kwargs())``."""
        return dict(dim=self.dim, window_size=self.window_size, num_heads=self.num_heads, qkv_bias=self.qkv_bias,
                    qk_scale=self.qk_scale, attn_drop=self.attn_drop, proj_drop=self.proj_drop)


def random_window_attention_3d_params(config: WindowAttention3DConfig, rng: np.random.Generator):
    """Float64 parameters under Video Swin's state-dict keys (no index buffer: an implementation builds its own):
    the bias table at unit scale, linear weights ~ N(0, 1/C), biases at unit scale."""
    c, (wd, wh, ww) = config.dim, config.window_size
    params = {
        "relative_position_bias_table": rng.standard_normal(((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1),
                                                             config.num_heads)),
        "qkv.weight": rng.standard_normal((3 * c, c)) / np.sqrt(c),
        "proj.weight": rng.standard_normal((c, c)) / np.sqrt(c),
        "proj.bias": rng.standard_normal(c),
    }
    if config.qkv_bias:
        params["qkv.bias"] = rng.standard_normal(3 * c)
    return params


DRAW = "draw"  # the default of ``qk_scale=``: draw it (None is a value one may force)


@st.composite
def window_attention_3d_configs(draw, *, max_heads: int = 4, max_head_dim: int = 4, max_window=(3, 3, 3),
                                window_size=None, qkv_bias=None, qk_scale=DRAW, dropout: bool = False):
    """Valid ``WindowAttention3D`` configurations: ``dim = num_heads * head_dim``, windows up to ``max_window`` per
    side (unequal sides included), qkv bias on (mostly) or off (``qkv_bias``: force it), ``qk_scale`` drawn from
    None, 0 (which means the default, as upstream's ``or``) and a positive value unless given; non-zero dropout
    rates only with ``dropout=True``."""
    num_heads = draw(st.integers(1, max_heads))
    head_dim = draw(st.integers(1, max_head_dim))
    if window_size is None:
        window_size = tuple(draw(st.integers(1, side)) for side in max_window)
    bias = draw(st.sampled_from([True, True, False])) if qkv_bias is None else qkv_bias
    if qk_scale == DRAW:
        qk_scale = draw(st.sampled_from([None, None, 0.0, 0.3]))
    drop = st.sampled_from([0.0, 0.1, 0.5]) if dropout else st.just(0.0)
    return WindowAttention3DConfig(num_heads * head_dim, num_heads, tuple(window_size), bias, qk_scale,
                                   draw(drop), draw(drop))


@st.composite
def used_windows(draw, window_size, *, shrink=None):
    """A window the block may attend over inside a module window: ``"none"`` the whole window; ``"prefix"`` a shrink
    that is a row-major prefix (conventions agree: only D cut, or D = 1 and H cut, or D = H = 1 and W cut);
    ``"non_prefix"`` one that is not (conventions differ: H or W cut with an earlier axis above 1, when the window
    allows one); None draws any of these, or any sub-box."""
    wd, wh, ww = window_size
    options = {
        "none": [window_size],
        "prefix": ([(d, wh, ww) for d in range(1, wd)] + [(1, h, ww) for h in range(1, wh)]
                   + [(1, 1, w) for w in range(1, ww)]),
        "non_prefix": [u for u in ((d, h, w) for d in range(1, wd + 1) for h in range(1, wh + 1)
                                   for w in range(1, ww + 1))
                       if not reference.is_row_major_prefix(window_size, u)],
    }
    kind = draw(st.sampled_from(["none", "prefix", "non_prefix", "any"])) if shrink is None else shrink
    if kind == "any":
        return tuple(draw(st.integers(1, side)) for side in window_size)
    if not options[kind]:
        return window_size  # this window has no such shrink (e.g. (1, 1, 1))
    return draw(st.sampled_from(options[kind]))


@dataclass(frozen=True)
class WindowAttention3DCase:
    """One window-level input: config, the window in use, float64 params, ``x`` ``(B_, N, C)`` with ``N =
    prod(used_window)``, an optional additive mask ``(nW, N, N)``, and a ``grad_out`` for gradient checks."""

    config: WindowAttention3DConfig
    used_window: tuple[int, int, int]
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
    def build(cls, config, used_window, *, batch, n_windows, has_mask, seed, mask_convention="-100"):
        """Deterministically generate the arrays of a case from its description (replayable from the repr)."""
        rng = np.random.default_rng(seed)
        n_tokens, n_rows = int(np.prod(used_window)), batch * n_windows
        params = random_window_attention_3d_params(config, rng)
        x = rng.standard_normal((n_rows, n_tokens, config.dim))
        mask = random_window_mask(n_windows, n_tokens, rng, convention=mask_convention) if has_mask else None
        grad_out = rng.standard_normal((n_rows, n_tokens, config.dim))
        return cls(config, tuple(used_window), batch, n_windows, has_mask, seed, mask_convention, params, x, mask,
                   grad_out)

    @property
    def n_tokens(self) -> int:
        return self.x.shape[1]

    @property
    def shrunk(self) -> bool:
        return tuple(self.used_window) != tuple(self.config.window_size)

    @property
    def conventions_differ(self) -> bool:
        """Whether the truncated and the geometric index differ here (the used window is not a row-major prefix)."""
        return not reference.is_row_major_prefix(self.config.window_size, self.used_window)

    def _repr_pretty_(self, printer, cycle):  # Hypothesis prints falsifying cases with this: keep it compact
        printer.text(repr(self))

    def with_arrays(self, **arrays) -> WindowAttention3DCase:
        return replace(self, **arrays)

    def oracle_kwargs(self, index_convention: str = "geometric", **overrides) -> dict:
        kwargs = dict(num_heads=self.config.num_heads, window_size=self.config.window_size,
                      used_window=self.used_window, mask=self.mask, qk_scale=self.config.qk_scale,
                      index_convention=index_convention)
        return {**kwargs, **overrides}

    def oracle_output(self, index_convention: str = "geometric", **overrides) -> np.ndarray:
        x = overrides.pop("x", self.x)
        params = overrides.pop("params", self.params)
        return reference.window_attention_3d(x, params, **self.oracle_kwargs(index_convention, **overrides))

    def oracle_vjp(self, index_convention: str = "geometric") -> dict[str, np.ndarray]:
        return reference.window_attention_3d_vjp(self.x, self.params, **self.oracle_kwargs(index_convention),
                                                 grad_out=self.grad_out)

    def oracle_vjp_magnitudes(self, index_convention: str = "geometric") -> dict[str, np.ndarray]:
        return window_attention_3d_vjp_magnitudes(self.x, self.params, **self.oracle_kwargs(index_convention),
                                                  grad_out=self.grad_out)

    def oracle_output_magnitude(self, index_convention: str = "geometric") -> float:
        """The cancellation-free size of the output (what the tolerance floor counts ulps of)."""
        stages = reference.window_attention_3d_stages(self.x, self.params, **self.oracle_kwargs(index_convention))
        return window_attention_output_magnitude(self.x, stages.probs, self.params)


@st.composite
def window_attention_3d_cases(draw, configs=None, *, mask=None, shrink=None, max_batch: int = 2,
                              max_windows: int = 3):
    """Complete window-level cases: a config, a window in use (``shrink``: see ``used_windows``), a batch of
    ``batch * nW`` rows, and an additive mask (``mask``: force it on or off; None draws)."""
    config = draw(configs if configs is not None else window_attention_3d_configs())
    used = draw(used_windows(config.window_size, shrink=shrink))
    has_mask = draw(st.booleans()) if mask is None else mask
    n_windows = draw(st.integers(1, max_windows)) if has_mask else 1
    convention = draw(st.sampled_from(MASK_CONVENTIONS_3D)) if has_mask else "-100"
    return WindowAttention3DCase.build(config, used, batch=draw(st.integers(1, max_batch)), n_windows=n_windows,
                                       has_mask=has_mask, seed=draw(seeds), mask_convention=convention)


# --------------------------------------------------------------------------------------------------
# Clips: the block's geometry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipGeometry3D:
    """A clip size ``(D, H, W)``, the block's window and shift, and what the block derives from them."""

    size: tuple[int, int, int]
    window_size: tuple[int, int, int]
    shift_size: tuple[int, int, int]

    @property
    def used(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """``(window in use, shift in use)``: Video Swin's ``<=`` rule on the unpadded size."""
        return reference.block_window_and_shift(self.size, self.window_size, self.shift_size)

    @property
    def padded(self) -> tuple[int, int, int]:
        return reference.padded_size_3d(self.size, self.used[0])

    @property
    def shrunk_axes(self) -> tuple[str, ...]:
        return tuple(a for a, u, w in zip("DHW", self.used[0], self.window_size, strict=True) if u < w)

    @property
    def padded_axes(self) -> tuple[str, ...]:
        return tuple(a for a, p, s in zip("DHW", self.padded, self.size, strict=True) if p > s)

    @property
    def mask_args(self) -> tuple:
        """The arguments of ``compute_mask``: padded sizes, window and shift in use."""
        return (*self.padded, *self.used)

    @property
    def n_windows(self) -> int:
        return int(np.prod([p // u for p, u in zip(self.padded, self.used[0], strict=True)]))


@st.composite
def clip_geometries_3d(draw, *, window_size=None, max_window=(3, 3, 3), max_windows_per_side: int = 2,
                       shift=None):
    """A block window (drawn up to ``max_window`` unless given), a shift ``0 <= s_a < W_a`` per axis (``shift``:
    ``"zero"`` all zero, ``"some"`` at least one non-zero, ``"all"`` non-zero on every axis of side > 1, None draws,
    each axis may be 0), and a clip size per
    axis from 1 to ``max_windows_per_side * W_a + 1``: shorter than the window (shrunk), equal to it (the ``<=``
    edge: shrunk, shift zeroed), or longer and not a multiple (padded)."""
    if window_size is None:
        window_size = tuple(draw(st.integers(1, side)) for side in max_window)
    shifts = tuple(draw(st.integers(0, w - 1)) for w in window_size)
    if shift == "zero":
        shifts = (0, 0, 0)
    elif shift == "all":
        shifts = tuple(draw(st.integers(1, w - 1)) if w > 1 else 0 for w in window_size)
    elif shift == "some" and not any(shifts):
        axes = [a for a, w in enumerate(window_size) if w > 1]
        if axes:
            axis = draw(st.sampled_from(axes))
            shifts = tuple(draw(st.integers(1, w - 1)) if a == axis else s
                           for a, (s, w) in enumerate(zip(shifts, window_size, strict=True)))
    size = tuple(draw(st.integers(1, max_windows_per_side * w + 1)) for w in window_size)
    return ClipGeometry3D(size, tuple(window_size), shifts)


@dataclass(frozen=True)
class ShiftedWindowAttention3DCase:
    """One clip-level input: an attention config (its window is the block's), a clip geometry, ``x`` ``(B, D, H,
    W, C)``, float64 params, the mask fill, and a ``grad_out``."""

    config: WindowAttention3DConfig
    geometry: ClipGeometry3D
    batch: int
    fill: float
    seed: int
    params: dict = field(repr=False, compare=False, default=None)
    x: np.ndarray = field(repr=False, compare=False, default=None)
    grad_out: np.ndarray = field(repr=False, compare=False, default=None)

    @classmethod
    def build(cls, config, geometry, *, batch, fill, seed):
        rng = np.random.default_rng(seed)
        params = random_window_attention_3d_params(config, rng)
        x = rng.standard_normal((batch, *geometry.size, config.dim))
        grad_out = rng.standard_normal(x.shape)
        return cls(config, geometry, batch, fill, seed, params, x, grad_out)

    @property
    def conventions_differ(self) -> bool:
        return not reference.is_row_major_prefix(self.config.window_size, self.geometry.used[0])

    def _repr_pretty_(self, printer, cycle):
        printer.text(repr(self))

    def with_arrays(self, **arrays) -> ShiftedWindowAttention3DCase:
        return replace(self, **arrays)

    def oracle_kwargs(self, index_convention: str = "geometric", **overrides) -> dict:
        kwargs = dict(num_heads=self.config.num_heads, window_size=self.config.window_size,
                      shift_size=self.geometry.shift_size, qk_scale=self.config.qk_scale, fill=self.fill,
                      index_convention=index_convention)
        return {**kwargs, **overrides}

    def oracle_output(self, index_convention: str = "geometric", **overrides) -> np.ndarray:
        x = overrides.pop("x", self.x)
        return reference.shifted_window_attention_3d(x, self.params, **self.oracle_kwargs(index_convention,
                                                                                          **overrides))

    def oracle_vjp(self, index_convention: str = "geometric") -> dict[str, np.ndarray]:
        return reference.shifted_window_attention_3d_vjp(self.x, self.params, **self.oracle_kwargs(index_convention),
                                                         grad_out=self.grad_out)

    def oracle_per_token(self, index_convention: str = "geometric") -> np.ndarray:
        kwargs = self.oracle_kwargs(index_convention)
        kwargs.pop("fill")  # exact masking
        return reference.shifted_window_attention_3d_per_token(self.x, self.params, **kwargs)


@st.composite
def shifted_window_attention_3d_cases(draw, geometries=None, *, configs=None, max_batch: int = 2, fills=(-100.0,)):
    """Complete clip-level cases: the attention config's window is the geometry's block window."""
    geometry = draw(geometries if geometries is not None else clip_geometries_3d())
    config = draw(configs if configs is not None else window_attention_3d_configs(window_size=geometry.window_size,
                                                                                   max_heads=3, max_head_dim=3))
    config = replace(config, window_size=geometry.window_size)
    return ShiftedWindowAttention3DCase.build(config, geometry, batch=draw(st.integers(1, max_batch)),
                                              fill=draw(st.sampled_from(fills)), seed=draw(seeds))


# --------------------------------------------------------------------------------------------------
# The cancellation-free size of each gradient (what the tolerance floor counts ulps of)
# --------------------------------------------------------------------------------------------------


def window_attention_3d_vjp_magnitudes(x, params: Mapping, *, grad_out, **kwargs) -> dict[str, np.ndarray]:
    """The sizes ``refimpl.magnitudes.window_attention_vjp_magnitudes`` computes, for ``reference.
    window_attention_3d_vjp`` (same arguments): the oracle's backward with every factor replaced by its absolute
    value and every difference by a sum. The stages are V1's, so the steps are V1's."""
    st_ = reference.window_attention_3d_stages(x, params, **kwargs)
    x = np.abs(np.asarray(x, dtype=np.float64))
    n_rows, n_tokens, channels = x.shape
    num_heads, head_dim = st_.q.shape[1], st_.q.shape[3]
    g_out = np.abs(np.asarray(grad_out, dtype=np.float64))
    w_proj = np.abs(np.asarray(params["proj.weight"], dtype=np.float64))
    w_qkv = np.abs(np.asarray(params["qkv.weight"], dtype=np.float64))
    q, k, val, context, scale = np.abs(st_.q), np.abs(st_.k), np.abs(st_.v), np.abs(st_.context), abs(st_.scale)
    g_context = np.einsum("bno,oc->bnc", g_out, w_proj).reshape(n_rows, n_tokens, num_heads, head_dim)
    g_probs = np.einsum("bihe,bhje->bhij", g_context, val)
    g_v = np.einsum("bhij,bihe->bhje", st_.probs, g_context)
    g_logits = st_.probs * (g_probs + np.sum(st_.probs * g_probs, axis=-1, keepdims=True))
    g_q = scale * np.einsum("bhij,bhje->bhie", g_logits, k)
    g_k = scale * np.einsum("bhij,bhie->bhje", g_logits, q)
    g_qkv = np.stack([np.einsum("bhne->bnhe", g) for g in (g_q, g_k, g_v)], axis=2).reshape(n_rows, n_tokens, -1)
    sizes = {
        "x": np.einsum("bno,oc->bnc", g_qkv, w_qkv),
        "qkv.weight": np.einsum("bno,bnc->oc", g_qkv, x),
        "qkv.bias": g_qkv.sum(axis=(0, 1)),
        "proj.weight": np.einsum("bno,bnc->oc", g_out, context),
        "proj.bias": g_out.sum(axis=(0, 1)),
        "relative_position_bias_table": np.full(np.shape(params["relative_position_bias_table"]),
                                                g_logits.sum(axis=0).max()),
    }
    return {key: sizes[key] if key in sizes else np.zeros(np.shape(params[key])) for key in ["x", *params]}
