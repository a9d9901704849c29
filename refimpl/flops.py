"""Analytic FLOP formulas: AIM's, Swin's, Swin V2's and Video Swin's window attention, whole Swin models, FIERY's
temporal model.

Two conventions, and every name or docstring says which: **MACs** (multiply-accumulates; what Swin, AIM and
fvcore call "FLOPs") and **FLOPs** counting a multiply and an add separately (``torch.utils.flop_counter``,
deepspeed), ``FLOPs = 2 * MACs``. docs/flops.md explains the conventions and what each formula leaves out.

Nothing here imports torch or the oracle: the optimized modules take their ``flops`` methods from here, and the
property suite checks these formulas against the work torch's counter sees and the work the oracle does.
"""

from __future__ import annotations

from refimpl import _validate as validate
from refimpl._temporal_layers import temporal_model_layers

__all__ = [
    "window_attention_flops",
    "window_attention_flops_upstream",
    "swin_window_attention_macs",
    "swin_v2_cpb_macs",
    "swin_v2_window_attention_macs",
    "video_swin_window_attention_macs",
    "video_swin_block_attention_macs",
    "aim_block_attention_macs",
    "aim_model_attention_macs",
    "stage_resolutions",
    "swin_model_mac_terms",
    "swin_model_macs",
    "temporal_model_macs",
    "macs_to_flops",
    "flops_to_macs",
]


def macs_to_flops(macs):
    """FLOPs counting a multiply and an add separately (``torch.utils.flop_counter``): ``2 * MACs``."""
    return 2 * macs


def flops_to_macs(flops):
    """MACs (Swin's, AIM's and fvcore's "FLOPs") from ``2 * MAC`` FLOPs: ``flops / 2``."""
    return flops / 2


# ---- window attention ----


def window_attention_flops(dim: int, num_heads: int, N: int, T: int, temporal: bool = False) -> int:
    """AIM's ``WindowAttention.flops(N, T, temporal)``, in **MACs** (multiply-accumulates, as the "FLOPs" of Swin
    and AIM): ``q@k^T`` and ``attn@v`` only (AIM comments out qkv and proj).

    ``N`` is tokens per spatial window (ws^2), ``T`` the number of temporal tokens. Temporal: ``2*C*N*T^2`` (N
    positions, each attending over T tokens); spatial: ``2 * nH * d * N^2 * T`` (one window over T frames).
    Raises ``ValueError`` when ``dim % num_heads != 0``, where upstream's floor division silently undercounts
    (a configuration whose forward cannot run); ``window_attention_flops_upstream`` keeps that behaviour."""
    validate.head_dim(validate.positive_int("dim", dim), validate.positive_int("num_heads", num_heads), "dim")
    return window_attention_flops_upstream(dim, num_heads, N, T, temporal)


def window_attention_flops_upstream(dim: int, num_heads: int, N: int, T: int, temporal: bool = False) -> int:
    """AIM's formula exactly as upstream writes it (MACs), floor division included: for ``dim % num_heads != 0``
    it counts ``nH * (dim // nH)`` channels, not ``dim`` (C=10, nH=3: 345,744 instead of 384,160)."""
    dim, num_heads = validate.positive_int("dim", dim), validate.positive_int("num_heads", num_heads)
    N, T = validate.positive_int("N", N), validate.positive_int("T", T)
    if temporal:
        return dim * N * T * T * 2
    head_dim = dim // num_heads
    return num_heads * N * head_dim * N * T + num_heads * N * N * head_dim * T


def swin_window_attention_macs(dim: int, num_heads: int, N: int) -> int:
    """Swin's ``WindowAttention.flops(N)`` in MACs for one window of ``N`` tokens: qkv ``3*N*C^2`` + ``q@k^T``
    ``nH*N*d*N`` + ``attn@v`` ``nH*N*N*d`` + proj ``N*C^2`` = ``4*N*C^2 + 2*N^2*C`` (biases not counted)."""
    dim, num_heads = validate.positive_int("dim", dim), validate.positive_int("num_heads", num_heads)
    N = validate.positive_int("N", N)
    head_dim = validate.head_dim(dim, num_heads, "dim")
    return 3 * N * dim * dim + 2 * num_heads * N * N * head_dim + N * dim * dim


