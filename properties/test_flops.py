"""FLOP formulas (``refimpl.flops``) against the work actually done, counted two independent ways:
``torch.utils.flop_counter`` on the torch modules (2 FLOPs per MAC, CPU SDPA formula registered), and the
multiply-accumulates of the contractions the NumPy oracle performs (``counting_einsum_macs`` below). Plus the
formulas' structural laws and the published numbers."""

import contextlib
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from refimpl import flops, reference
from refimpl import strategies as rst
from refimpl.counting import count_flops
from refimpl.optimized import TemporalModel, WindowAttention
from refimpl.suite.temporal_model import state_tensors

RNG = np.random.default_rng(0)


def _window_attention(config):
    params = rst.random_window_attention_params(config, RNG)
    module = WindowAttention(**config.kwargs()).eval()
    module.load_state_dict({k: torch.as_tensor(a, dtype=torch.float32) for k, a in params.items()}, strict=False)
    return module, params


EINSUM = np.einsum


@contextlib.contextmanager
def counting_einsum_macs():
    """Count the multiply-accumulates of the ``np.einsum`` contractions run inside the block::

        with counting_einsum_macs() as tally:
            reference.window_attention(x, params, num_heads=3, window_size=7)
        tally.macs

    A two-operand einsum does one multiply-add per combination of the values of all its indices (the product of
    the index sizes); a one-operand einsum (a transpose) does none; any other form is refused rather than guessed.
    The oracle writes its matmul-like work (the linears, ``q@k^T``, ``attn@v``, each offset of a convolution) as
    two-operand einsums, and nothing that the published counts and ``torch.utils.flop_counter`` leave out
    (softmax, norms, pooling, the bilinear resize) is one."""
    tally = SimpleNamespace(macs=0)

    def counted(spec, *operands, **kwargs):
        if not isinstance(spec, str) or len(operands) > 2 or (len(operands) == 2 and "." in spec):
            raise AssertionError(f"np.einsum({spec!r}, ...) with {len(operands)} operands: count it by hand")
        if len(operands) == 2:
            sizes = {}
            for letters, operand in zip(spec.split("->")[0].split(","), operands, strict=True):
                sizes.update(zip(letters, np.shape(operand), strict=True))
            tally.macs += math.prod(sizes.values())
        return EINSUM(spec, *operands, **kwargs)

    np.einsum = counted  # the oracle looks ``np.einsum`` up at each call
    try:
        yield tally
    finally:
        np.einsum = EINSUM


def _oracle_macs(fn, *args, **kwargs) -> int:
    with counting_einsum_macs() as tally:
        fn(*args, **kwargs)
    return tally.macs


def test_counting_einsum_macs_counts_contractions_only():
    """A matmul ``(2, 3) @ (3, 4)`` is 24 multiply-adds, a transpose none; other forms are refused; the patch is
    undone on the way out."""
    with counting_einsum_macs() as tally:
        np.einsum("ij,jk->ik", np.ones((2, 3)), np.ones((3, 4)))
        np.einsum("ij->ji", np.ones((2, 3)))
    assert tally.macs == 24
    with pytest.raises(AssertionError, match="count it by hand"), counting_einsum_macs():
        np.einsum("ij,jk,kl->il", np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)))
    assert np.einsum is EINSUM


# ---- the counter workaround ----


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "additive-mask"])
def test_cpu_sdpa_is_counted(masked):
    """A plain CPU SDPA call is charged 4 * B * nH * N^2 * d FLOPs, not 0, whichever route torch takes: the fused
    CPU op (torch >= 2.3) through the formula ``count_flops`` registers, or ops the counter already knows
    (before 2.3: the flash op without a mask, bmm with one), where there is nothing to register."""
    q = torch.randn(2, 3, 5, 4)
    mask = torch.randn(2, 3, 5, 5) if masked else None
    total, per_op = count_flops(torch.nn.functional.scaled_dot_product_attention, q, q, q, attn_mask=mask)
    assert total == 4 * 2 * 3 * 5 * 5 * 4, per_op


# ---- window attention: formula == counted work, both ways ----


