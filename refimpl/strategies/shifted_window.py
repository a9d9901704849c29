"""Shifted windows over a map: geometries (H, W, window, shift) and whole map-level cases."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from hypothesis import strategies as st

from refimpl import magnitudes, reference
from refimpl.strategies._common import seeds
from refimpl.strategies.window_attention import (
    WindowAttentionConfig,
    random_window_attention_params,
    window_attention_configs,
)


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

    def with_arrays(self, **arrays) -> ShiftedWindowAttentionCase:
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
        return reference.shifted_window_attention_vjp(self.x, self.params, **self.oracle_kwargs(),
                                                      grad_out=self.grad_out)

    def oracle_vjp_magnitudes(self) -> dict[str, np.ndarray]:
        return magnitudes.shifted_window_attention_vjp_magnitudes(
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
