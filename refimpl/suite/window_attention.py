"""Properties of window attention (AIM ``WindowAttention``), each checked against ``refimpl.reference``.

Every check takes the implementation under test as a parameter: ``impl.factory`` must accept AIM's constructor
arguments and return an ``nn.Module`` with AIM's state-dict keys and ``forward(x, mask=None, temporal=False)``.
The module builds its own index buffers; only the drawn *parameters* are loaded into it, never the oracle's
buffers, so a wrong buffer cannot be papered over.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from hypothesis import strategies as st

from refimpl import reference
from refimpl import strategies as rst
from refimpl.baselines.shifted_window import shifted_window_attention as swin_block_attention
from refimpl.baselines.window_attention import EagerWindowAttention
from refimpl.magnitudes import window_attention_output_magnitude
from refimpl.suite._core import (
    Capabilities,
    Implementation,
    Kind,
    KindModes,
    Mode,
    Unsupported,
    cpu_threads,
    register,
    register_kind,
    round_to,
    thread_counts,
    to_tensor,
)
from refimpl.suite._protocol import ProtocolError, build_target, call_target, check_state_keys
from refimpl.tolerance import assert_close, assert_close_mapping, compare, error_bound

KIND = "window_attention"
EAGER = Implementation(KIND, "refimpl.baselines.window_attention:EagerWindowAttention", EagerWindowAttention)


MODES = KindModes(
    modes=(
        Mode("temporal", "a temporal call, forward(x, mask, temporal=True), attending over the T frames of one "
             "position with the temporal bias table", upstream_behaviour="AIM has it; Swin and most peers do not"),
        Mode("masks", "an additive window mask (nW, N, N), Swin's 0/-100 or 0/-inf with at least one allowed key "
             "per row; row b of x uses mask[b % nW]", upstream_behaviour="added to the logits through the 5-D view "
             "(B_/nW, nW, nH, N, N), window-major rows would be a bug"),
        Mode("qk_scale", "a qk_scale other than the default head_dim^-0.5", upstream_behaviour="AIM computes "
             "qk_scale or head_dim**-0.5, so qk_scale=0 also means the default"),
        Mode("training", "train mode: dropout, with non-zero rates, acts only there"),
        Mode("gradients", "autograd through the forward: gradients of x, both linears and the bias tables"),
        Mode("boolean_masks", "a boolean may-attend mask (True: may attend), which refimpl turns into 0/-inf",
             upstream=False, upstream_behaviour="AIM adds a boolean mask as 1/0, which does not mask"),
        Mode("fully_masked_rows", "query rows with no allowed key (all -inf, or all False), whose attention "
             "output refimpl defines as 0 (the output token is proj.bias)", upstream=False,
             upstream_behaviour="eager softmax over an all -inf row gives NaN"),
    ),
    case_modes=lambda case: case_modes(case),
    case_edges=lambda case: case_edges(case),
)


def _parts(case) -> tuple:
    """A drawn case and whatever it was drawn with (a property may draw a tuple, e.g. ``(case, gap)``)."""
    return tuple(p for part in case for p in _parts(part)) if isinstance(case, tuple) else (case,)


def case_modes(case) -> tuple[str, ...]:
    """The modes a drawn case uses (targets that do not support one skip the case): a temporal call, a mask and
    its convention, rows with no allowed key, a non-default qk_scale; for a tuple, every part's modes."""
    used = []
    for part in _parts(case):
        config = getattr(part, "config", part)
        geometry = getattr(part, "geometry", None)  # map-level cases: masked when shifted
        masked = getattr(part, "has_mask", False) or (geometry is not None and geometry.shift_size > 0)
        used += [m for m, on in (("temporal", getattr(part, "temporal", False)),
                                 ("masks", masked),
                                 ("boolean_masks", masked and getattr(part, "mask_convention", "") == "bool"),
                                 ("fully_masked_rows", masked and getattr(part, "fully_masked_rows", False)),
                                 ("qk_scale", getattr(config, "qk_scale", None) not in (None, 0)))
                 if on and m not in used]
    return tuple(used)


def case_edges(case) -> list[str]:
    """The edges a failing case sits on, named in the failure report."""
    edges = []
    for part in _parts(case):
        config = getattr(part, "config", None)
        if config is not None and getattr(config, "qk_scale", None) == 0:
            edges.append("qk_scale=0, which upstream takes as the default head_dim^-0.5")
        if getattr(part, "has_mask", False):
            edges.append(f"mask convention {part.mask_convention}" + (" with rows that allow no key"
                                                                       if part.fully_masked_rows else ""))
        geometry = getattr(part, "geometry", None)
        if geometry is not None:
            H, W, ws, s = geometry.args
            edges.append(f"map {H}x{W}, window {ws}, shift {s}, fill {part.fill}")
            if geometry.n_windows == 1:
                edges.append("a single window covers the whole map")
        if config is not None and hasattr(config, "window_size") and config.window_size[0] != config.window_size[1]:
            edges.append(f"a non-square window {tuple(config.window_size)}")
    return edges



# --------------------------------------------------------------------------------------------------
# Running an implementation on a case
# --------------------------------------------------------------------------------------------------


def rounded_case(case: rst.WindowAttentionCase, dtype: torch.dtype) -> rst.WindowAttentionCase:
    """The case as a ``dtype`` implementation sees it: the oracle then runs on exactly those inputs."""
    return case.with_arrays(
        x=round_to(case.x, dtype),
        params={k: round_to(a, dtype) for k, a in case.params.items()},
        mask=case.mask if case.mask is None or case.mask.dtype == bool else round_to(case.mask, dtype),
        grad_out=round_to(case.grad_out, dtype),
    )


