"""Properties of Swin V2 window attention (microsoft ``WindowAttention``), each checked against
``refimpl.reference.window_attention_v2``.

Every check takes the implementation under test as a parameter: ``impl.factory`` must accept microsoft's
constructor arguments and return an ``nn.Module`` with microsoft's parameter keys and ``forward(x, mask=None)``.

"Built by the module, not loaded": only the drawn *parameters* (``logit_scale``, ``q_bias``/``v_bias``,
``qkv.weight``, ``proj.*``, ``cpb_mlp.*``) are loaded into a module, never the oracle's coordinates or index. The
position bias a module computes therefore has to come from its own coordinates and index, built at construction
from ``window_size`` and ``pretrained_window_size``; the properties check those buffers against the definitions,
and the bias read out black-box against ``16 sigmoid(MLP(coords))[index]`` of the loaded MLP.

The tolerance baseline is the upstream-faithful module (``refimpl.baselines.window_attention_v2``): its float32
coordinate table and clamp bound make its float64 error ~1e-7..1e-6 at unit-scale parameters, so a float64 target
is held to 16 times that, not to float64 rounding; that is the price of passing correct upstream code. Upstream
clamps in two ways (microsoft at a float32 ``ln 100``, timm and transformers at the exact one), and the two error
sources can cancel in one and not the other, so every output the clamp reaches is compared with both as baselines
(``upstream_baselines``; ``refimpl.tolerance``).
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import assume
from hypothesis import strategies as st

from refimpl import reference
from refimpl.baselines.shifted_window import shifted_window_attention as swin_block_attention
from refimpl.baselines.window_attention_v2 import WindowAttention as FaithfulWindowAttentionV2
from refimpl.magnitudes import window_attention_output_magnitude
from refimpl.strategies import window_attention_v2 as v2st
from refimpl.strategies.shifted_window import shifted_window_configs
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
from refimpl.tolerance import assert_close, assert_close_mapping

KIND = "window_attention_v2"
BASELINE = Implementation(KIND, "refimpl.baselines.window_attention_v2:WindowAttention", FaithfulWindowAttentionV2)
LN_100 = v2st.LN_100

MODES = KindModes(
    modes=(
        Mode("masks", "an additive window mask (nW, N, N), Swin's 0/-100 or 0/-inf with the diagonal allowed; row b "
             "of x uses mask[b % nW]", upstream_behaviour="added once through the 5-D view (B_/nW, nW, nH, N, N); "
             "with logits near ±100, -100 does not always mask, and that is the semantics"),
        Mode("pretrained_window", "a pretrained_window_size other than (0, 0): the coordinates are divided by "
             "P - 1 instead of window - 1", upstream_behaviour="microsoft tests pretrained_window_size[0] > 0 only; "
             "torchvision's ShiftedWindowAttentionV2 has no such argument"),
        Mode("training", "train mode: dropout, with non-zero rates, acts only there"),
        Mode("gradients", "autograd through the forward: gradients of x, the linears, q/v biases, the logit scale "
             "and the CPB MLP"),
    ),
    case_modes=lambda case: case_modes(case),
    case_edges=lambda case: case_edges(case),
)


def _parts(case) -> tuple:
    return tuple(p for part in case for p in _parts(part)) if isinstance(case, tuple) else (case,)


def case_modes(case) -> tuple[str, ...]:
    """The modes a drawn case uses: a window mask (or a shifted map), a pretrained window."""
    used = []
    for part in _parts(case):
        config = getattr(part, "config", part)
        geometry = getattr(part, "geometry", None)
        masked = getattr(part, "has_mask", False) or (geometry is not None and geometry.shift_size > 0)
        pretrained = tuple(getattr(config, "pretrained_window_size", (0, 0))) != (0, 0)
        used += [m for m, on in (("masks", masked), ("pretrained_window", pretrained)) if on and m not in used]
    return tuple(used)


def case_edges(case) -> list[str]:
    """The edges a failing case sits on, named in the failure report."""
    edges = []
    for part in _parts(case):
        config = getattr(part, "config", None)
        params = getattr(part, "params", None)
        if params is not None and "logit_scale" in params:
            scales = np.asarray(params["logit_scale"]).reshape(-1)
            clamped = int((scales > LN_100).sum())
            if clamped:
                edges.append(f"{clamped} of {scales.size} heads have logit_scale above ln 100 (clamped to scale 100)")
        if getattr(part, "has_mask", False):
            edges.append(f"mask convention {part.mask_convention}")
        geometry = getattr(part, "geometry", None)
        if geometry is not None:
            H, W, ws, s = geometry.args
            edges.append(f"map {H}x{W}, window {ws}, shift {s}, fill {part.fill}")
        if config is not None and hasattr(config, "window_size"):
            if config.window_size[0] != config.window_size[1]:
                edges.append(f"a non-square window {tuple(config.window_size)}")
            if min(config.window_size) == 1:
                edges.append(f"a window side of 1 (with pretrained window {config.pretrained_window_size})")
    return edges


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
    """Build the implementation with ``config`` and load ``params`` (parameters only, never buffers)."""
    module = impl.factory(**config.kwargs()).to(device=device, dtype=dtype)
    missing, unexpected = module.load_state_dict({k: to_tensor(a, device, dtype) for k, a in params.items()},
                                                 strict=False)
    buffers = {name for name, _ in module.named_buffers()}
    if unexpected or set(missing) - buffers:
        raise AssertionError(f"{impl.name} does not have microsoft's parameter keys: unexpected {sorted(unexpected)}, "
                             f"missing parameters {sorted(set(missing) - buffers)}")
    return module.train(train)


def forward(module, case, device, dtype, *, x=None, mask="case") -> torch.Tensor:
    x = case.x if x is None else x
    mask = case.mask if isinstance(mask, str) else mask
    return module(to_tensor(x, device, dtype), None if mask is None else to_tensor(mask, device, dtype))


def gradients(module, case, device, dtype) -> dict[str, torch.Tensor]:
    """``d sum(out * grad_out)`` with respect to ``x`` and every parameter (zeros where none flowed)."""
    x = to_tensor(case.x, device, dtype, requires_grad=True)
    mask = None if case.mask is None else to_tensor(case.mask, device, dtype)
    (module(x, mask) * to_tensor(case.grad_out, device, dtype)).sum().backward()
    grads = {"x": x.grad}
    for name, p in module.named_parameters():
        grads[name] = p.grad if p.grad is not None else torch.zeros_like(p)
    return grads


CLAMP_BOUNDS = ("float32", "exact")  # microsoft's; timm's and transformers' (refimpl.baselines.window_attention_v2)


def upstream_baselines(faithful, run):
    """``run(faithful)`` under each upstream clamp bound (``CLAMP_BOUNDS``), as one tolerance baseline: the tuple of
    the results, or for mappings (gradients) one tuple per key."""
    results = []
    for bound in CLAMP_BOUNDS:
        faithful.clamp_bound = bound
        faithful.zero_grad(set_to_none=True)  # a gradient run accumulates otherwise
        results.append(run(faithful))
    del faithful.clamp_bound  # back to the class's own (microsoft's)
    if isinstance(results[0], dict):
        return {key: tuple(r[key] for r in results) for key in results[0]}
    return tuple(results)


def _modules(impl, case, device, dtype, *, train=False):
    return (build(impl, case.config, case.params, device, dtype, train=train),
            build(BASELINE, case.config, case.params, device, dtype, train=train))


# --------------------------------------------------------------------------------------------------
# Strategies for the properties
# --------------------------------------------------------------------------------------------------

cases = v2st.window_attention_v2_cases()
masked_cases = v2st.window_attention_v2_cases(mask=True)
configs = v2st.window_attention_v2_configs()
with_dropout = v2st.window_attention_v2_cases(v2st.window_attention_v2_configs(dropout=True))
no_qkv_bias = v2st.window_attention_v2_cases(v2st.window_attention_v2_configs(qkv_bias=False))
# the mask-once construction needs two tokens and two channels per head (a cosine strictly between -1 and 1)
gap_cases = st.tuples(
    v2st.window_attention_v2_cases(v2st.window_attention_v2_configs(min_head_dim=2).filter(
        lambda c: c.window_tokens >= 2), mask=False),
    st.floats(-0.9, -0.1),
)
clamp_cases = st.tuples(cases, st.lists(st.floats(0.02, 3.0), min_size=16, max_size=16),
                        st.lists(st.booleans(), min_size=16, max_size=16))
map_cases = v2st.shifted_window_attention_v2_cases(shifted_window_configs(max_window=4, max_windows_per_side=2))

FLOAT64 = ("float64",)
HIGH = ("float64", "float32")
# F.normalize's eps (1e-12) is 0 in float16, so upstream's zero vectors give NaN there: not an upstream property
NORMALIZE_DTYPES = ("float64", "float32", "bfloat16")

# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------


@register(KIND, configs, dtypes=("float32",))
def buffers_match_the_definitions(impl, config, device, dtype):
    """The buffers the module builds itself, before any state dict is loaded: ``relative_position_index`` equals
    the V1 index exactly, and ``relative_coords_table`` (``(1, 2Wh-1, 2Ww-1, 2)``) the log-spaced coordinates
    ``sign(t) log2(1 + |t|) / 3``, ``t = 8 Δ / (P - 1 or window - 1)``, channel 0 the row offset (float32 values, as
    microsoft's buffer)."""
    module = impl.factory(**config.kwargs())
    buffers = dict(module.named_buffers())
    for key in ("relative_position_index", "relative_coords_table"):
        assert key in buffers, f"the module has no {key} buffer (microsoft's checkpoints have one)"
    index = reference.relative_position_index(config.window_size)
    np.testing.assert_array_equal(buffers["relative_position_index"].cpu().numpy().reshape(-1), index.reshape(-1),
                                  err_msg="relative_position_index")
    expected = reference.relative_coords_table(config.window_size, config.pretrained_window_size)
    got = buffers["relative_coords_table"].detach().cpu()
    assert tuple(got.shape) == (1, *expected.shape), f"relative_coords_table has shape {tuple(got.shape)}"
    baseline = FaithfulWindowAttentionV2(**config.kwargs()).relative_coords_table[0]
    assert_close(got[0], expected, baseline=baseline, dtype=torch.float32, what="relative_coords_table")


@register(KIND, cases)
def forward_matches_oracle(impl, case, device, dtype):
    """Eval-mode output equals the float64 oracle on the same (dtype-rounded) inputs, within the tolerance policy:
    per-head logit scales straddling the clamp, a randomized CPB MLP and q/v biases, pretrained windows, non-square
    windows, masks 0/-100 (which, with logits near ±100, does not always mask) and 0/-inf. With autograd recording,
    and under ``torch.no_grad()`` on one thread and on several (an implementation may cache, or take other kernels,
    there)."""
    case = rounded_case(case, dtype)
    expected = case.oracle_output()
    module, faithful = _modules(impl, case, device, dtype)
    baseline = upstream_baselines(faithful, lambda m: forward(m, case, device, dtype))
    outputs = [(forward(module, case, device, dtype), "output")]
    for threads in thread_counts():
        with torch.no_grad(), cpu_threads(threads):
            outputs.append((forward(module, case, device, dtype), f"output under no_grad on {threads} thread(s)"))
    # the floor counts ulps of the output's cancellation-free size (proj.bias can cancel W_proj context)
    magnitude = window_attention_output_magnitude(case.x, case.oracle_stages().probs, case.params)
    for actual, what in outputs:
        assert_close(actual, expected, baseline=baseline, dtype=dtype, what=what, magnitude=magnitude)


@register(KIND, cases, needs=("gradients",))
def gradients_match_oracle(impl, case, device, dtype):
    """Gradients of sum(out * grad_out) with respect to x and every parameter equal the oracle's hand-written VJP:
    the CPB MLP's weights (through 16 sigmoid and the gather), ``logit_scale`` (zero for heads above ``ln 100``:
    the clamp passes no gradient), ``q_bias``, ``v_bias``, ``qkv.weight`` and ``proj``."""
    case = rounded_case(case, dtype)
    expected = case.oracle_vjp()
    actual = gradients(build(impl, case.config, case.params, device, dtype, train=True), case, device, dtype)
    faithful = build(BASELINE, case.config, case.params, device, dtype, train=True)
    baseline = upstream_baselines(faithful, lambda m: gradients(m, case, device, dtype))
    # Upstream's own gradient can overflow a half dtype (the normalization's backward divides by |q|: a short q in
    # float16 gives inf - inf = NaN where the exact gradient is finite). Such a case is beyond what the dtype holds
    # for the upstream computation, and the policy has no baseline error to scale with: it is not drawn.
    assume(all(torch.isfinite(g).all() for runs in baseline.values() for g in runs))
    # the floor counts ulps of the cancellation-free sizes: the normalization's gradient cancels (exactly, for one
    # channel per head), and its rounding noise is ulps of the terms
    assert_close_mapping(actual, expected, baseline=baseline, dtype=dtype, magnitudes=case.oracle_vjp_magnitudes())


def zero_qk_params(case):
    """The case's parameters with q = k = 0 (weights and q bias zero), v = x and proj = identity: then every
    logit is the position bias alone, and output channel ``h*d`` of token i is ``sum_j P[h, i, j] x[j, h*d]``."""
    c = case.config.dim
    params = dict(case.params)
    params["qkv.weight"] = np.concatenate([np.zeros((2 * c, c)), np.eye(c)])
    params["proj.weight"], params["proj.bias"] = np.eye(c), np.zeros(c)
    if case.config.qkv_bias:
        params["q_bias"], params["v_bias"] = np.zeros(c), np.zeros(c)
    return params


def bias_probabilities(impl, case, device, dtype) -> np.ndarray:
    """Read ``softmax_j(bias[h, i, j])`` ``(nH, N, N)`` out of a module, black-box: q = k = 0 (normalized to 0, so
    the cosine term vanishes), v = x, proj = identity, and row j of the input a one at token j."""
    cfg, n = case.config, case.config.window_tokens
    x = np.zeros((n, n, cfg.dim))
    x[np.arange(n), np.arange(n), :] = 1.0
    module = build(impl, cfg, zero_qk_params(case), device, dtype)
    with torch.no_grad():
        out = module(to_tensor(x, device, dtype), None).double().cpu().numpy()
    return np.einsum("jih->hij", out[:, :, :: cfg.head_dim])  # [j, i, h] -> [h, i, j]


@register(KIND, cases, dtypes=HIGH)
def position_bias_is_its_definition(impl, case, device, dtype):
    """The position bias is built by the module from its own CPB MLP: with q = k = 0 the attention probabilities
    read out black-box equal ``softmax_j(16 sigmoid(W2 ReLU(W1 c(Δ_ij) + b1)))`` of the loaded MLP, where ``c`` are
    the log-spaced coordinates of ``Δ = pos_i - pos_j`` (query minus key; divided by ``P - 1`` with a pretrained
    window ``P``). Only parameters were loaded: the coordinates and the index are the module's own."""
    case = rounded_case(case, dtype)
    zeros = np.zeros((case.config.window_tokens, case.config.window_tokens))
    expected = reference.softmax(case.oracle_bias() + zeros, axis=-1)
    actual = bias_probabilities(impl, case, device, dtype)
    baseline = bias_probabilities(BASELINE, case, device, dtype)
    assert_close(actual, expected, baseline=baseline, dtype=dtype, what="softmax of the position bias")


@register(KIND, clamp_cases, dtypes=HIGH)
def logit_scale_is_clamped_exactly_at_ln_100(impl, drawn, device, dtype):
    """Each head's scale is ``exp(min(logit_scale, ln 100))``: heads set to ``ln 100 + δ`` (δ in [0.02, 3]) give the
    same output as at ``ln 100`` exactly (scale 100), heads at ``ln 100 - δ`` the oracle's smaller scale; and the
    gradient of ``logit_scale`` is exactly 0 for the clamped heads and the oracle's for the others."""
    case, deltas, above = drawn
    heads = case.config.num_heads
    scales = np.array([LN_100 + d if a else LN_100 - d for d, a in zip(deltas[:heads], above[:heads], strict=True)])
    case = rounded_case(case.with_arrays(params={**case.params, "logit_scale": scales.reshape(heads, 1, 1)}), dtype)
    clamped = case.params["logit_scale"].reshape(-1) > LN_100
    at_clamp = case.with_arrays(params={**case.params, "logit_scale": np.where(
        clamped, LN_100, case.params["logit_scale"].reshape(-1)).reshape(heads, 1, 1)})
    expected = case.oracle_output()
    np.testing.assert_array_equal(expected, at_clamp.oracle_output())  # the oracle's own law
    module, faithful = _modules(impl, case, device, dtype, train=True)
    assert_close(forward(module, case, device, dtype), expected,
                 baseline=upstream_baselines(faithful, lambda m: forward(m, case, device, dtype)),
                 dtype=dtype, what="output with logit scales around ln 100")
    if "gradients" not in impl.capabilities.modes:
        return
    got = gradients(module, case, device, dtype)["logit_scale"].detach().double().cpu().numpy().reshape(-1)
    assert (got[clamped] == 0).all(), f"heads above ln 100 got a logit_scale gradient {got[clamped]} (must be 0)"
    baseline = tuple(g.reshape(-1)[~clamped] for g in
                     upstream_baselines(faithful, lambda m: gradients(m, case, device, dtype))["logit_scale"])
    # the floor counts ulps of the cancellation-free size, as every gradient check does: the logit_scale gradient
    # sums terms of both signs over every logit of the head
    size = case.oracle_vjp_magnitudes()["logit_scale"].reshape(-1)[~clamped]
    assert_close(got[~clamped], case.oracle_vjp()["logit_scale"].reshape(-1)[~clamped], baseline=baseline,
                 dtype=dtype, what="logit_scale gradient of the heads below ln 100",
                 magnitude=float(np.max(size, initial=0.0)))


@register(KIND, no_qkv_bias, dtypes=NORMALIZE_DTYPES)
def zero_tokens_normalize_to_zero(impl, case, device, dtype):
    """Zero tokens (x = 0, no q/v bias, so q = k = 0) are normalized with F.normalize's floor: q̂ = q / max(|q|,
    1e-12) = 0, not NaN. Their logits are the position bias alone, the output is finite everywhere and equals the
    oracle. (In float16 the floor 1e-12 is 0 and upstream gives NaN: not checked there.)"""
    rng = np.random.default_rng(case.seed + 4)
    x = case.x.copy()
    zero = rng.uniform(size=x.shape[:2]) < 0.5
    zero[0, 0] = True
    x[zero] = 0.0
    case = rounded_case(case.with_arrays(x=x), dtype)
    module, faithful = _modules(impl, case, device, dtype)
    actual = forward(module, case, device, dtype)
    assert torch.isfinite(actual).all(), "zero tokens gave a non-finite output (normalize without its eps floor?)"
    assert_close(actual, case.oracle_output(),
                 baseline=upstream_baselines(faithful, lambda m: forward(m, case, device, dtype)), dtype=dtype,
                 what="output with zero tokens")


def mask_once_case(case, cosine: float):
    """A one-window case whose query 0 sees key 1 at a cosine of 1 and every other key at ``cosine`` (in (-0.9,
    -0.1)), every head's scale clamped to 100 and the bias a constant 8 (``cpb_mlp.2.weight = 0``): key 1's logit
    exceeds the others by ``100 (1 - cosine)`` in (110, 190). With the mask blocking key 1 for query 0, -100 (added
    once) leaves key 1 ahead by ``-100 cosine`` in (10, 90): it takes almost all of row 0's weight; -200 (a doubled
    mask) leaves it behind by as much, and -inf gives it exactly 0."""
    cfg = case.config
    c, heads, d, n = cfg.dim, cfg.num_heads, cfg.head_dim, cfg.window_tokens
    w = np.zeros(c)
    w[::d] = 1.0  # e0 of every head
    u = np.zeros(c)
    u[::d], u[1::d] = cosine, np.sqrt(1.0 - cosine**2)  # cos(w, u) = cosine in every head
    params = dict(case.params)
    params["qkv.weight"] = np.concatenate([np.zeros((c, c)), np.eye(c), case.params["qkv.weight"][2 * c:]])
    params["q_bias"] = w  # every query is w
    params["v_bias"] = case.params.get("v_bias", np.zeros(c))
    params["logit_scale"] = np.full((heads, 1, 1), LN_100 + 0.5)
    params["cpb_mlp.2.weight"] = np.zeros_like(case.params["cpb_mlp.2.weight"])
    x = np.broadcast_to(u, (1, n, c)).copy()
    x[0, 1] = w  # key 1 is w: cosine 1 with every query
    blocked = np.zeros((1, n, n), dtype=bool)
    blocked[0, 0, 1] = True
    config = v2st.WindowAttentionV2Config(**{**cfg.kwargs(), "qkv_bias": True})
    grad_out = np.zeros_like(x)
    probe = v2st.WindowAttentionV2Case(config, 1, 1, True, case.seed, "-100", params, x, None, grad_out)
    return probe, blocked


@register(KIND, gap_cases, dtypes=HIGH, needs=("masks",))
def mask_is_added_exactly_once(impl, drawn, device, dtype):
    """The window mask is added once, as given. With a logit gap of 110..190 between a masked key and the allowed
    ones (cosine logits at scale 100), Swin's -100 no longer masks and the masked key takes almost all of the row's
    weight; a doubled mask (-200) or -inf would give it almost none or none. The module's output equals the oracle
    with -100 added once, and is told apart from both alternatives; with a -inf mask it equals the -inf oracle."""
    case, cosine = drawn
    probe, blocked = mask_once_case(case, cosine)
    module, faithful = _modules(impl, rounded_case(probe, dtype), device, dtype)
    for convention, fill in (("-100", -100.0), ("-inf", -np.inf)):
        mask = round_to(np.where(blocked, fill, 0.0), dtype)
        probe_d = rounded_case(probe, dtype).with_arrays(mask=mask)
        expected = probe_d.oracle_output()
        actual = forward(module, probe_d, device, dtype)
        baseline = upstream_baselines(faithful, lambda m, probe_d=probe_d: forward(m, probe_d, device, dtype))
        result = assert_close(actual, expected, baseline=baseline, dtype=dtype,
                              what=f"output with a {convention} mask at a logit gap of {100 * (1 - cosine):.4g}")
        if convention != "-100":
            continue
        for name, other in (("a doubled mask (-200)", 2 * mask), ("a -inf mask", np.where(blocked, -np.inf, 0.0))):
            alternative = probe_d.oracle_output(mask=other)
            # the case separates the conventions (by O(1), far beyond the allowed error) ...
            assert np.abs(expected - alternative).max() > 10 * result.bound, f"the case does not separate {name}"
            # ... and the output is on the once-added side
            distance = np.abs(actual.detach().double().cpu().numpy() - alternative).max()
            assert distance > result.bound, f"the output equals the oracle's with {name}"


@register(KIND, with_dropout, dtypes=FLOAT64, needs=("training",))
def dropout_acts_only_in_train_mode(impl, case, device, dtype):
    """With non-zero dropout rates, eval mode is deterministic and equals the oracle; train mode with a non-zero
    rate is random (two calls differ) when there are enough elements to drop."""
    module, faithful = _modules(impl, case, device, dtype)
    first = forward(module, case, device, dtype)
    assert torch.equal(first, forward(module, case, device, dtype)), "eval mode is not deterministic"
    assert_close(first, case.oracle_output(),
                 baseline=upstream_baselines(faithful, lambda m: forward(m, case, device, dtype)), dtype=dtype,
                 what="eval output with dropout set")
    cfg = case.config
    n_droppable = (case.x.shape[0] * cfg.num_heads * case.n_tokens**2 * (cfg.attn_drop > 0)
                   + case.x.size * (cfg.proj_drop > 0))
    if n_droppable >= 200:  # two draws at p >= 0.1 coincide on 200 elements with probability < 1e-17
        module.train()
        torch.manual_seed(case.seed)
        a, b = forward(module, case, device, dtype), forward(module, case, device, dtype)
        assert not torch.equal(a, b), "train mode with dropout gave the same output twice"


def _current_params(module) -> dict[str, np.ndarray]:
    return {k: p.detach().double().cpu().numpy() for k, p in module.named_parameters()}


@register(KIND, cases, dtypes=HIGH, needs=("gradients", "training"))
def cached_bias_never_goes_stale(impl, case, device, dtype):
    """Whatever the implementation caches, the output reflects the current parameters after: load_state_dict, an
    optimizer step, an in-place edit of ``cpb_mlp.2.weight``, a ``.data`` swap of ``cpb_mlp.0.weight``, train/eval
    switches with and without grad, a ``.to()`` round trip through another dtype, and an in-place edit of the mask."""
    case = rounded_case(case, dtype)
    module, faithful = _modules(impl, case, device, dtype)
    mask = None if case.mask is None else to_tensor(case.mask, device, dtype)
    x = to_tensor(case.x, device, dtype)
    rng = np.random.default_rng(case.seed + 1)

    def check(step, *, train=False, grad=False, as_dtype=dtype):
        module.train(train)
        xd, maskd = x.to(as_dtype), None if mask is None else mask.to(as_dtype)
        with torch.set_grad_enabled(grad):
            actual = module(xd, maskd)
        with torch.no_grad():
            faithful.to(as_dtype).load_state_dict(dict(module.named_parameters()), strict=False)
            baseline = upstream_baselines(faithful, lambda m: m(xd, maskd))
        mask_now = None if mask is None else maskd.double().cpu().numpy()
        expected = reference.window_attention_v2(xd.double().cpu().numpy(), _current_params(module),
                                                 **case.config.oracle_kwargs(), mask=mask_now)
        assert_close(actual, expected, baseline=baseline, dtype=as_dtype, what=f"output after {step}")

    with torch.no_grad():
        check("the first call")  # fills any cache
    fresh = {k: round_to(a, dtype) for k, a in v2st.random_window_attention_v2_params(case.config, rng).items()}
    module.load_state_dict({k: to_tensor(a, device, dtype) for k, a in fresh.items()}, strict=False)
    check("load_state_dict")
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    module.train()
    (module(x, mask) * to_tensor(case.grad_out, device, dtype)).sum().backward()
    optimizer.step()
    check("an optimizer step")
    with torch.no_grad():
        module.get_parameter("cpb_mlp.2.weight").mul_(-2.0)
    check("an in-place edit of cpb_mlp.2.weight")
    module.get_parameter("cpb_mlp.0.weight").data = to_tensor(rng.standard_normal((v2st.CPB_HIDDEN, 2)), device,
                                                              dtype)
    check("a .data swap of cpb_mlp.0.weight")
    check("train mode with grad", train=True, grad=True)
    with torch.no_grad():
        module.get_parameter("cpb_mlp.0.bias").add_(0.5)
    check("train mode, after an in-place edit under no_grad", train=True, grad=False)
    check("eval mode with grad", train=False, grad=True)
    other = torch.float64 if dtype != torch.float64 else torch.float32
    module.to(other)
    check(f".to({other})", as_dtype=other)
    module.to(dtype)
    check(f".to({dtype}) back")
    if mask is not None:
        with torch.no_grad():
            fresh_mask = v2st.random_window_mask(case.n_windows, case.n_tokens, rng, convention=case.mask_convention)
            mask.copy_(to_tensor(fresh_mask, device, dtype))
        check("an in-place edit of the mask")


# --------------------------------------------------------------------------------------------------
# Map level: the module inside Swin V2's block code
# --------------------------------------------------------------------------------------------------


def map_forward(module, case, device, dtype, *, fill=None):
    x = to_tensor(case.x, device, dtype)
    geometry = case.geometry
    return swin_block_attention(x, module, window_size=geometry.window_size, shift_size=geometry.shift_size,
                                fill=case.fill if fill is None else fill)


@register(KIND, map_cases, dtypes=HIGH, needs=("masks",))
def map_level_matches_oracle(impl, case, device, dtype):
    """Map-level (shifted) window attention around the module, driven by Swin's block code (roll by -s, partition,
    attention with the -100 or -inf mask, reverse, roll back), equals ``reference.shifted_window_attention_v2``."""
    case = rounded_case(case, dtype)
    module, faithful = _modules(impl, case, device, dtype)
    with torch.no_grad():
        actual = map_forward(module, case, device, dtype)
        baseline = upstream_baselines(faithful, lambda m: map_forward(m, case, device, dtype))
    assert_close(actual, case.oracle_output(), baseline=baseline, dtype=dtype, what="map-level output")


@register(KIND, configs, dtypes=("float32",))
def flops_method_is_upstreams_formula(impl, config, device, dtype):
    """``flops(N)``, when the module has it, is microsoft's count (V1's formula, in MACs: ``4 N C^2 + 2 N^2 C``;
    the CPB MLP, the normalization and the clamp are not counted)."""
    module = impl.factory(**config.kwargs())
    if not callable(getattr(module, "flops", None)):
        raise Unsupported("no flops(N) method (optional in microsoft's protocol)")
    for n in (config.window_tokens, 1, 7):
        expected = reference.swin_window_attention_macs(config.dim, config.num_heads, n)
        assert module.flops(n) == expected, f"flops({n}) = {module.flops(n)}, microsoft's formula {expected}"


# --------------------------------------------------------------------------------------------------
# The kind: microsoft's protocol, checked before any property
# --------------------------------------------------------------------------------------------------

SIGNATURE = ("microsoft's Swin V2 WindowAttention(dim, window_size, num_heads, qkv_bias=True, attn_drop=0.0, "
             "proj_drop=0.0, pretrained_window_size=(0, 0))")


def _protocol_window_attention_v2(factory) -> None:
    modes = Capabilities.declared_by(factory, KIND).modes
    module = build_target(factory, dict(dim=8, window_size=(2, 3), num_heads=2), SIGNATURE)
    expected = {"logit_scale": (2, 1, 1), "q_bias": (8,), "v_bias": (8,), "qkv.weight": (24, 8),
                "proj.weight": (8, 8), "proj.bias": (8,), "cpb_mlp.0.weight": (512, 2), "cpb_mlp.0.bias": (512,),
                "cpb_mlp.2.weight": (2, 512)}
    check_state_keys(dict(module.state_dict()), expected, "microsoft")
    x = torch.zeros(4, 6, 8)
    calls = [(x,)] + [(x, torch.zeros(2, 6, 6))] * ("masks" in modes)
    for args in calls:
        out = call_target(module, args, "forward(x, mask=None)")
        if tuple(out.shape) != tuple(x.shape):
            raise ProtocolError(f"forward on x {tuple(x.shape)} returned shape {tuple(out.shape)}; expected (B_, N, C)")
    if "pretrained_window" in modes:
        build_target(factory, dict(dim=8, window_size=(2, 3), num_heads=2, pretrained_window_size=(4, 4)), SIGNATURE)


register_kind(Kind(KIND, upstream="microsoft's Swin V2 WindowAttention",
                   default_target="refimpl.optimized:WindowAttentionV2", protocol=_protocol_window_attention_v2,
                   modes=MODES,
                   default_max_examples=70))