def swin_v2_cpb_macs(window_size, num_heads: int, hidden: int = 512) -> int:
    """MACs of one evaluation of Swin V2's continuous-position-bias MLP: ``Linear(2, hidden)`` and
    ``Linear(hidden, nH)`` at each of the ``(2Wh-1)(2Ww-1)`` relative offsets, ``(2Wh-1)(2Ww-1) * hidden * (2 +
    nH)``. microsoft's forward evaluates it once per call (for all windows at once); a module that caches the bias
    (``refimpl.optimized.WindowAttentionV2``) once per cache miss. ReLU, sigmoid and the gather are not counted."""
    wh, ww = validate.window_pair("window_size", window_size)
    num_heads, hidden = validate.positive_int("num_heads", num_heads), validate.positive_int("hidden", hidden)
    return (2 * wh - 1) * (2 * ww - 1) * hidden * (2 + num_heads)


def swin_v2_window_attention_macs(dim: int, num_heads: int, window_size, windows: int = 1,
                                  cpb_evaluations: int = 1, hidden: int = 512) -> int:
    """MACs of a Swin V2 ``WindowAttention`` forward on ``windows`` windows (``B_``): per window V1's
    ``4 N C^2 + 2 N^2 C`` (qkv, the cosine ``q̂ k̂^T``, ``attn @ v``, proj; ``N = Wh*Ww``), plus
    ``cpb_evaluations`` evaluations of the CPB MLP (``swin_v2_cpb_macs``): 1 per call upstream, 1 per cache miss and
    0 per hit with a cached bias. Not counted (no multiply-adds of a matmul): the normalization of q and k, the
    clamp and exp of the scale, the scaling, the softmax, the biases. microsoft's ``flops(N)`` is the per-window
    term alone."""
    windows = validate.positive_int("windows", windows)
    cpb_evaluations = validate.non_negative_int("cpb_evaluations", cpb_evaluations)
    wh, ww = validate.window_pair("window_size", window_size)
    per_window = swin_window_attention_macs(dim, num_heads, wh * ww)
    return windows * per_window + cpb_evaluations * swin_v2_cpb_macs((wh, ww), num_heads, hidden)


def _triple(name: str, value) -> tuple[int, int, int]:
    try:
        sides = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a triple (D, H, W), got {value!r}") from None
    if len(sides) != 3:
        raise ValueError(f"{name} must be a triple, got {value!r}")
    return tuple(validate.positive_int(f"{name}[{a}]", side) for a, side in enumerate(sides))


def video_swin_window_attention_macs(dim: int, num_heads: int, window_size, used_window=None,
                                     windows: int = 1) -> int:
    """MACs of a Video Swin ``WindowAttention3D`` forward on ``windows`` windows (``B_``) of ``N =
    prod(used_window or window_size)`` tokens: V1's ``4 N C^2 + 2 N^2 C`` per window (qkv, ``q@k^T``, ``attn@v``,
    proj). A shrunk window costs what its ``N`` tokens cost; the bias gather, the mask, the softmax and the biases
    are not counted. Video Swin's module has no ``flops`` method."""
    window = _triple("window_size", window_size)
    used = window if used_window is None else _triple("used_window", used_window)
    if any(u > w for u, w in zip(used, window, strict=True)):
        raise ValueError(f"used_window={used} must fit in window_size={window}")
    windows = validate.positive_int("windows", windows)
    return windows * swin_window_attention_macs(dim, num_heads, used[0] * used[1] * used[2])


