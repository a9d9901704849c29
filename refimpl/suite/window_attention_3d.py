"""Properties of Video Swin 3-D window attention (``WindowAttention3D``), each checked against
``refimpl.reference.window_attention_3d`` and ``refimpl.reference.shifted_window_3d``.

Every check takes the implementation under test as a parameter: ``impl.factory`` must accept Video Swin's
constructor arguments and return an ``nn.Module`` with Video Swin's keys (a persistent ``(N0, N0)``
``relative_position_index``) and ``forward(x, mask=None)``.

Index conventions. Where the block attends over a window smaller than the module's (a short clip), upstream reads
``relative_position_index[:N, :N]`` (the *truncated* lookup); the geometric bias looks up the true offsets. They
differ only where the used window is not a row-major prefix of the module window. A target declares what it
computes with ``refimpl_capabilities = {"index_convention": "truncated" | "geometric"}`` (undeclared: truncated,
upstream's protocol), on the class or factory or on the instances it builds; every comparison uses the oracle of the
declared convention, and a failure where the conventions differ says which of the two the output matches.

"Built by the module, not loaded": only parameters are loaded, never the index. The tolerance baseline is the
upstream-faithful module (``refimpl.baselines.window_attention_3d``); for a geometric target on a non-prefix window
its index's top-left ``N x N`` block is replaced by the geometric one, so that it computes the same thing naively.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from hypothesis import strategies as st

from refimpl import reference
from refimpl.baselines.shifted_window_3d import shifted_window_attention_3d as video_swin_block_attention
from refimpl.baselines.window_attention_3d import WindowAttention3D as FaithfulWindowAttention3D
from refimpl.strategies import window_attention_3d as st3d
from refimpl.suite._core import (
    Capabilities,
    Implementation,
    Kind,
    KindModes,
    Mode,
    cpu_threads,
    register,
    register_kind,
    round_to,
    thread_counts,
    to_tensor,
)
from refimpl.suite._protocol import ProtocolError, build_target, call_target, check_state_keys
from refimpl.tolerance import assert_close, assert_close_mapping, compare

KIND = "window_attention_3d"
BASELINE = Implementation(KIND, "refimpl.baselines.window_attention_3d:WindowAttention3D", FaithfulWindowAttention3D)
UPSTREAM_CONVENTION = "truncated"

MODES = KindModes(
    modes=(
        Mode("masks", "an additive window mask (nW, N, N), 0/-100 or 0/-inf with the diagonal allowed; row b of x "
             "uses mask[b % nW] (or a shifted clip, whose block passes Video Swin's mask)",
             upstream_behaviour="added once through the 5-D view (B_/nW, nW, nH, N, N)"),
        Mode("training", "train mode: dropout, with non-zero rates, acts only there"),
        Mode("gradients", "autograd through the forward: gradients of x, the linears and the bias table"),
        Mode("qk_scale", "a qk_scale other than the default head_dim^-0.5", upstream_behaviour="Video Swin computes "
             "qk_scale or head_dim**-0.5, so qk_scale=0 also means the default; torchvision has no qk_scale"),
    ),
    case_modes=lambda case: case_modes(case),
    case_edges=lambda case: case_edges(case),
)


def _parts(case) -> tuple:
    return tuple(p for part in case for p in _parts(part)) if isinstance(case, tuple) else (case,)


def case_modes(case) -> tuple[str, ...]:
    """The modes a drawn case uses: a window mask, or a clip whose block uses a mask (some shift in use > 0); a
    non-default qk_scale (a bare config is a case too: the buffer property draws configs)."""
    used = []
    for part in _parts(case):
        config = getattr(part, "config", part)
        geometry = getattr(part, "geometry", None)
        masked = getattr(part, "has_mask", False) or (geometry is not None and any(geometry.used[1]))
        used += [m for m, on in (("masks", masked), ("qk_scale", getattr(config, "qk_scale", None) not in (None, 0)))
                 if on and m not in used]
    return tuple(used)


def case_edges(case) -> list[str]:
    """The edges a failing case sits on, named in the failure report."""
    edges = []
    for part in _parts(case):
        config = getattr(part, "config", None)
        geometry = getattr(part, "geometry", None)
        if geometry is not None:
            used, shift = geometry.used
            edges.append(f"clip {geometry.size}, block window {geometry.window_size} shift {geometry.shift_size}: "
                         f"window in use {used}, shift in use {shift}, padded to {geometry.padded}"
                         + (f", shrunk along {''.join(geometry.shrunk_axes)}" if geometry.shrunk_axes else "")
                         + (f", padded along {''.join(geometry.padded_axes)}" if geometry.padded_axes else ""))
        elif getattr(part, "used_window", None) is not None and part.shrunk:
            edges.append(f"window in use {part.used_window} inside the module window {config.window_size}")
        if getattr(part, "conventions_differ", False):
            edges.append("the window in use is not a row-major prefix of the module window: the truncated and "
                         "geometric index conventions differ here")
        if getattr(part, "has_mask", False):
            edges.append(f"mask convention {part.mask_convention}, {part.n_windows} windows, batch {part.batch}")
        if config is not None and getattr(config, "qk_scale", None) == 0:
            edges.append("qk_scale=0 (Video Swin's `qk_scale or d ** -0.5`: the default scale)")
    return edges


# --------------------------------------------------------------------------------------------------
# Conventions: what a target declares, and the verdict where the two differ
# --------------------------------------------------------------------------------------------------

DECLARE_GEOMETRIC = "refimpl_capabilities['index_convention'] = 'geometric'"


def declared_convention(impl: Implementation, module=None) -> str:
    """The index convention a target declares: on the module it built (which knows what it was built with), else on
    its class or factory; undeclared: upstream's truncated lookup."""
    for source in (module, impl.factory):
        declared = getattr(source, "refimpl_capabilities", None)
        if isinstance(declared, dict) and "index_convention" in declared:
            convention = declared["index_convention"]
            if convention not in reference.INDEX_CONVENTIONS:
                raise ValueError(f"refimpl_capabilities['index_convention'] must be one of "
                                 f"{reference.INDEX_CONVENTIONS}, got {convention!r}")
            return convention
    return UPSTREAM_CONVENTION