@given(config=rst.window_attention_configs(), rows=st.integers(1, 4), temporal=st.booleans(), masked=st.booleans())
def test_window_attention_work_equals_the_formulas(config, rows, temporal, masked):
    """One forward on ``(B_, N, C)`` does ``B_ * swin_window_attention_macs(C, nH, N)`` MACs (qkv, q@k^T, attn@v,
    proj), of which the attention core is AIM's ``flops``: ``B_ * flops(N, 1)`` spatially (B_ windows, one
    frame each), ``flops(B_, T, temporal=True)`` temporally (B_ positions of T tokens). Counted by FlopCounterMode
    on the optimized module and by counting the oracle's einsum contractions; the module's ``flops`` is the formula."""
    temporal = temporal and config.use_temporal
    module, params = _window_attention(config)
    n = config.num_ttokens if temporal else config.window_tokens
    x = RNG.standard_normal((rows, n, config.dim))
    mask = None
    if masked and not temporal:
        mask = np.where(RNG.random((1, n, n)) < 0.3, -100.0, 0.0)
        np.fill_diagonal(mask[0], 0.0)
    with torch.no_grad():
        counted, per_op = count_flops(module, torch.as_tensor(x, dtype=torch.float32),
                                      None if mask is None else torch.as_tensor(mask, dtype=torch.float32), temporal)
    oracle = _oracle_macs(reference.window_attention, x, params, num_heads=config.num_heads,
                          window_size=config.window_size, mask=mask, temporal=temporal, qk_scale=config.qk_scale)
    expected = rows * flops.swin_window_attention_macs(config.dim, config.num_heads, n)
    assert counted == flops.macs_to_flops(expected), (counted, expected, per_op)
    assert oracle == expected
    if temporal:
        core = module.flops(rows, n, temporal=True)
    else:
        core = rows * module.flops(n, 1)
    assert core == expected - rows * 4 * n * config.dim**2  # minus qkv (3NC^2) and proj (NC^2) per row
    assert module.flops(n, config.num_ttokens, temporal) == flops.window_attention_flops(
        config.dim, config.num_heads, n, config.num_ttokens, temporal)


# ---- the temporal model ----


@given(case=rst.temporal_model_cases(short_clips=True))
def test_temporal_model_work_equals_the_formula(case):
    """FIERY's forward does ``temporal_model_macs`` MACs: counted by FlopCounterMode on the module in train mode
    (FIERY's unfolded blocks) and by the oracle's tally; ``TemporalModel.flops`` agrees. Inference does less (it
    skips the outputs the slice drops), never more."""
    config = case.config
    module = TemporalModel(**config.kwargs())
    module.load_state_dict(state_tensors(case.params, "cpu", torch.float32), strict=True)
    x = torch.as_tensor(case.x, dtype=torch.float32)
    sizes = dict(batch=case.batch, frames=case.frames, height=case.height, width=case.width)
    expected = flops.temporal_model_macs(**config.kwargs(), **sizes)
    enough = case.batch * case.frames * case.height * case.width >= 2  # train-mode BatchNorm needs 2 values
    if enough:
        counted, per_op = count_flops(module.train(), x)
        assert counted == flops.macs_to_flops(expected), (counted, expected, per_op)
    assert _oracle_macs(reference.temporal_model, case.x, case.params, **config.kwargs()) == expected
    assert module.flops(case.frames, case.height, case.width, batch=case.batch) == expected
    with torch.no_grad():
        inference, _ = count_flops(module.eval(), x)
    assert inference <= flops.macs_to_flops(expected)


def test_fiery_inference_does_about_half_of_fierys_work():
    """On FIERY's configuration (T = R = 3) inference computes one output step of the last block and two of the
    first: the counted convolution work drops to about half (the point of computing only what the slice keeps)."""
    module = TemporalModel(70, 3, (8, 8)).eval()
    x = torch.randn(1, 3, 70, 8, 8)
    with torch.no_grad():
        inference, _ = count_flops(module, x)
    fiery = flops.macs_to_flops(module.flops(3, 8, 8))
    assert 0.4 < inference / fiery < 0.6, inference / fiery


# ---- Swin: the whole model's formula against a Swin skeleton's counted work ----


