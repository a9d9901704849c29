"""Window attention (AIM ``WindowAttention``): configs, parameters, masks and whole cases."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from hypothesis import strategies as st

from refimpl import magnitudes, reference
from refimpl.strategies._common import seeds


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


MEMORY_LAYOUTS = ("contiguous", "permuted storage", "every other row")
"""How a caller's tensor may sit in memory: contiguous; the same values stored with the axes reversed and viewed
back (every stride differs from the contiguous one); or every other row of a tensor twice as long (a view with
stride 2 on the first axis and a storage offset pattern a raw-pointer kernel misreads)."""

memory_layouts = st.sampled_from(MEMORY_LAYOUTS)
"""The layout a property hands the caller's tensors in (``MEMORY_LAYOUTS``); the suite builds the view."""

logit_gains = st.floats(4.0, 12.0)
"""A factor for ``x``: logits grow with its square (16-144 times their usual O(1) size), past ``exp``'s overflow in
float16 (at 11) and, for the larger gains, in float32 (at 88.7): legal inputs a softmax without its row maximum
subtracted turns into inf / inf."""

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

    def with_arrays(self, **arrays) -> WindowAttentionCase:
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
        return magnitudes.window_attention_vjp_magnitudes(
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