def _other(convention: str) -> str:
    return "geometric" if convention == "truncated" else "truncated"


def verdict_message(declared: str, module_window, used_window, shape) -> str:
    """What a failure says when the output matches the other convention's oracle."""
    where = (f"x {tuple(shape)}, module window {tuple(module_window)}, window in use {tuple(used_window)} (not a "
             f"row-major prefix of the module window, so the two conventions differ)")
    if declared == "geometric":
        return (f"this target computes upstream's truncated lookup (relative_position_index[:N, :N]) but declares "
                f"geometric: {where}. Remove index_convention from refimpl_capabilities (or declare 'truncated'), "
                f"or look up the true offsets of the window in use")
    return (f"this target computes the geometric bias but declares (or defaults to) truncated, upstream's lookup: "
            f"{where}. If that is intended, declare {DECLARE_GEOMETRIC}")


def assert_matches_declared(actual, oracle, baseline_of, *, declared, differ, dtype, what, module_window,
                            used_window, shape, magnitude_of=lambda convention: None):
    """``actual`` against ``oracle(declared)`` (baseline ``baseline_of(declared)``; the floor counts ulps of
    ``magnitude_of(declared)``, default max|oracle|); on failure where the conventions differ, also against the other
    convention, and the message says which one the output computes."""
    __tracebackhide__ = True
    result = compare(actual, oracle(declared), baseline=baseline_of(declared), dtype=dtype, what=what,
                     magnitude=magnitude_of(declared))
    if result.ok:
        return result
    if differ:
        other = _other(declared)
        if compare(actual, oracle(other), baseline=baseline_of(other), dtype=dtype, what=what,
                   magnitude=magnitude_of(other)).ok:
            raise AssertionError(verdict_message(declared, module_window, used_window, shape) + "\n"
                                 + result.message())
    raise AssertionError(result.message())


# --------------------------------------------------------------------------------------------------
# Running an implementation on a case
# --------------------------------------------------------------------------------------------------


def rounded_case(case, dtype: torch.dtype):
    """The case as a ``dtype`` implementation sees it: the oracle then runs on exactly those inputs."""
    arrays = dict(x=round_to(case.x, dtype), params={k: round_to(a, dtype) for k, a in case.params.items()},
                  grad_out=round_to(case.grad_out, dtype))
    if getattr(case, "mask", None) is not None:
        arrays["mask"] = round_to(case.mask, dtype)
    return case.with_arrays(**arrays)