def build(impl: Implementation, config, params, device, dtype, *, train=False) -> torch.nn.Module:
    """Build the implementation with ``config`` and load ``params`` (parameters only, never buffers)."""
    module = impl.factory(**config.kwargs()).to(device=device, dtype=dtype)
    if "temporal" not in impl.capabilities.modes:  # a spatial-only target need not have a temporal table to load
        own = dict(module.named_parameters())
        params = {k: a for k, a in params.items() if not k.startswith("temporal_") or k in own}
    state = {k: to_tensor(a, device, dtype) for k, a in params.items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    buffers = {name for name, _ in module.named_buffers()}
    if unexpected or set(missing) - buffers:
        raise AssertionError(
            f"{impl.name} does not have AIM's state-dict keys: unexpected {sorted(unexpected)}, "
            f"missing parameters {sorted(set(missing) - buffers)}"
        )
    return module.train(train)


def forward(module, case, device, dtype, *, x=None, mask=None, temporal=None) -> torch.Tensor:
    x = case.x if x is None else x
    mask = case.mask if mask is None else mask
    temporal = case.temporal if temporal is None else temporal
    mask_t = None if mask is None else to_tensor(mask, device, dtype)
    return module(to_tensor(x, device, dtype), mask_t, temporal)


def gradients_of(module, run, case, device, dtype) -> dict[str, torch.Tensor]:
    """``d sum(run(x) * grad_out)`` with respect to ``x = case.x`` and every parameter of ``module`` (zeros
    where none flowed); ``run(x)`` calls the module, directly or inside a map-level operation."""
    x = to_tensor(case.x, device, dtype, requires_grad=True)
    (run(x) * to_tensor(case.grad_out, device, dtype)).sum().backward()
    grads = {"x": x.grad}
    for name, p in module.named_parameters():
        grads[name] = p.grad if p.grad is not None else torch.zeros_like(p)
    return grads


def gradients(module, case, device, dtype) -> dict[str, torch.Tensor]:
    """Gradients of a window-attention call on ``case`` (see ``gradients_of``)."""
    mask = None if case.mask is None else to_tensor(case.mask, device, dtype)
    return gradients_of(module, lambda x: module(x, mask, case.temporal), case, device, dtype)


def output_magnitude(stages, params) -> float:
    """The cancellation-free size of ``proj(context) + bias``: ``max(|context| |W_proj|^T + |b_proj|)``."""
    size = np.abs(stages.context) @ np.abs(params["proj.weight"]).T + np.abs(params["proj.bias"])
    return float(size.max(initial=0.0))


def assert_gradients_close(actual, expected, *, baseline, magnitudes, dtype, what: str = "grad") -> None:
    """Every oracle gradient has a counterpart within the tolerance policy; the floor counts ulps of the
    cancellation-free magnitudes, not of a possibly cancelled result."""
    # a spatial-only target has no temporal table, and a spatial call gives it no gradient
    assert_close_mapping(actual, expected, baseline=baseline, dtype=dtype, what=what, magnitudes=magnitudes,
                         optional=lambda key: key.startswith("temporal_") and not np.any(expected[key]))


def _run(impl, case, device, dtype, *, train=False):
    return build(impl, case.config, case.params, device, dtype, train=train)


# --------------------------------------------------------------------------------------------------
# Strategies for the properties
# --------------------------------------------------------------------------------------------------

cases = rst.window_attention_cases()
spatial_cases = rst.window_attention_cases(temporal=False)
masked_cases = rst.window_attention_cases(temporal=False, mask=True)
temporal_cases = rst.window_attention_cases(rst.window_attention_configs(use_temporal=True), temporal=True)
with_qkv_bias = rst.window_attention_cases(rst.window_attention_configs(qkv_bias=True))
with_dropout = rst.window_attention_cases(rst.window_attention_configs(dropout=True))
configs = rst.window_attention_configs()

FLOAT64 = ("float64",)
HIGH = ("float64", "float32")

# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------


@register(KIND, configs, dtypes=("float32",))
def buffers_match_oracle(impl, config, device, dtype):
    """The index buffers the module builds itself (relative_position_index, t_relative_coords) equal the oracle's
    tables, before any state dict is loaded."""
    module = impl.factory(**config.kwargs()).to(device)
    buffers = dict(module.named_buffers())
    expected = reference.relative_position_index(config.window_size)
    got = buffers.get("relative_position_index")
    assert got is not None, "the module has no relative_position_index buffer"
    # compared flat: upstream's buffer is (N, N), torchvision's the same entries flattened
    np.testing.assert_array_equal(got.cpu().numpy().reshape(-1), expected.reshape(-1),
                                  err_msg="relative_position_index")
    if config.use_temporal and "temporal" in impl.capabilities.modes:
        got = buffers.get("t_relative_coords")
        assert got is not None, "the module has no t_relative_coords buffer"
        expected = reference.temporal_relative_index(config.num_ttokens).reshape(-1)
        np.testing.assert_array_equal(got.cpu().numpy().reshape(-1), expected, err_msg="t_relative_coords")


@register(KIND, cases)
def forward_matches_oracle(impl, case, device, dtype):
    """Eval-mode output equals the float64 oracle on the same (dtype-rounded) inputs, within the tolerance
    policy: spatial with and without a window mask (-100, -inf or boolean; rows that may attend to nothing
    included), and temporal. With autograd recording, and under ``torch.no_grad()`` on one thread and on several,
    since an implementation may take other kernels when no derivative is needed or when threads are many
    (refimpl's does: a cached mask, fused SDPA on one thread, matmul-softmax-matmul on more)."""
    case = rounded_case(case, dtype)
    expected = case.oracle_output()
    module = _run(impl, case, device, dtype)
    baseline = forward(_run(EAGER, case, device, dtype), case, device, dtype)
    outputs = [(forward(module, case, device, dtype), "output")]
    for threads in thread_counts():
        with torch.no_grad(), cpu_threads(threads):
            outputs.append((forward(module, case, device, dtype), f"output under no_grad on {threads} thread(s)"))
    # the floor counts ulps of the output's cancellation-free size (proj.bias can cancel W_proj context)
    magnitude = window_attention_output_magnitude(case.x, case.oracle_stages().probs, case.params)
    for actual, what in outputs:
        try:
            assert_close(actual, expected, baseline=baseline, dtype=dtype, what=what, magnitude=magnitude)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{locate_divergence(impl, case, device, dtype, actual, expected)}") from None


def locate_divergence(impl, case, device, dtype, actual, expected) -> str:
    """Where a wrong output comes from, black-box: the (window, token) with the largest error, and whether the
    probabilities softmax(position bias + mask) already diverge (read out with q = k = 0, v = x, proj = I: then
    the worst (window, head, query, key)) or only the rest (q/k/v, q@k^T scaling, values, head merge, proj)."""
    error = np.abs(actual.detach().double().cpu().numpy() - expected).max(axis=-1)  # (B_, N)
    row, token = (int(i) for i in np.unravel_index(int(np.nanargmax(np.where(np.isnan(error), np.inf, error))),
                                                   error.shape))
    where = (f"largest output error at row {row} (image {row // case.n_windows}, window {row % case.n_windows}), "
             f"token {token}")
    if case.temporal or case.mask_convention != "-100" or case.fully_masked_rows:
        return where  # the read-out needs finite, spatial masks
    try:
        probs = attention_probabilities(impl, case, device, dtype)
    except Exception as exc:  # a target that fails the read-out: say so, keep the located output error
        return f"{where}; the probability read-out failed ({type(exc).__name__})"
    expected_probs = oracle_bias_probabilities(case)
    # "agrees" means within the tolerance policy of this dtype, as in probabilities_match_oracle, never a fixed
    # threshold: a float64 module whose softmax runs in float32 diverges there by ~1e-8
    comparison = compare(probs, expected_probs, baseline=attention_probabilities(EAGER, case, device, dtype),
                         dtype=dtype, what="probabilities")
    if comparison.ok:
        return (f"{where}; softmax(position bias + mask) agrees within the {comparison.dtype} tolerance "
                f"(probabilities with q = k = 0): the divergence is in q/k/v, the q@k^T scaling, the value product, "
                f"the head merge or the projection")
    w, h, i, j = comparison.worst_index
    return (f"{where}; first diverging stage: softmax(position bias + mask) (probabilities with q = k = 0 differ by "
            f"up to {comparison.max_error:.3g} > allowed {comparison.bound:.3g}, worst at window {w}, head {h}, "
            f"query {i}, key {j})")


@register(KIND, cases, needs=('gradients',))
def gradients_match_oracle(impl, case, device, dtype):
    """Gradients of sum(out * grad_out) with respect to x, both linears and both bias tables equal the oracle's
    hand-written VJP (the table gradient is a scatter-add over the index)."""
    case = rounded_case(case, dtype)
    expected = case.oracle_vjp()
    magnitudes = case.oracle_vjp_magnitudes()
    actual = gradients(_run(impl, case, device, dtype, train=True), case, device, dtype)
    baseline = gradients(_run(EAGER, case, device, dtype, train=True), case, device, dtype)
    assert_gradients_close(actual, expected, baseline=baseline, magnitudes=magnitudes, dtype=dtype)


@register(KIND, with_qkv_bias, dtypes=HIGH)
def softmax_rows_sum_to_one(impl, case, device, dtype):
    """Attention rows are normalized, seen black-box: when every value vector is the same vector u (v weights
    zero, v bias u), every output token is proj(u), whatever the logits, bias and mask."""
    c = case.config.dim
    params = dict(case.params)
    params["qkv.weight"] = params["qkv.weight"].copy()
    params["qkv.weight"][2 * c :] = 0.0
    case = rounded_case(case.with_arrays(params=params), dtype)
    u = case.params["qkv.bias"][2 * c :]
    expected = np.broadcast_to(case.params["proj.weight"] @ u + case.params["proj.bias"], case.x.shape)
    actual = forward(_run(impl, case, device, dtype), case, device, dtype)
    baseline = forward(_run(EAGER, case, device, dtype), case, device, dtype)
    assert_close(actual, expected, baseline=baseline, dtype=dtype, what="output with constant values")


def oracle_bias_probabilities(case) -> np.ndarray:
    """The oracle's ``(nW, nH, N, N)`` probabilities with q = k = 0, softmax(bias + mask[w]): what
    ``attention_probabilities`` reads out of a module (rows 0..nW-1 of the zero input are windows 0..nW-1)."""
    zero_qkv = {k: np.zeros_like(a) for k, a in case.params.items() if k.startswith("qkv.")}
    zeros = np.zeros((case.n_windows, case.n_tokens, case.config.dim))
    return reference.window_attention_stages(zeros, {**case.params, **zero_qkv}, **case.oracle_kwargs()).probs


def attention_probabilities(impl, case, device, dtype) -> np.ndarray:
    """Read the attention probabilities ``(nW, nH, N, N)`` out of a module, black-box.

    With q = k = 0 the logits are bias (+ mask) alone; with v = x and proj = identity, output channel ``h*d``
    of token i is ``sum_j P[h, i, j] * x[j, h*d]``. Feeding row ``r = j*nW + w`` a one at token j (and zeros
    elsewhere) makes row r's output read column j of window w's probabilities.
    """
    cfg, n, n_windows = case.config, case.n_tokens, case.n_windows
    c = cfg.dim
    params = dict(case.params)
    params["qkv.weight"] = np.concatenate([np.zeros((2 * c, c)), np.eye(c)])
    params["proj.weight"] = np.eye(c)
    params["proj.bias"] = np.zeros(c)
    if cfg.qkv_bias:
        params["qkv.bias"] = np.zeros(3 * c)
    x = np.zeros((n * n_windows, n, c))
    for j in range(n):
        x[j * n_windows : (j + 1) * n_windows, j, :] = 1.0
    module = build(impl, cfg, params, device, dtype)
    out = forward(module, case, device, dtype, x=x).detach().double().cpu().numpy()
    out = out[:, :, :: cfg.head_dim].reshape(n, n_windows, n, cfg.num_heads)  # [j, w, i, h]
    return np.einsum("jwih->whij", out)


@register(KIND, cases, dtypes=HIGH)
def probabilities_match_oracle(impl, case, device, dtype):
    """The attention probabilities read out of the module black-box equal the oracle's softmax(bias + mask[w]):
    the bias really is table[index], and window w gets mask[w]."""
    case = rounded_case(case, dtype)
    expected = oracle_bias_probabilities(case)
    actual = attention_probabilities(impl, case, device, dtype)
    baseline = attention_probabilities(EAGER, case, device, dtype)
    assert_close(actual, expected, baseline=baseline, dtype=dtype, what="attention probabilities")
    assert (actual >= 0).all(), "negative attention probability"


@register(KIND, temporal_cases, dtypes=FLOAT64, needs=('temporal',))
def temporal_attention_is_bidirectional_and_offset_biased(impl, case, device, dtype):
    """Temporal mode: every frame attends to every frame, earlier and later (no causal mask), and the bias
    between frames i and j depends on i - j only (log-probability differences are constant along diagonals)."""
    probs = attention_probabilities(impl, case, device, dtype)[0]  # (nH, T, T)
    assert (probs > 0).all(), f"some frame does not attend to another: min probability {probs.min():.3g}"
    baseline = attention_probabilities(EAGER, case, device, dtype)[0]

    def diagonal_steps(p):
        # log p[i, j] = bias(i - j) - log Z_i. Steps along a diagonal, log p[i+1, j+1] - log p[i, j], then equal
        # log Z_i - log Z_{i+1} for every j: compare each with the j = 0 step.
        steps = np.log(p[:, 1:, 1:]) - np.log(p[:, :-1, :-1])  # (nH, T-1, T-1)
        return steps, np.broadcast_to(steps[:, :, :1], steps.shape)

    steps, same_row_step = diagonal_steps(probs)
    baseline_steps, baseline_same_row_step = diagonal_steps(baseline)
    # the naive computation's deviation from the same law sets the tolerance
    naive = same_row_step + (baseline_steps - baseline_same_row_step)
    assert_close(steps, same_row_step, baseline=naive, dtype=dtype, what="log-probability steps along diagonals")


@register(KIND, masked_cases, dtypes=FLOAT64, needs=('masks',))
def mask_window_assignment_is_batch_major(impl, case, device, dtype):
    """Row b of x (window w = b mod nW of image b // nW) gets mask[w]: each row of a batched call equals the
    oracle on that row alone with the single-window mask mask[b mod nW] (no modulo logic involved)."""
    actual = forward(_run(impl, case, device, dtype), case, device, dtype)
    baseline = forward(_run(EAGER, case, device, dtype), case, device, dtype)
    for b in range(case.x.shape[0]):
        w = b % case.n_windows
        stages = reference.window_attention_stages(case.x[b : b + 1], case.params,
                                                   **{**case.oracle_kwargs(), "mask": case.mask[w : w + 1]})
        # one row's output can be far smaller than its terms (found with dim 1: a 5e-16 float64 error exceeded
        # 32 ulps of the row), so the floor counts ulps of the cancellation-free size
        assert_close(actual[b : b + 1], stages.out, baseline=baseline[b : b + 1], dtype=dtype,
                     what=f"row {b} (window {w})", magnitude=output_magnitude(stages, case.params))


@register(KIND, rst.window_attention_cases(mask=True), dtypes=HIGH, needs=('masks',))
def zero_mask_changes_nothing_and_temporal_ignores_mask(impl, case, device, dtype):
    """A window mask that allows everything (all 0, or all True) gives the unmasked result; in temporal mode any
    mask is ignored (bit-identical output)."""
    case = rounded_case(case, dtype)
    module = _run(impl, case, device, dtype)
    if case.temporal:
        with_mask = forward(module, case, device, dtype)
        without = module(to_tensor(case.x, device, dtype), None, True)
        assert torch.equal(with_mask, without), "temporal mode output changed when a mask was passed"
        return
    zeros = np.ones_like(case.mask) if case.mask.dtype == bool else np.zeros_like(case.mask)  # allows everything
    expected = reference.window_attention(case.x, case.params, **{**case.oracle_kwargs(), "mask": None})
    actual = forward(module, case, device, dtype, mask=zeros)
    baseline = forward(_run(EAGER, case, device, dtype), case, device, dtype, mask=zeros)
    assert_close(actual, expected, baseline=baseline, dtype=dtype, what="output with a zero mask")


def _current_params(module) -> dict[str, np.ndarray]:
    return {k: p.detach().double().cpu().numpy() for k, p in module.named_parameters()}


@register(KIND, cases, dtypes=HIGH, needs=('gradients', 'training', 'masks'))
def cached_bias_never_goes_stale(impl, case, device, dtype):
    """After load_state_dict, an optimizer step, an in-place edit of a bias table, a ``.data`` swap, or an
    in-place edit of the mask, the output reflects the new values (whatever the implementation caches)."""
    case = rounded_case(case, dtype)
    module = _run(impl, case, device, dtype)
    eager = _run(EAGER, case, device, dtype)
    mask = None if case.mask is None else to_tensor(case.mask, device, dtype)
    x = to_tensor(case.x, device, dtype)
    table = "temporal_position_bias_table" if case.temporal else "relative_position_bias_table"
    rng = np.random.default_rng(case.seed + 1)

    def check(step):
        with torch.no_grad():
            actual = module(x, mask, case.temporal)
            eager.load_state_dict(dict(module.named_parameters()), strict=False)  # never the module's buffers
            baseline = eager(x, mask, case.temporal)
        params = _current_params(module)
        mask_now = None if mask is None else (mask if mask.dtype == torch.bool else mask.double()).cpu().numpy()
        expected = reference.window_attention(case.x, params, **{**case.oracle_kwargs(), "mask": mask_now})
        assert_close(actual, expected, baseline=baseline, dtype=dtype, what=f"output after {step}")

    check("the first call")  # fills any cache
    fresh = {k: round_to(a, dtype) for k, a in rst.random_window_attention_params(case.config, rng).items()}
    module.load_state_dict({k: to_tensor(a, device, dtype) for k, a in fresh.items()}, strict=False)
    check("load_state_dict")
    # a gentle step on a linear loss: it moves every parameter, and keeps logits in the moderate range where
    # the comparison is about staleness, not about the conditioning of exploded weights
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    (module(x, mask, case.temporal) * to_tensor(case.grad_out, device, dtype)).sum().backward()
    optimizer.step()
    check("an optimizer step")
    with torch.no_grad():
        getattr(module, table).mul_(-2.0)
    check(f"an in-place edit of {table}")
    getattr(module, table).data = to_tensor(rng.standard_normal(tuple(getattr(module, table).shape)), device, dtype)
    check(f"a .data swap of {table}")
    if mask is not None:
        with torch.no_grad():
            fresh_mask = rst.random_window_mask(case.n_windows, case.n_tokens, rng, convention=case.mask_convention,
                                                fully_masked_rows=case.fully_masked_rows)
            mask.copy_(to_tensor(fresh_mask, device, dtype))
        check("an in-place edit of the mask")


@register(KIND, cases, dtypes=HIGH, needs=('masks', 'gradients'))
def inference_mode_works_and_sees_in_place_mask_edits(impl, case, device, dtype):
    """Under torch.inference_mode (inputs and mask created inside it, so they carry no version counter) the output
    equals the oracle, also after the mask is edited in place there; and a later call with autograd on (frozen
    parameters, x requiring grad) gives the oracle's input gradient, so nothing built under inference mode leaks
    into a graph."""
    case = rounded_case(case, dtype)
    module = _run(impl, case, device, dtype)
    eager = _run(EAGER, case, device, dtype)
    rng = np.random.default_rng(case.seed + 3)
    with torch.inference_mode():
        x = to_tensor(case.x, device, dtype)
        mask = None if case.mask is None else to_tensor(case.mask, device, dtype)
        actual, baseline = module(x, mask, case.temporal), eager(x, mask, case.temporal)
    assert_close(actual, case.oracle_output(), baseline=baseline, dtype=dtype, what="output under inference_mode")
    if mask is not None:
        fresh = rst.random_window_mask(case.n_windows, case.n_tokens, rng, convention=case.mask_convention,
                                       fully_masked_rows=case.fully_masked_rows)
        fresh = fresh if fresh.dtype == bool else round_to(fresh, dtype)
        with torch.inference_mode():
            mask.copy_(to_tensor(fresh, device, dtype))
            actual, baseline = module(x, mask, case.temporal), eager(x, mask, case.temporal)
        expected = case.with_arrays(mask=fresh).oracle_output()
        assert_close(actual, expected, baseline=baseline, dtype=dtype, what="output after an in-place mask edit")
        case = case.with_arrays(mask=fresh)
    for m in (module, eager):
        m.requires_grad_(False)
    actual, baseline = gradients(module, case, device, dtype)["x"], gradients(eager, case, device, dtype)["x"]
    assert_close(actual, case.oracle_vjp()["x"], baseline=baseline, dtype=dtype, what="grad of x after inference_mode",
                 magnitude=float(np.max(case.oracle_vjp_magnitudes()["x"], initial=0.0)))


@register(KIND, with_dropout, dtypes=FLOAT64, needs=('training',))
def dropout_acts_only_in_train_mode(impl, case, device, dtype):
    """With non-zero dropout rates, eval mode is deterministic and equals the oracle; train mode with a non-zero
    rate is random (two calls differ) when there are enough attention weights to drop."""
    module = _run(impl, case, device, dtype)
    first = forward(module, case, device, dtype)
    assert torch.equal(first, forward(module, case, device, dtype)), "eval mode is not deterministic"
    baseline = forward(_run(EAGER, case, device, dtype), case, device, dtype)
    assert_close(first, case.oracle_output(), baseline=baseline, dtype=dtype, what="eval output with dropout set")
    cfg = case.config
    n_droppable = case.x.shape[0] * cfg.num_heads * case.n_tokens**2 * (cfg.attn_drop > 0) + case.x.size * (
        cfg.proj_drop > 0
    )
    if n_droppable >= 200:  # two draws at p >= 0.1 coincide on 200 elements with probability < 1e-17
        module.train()
        torch.manual_seed(case.seed)
        a, b = forward(module, case, device, dtype), forward(module, case, device, dtype)
        assert not torch.equal(a, b), "train mode with dropout gave the same output twice"


DROPOUT_DRAWS = 64  # train-mode calls averaged by dropout_is_unbiased_in_train_mode


@register(KIND, with_dropout, dtypes=FLOAT64, needs=('training',))
def dropout_is_unbiased_in_train_mode(impl, case, device, dtype):
    """Dropout is inverted dropout (kept values scaled by 1/(1-p)), so the train-mode output averaged over many
    calls is the eval-mode output (the oracle): the mean of 64 calls, projected on two directions (the attention
    part of the output, and a random one), lies within 6 standard errors of the oracle's. A dropout that forgets
    the rescale, or drops what it should not, is biased along them."""
    cfg = case.config
    if cfg.attn_drop == 0 and cfg.proj_drop == 0:
        return
    expected = case.oracle_output()
    module = _run(impl, case, device, dtype, train=True)
    torch.manual_seed(case.seed)
    with torch.no_grad():
        draws = torch.stack([forward(module, case, device, dtype) for _ in range(DROPOUT_DRAWS)])
    draws = draws.double().cpu().numpy().reshape(DROPOUT_DRAWS, -1) - expected.reshape(1, -1)
    attention_part = (expected - case.params["proj.bias"]).reshape(-1)  # what attention dropout scales
    directions = {"the attention part": attention_part,
                  "a random direction": np.random.default_rng(case.seed).standard_normal(attention_part.size)}
    for name, w in directions.items():
        if not np.any(w):
            continue
        w = w / np.linalg.norm(w)
        projected = draws @ w  # (draws,): signed deviation from the oracle along w
        mean, standard_error = projected.mean(), projected.std(ddof=1) / np.sqrt(DROPOUT_DRAWS)
        slack = 1e-9 * (1.0 + np.abs(expected).max())  # no spread at all (nothing dropped): float64 noise
        assert abs(mean) <= 6 * standard_error + slack, (
            f"train-mode output averaged over {DROPOUT_DRAWS} calls is biased along {name}: mean deviation "
            f"{mean:.4g} from the eval output, {abs(mean) / max(standard_error, 1e-300):.1f} standard errors "
            f"({standard_error:.3g}); attn_drop={cfg.attn_drop}, proj_drop={cfg.proj_drop}")


@register(KIND, st.tuples(spatial_cases, rst.logit_gains))
def large_logits_give_the_oracles_output(impl, drawn, device, dtype):
    """``x`` scaled by 4-12, so logits reach tens to over a hundred (past ``exp``'s overflow in float16 at 11 and in
    float32 at 88.7, legal in every dtype): the output is the oracle's, finite, nearly one-hot attention. A softmax
    that does not subtract the row maximum before ``exp`` gives inf / inf there."""
    case, gain = drawn
    case = rounded_case(case.with_arrays(x=case.x * gain), dtype)
    actual = forward(_run(impl, case, device, dtype), case, device, dtype)
    assert torch.isfinite(actual).all(), f"large logits (x scaled by {gain:.3g}) gave a non-finite output"
    baseline = forward(_run(EAGER, case, device, dtype), case, device, dtype)
    assert_close(actual, case.oracle_output(), baseline=baseline, dtype=dtype,
                 what=f"output with x scaled by {gain:.3g}")


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t``'s values in the memory layout ``layout`` (``refimpl.strategies.MEMORY_LAYOUTS``)."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "permuted storage":
        axes = tuple(reversed(range(t.dim())))
        return t.permute(axes).contiguous().permute(axes)
    if layout == "every other row":
        return torch.stack([t, torch.zeros_like(t)], dim=1).flatten(0, 1)[::2]
    raise ValueError(f"layout must be one of {rst.MEMORY_LAYOUTS}, got {layout!r}")


@register(KIND, st.tuples(cases, rst.memory_layouts), dtypes=HIGH)
def any_memory_layout_gives_the_oracles_output(impl, drawn, device, dtype):
    """``x`` and the mask handed over as non-contiguous views (stored with the axes reversed, or every other row
    of a larger tensor) give the oracle's output in eval mode: a kernel that reads raw memory as if it were
    contiguous does not."""
    case, layout = drawn
    case = rounded_case(case, dtype)
    module = _run(impl, case, device, dtype)
    x = with_layout(to_tensor(case.x, device, dtype), layout)
    mask = None if case.mask is None else with_layout(to_tensor(case.mask, device, dtype), layout)
    with torch.no_grad():
        actual = module(x, mask, case.temporal)
    baseline = forward(_run(EAGER, case, device, dtype), case, device, dtype)
    assert_close(actual, case.oracle_output(), baseline=baseline, dtype=dtype, what=f"output for {layout} inputs")


@register(KIND, rst.window_attention_cases(mask=True), dtypes=("float32",), needs=('training',))
def forward_leaves_the_callers_tensors_untouched(impl, case, device, dtype):
    """The caller's ``x`` and mask hold the same values after an eval forward, and after a train-mode forward
    and backward (dropout off): a module that writes into them (e.g. turns a -100 mask into -inf in place, or
    adds a bias to ``x`` in place) corrupts the caller's next call, since Swin reuses one mask for every block."""
    module = _run(impl, case, device, dtype)
    x = to_tensor(case.x, device, dtype)
    mask = None if case.mask is None else to_tensor(case.mask, device, dtype)
    x_before, mask_before = x.clone(), None if mask is None else mask.clone()

    def untouched(when):
        assert torch.equal(x, x_before), f"x was modified {when}"
        if mask is not None:
            assert torch.equal(mask, mask_before), f"the mask was modified {when}"

    with torch.no_grad():
        module(x, mask, case.temporal)
    untouched("by an eval forward")
    module.train()
    module(x, mask, case.temporal).sum().backward()
    untouched("by a train-mode forward and backward")


@register(KIND, cases, dtypes=("float32",))
def flops_method_matches_the_formula_and_the_counted_work(impl, case, device, dtype):
    """``flops(N, T, temporal)``, when the module has it, is AIM's formula (``reference.window_attention_flops``,
    MACs of q@k^T and attn@v), and it is the attention-core work ``torch.utils.flop_counter`` sees in a forward on
    this case: the counted MACs minus the qkv and proj linears (``4 * N * C^2`` per row). A core the counter cannot
    see (a custom kernel) leaves only the formula checked."""
    from refimpl.counting import count_flops

    module = build(impl, case.config, case.params, device, dtype).eval()
    if not callable(getattr(module, "flops", None)):
        raise Unsupported("no flops(N, T, temporal) method (optional in AIM's protocol)")
    config, (rows, n, channels) = case.config, case.x.shape
    for tokens, frames, temporal in ((config.window_tokens, config.num_ttokens, False),
                                     (config.window_tokens, config.num_ttokens, True), (n, 1, case.temporal)):
        expected = reference.window_attention_flops(config.dim, config.num_heads, tokens, frames, temporal)
        got = module.flops(tokens, frames, temporal)
        assert got == expected, f"flops(N={tokens}, T={frames}, temporal={temporal}) = {got}, AIM's formula {expected}"
    with torch.no_grad():
        counted, per_op = count_flops(forward, module, case, device, dtype)
    core = reference.flops_to_macs(counted) - rows * 4 * n * channels**2
    if core > 0:  # spatial: B_ windows of one frame; temporal: B_ positions of T tokens
        formula = module.flops(rows, n, True) if case.temporal else rows * module.flops(n, 1, False)
        assert core == formula, f"counted attention core {core} MACs != flops formula {formula} ({per_op})"


# --------------------------------------------------------------------------------------------------
# Running a module at map level
# --------------------------------------------------------------------------------------------------


def rounded_map_case(case: rst.ShiftedWindowAttentionCase, dtype) -> rst.ShiftedWindowAttentionCase:
    """The case as a ``dtype`` implementation sees it: the oracle then runs on exactly those inputs."""
    return case.with_arrays(
        x=round_to(case.x, dtype),
        params={k: round_to(a, dtype) for k, a in case.params.items()},
        grad_out=round_to(case.grad_out, dtype),
    )


def map_forward(module, case, device, dtype, *, x=None, fill=None, requires_grad=False):
    """``(B, H, W, C)`` output of map-level attention around ``module``, driven by Swin's block code with the
    case's geometry; the same driver around the baseline module gives the tolerance baseline."""
    if not isinstance(x, torch.Tensor):
        x = to_tensor(case.x if x is None else x, device, dtype, requires_grad)
    geometry = case.geometry
    return swin_block_attention(x, module, window_size=geometry.window_size, shift_size=geometry.shift_size,
                                fill=case.fill if fill is None else fill)


def map_gradients(module, case, device, dtype) -> dict[str, torch.Tensor]:
    """Gradients of ``sum(out * grad_out)`` through map-level attention (see ``gradients_of``)."""
    return gradients_of(module, lambda x: map_forward(module, case, device, dtype, x=x), case, device, dtype)


def _modules(impl, case, device, dtype, *, train=False):
    return (build(impl, case.config, case.params, device, dtype, train=train),
            build(EAGER, case.config, case.params, device, dtype, train=train))


def visible_tokens(geometry: rst.ShiftedWindowConfig, r: int, c: int) -> np.ndarray:
    """``(H, W)`` bool: the tokens that token ``(r, c)`` may see, by the definition in the original frame (the
    same shifted window along both axes; ``reference.shifted_window_cell``), not by any mask."""
    ws, s = geometry.window_size, geometry.shift_size
    rows = np.array([reference.shifted_window_cell(i, ws, s) for i in range(geometry.H)])
    cols = np.array([reference.shifted_window_cell(j, ws, s) for j in range(geometry.W)])
    return (rows == rows[r])[:, None] & (cols == cols[c])[None, :]


# --------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------

map_cases = rst.shifted_window_attention_cases()
shifted_map_cases = rst.shifted_window_attention_cases(rst.shifted_window_configs(shift="nonzero"))
unshifted_map_cases = rst.shifted_window_attention_cases(rst.shifted_window_configs(shift="zero"))
minus_100_map_cases = rst.shifted_window_attention_cases(rst.shifted_window_configs(shift="nonzero"), fills=(-100.0,))
dead_row_cases = rst.window_attention_cases(
    temporal=False, mask=True, mask_conventions=("-inf", "bool"), fully_masked_rows=True
)
# One window of at least two tokens and a logit gap beyond the -100 mask's reach (e^10 = 22026 > N - 1).
gap_cases = st.tuples(
    rst.window_attention_cases(
        rst.window_attention_configs().filter(lambda c: c.window_tokens >= 2), temporal=False, mask=False
    ),
    st.floats(110.0, 1000.0),
)

# --------------------------------------------------------------------------------------------------
# Map-level properties of a window-attention module
# --------------------------------------------------------------------------------------------------


@register(KIND, map_cases, needs=('masks',))
def map_level_matches_oracle(impl, case, device, dtype):
    """Map-level (shifted) window attention around the module equals the float64 oracle (roll by -s, partition,
    masked window attention, reverse, roll back), with Swin's -100 mask and with -inf."""
    case = rounded_map_case(case, dtype)
    module, eager = _modules(impl, case, device, dtype)
    actual = map_forward(module, case, device, dtype)
    baseline = map_forward(eager, case, device, dtype)
    assert_close(actual, case.oracle_output(), baseline=baseline, dtype=dtype, what="map-level output")


@register(KIND, map_cases, needs=('gradients', 'masks'))
def map_level_gradients_match_oracle(impl, case, device, dtype):
    """Gradients of sum(out * grad_out) through map-level attention, with respect to the map and every
    parameter, equal the oracle's (the roll and the partition are permutations; their adjoints undo them)."""
    case = rounded_map_case(case, dtype)
    module, eager = _modules(impl, case, device, dtype, train=True)
    expected, magnitudes = case.oracle_vjp(), case.oracle_vjp_magnitudes()
    actual = map_gradients(module, case, device, dtype)
    baseline = map_gradients(eager, case, device, dtype)
    assert_gradients_close(actual, expected, baseline=baseline, magnitudes=magnitudes, dtype=dtype,
                           what="map-level grad")


@register(KIND, map_cases, dtypes=HIGH, needs=('masks',))
def perturbing_a_token_changes_only_its_own_shifted_window(impl, case, device, dtype):
    """Isolation: perturbing one token of the map changes the outputs of exactly the tokens that may see it (same
    shifted window, by the definition in the original frame) and nothing else: bit for bit with a -inf mask,
    and with -100 up to the oracle's e^-100 leak plus the dtype's rounding floor. The token itself changes."""
    case = rounded_map_case(case, dtype)
    module = build(impl, case.config, case.params, device, dtype)
    rng = np.random.default_rng(case.seed + 2)
    b, r, c = (int(rng.integers(n)) for n in case.x.shape[:3])
    x2 = case.x.copy()
    x2[b, r, c] += round_to(3.0 * rng.standard_normal(case.x.shape[-1]), dtype)
    x2 = round_to(x2, dtype)
    with torch.no_grad():
        change = (map_forward(module, case, device, dtype, x=x2) - map_forward(module, case, device, dtype))
    change = change.abs().amax(dim=-1).double().cpu().numpy()  # (B, H, W)
    outside = np.ones(change.shape, dtype=bool)
    outside[b] = ~visible_tokens(case.geometry, r, c)
    assert change[b, r, c] > 0, f"perturbing token {(b, r, c)} did not change its own output"
    if case.fill == -np.inf:
        leaked = np.argwhere(outside & (change > 0))
        assert leaked.size == 0, (
            f"perturbing token {(b, r, c)} changed tokens it may not see, e.g. {tuple(leaked[0])} "
            f"by {change[tuple(leaked[0])]:.3g} (-inf mask: isolation must be exact)"
        )
        return
    oracle = case.oracle_output()
    oracle_change = np.abs(case.with_arrays(x=x2).oracle_output() - oracle).max(axis=-1)
    # The allowance is the oracle's own -100 leak, not zero: it is ~e^(gap-100) relative, which large logit gaps
    # lift above float64 rounding (the thorough profile found one with qk_scale 2: H=4, W=12, ws 4, s 2).
    allowed = oracle_change + error_bound(oracle, None, dtype)
    worst = worst_leak(change, allowed, outside)
    assert worst is None, (
        f"perturbing token {(b, r, c)} changed token {worst}, which may not see it, "
        f"by {change[worst]:.3g} > {allowed[worst]:.3g} (the -100 leak plus the {dtype} rounding floor)"
    )


def worst_leak(change: np.ndarray, allowed: np.ndarray, outside: np.ndarray) -> tuple[int, ...] | None:
    """The token outside the perturbed token's window whose change exceeds its allowance by the most, or None
    when none does. With no token outside (one image whose one window covers the map) there is nothing to
    leak to: None, not the argmax of an all ``-inf`` array, which would name a token that may see the change."""
    excess = np.where(outside, change - allowed, -np.inf)
    if not outside.any() or excess.max() <= 0:
        return None
    return tuple(int(i) for i in np.unravel_index(np.argmax(excess), change.shape))


@register(KIND, unshifted_map_cases, dtypes=HIGH)
def without_shift_map_level_is_plain_window_attention(impl, case, device, dtype):
    """With shift 0 the map-level operation is plain window attention, no mask: each ws x ws block of the output
    equals the oracle's window attention on that block of the input, sliced straight out of the map."""
    case = rounded_map_case(case, dtype)
    module, eager = _modules(impl, case, device, dtype)
    actual = map_forward(module, case, device, dtype)
    baseline = map_forward(eager, case, device, dtype)
    ws, (batch, H, W, C) = case.geometry.window_size, case.x.shape
    expected = np.zeros(case.x.shape)
    for r in range(0, H, ws):
        for c in range(0, W, ws):
            block = case.x[:, r : r + ws, c : c + ws].reshape(batch, ws * ws, C)
            out = reference.window_attention(block, case.params, num_heads=case.config.num_heads,
                                             window_size=(ws, ws), qk_scale=case.config.qk_scale)
            expected[:, r : r + ws, c : c + ws] = out.reshape(batch, ws, ws, C)
    assert_close(actual, expected, baseline=baseline, dtype=dtype, what="unshifted map-level output")


@register(KIND, minus_100_map_cases, dtypes=HIGH, needs=('masks',))
def minus_100_matches_minus_inf_while_logits_are_bounded(impl, case, device, dtype):
    """Swin's -100 mask equals exact (-inf) masking up to a leak: in every row the masked keys hold at most
    |M| e^(gap - 100) of the probability (gap = largest masked logit minus largest allowed one), which for the
    drawn, bounded logits is far below any rounding; the module's -100 output then equals the -inf oracle."""
    case = rounded_map_case(case, dtype)
    H, W, ws, s = case.geometry.args
    rolled = np.roll(case.x, (-s, -s), axis=(1, 2))
    windows = reference.window_partition(rolled, ws).reshape(-1, ws * ws, case.x.shape[-1])
    stages = reference.window_attention_stages(
        windows, case.params, num_heads=case.config.num_heads, window_size=(ws, ws),
        mask=reference.shifted_window_mask(H, W, ws, s, -100.0), qk_scale=case.config.qk_scale,
    )
    masked = np.broadcast_to(stages.mask_rows[:, None] != 0, stages.logits.shape)
    unmasked_logits = stages.logits - stages.mask_rows[:, None]
    leak = np.where(masked, stages.probs, 0.0).sum(axis=-1)
    gap = np.where(masked, unmasked_logits, -np.inf).max(-1) - np.where(masked, -np.inf, unmasked_logits).max(-1)
    bound = masked.sum(axis=-1) * np.exp(gap - 100.0)
    assert (leak <= bound * (1 + 1e-9)).all(), "the -100 leak exceeds |M| e^(gap - 100)"
    module, eager = _modules(impl, case, device, dtype)
    actual = map_forward(module, case, device, dtype, fill=-100.0)
    baseline = map_forward(eager, case, device, dtype, fill=-100.0)
    expected = case.oracle_output(fill=-np.inf)
    assert_close(actual, expected, baseline=baseline, dtype=dtype, what="-100 output against the -inf oracle")


@register(KIND, gap_cases, dtypes=HIGH, needs=('masks',))
def minus_100_stops_masking_beyond_a_logit_gap_of_100(impl, drawn, device, dtype):
    """The failure mode of Swin's -100, recorded as a property rather than skipped: when a masked key's logit
    exceeds the allowed ones by more than about 100 (here 110..1000, via the bias table), the -100 mask no longer
    masks, and that key takes almost all of the weight; -inf (and boolean masks, for a target that opts into
    them) still give it exactly 0."""
    case, gap = drawn
    n = case.n_tokens
    index = reference.relative_position_index(case.config.window_size)
    params = dict(case.params)
    params["relative_position_bias_table"] = np.zeros_like(params["relative_position_bias_table"])
    params["relative_position_bias_table"][index[0, 1]] = gap  # query 0 -> key 1 gets +gap, every head
    blocked = np.zeros((1, n, n), dtype=bool)
    blocked[0, 0, 1] = True  # query 0 may not see key 1
    conventions = [("-100", np.where(blocked, -100.0, 0.0)), ("-inf", np.where(blocked, -np.inf, 0.0))]
    if "boolean_masks" in impl.capabilities.modes:
        conventions.append(("bool", ~blocked))
    for convention, mask in conventions:
        probe = replace(case, n_windows=1, has_mask=True, mask_convention=convention, params=params, mask=mask)
        p_masked = attention_probabilities(impl, probe, device, dtype)[0, :, 0, 1]  # (nH,)
        if convention == "-100":
            assert (p_masked > 0.99).all(), (
                f"with a logit gap of {gap:.4g}, the -100-masked key should take almost all the weight (the known "
                f"failure mode), got {p_masked.min():.3g}; an implementation that masks exactly here does not "
                f"compute Swin's -100 semantics"
            )
        else:
            assert (p_masked == 0).all(), f"{convention} mask: masked key got weight {p_masked.max():.3g}"


@register(KIND, dead_row_cases, needs=('masks', 'fully_masked_rows'))
def rows_with_no_allowed_key_attend_to_nothing(impl, case, device, dtype):
    """refimpl's decision for a query row with no allowed key (all -inf, or all False): it attends to nothing,
    its attention output is 0 and its output token is exactly proj.bias, never NaN; every gradient is finite.
    (Eager softmax gives NaN there, and SDPA backends differ across torch versions.)"""
    case = rounded_case(case, dtype)
    module = build(impl, case.config, case.params, device, dtype, train=True)
    x = to_tensor(case.x, device, dtype, requires_grad=True)
    mask = to_tensor(case.mask, device, dtype)
    out = module(x, mask, False)
    (out * to_tensor(case.grad_out, device, dtype)).sum().backward()
    allowed = case.mask if case.mask.dtype == bool else case.mask == 0
    dead = ~allowed.any(axis=-1)  # (nW, N)
    dead_rows = np.tile(dead, (case.batch, 1))  # row b of x uses window b % nW
    bias = module.proj.bias.detach()
    got = out.detach()[torch.as_tensor(dead_rows, device=out.device)]
    assert torch.equal(got, bias.expand_as(got)), (
        f"rows with no allowed key must output exactly proj.bias; max deviation "
        f"{(got - bias).abs().max().item() if got.numel() else 0:.3g} (NaN: {torch.isnan(got).any().item()})"
    )
    assert torch.isfinite(x.grad).all(), "non-finite gradient for x"
    for name, p in module.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"


# --------------------------------------------------------------------------------------------------
# The kind: AIM's protocol, checked before any property
# --------------------------------------------------------------------------------------------------


def _protocol_window_attention(factory) -> None:
    modes = Capabilities.declared_by(factory, "window_attention").modes
    kwargs = dict(dim=8, num_ttokens=3, window_size=(2, 2), num_heads=2)
    module = build_target(factory, kwargs, "AIM's WindowAttention(dim, num_ttokens, window_size, num_heads, ...)")
    keys = dict(module.state_dict())
    expected = {"qkv.weight": (24, 8), "proj.weight": (8, 8), "proj.bias": (8,), "relative_position_bias_table": (9, 2)}
    if "temporal" in modes:  # a target that declares no temporal mode need not have the temporal table
        expected["temporal_position_bias_table"] = (5, 2)
    check_state_keys(keys, expected, "AIM")
    x = torch.zeros(4, 4, 8)
    calls = [(x,)] + [(x, torch.zeros(2, 4, 4))] * ("masks" in modes) + [(torch.zeros(4, 3, 8), None, True)] * (
        "temporal" in modes)
    for args in calls:
        out = call_target(module, args, "forward(x, mask=None, temporal=False)")
        if tuple(out.shape) != tuple(args[0].shape):
            raise ProtocolError(f"forward on x {tuple(args[0].shape)} returned shape {tuple(out.shape)}; expected "
                                f"x's shape (B_, N, C)")


register_kind(Kind(KIND, upstream="AIM's WindowAttention", default_target="refimpl.optimized:WindowAttention",
                   protocol=_protocol_window_attention, modes=MODES))