def _swin_skeleton_flops(embed_dim, depths, num_heads, window_size, image_size, patch_size, num_classes):
    """Count the matmul/conv work of a Swin forward at batch 1: patch-embed conv, per block a WindowAttention on
    every window and the MLP, PatchMerging's 4C -> 2C linear, the classifier (norms, softmax, roll: uncounted)."""
    side = image_size // patch_size

    def run():
        x = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)(torch.randn(1, 3, image_size, image_size))
        tokens = x.flatten(2).transpose(1, 2)  # (1, side^2, C)
        res, dim = side, embed_dim
        for stage, depth in enumerate(depths):
            ws = min(window_size, res)
            attn = WindowAttention(dim, 1, ws, num_heads[stage]).eval()
            mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            for _ in range(depth):
                windows = tokens.reshape(res // ws, ws, res // ws, ws, dim).permute(0, 2, 1, 3, 4)
                tokens = attn(windows.reshape(-1, ws * ws, dim)).reshape(1, res * res, dim)
                tokens = mlp(tokens)
            if stage < len(depths) - 1:
                merged = tokens.reshape(1, res // 2, 2, res // 2, 2, dim).permute(0, 1, 3, 4, 2, 5)
                tokens = nn.Linear(4 * dim, 2 * dim, bias=False)(merged.reshape(1, (res // 2) ** 2, 4 * dim))
                res, dim = res // 2, 2 * dim
        nn.Linear(dim, num_classes)(tokens.mean(1))

    with torch.no_grad():
        return count_flops(run)[0]


@st.composite
def swin_configs(draw):
    """Small Swin geometries where every stage's map is a multiple of its window (so nW is an integer)."""
    stages = draw(st.integers(1, 3))
    window = draw(st.integers(1, 3))
    patch = draw(st.integers(1, 2))
    side = window * 2 ** (stages - 1) * draw(st.integers(1, 2))
    heads = draw(st.lists(st.integers(1, 3), min_size=stages, max_size=stages))
    return dict(embed_dim=draw(st.integers(1, 2)) * 6, depths=tuple(draw(st.lists(st.integers(1, 2), min_size=stages,
                max_size=stages))), num_heads=tuple(heads), window_size=window, image_size=side * patch,
                patch_size=patch, num_classes=draw(st.integers(1, 5)))


@given(config=swin_configs())
def test_swin_model_terms_equal_a_skeletons_counted_work(config):
    """Every multiply-add term of ``swin_model_mac_terms`` (patch embed, attention with qkv and proj, MLP, patch
    merging, head) sums to the counted work of a Swin forward; ``norms`` and ``pooling`` are upstream's extra
    charges that no matmul counter sees."""
    terms = flops.swin_model_mac_terms(**config, in_chans=3, mlp_ratio=4.0)
    matmul_terms = sum(v for k, v in terms.items() if k not in ("norms", "pooling"))
    assert _swin_skeleton_flops(**config) == flops.macs_to_flops(matmul_terms)


def test_swin_t_is_the_published_4_5_gmacs():
    """Swin-T at 224x224: 4.5G "FLOPs" as published, which are MACs; without norms and pooling, 2x that is the
    8.981 GFLOPs FlopCounterMode counts on torchvision's and timm's swin_t (docs/flops.md)."""
    terms = flops.swin_model_mac_terms()
    assert round(flops.swin_model_macs() / 1e9, 1) == 4.5
    matmuls = sum(v for k, v in terms.items() if k not in ("norms", "pooling"))
    assert round(flops.macs_to_flops(matmuls) / 1e9, 3) == 8.981


@pytest.mark.parametrize("name, published", [("swin-s", 8.7), ("swin-b", 15.4)])
def test_swin_s_and_b_match_their_published_gmacs(name, published):
    from refimpl.flops_table import SWIN

    assert round(flops.swin_model_macs(**SWIN[name]) / 1e9, 1) == published


def test_refimpl_flops_prints_both_conventions(capsys):
    """``refimpl flops`` prints Swin-T, AIM and FIERY with MACs and FLOPs = 2 x MACs; bad input exits 2."""
    from refimpl.cli import main

    assert main(["flops"]) == 0
    out = capsys.readouterr().out
    swin_t = flops.swin_model_macs()  # 4.5 G as published (test above)
    assert f"| swin-t 224x224: total (Swin's model.flops()) | {swin_t:,.0f} | {swin_t / 1e9:.3f} G | " \
           f"{2 * swin_t / 1e9:.3f} G |" in out
    assert "| aim-swin-t T=8: stage 1 block (56x56, C=96) | 274,563,072 |" in out
    assert "fiery temporal model (70 ch, R 3, 200x200, T=3, batch 1)" in out
    assert main(["flops", "--window-attention", "10", "3", "49", "8"]) == 2
    assert "not divisible by num_heads=3" in capsys.readouterr().err


def test_aim_block_example_from_the_spec_is_a_float():
    """AIM's block example (docs/flops.md): C=96, 56x56, ws 7, T=8 with temporal attention gives 274,563,072.0
    (a float, as upstream)."""
    total = flops.aim_block_attention_macs(96, 3, 56, 56, 7, 8, t_attn=True)
    assert isinstance(total, float) and total == 274_563_072.0


# ---- structural laws ----

sizes = st.integers(1, 64)


@given(heads=st.integers(1, 8), head_dim=st.integers(1, 8), n=sizes, t=sizes, k=st.integers(2, 5))
def test_aim_formula_laws(heads, head_dim, n, t, k):
    """Linear in frames, quadratic in tokens per window (spatial), linear in positions (temporal); the temporal
    term is spatial attention over windows of T tokens, one per position; MACs x 2 == FLOPs."""
    dim = heads * head_dim
    spatial = flops.window_attention_flops(dim, heads, n, t)
    temporal = flops.window_attention_flops(dim, heads, n, t, temporal=True)
    assert flops.window_attention_flops(dim, heads, n, k * t) == k * spatial
    assert spatial == n * n * flops.window_attention_flops(dim, heads, 1, t)
    assert flops.window_attention_flops(dim, heads, k * n, t, temporal=True) == k * temporal
    assert temporal == n * flops.window_attention_flops(dim, heads, t, 1)
    assert flops.macs_to_flops(spatial) == 2 * spatial and flops.flops_to_macs(2 * spatial) == spatial


@given(heads=st.integers(1, 4), head_dim=st.integers(1, 4), ws=st.integers(1, 4), nh=st.integers(1, 4),
       nw=st.integers(1, 4), t=st.integers(1, 8), k=st.integers(2, 3))
def test_aim_block_total_is_linear_in_the_number_of_windows(heads, head_dim, ws, nh, nw, t, k):
    dim = heads * head_dim
    one = flops.aim_block_attention_macs(dim, heads, nh * ws, nw * ws, ws, t)
    assert flops.aim_block_attention_macs(dim, heads, k * nh * ws, nw * ws, ws, t) == k * one
    assert one == nh * nw * (flops.window_attention_flops(dim, heads, ws * ws, t, True)
                             + flops.window_attention_flops(dim, heads, ws * ws, t))


@given(dim=st.integers(1, 40), heads=st.integers(1, 8), n=sizes, t=sizes)
def test_upstream_formula_floors_and_the_reference_refuses(dim, heads, n, t):
    """Upstream floors ``dim // nH``: it equals the exact count when nH divides C and undercounts otherwise, where
    ``window_attention_flops`` raises instead."""
    upstream = flops.window_attention_flops_upstream(dim, heads, n, t)
    if dim % heads == 0:
        assert upstream == flops.window_attention_flops(dim, heads, n, t) == 2 * dim * n * n * t
    else:
        assert upstream < 2 * dim * n * n * t
        with pytest.raises(ValueError, match=f"dim={dim} is not divisible by num_heads={heads}"):
            flops.window_attention_flops(dim, heads, n, t)


@pytest.mark.parametrize("call, words", [
    (lambda: flops.window_attention_flops(0, 1, 4, 1), "dim"),
    (lambda: flops.window_attention_flops(8, 2, -1, 1), "N"),
    (lambda: flops.window_attention_flops(8, 2, 4, 0), "T"),
    (lambda: flops.swin_window_attention_macs(10, 3, 4), "not divisible"),
    (lambda: flops.aim_block_attention_macs(8, 2, 0, 4, 2, 1), "H"),
    (lambda: flops.temporal_model_macs(4, 2, (2, 2), batch=1, frames=0, height=2, width=2), "frames"),
])
def test_formulas_refuse_non_positive_sizes(call, words):
    with pytest.raises(ValueError, match=words):
        call()


# ---- Swin V2 window attention: formula == counted work, per call and per cache miss ----


@given(config=rst.window_attention_v2_configs(max_heads=3, max_head_dim=3, max_window_side=3),
       rows=st.integers(1, 3), masked=st.booleans())
def test_swin_v2_window_attention_work_equals_the_formula(config, rows, masked):
    """microsoft's forward on ``B_`` windows does ``swin_v2_window_attention_macs(C, nH, window, B_)``: V1's
    ``4 N C^2 + 2 N^2 C`` per window plus one CPB-MLP evaluation per call (counted by FlopCounterMode on the faithful
    module, and by counting the oracle's einsum contractions). refimpl's module does the same on a cache miss and
    no MLP work on a hit (``cpb_evaluations=0``); its and upstream's ``flops(N)`` are the per-window term."""
    from refimpl.baselines.window_attention_v2 import WindowAttention as FaithfulV2
    from refimpl.optimized import WindowAttentionV2

    params = rst.random_window_attention_v2_params(config, RNG)
    state = {k: torch.as_tensor(a, dtype=torch.float32) for k, a in params.items()}
    n = config.window_tokens
    x = RNG.standard_normal((rows, n, config.dim))
    mask = None
    if masked:
        mask = np.where(RNG.random((1, n, n)) < 0.3, -100.0, 0.0)
        np.fill_diagonal(mask[0], 0.0)
    args = (torch.as_tensor(x, dtype=torch.float32), None if mask is None else torch.as_tensor(mask).float())
    per_call = flops.swin_v2_window_attention_macs(config.dim, config.num_heads, config.window_size, rows)
    cached = flops.swin_v2_window_attention_macs(config.dim, config.num_heads, config.window_size, rows,
                                                 cpb_evaluations=0)
    faithful, optimized = FaithfulV2(**config.kwargs()).eval(), WindowAttentionV2(**config.kwargs()).eval()
    for module in (faithful, optimized):
        module.load_state_dict(state, strict=False)
        assert rows * module.flops(n) == cached
    with torch.no_grad():
        assert count_flops(faithful, *args)[0] == flops.macs_to_flops(per_call)
        miss, per_op = count_flops(optimized, *args)
        hit, _ = count_flops(optimized, *args)
    assert miss == flops.macs_to_flops(per_call), per_op
    assert hit == flops.macs_to_flops(cached)
    oracle = _oracle_macs(reference.window_attention_v2, x, params, **config.oracle_kwargs(), mask=mask)
    assert oracle == per_call
    assert per_call - cached == flops.swin_v2_cpb_macs(config.window_size, config.num_heads)


def test_swin_v2_t_stage_1_figures():
    """Swin-V2-T stage 1 at 256x256 (window 8, C 96, 3 heads, a 64x64 map: 64 windows per image): the MLP costs
    (15 * 15) * 512 * (2 + 3) = 576,000 MACs per evaluation, about 0.29% of a batch-1 call's 201.9 M."""
    assert flops.swin_v2_cpb_macs(8, 3) == 576_000
    total = flops.swin_v2_window_attention_macs(96, 3, 8, windows=64)
    assert total == 64 * (4 * 64 * 96**2 + 2 * 64**2 * 96) + 576_000 == 201_902_592


# ---- Video Swin 3-D window attention: formula == counted work, window level and block level with padding ----


@given(case=rst.window_attention_3d_cases(rst.window_attention_3d_configs(max_heads=3, max_head_dim=3),
                                          max_windows=2))
def test_video_swin_window_attention_work_equals_the_formula(case):
    """A ``WindowAttention3D`` forward on ``B_`` windows of ``N = prod(used window)`` tokens does
    ``video_swin_window_attention_macs`` (V1's ``4 N C^2 + 2 N^2 C`` per window, a shrunk window at its own N):
    counted by FlopCounterMode on the upstream-faithful and the optimized module, and by counting the oracle's
    einsum contractions; the optimized module's ``flops(N)`` is the per-window term."""
    from refimpl.baselines.window_attention_3d import WindowAttention3D as Faithful3D
    from refimpl.optimized import WindowAttention3D

    cfg = case.config
    expected = flops.video_swin_window_attention_macs(cfg.dim, cfg.num_heads, cfg.window_size, case.used_window,
                                                      windows=case.x.shape[0])
    args = (torch.as_tensor(case.x, dtype=torch.float32),
            None if case.mask is None else torch.as_tensor(case.mask, dtype=torch.float32))
    state = {k: torch.as_tensor(a, dtype=torch.float32) for k, a in case.params.items()}
    for module in (Faithful3D(**cfg.kwargs()).eval(), WindowAttention3D(**cfg.kwargs()).eval()):
        module.load_state_dict(state, strict=False)
        with torch.no_grad():
            counted, per_op = count_flops(module, *args)
        assert counted == flops.macs_to_flops(expected), (type(module), counted, expected, per_op)
    assert case.x.shape[0] * module.flops(case.n_tokens) == expected
    assert _oracle_macs(reference.window_attention_3d, case.x, case.params, **case.oracle_kwargs()) == expected


@given(case=rst.shifted_window_attention_3d_cases(max_batch=2))
def test_video_swin_block_work_counts_the_padding(case):
    """The block's attention part on a clip does ``video_swin_block_attention_macs``: every window of the padded
    clip with the window in use, pad tokens included (counted by FlopCounterMode on Video Swin's block code around
    the faithful module, and by counting the oracle's contractions)."""
    from refimpl.baselines.shifted_window_3d import shifted_window_attention_3d as block
    from refimpl.baselines.window_attention_3d import WindowAttention3D as Faithful3D

    cfg, g = case.config, case.geometry
    expected = flops.video_swin_block_attention_macs(cfg.dim, cfg.num_heads, g.size, g.window_size, case.batch)
    module = Faithful3D(**cfg.kwargs()).eval()
    module.load_state_dict({k: torch.as_tensor(a, dtype=torch.float32) for k, a in case.params.items()},
                           strict=False)
    with torch.no_grad():
        counted, per_op = count_flops(lambda t: block(t, module, window_size=g.window_size, shift_size=g.shift_size),
                                      torch.as_tensor(case.x, dtype=torch.float32))
    assert counted == flops.macs_to_flops(expected), (counted, expected, per_op)
    assert _oracle_macs(reference.shifted_window_attention_3d, case.x, case.params, **case.oracle_kwargs()) == expected
    n = int(np.prod(g.used[0]))
    assert expected == case.batch * g.n_windows * (4 * n * cfg.dim**2 + 2 * n**2 * cfg.dim)


def test_video_swin_block_figures():
    """Video Swin-T stage 1 on 32 frames at 224x224 (patch (2, 4, 4): a 16x56x56 map, C 96, 3 heads, window
    (8, 7, 7), N = 392, 2 x 8 x 8 = 128 windows), and a short clip: 4 frames shrink D to 4 (N = 196), and a 6x6 map
    under a 7x7 window shrinks H and W to 6 (N = 144, no padding)."""
    n, macs = 392, flops.video_swin_block_attention_macs
    # 4 * 392 * 96^2 = 14,450,688 and 2 * 392^2 * 96 = 29,503,488 per window
    assert macs(96, 3, (16, 56, 56), (8, 7, 7)) == 128 * (4 * n * 96**2 + 2 * n**2 * 96) == 5_626_134_528
    assert macs(96, 3, (4, 56, 56), (8, 7, 7)) == 64 * flops.swin_window_attention_macs(96, 3, 196)
    assert macs(768, 24, (4, 6, 6), (8, 7, 7)) == flops.swin_window_attention_macs(768, 24, 144)
    # padding: 9 frames under Wd = 8 pad to 16, twice the windows of 8 frames
    assert macs(96, 3, (9, 7, 7), (8, 7, 7)) == 2 * macs(96, 3, (8, 7, 7), (8, 7, 7))