def build(impl: Implementation, config, params, device, dtype, *, train=False) -> torch.nn.Module:
    """Build the implementation with ``config`` and load ``params`` (parameters only, never the index)."""
    module = impl.factory(**config.kwargs()).to(device=device, dtype=dtype)
    missing, unexpected = module.load_state_dict({k: to_tensor(a, device, dtype) for k, a in params.items()},
                                                 strict=False)
    buffers = {name for name, _ in module.named_buffers()}
    if unexpected or set(missing) - buffers:
        raise AssertionError(f"{impl.name} does not have Video Swin's parameter keys: unexpected "
                             f"{sorted(unexpected)}, missing parameters {sorted(set(missing) - buffers)}")
    return module.train(train)


def build_baseline(config, params, used_window, convention, device, dtype, *, train=False) -> torch.nn.Module:
    """The upstream-faithful module computing ``convention`` over ``used_window``: for geometric on a window that
    is not a prefix, its index's top-left block is the geometric index (the module slices ``[:N, :N]``)."""
    module = build(BASELINE, config, params, device, dtype, train=train)
    if convention == "geometric" and not reference.is_row_major_prefix(config.window_size, used_window):
        n = int(np.prod(used_window))
        geometric = reference.window_attention_3d_index(config.window_size, used_window, "geometric")
        with torch.no_grad():
            module.relative_position_index[:n, :n] = torch.as_tensor(geometric, device=device)
    return module


def window_in_use(declared: str, module_window, used_window):
    """What a call tells the module about the window in use: nothing under upstream's truncated lookup (``forward(x,
    mask)``, as Video Swin's block calls it); under the geometric convention, a shrunk window is passed as
    ``used_window=`` (``N`` alone does not say where the tokens lie: 6 tokens of a (2, 3, 3) window may be (2, 3, 1)
    or (1, 2, 3))."""
    if declared == "geometric" and tuple(used_window) != tuple(module_window):
        return tuple(used_window)
    return None


def _call(module, x, mask, used_window):
    return module(x, mask) if used_window is None else module(x, mask, used_window=used_window)


def forward(module, case, device, dtype, *, x=None, declared=UPSTREAM_CONVENTION) -> torch.Tensor:
    x = case.x if x is None else x
    mask = None if case.mask is None else to_tensor(case.mask, device, dtype)
    return _call(module, to_tensor(x, device, dtype), mask,
                 window_in_use(declared, case.config.window_size, case.used_window))


def gradients(module, case, device, dtype, *, declared=UPSTREAM_CONVENTION) -> dict[str, torch.Tensor]:
    """``d sum(out * grad_out)`` with respect to ``x`` and every parameter (zeros where none flowed)."""
    x = to_tensor(case.x, device, dtype, requires_grad=True)
    mask = None if case.mask is None else to_tensor(case.mask, device, dtype)
    out = _call(module, x, mask, window_in_use(declared, case.config.window_size, case.used_window))
    (out * to_tensor(case.grad_out, device, dtype)).sum().backward()
    grads = {"x": x.grad}
    for name, p in module.named_parameters():
        grads[name] = p.grad if p.grad is not None else torch.zeros_like(p)
    return grads


def map_forward(module, case, device, dtype, *, x=None, declared=UPSTREAM_CONVENTION) -> torch.Tensor:
    """The module inside Video Swin's block code (``forward_part1`` without its norm); a geometric target is told
    the window in use when it is shrunk (``window_in_use``)."""
    g = case.geometry
    used_window = window_in_use(declared, g.window_size, g.used[0])
    attn = module if used_window is None else (lambda windows, mask=None: _call(module, windows, mask, used_window))
    return video_swin_block_attention(to_tensor(case.x if x is None else x, device, dtype), attn,
                                      window_size=g.window_size, shift_size=g.shift_size, fill=case.fill)


# --------------------------------------------------------------------------------------------------
# Strategies for the properties
# --------------------------------------------------------------------------------------------------

configs = st3d.window_attention_3d_configs()
cases = st3d.window_attention_3d_cases()
masked_batches = st3d.window_attention_3d_cases(mask=True).filter(lambda c: c.batch >= 2 and c.n_windows >= 2)
with_dropout = st3d.window_attention_3d_cases(st3d.window_attention_3d_configs(dropout=True), mask=False)
one_frame = st3d.window_attention_3d_cases(
    st.builds(lambda h, w, heads, d, bias: st3d.WindowAttention3DConfig(heads * d, heads, (1, h, w), bias),
              st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.booleans()),
    shrink="none")