def video_swin_block_attention_macs(dim: int, num_heads: int, input_size, window_size, batch: int = 1) -> int:
    """MACs of a Video Swin block's attention part (``forward_part1`` without its norm) on a ``(B, D, H, W, C)``
    clip, padding included: the window in use is ``L_a`` on every axis where ``L_a <= W_a`` (the shrink rule), each
    axis is padded to a multiple of it, and every window of the padded clip is computed, pad tokens too: ``B *
    prod(ceil(L_a / W'_a)) * (4 N C^2 + 2 N^2 C)`` with ``N = prod(W')``. The shift changes nothing (the roll and
    the mask do no multiply-adds)."""
    size, window = _triple("input_size", input_size), _triple("window_size", window_size)
    batch = validate.positive_int("batch", batch)
    used = tuple(min(length, side) for length, side in zip(size, window, strict=True))
    n_windows = 1
    for length, side in zip(size, used, strict=True):
        n_windows *= -(-length // side)  # ceil: the padded axis holds this many windows
    return video_swin_window_attention_macs(dim, num_heads, window, used, windows=batch * n_windows)


# ---- whole models: AIM's attention count and Swin's model.flops() ----


def aim_block_attention_macs(dim, num_heads, H, W, window_size, T, t_attn=True) -> float:
    """AIM's ``SwinTransformerBlock.flops()`` in MACs for one clip: ``nW * flops(ws^2, T, True)`` (when
    ``t_attn``) + ``nW * flops(ws^2, T, False)`` with ``nW = H * W / ws / ws``, a true division, so the result is a
    **float**, as upstream. Counts the attention matmuls only (no qkv, proj, MLP, norms): ``2*C*H*W*T^2`` +
    ``2*C*H*W*ws^2*T``."""
    H, W = validate.positive_int("H", H), validate.positive_int("W", W)
    ws = validate.positive_int("window_size", window_size)
    n_windows = H * W / ws / ws
    temporal = n_windows * window_attention_flops(dim, num_heads, ws * ws, T, True) if t_attn else 0
    return temporal + n_windows * window_attention_flops(dim, num_heads, ws * ws, T, False)


def stage_resolutions(image_size: int, patch_size: int, n_stages: int) -> list[int]:
    """The token map side of each Swin stage: ``image / patch``, halved by each PatchMerging."""
    side = validate.positive_int("image_size", image_size) // validate.positive_int("patch_size", patch_size)
    return [side // 2**i for i in range(n_stages)]


def aim_model_attention_macs(embed_dim, depths, num_heads, window_size, image_size, patch_size, T,
                             t_attn=True) -> float:
    """AIM's ``model.flops()`` for a Swin-style backbone, in MACs per clip: the sum of ``aim_block_attention_macs``
    over every block (AIM's PatchMerging and PatchEmbed3D report 0). The window shrinks to the map when the map is
    smaller, as Swin's blocks do. A float, like upstream."""
    total = 0.0
    sides = stage_resolutions(image_size, patch_size, len(depths))
    for stage, (depth, side) in enumerate(zip(depths, sides, strict=True)):
        ws = min(window_size, side)
        dim = embed_dim * 2**stage
        total += depth * aim_block_attention_macs(dim, num_heads[stage], side, side, ws, T, t_attn)
    return total


def swin_model_mac_terms(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                         image_size=224, patch_size=4, in_chans=3, mlp_ratio=4.0, num_classes=1000,
                         patch_norm=True) -> dict[str, float]:
    """Swin's ``SwinTransformer.flops()`` split into its terms, in MACs (defaults: Swin-T at 224x224):
    ``patch_embed`` (the conv), ``attention`` (every block's ``nW * WindowAttention.flops(ws^2)``, qkv and proj
    included), ``mlp`` (``2*H*W*C^2*mlp_ratio``), ``patch_merging`` (the reduction linear), ``head`` (the
    classifier), and two terms that are not multiply-adds of a matmul, so no counter sees them: ``norms``
    (upstream charges ``C`` per token per LayerNorm, also in PatchMerging and PatchEmbed) and ``pooling``
    (upstream's ``num_features * H * W // 2^L`` for the final average pool). ``nW = H*W/ws/ws`` is a true
    division: the terms are floats."""
    side = stage_resolutions(image_size, patch_size, len(depths))
    terms = dict.fromkeys(["patch_embed", "attention", "mlp", "patch_merging", "head", "norms", "pooling"], 0.0)
    terms["patch_embed"] = side[0] * side[0] * embed_dim * in_chans * patch_size * patch_size
    terms["norms"] += side[0] * side[0] * embed_dim if patch_norm else 0
    for stage, depth in enumerate(depths):
        dim, res = embed_dim * 2**stage, side[stage]
        ws = min(window_size, res)
        n_windows = res * res / ws / ws
        terms["attention"] += depth * n_windows * swin_window_attention_macs(dim, num_heads[stage], ws * ws)
        terms["mlp"] += depth * 2 * res * res * dim * dim * mlp_ratio
        terms["norms"] += depth * 2 * dim * res * res
        if stage < len(depths) - 1:  # PatchMerging: LayerNorm over 4C, then the 4C -> 2C linear
            terms["norms"] += res * res * dim
            terms["patch_merging"] += (res // 2) * (res // 2) * 4 * dim * 2 * dim
    num_features = embed_dim * 2 ** (len(depths) - 1)
    terms["pooling"] = num_features * side[0] * side[0] // 2 ** len(depths)
    terms["head"] = num_features * num_classes
    return terms


def swin_model_macs(**config) -> float:
    """Swin's ``SwinTransformer.flops()`` in MACs (the "4.5G FLOPs" of Swin-T are these); see
    ``swin_model_mac_terms`` for the terms and the defaults."""
    return sum(swin_model_mac_terms(**config).values())


# ---- FIERY's temporal model ----


def _temporal_block_macs_per_position(c_in: int, c_out: int, pooling: bool) -> int:
    """MACs of one TemporalBlock per ``(b, t, h, w)`` position, without the pooling branch's own convolution
    (which runs on the pooled grid). Paths A (1x1x1 then 2x3x3), B (1x1x1 then 1x3x3) and C (1x1x1) each give
    ``c_in // 2`` channels; the aggregation's 1x1x1 reads them (and the ``c_in // 3`` pooled channels) and writes
    ``c_out``; a 1x1x1 projection of the skip when ``c_out != c_in``."""
    half = c_in // 2
    path_a = c_in * half + half * half * 2 * 3 * 3
    path_b = c_in * half + half * half * 1 * 3 * 3
    path_c = c_in * half
    aggregation = (3 * half + (c_in // 3 if pooling else 0)) * c_out
    projection = c_in * c_out if c_out != c_in else 0
    return path_a + path_b + path_c + aggregation + projection


def _bottleneck_macs_per_position(channels: int) -> int:
    """MACs of one Bottleneck3D per position: 1x1x1 down to ``c // 2``, a 1x3x3 at ``c // 2``, 1x1x1 back up."""
    mid = channels // 2
    return channels * mid + mid * mid * 1 * 3 * 3 + mid * channels


def temporal_model_macs(in_channels, receptive_field, input_shape, start_out_channels=64, extra_in_channels=0,
                        n_spatial_layers_between_temporal_layers=0, use_pyramid_pooling=True, *, batch, frames,
                        height, width) -> int:
    """MACs of FIERY's ``TemporalModel`` forward on a ``(batch, frames, C, height, width)`` clip: every
    convolution, ``B * out positions * Cout * Cin * kt * kh * kw`` (the zero padding charged like real input, as
    ``torch.utils.flop_counter`` does), the pooling branch's on its ``(T + 1) x (H // ph) x (W // pw)`` grid. Not
    counted (no multiply-adds of a matmul): BatchNorm, ReLU, average pooling, the bilinear resize, the residual
    adds. FIERY's work: the first ``R - 1`` output steps are computed and then sliced off."""
    sizes = validate.temporal_model_config(in_channels, receptive_field, input_shape, start_out_channels,
                                           extra_in_channels, n_spatial_layers_between_temporal_layers)
    pooling = bool(use_pyramid_pooling)
    layers = temporal_model_layers(sizes.in_channels, sizes.receptive_field, sizes.start_out_channels,
                                   sizes.extra_in_channels, sizes.n_spatial_layers_between_temporal_layers, pooling)
    batch, frames = validate.positive_int("batch", batch), validate.positive_int("frames", frames)
    height, width = validate.positive_int("height", height), validate.positive_int("width", width)
    ph, pw = sizes.input_shape
    positions = batch * frames * height * width
    pooled_positions = batch * (frames + 1) * (height // ph) * (width // pw)  # AvgPool3d (2, ph, pw), time pad 1
    macs = 0
    for layer in layers:
        if layer.kind == "spatial":
            macs += positions * _bottleneck_macs_per_position(layer.c_in)
            continue
        macs += positions * _temporal_block_macs_per_position(layer.c_in, layer.c_out, pooling)
        if pooling:  # the pooling branch's 1x1x1 conv, c_in -> c_in // 3
            macs += pooled_positions * layer.c_in * (layer.c_in // 3)
    return macs