map_cases = st3d.shifted_window_attention_3d_cases(fills=(-100.0, -np.inf))
isolation_cases = st.tuples(st3d.shifted_window_attention_3d_cases(), st.integers(0, 2**16))

FLOAT64 = ("float64",)
HIGH = ("float64", "float32")


# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------


@register(KIND, configs, dtypes=("float32",))
def index_buffer_is_the_definition(impl, config, device, dtype):
    """The module builds its own ``relative_position_index``: a persistent int buffer of shape ``(N0, N0)``
    (``N0 = Wd*Wh*Ww``), in the state dict, equal to the definition: tokens flattened ``(d, h, w)`` row-major,
    entry ``((Δd + Wd-1)(2Wh-1) + (Δh + Wh-1))(2Ww-1) + (Δw + Ww-1)``, query minus key (the table is D-major)."""
    module = impl.factory(**config.kwargs())
    state = module.state_dict()
    assert "relative_position_index" in state, ("relative_position_index is not in the state dict (Video Swin's is "
                                                "a persistent buffer: its checkpoints hold one)")
    got = state["relative_position_index"]
    n0 = config.window_tokens
    assert tuple(got.shape) == (n0, n0), f"relative_position_index has shape {tuple(got.shape)}, expected {(n0, n0)}"
    assert not got.dtype.is_floating_point, f"relative_position_index has dtype {got.dtype}, expected an int dtype"
    expected = reference.relative_position_index(config.window_size)
    wrong = np.argwhere(got.cpu().numpy() != expected)
    assert not wrong.size, (f"relative_position_index differs from the definition at {len(wrong)} entries; first "
                            f"(i, j) = {tuple(wrong[0])}: {int(got[tuple(wrong[0])])}, expected "
                            f"{int(expected[tuple(wrong[0])])}")


def _window_check(impl, case, device, dtype, actual_of, what):
    """Compare ``actual_of(module)`` with the oracle of the declared convention (and name the other on failure)."""
    case = rounded_case(case, dtype)
    module = build(impl, case.config, case.params, device, dtype)
    declared = declared_convention(impl, module)

    baselines = {}

    def baseline_of(convention):
        if convention not in baselines:
            faithful = build_baseline(case.config, case.params, case.used_window, convention, device, dtype)
            with torch.no_grad():
                baselines[convention] = forward(faithful, case, device, dtype)
        return baselines[convention]

    # The floor counts ulps of the output's cancellation-free size: proj.bias can cancel W_proj context down to a
    # small output whose rounding is ulps of its O(1) terms (found at 1000 examples: dim 1, 7.6e-4 from terms ~1).
    for actual, label in actual_of(module, declared):
        assert_matches_declared(actual, case.oracle_output, baseline_of, declared=declared,
                                differ=case.conventions_differ, dtype=dtype, what=f"{what}: {label}",
                                module_window=case.config.window_size, used_window=case.used_window,
                                shape=case.x.shape, magnitude_of=case.oracle_output_magnitude)


@register(KIND, cases)
def forward_matches_oracle(impl, case, device, dtype):
    """Eval-mode output equals the float64 oracle of the target's declared index convention on the same
    (dtype-rounded) inputs: unit-scale bias tables, qkv biases, masks, ``qk_scale`` None / 0 / set, and windows in
    use smaller than the module's (a prefix, where the conventions agree, or not, where they differ). With autograd
    recording, and under ``torch.no_grad()`` on one thread and on several."""

    def outputs(module, declared):
        yield forward(module, case_r, device, dtype, declared=declared), "output"
        for threads in thread_counts():
            with torch.no_grad(), cpu_threads(threads):
                yield (forward(module, case_r, device, dtype, declared=declared),
                       f"output under no_grad on {threads} thread(s)")

    case_r = rounded_case(case, dtype)
    _window_check(impl, case, device, dtype, outputs, "window-level forward")


@register(KIND, cases, needs=("gradients",))
def gradients_match_oracle(impl, case, device, dtype):
    """Gradients of sum(out * grad_out) with respect to x and every parameter equal the oracle's hand-written VJP
    under the declared convention: the bias table's gradient is scatter-added over the index in use (rows the index
    never reads get 0), then ``qkv`` (weight and bias) and ``proj``."""
    case = rounded_case(case, dtype)
    module = build(impl, case.config, case.params, device, dtype, train=True)
    declared = declared_convention(impl, module)
    actual = gradients(module, case, device, dtype, declared=declared)
    baseline = gradients(build_baseline(case.config, case.params, case.used_window, declared, device, dtype,
                                        train=True), case, device, dtype)
    try:
        assert_close_mapping(actual, case.oracle_vjp(declared), baseline=baseline, dtype=dtype,
                             magnitudes=case.oracle_vjp_magnitudes(declared))
    except AssertionError as exc:
        if case.conventions_differ:
            other = _other(declared)
            other_baseline = gradients(build_baseline(case.config, case.params, case.used_window, other, device,
                                                      dtype, train=True), case, device, dtype)
            try:
                assert_close_mapping(actual, case.oracle_vjp(other), baseline=other_baseline, dtype=dtype,
                                     magnitudes=case.oracle_vjp_magnitudes(other))
            except AssertionError:
                raise exc from None
            raise AssertionError(verdict_message(declared, case.config.window_size, case.used_window,
                                                 case.x.shape) + f"\n{exc}") from None
        raise


@register(KIND, masked_batches, dtypes=HIGH, needs=("masks",))
def mask_is_added_once_through_the_batch_major_view(impl, case, device, dtype):
    """With several images and several windows (``B_ = B * nW``, rows batch-major), row ``b`` gets ``mask[b %
    nW]``, added once: the output equals the oracle, and is told apart from the window-major reading (row ``b``
    gets ``mask[b // B]``) wherever that reading differs."""
    case = rounded_case(case, dtype)
    module = build(impl, case.config, case.params, device, dtype)
    declared = declared_convention(impl, module)
    faithful = build_baseline(case.config, case.params, case.used_window, declared, device, dtype)
    with torch.no_grad():
        actual = forward(module, case, device, dtype, declared=declared)
        baseline = forward(faithful, case, device, dtype)
    result = assert_close(actual, case.oracle_output(declared), baseline=baseline, dtype=dtype,
                          what="output with a mask over several images")
    rows = np.arange(case.x.shape[0])
    window_major = case.mask[rows // case.batch]  # (B_, N, N): row b gets mask[b // B]
    per_row = np.stack([case.mask[b % case.n_windows] for b in rows])
    if not np.array_equal(window_major, per_row):
        alternative = np.concatenate([
            case.oracle_output(declared, x=case.x[b : b + 1], mask=window_major[b : b + 1]) for b in rows])
        gap = np.abs(alternative - case.oracle_output(declared)).max()
        if gap > 10 * result.bound:
            distance = np.abs(actual.double().cpu().numpy() - alternative).max()
            assert distance > result.bound, "the output equals the oracle's with the window-major mask reading"


@register(KIND, one_frame, dtypes=HIGH)
def one_frame_is_v1_window_attention(impl, case, device, dtype):
    """A window ``(1, Wh, Ww)`` is Swin V1's window attention: its table has ``(2Wh-1)(2Ww-1)`` rows and its index
    reduces to V1's, so the output equals ``reference.window_attention`` (the 2-D oracle) with the same
    parameters."""
    case = rounded_case(case, dtype)
    module = build(impl, case.config, case.params, device, dtype)
    faithful = build(BASELINE, case.config, case.params, device, dtype)
    expected = reference.window_attention(case.x, case.params, num_heads=case.config.num_heads,
                                          window_size=case.config.window_size[1:], mask=case.mask,
                                          qk_scale=case.config.qk_scale)
    with torch.no_grad():
        assert_close(forward(module, case, device, dtype), expected, baseline=forward(faithful, case, device, dtype),
                     dtype=dtype, what="output of a one-frame window against the 2-D oracle")


@register(KIND, st3d.window_attention_3d_cases(st3d.window_attention_3d_configs(qk_scale=0.0)), dtypes=FLOAT64)
def qk_scale_zero_means_the_default(impl, case, device, dtype):
    """``qk_scale=0`` means ``d ** -0.5``, as upstream's ``qk_scale or head_dim ** -0.5``: the output equals the
    module built with ``qk_scale=None`` on the same parameters (and the oracle), not one with every logit scaled by
    0."""
    module = build(impl, case.config, case.params, device, dtype)
    default = build(impl, replace(case.config, qk_scale=None), case.params, device, dtype)
    declared = declared_convention(impl, module)
    with torch.no_grad():
        actual = forward(module, case, device, dtype, declared=declared)
        expected = forward(default, case, device, dtype, declared=declared)
    assert_close(actual, case.oracle_output(declared), baseline=expected, dtype=dtype, what="output at qk_scale=0")


@register(KIND, with_dropout, dtypes=FLOAT64, needs=("training",))
def dropout_acts_only_in_train_mode(impl, case, device, dtype):
    """With non-zero dropout rates, eval mode is deterministic and equals the oracle; train mode with a non-zero
    rate is random (two calls differ) when there are enough elements to drop."""
    module = build(impl, case.config, case.params, device, dtype)
    declared = declared_convention(impl, module)
    first = forward(module, case, device, dtype, declared=declared)
    assert torch.equal(first, forward(module, case, device, dtype, declared=declared)), "eval mode is not deterministic"
    faithful = build_baseline(case.config, case.params, case.used_window, declared, device, dtype)
    assert_close(first, case.oracle_output(declared), baseline=forward(faithful, case, device, dtype), dtype=dtype,
                 what="eval output with dropout set")
    cfg = case.config
    n_droppable = (case.x.shape[0] * cfg.num_heads * case.n_tokens**2 * (cfg.attn_drop > 0)
                   + case.x.size * (cfg.proj_drop > 0))
    if n_droppable >= 200:  # two draws at p >= 0.1 coincide on 200 elements with probability < 1e-17
        module.train()
        torch.manual_seed(case.seed)
        a, b = (forward(module, case, device, dtype, declared=declared) for _ in range(2))
        assert not torch.equal(a, b), "train mode with dropout gave the same output twice"


# --------------------------------------------------------------------------------------------------
# Map level: the module inside Video Swin's block code
# --------------------------------------------------------------------------------------------------


@register(KIND, map_cases, dtypes=HIGH)
def map_level_matches_oracle(impl, case, device, dtype):
    """The module inside Video Swin's block code (shrink rule on the unpadded clip, zero-pad at the end, roll by
    -shift and Video Swin's -100 (or -inf) mask when a shift is in use, partition, attention, reverse, roll back,
    crop) equals ``reference.shifted_window_attention_3d`` under the declared convention: clips shorter than the
    window along any axis, equal to it (shift zeroed), needing padding (pad tokens are unmasked keys with
    ``k = b_k``, ``v = b_v``), and shifts of 0 on some or all axes (all 0: plain windows, no mask)."""
    case = rounded_case(case, dtype)
    module = build(impl, case.config, case.params, device, dtype)
    declared = declared_convention(impl, module)
    used = case.geometry.used[0]

    baselines = {}

    def baseline_of(convention):
        if convention not in baselines:
            faithful = build_baseline(case.config, case.params, used, convention, device, dtype)
            with torch.no_grad():
                baselines[convention] = map_forward(faithful, case, device, dtype)
        return baselines[convention]

    with torch.no_grad():
        actual = map_forward(module, case, device, dtype, declared=declared)
    assert_matches_declared(actual, case.oracle_output, baseline_of, declared=declared,
                            differ=case.conventions_differ, dtype=dtype, what="map-level output",
                            module_window=case.config.window_size, used_window=used, shape=case.x.shape)


def block_matches_oracle(block, case, device="cpu", dtype=torch.float64) -> None:
    """The check of ``map_level_matches_oracle`` with the *block code* as the parameter: ``block(x, attn, *,
    window_size, shift_size, fill)`` around the upstream-faithful module equals the truncated oracle (the tolerance
    baseline: the same module through Video Swin's block code). Catches the block mutants of
    ``refimpl.mutants.window_attention_3d``."""
    case = rounded_case(case, dtype)
    module = build(BASELINE, case.config, case.params, device, dtype)
    g = case.geometry
    with torch.no_grad():
        actual = block(to_tensor(case.x, device, dtype), module, window_size=g.window_size,
                       shift_size=g.shift_size, fill=case.fill)
        baseline = map_forward(module, case, device, dtype)
    assert tuple(actual.shape) == tuple(case.x.shape), f"the block returned shape {tuple(actual.shape)}"
    assert_close(actual, case.oracle_output(UPSTREAM_CONVENTION), baseline=baseline, dtype=dtype,
                 what="map-level output of the block code")


@register(KIND, isolation_cases, dtypes=FLOAT64)
def a_token_only_sees_its_shifted_window(impl, drawn, device, dtype):
    """Isolation at map level: changing one token of the clip changes the block's output only at the tokens of its
    shifted window (in the padded, unrolled clip the windows cut each axis at ``s', s' + W', ...``; nothing wraps
    around), and the output there equals the oracle."""
    case, pick = drawn
    module = build(impl, case.config, case.params, device, dtype)
    g = case.geometry
    used, shift = g.used
    token = np.unravel_index(pick % int(np.prod(g.size)), g.size)
    x = case.x.copy()
    x[:, token[0], token[1], token[2]] += 3.0
    declared = declared_convention(impl, module)
    with torch.no_grad():
        before = map_forward(module, case, device, dtype, declared=declared).double().cpu().numpy()
        after = map_forward(module, case, device, dtype, x=x, declared=declared).double().cpu().numpy()
    cells = [np.array([reference.shifted_window_cell(p, used[a], shift[a]) for p in range(g.size[a])])
             for a in range(3)]
    same = ((cells[0] == cells[0][token[0]])[:, None, None] & (cells[1] == cells[1][token[1]])[None, :, None]
            & (cells[2] == cells[2][token[2]])[None, None, :])
    changed = np.abs(after - before).max(axis=(0, 4)) > 0  # (D, H, W)
    outside = np.argwhere(changed & ~same)
    assert not outside.size, (f"changing token {tuple(int(t) for t in token)} changed the output at "
                              f"{len(outside)} tokens outside its shifted window, first {tuple(outside[0])}")
    expected = case.oracle_output(declared, x=x)
    assert_close(after[:, same], expected[:, same], baseline=None, dtype=dtype,
                 what="output in the changed token's window")


# --------------------------------------------------------------------------------------------------
# The kind: Video Swin's protocol, checked before any property
# --------------------------------------------------------------------------------------------------

SIGNATURE = ("Video Swin's WindowAttention3D(dim, window_size, num_heads, qkv_bias=False, qk_scale=None, "
             "attn_drop=0.0, proj_drop=0.0)")


def _protocol_window_attention_3d(factory) -> None:
    modes = Capabilities.declared_by(factory, KIND).modes
    module = build_target(factory, dict(dim=8, window_size=(2, 3, 2), num_heads=2, qkv_bias=True), SIGNATURE)
    try:
        declared = declared_convention(Implementation(KIND, "target", factory), module)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    expected = {"relative_position_bias_table": (3 * 5 * 3, 2), "relative_position_index": (12, 12),
                "qkv.weight": (24, 8), "qkv.bias": (24,), "proj.weight": (8, 8), "proj.bias": (8,)}
    check_state_keys(dict(module.state_dict()), expected, "Video Swin")
    x = torch.zeros(4, 12, 8)
    shrunk = window_in_use(declared, (2, 3, 2), (1, 3, 2))  # 6 tokens: a window shrunk along D
    calls = [(x, None, None), (torch.zeros(2, 6, 8), None, shrunk)]
    calls += [(x, torch.zeros(2, 12, 12), None)] * ("masks" in modes)
    for x_, mask, used_window in calls:
        signature = "forward(x, mask=None)" if used_window is None else "forward(x, mask=None, *, used_window)"
        out = call_target(lambda *a: _call(module, *a), (x_, mask, used_window), signature)
        if tuple(out.shape) != tuple(x_.shape):
            raise ProtocolError(f"forward on x {tuple(x_.shape)} returned shape {tuple(out.shape)}; expected "
                                f"(B_, N, C) (N may be below Wd*Wh*Ww: a shrunk window)")


def geometric_drop_in(*args, **kwargs):
    """refimpl's drop-in built with ``index_convention="geometric"``: the second target the project verifies (its
    tests; ``refimpl verify --target window_attention_3d=refimpl.suite.window_attention_3d:geometric_drop_in``)."""
    from refimpl.optimized import WindowAttention3D

    return WindowAttention3D(*args, **kwargs, index_convention="geometric")


geometric_drop_in.refimpl_capabilities = {"index_convention": "geometric"}


register_kind(Kind(KIND, upstream="Video Swin's WindowAttention3D",
                   default_target="refimpl.optimized:WindowAttention3D",
                   protocol=_protocol_window_attention_3d, modes=MODES, declarations=("index_convention",),
                   default_max_examples=50))
