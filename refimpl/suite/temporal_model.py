"""Properties of FIERY's temporal model, each checked against ``refimpl.reference``.

``impl.factory`` must accept FIERY's ``TemporalModel`` constructor arguments and return an ``nn.Module`` with FIERY's
state-dict keys and ``forward(x)`` on ``(B, T, C, H, W)``. A whole upstream-style state dict (parameters and the
BatchNorm running statistics, which are real state) is loaded with ``strict=True``; nothing the module should
derive itself is ever loaded. Streaming properties need a ``stream()`` method and are skipped without one.
"""

from __future__ import annotations

import numpy as np
import torch

from refimpl import reference
from refimpl import strategies as rst
from refimpl.baselines.temporal_model import TemporalModel as FieryTemporalModel
from refimpl.reference import temporal_model_state_shapes
from refimpl.suite._core import Implementation, Kind, KindModes, Mode, register, register_kind, round_to, to_tensor
from refimpl.suite._protocol import ProtocolError, build_target, call_target, check_state_keys
from refimpl.tolerance import assert_close, assert_close_mapping

KIND = "temporal_model"
EAGER = Implementation(KIND, "refimpl.baselines.temporal_model:TemporalModel", FieryTemporalModel)

MODES = KindModes(
    modes=(
        Mode("training", "train mode: BatchNorm uses batch statistics and updates its running statistics"),
        Mode("gradients", "autograd through the forward, in eval and in train mode"),
        Mode("streaming", "model.stream().step(frame): frame-by-frame inference equal to the whole-clip output",
             upstream=False, upstream_behaviour="FIERY has no streaming API"),
    ),
    case_modes=lambda case: (),
)

HIGH = ("float64", "float32")
FLOAT64 = ("float64",)

# --------------------------------------------------------------------------------------------------
# Running an implementation on a case
# --------------------------------------------------------------------------------------------------


BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _is_count(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def rounded_case(case: rst.TemporalModelCase, dtype: torch.dtype) -> rst.TemporalModelCase:
    """The case as a ``dtype`` module stores it: the oracle then runs on exactly those values."""
    return case.with_arrays(
        x=round_to(case.x, dtype),
        grad_out=round_to(case.grad_out, dtype),
        params={k: a if _is_count(k) else round_to(a, dtype) for k, a in case.params.items()},
    )


def state_tensors(params, device, dtype) -> dict[str, torch.Tensor]:
    return {k: to_tensor(a, device, torch.int64 if _is_count(k) else dtype) for k, a in params.items()}


def batch_norms(module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def build(impl: Implementation, case, device, dtype, *, train=False, params=None) -> torch.nn.Module:
    """Build with the case's config, load the whole state dict with ``strict=True`` (as an upstream checkpoint),
    set every BatchNorm's momentum to the case's (FIERY's ``set_bn_momentum``)."""
    module = impl.factory(**case.config.kwargs()).to(device=device, dtype=dtype)
    module.load_state_dict(state_tensors(case.params if params is None else params, device, dtype), strict=True)
    for norm in batch_norms(module):
        norm.momentum = case.momentum
    return module.train(train)


def forward(module, x, device, dtype) -> torch.Tensor:
    """The module's output without autograd, as inference runs it (refimpl's module folds BatchNorm then)."""
    with torch.no_grad():
        return module(to_tensor(x, device, dtype))


def gradients(module, case, device, dtype) -> dict[str, torch.Tensor]:
    """``d sum(out * grad_out)`` with respect to ``x`` and every parameter (zeros where none flowed)."""
    x = to_tensor(case.x, device, dtype, requires_grad=True)
    (module(x) * to_tensor(case.grad_out, device, dtype)).sum().backward()
    grads = {"x": x.grad if x.grad is not None else torch.zeros_like(x)}
    for name, p in module.named_parameters():
        grads[name] = p.grad if p.grad is not None else torch.zeros_like(p)
    return grads


def current_state(module) -> dict[str, np.ndarray]:
    return {k: t.detach().cpu().numpy() if _is_count(k) else t.detach().double().cpu().numpy()
            for k, t in module.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Strategies for the properties
# --------------------------------------------------------------------------------------------------

configs = rst.temporal_model_configs()
cases = rst.temporal_model_cases()
short_and_long = rst.temporal_model_cases(short_clips=True)
with_blocks = rst.temporal_model_cases(rst.temporal_model_configs(min_receptive_field=2))
# the leak needs a kept output before the perturbed last frame: T >= R + 1
leak_cases = rst.temporal_model_cases(rst.temporal_model_configs(min_receptive_field=2)).filter(
    lambda c: c.frames >= c.config.receptive_field + 1
)

# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------


@register(KIND, configs, dtypes=FLOAT64)
def state_dict_is_fiery(impl, config, device, dtype):
    """The freshly built module has exactly FIERY's state-dict keys, in FIERY's order, with FIERY's shapes
    (parameters and BatchNorm buffers), and ``out_channels`` / ``receptive_field`` as FIERY derives them."""
    module = impl.factory(**config.kwargs())
    expected = reference.temporal_model_state_shapes(**config.kwargs())
    got = {k: tuple(t.shape) for k, t in module.state_dict().items()}
    assert list(got) == list(expected), (
        f"state-dict keys differ from FIERY's: missing {sorted(set(expected) - set(got))}, "
        f"unexpected {sorted(set(got) - set(expected))}" + ("" if set(got) != set(expected) else " (order differs)")
    )
    assert got == expected, {k: (got[k], s) for k, s in expected.items() if got[k] != s}
    assert module.out_channels == config.out_channels, (module.out_channels, config.out_channels)
    assert module.receptive_field == config.receptive_field


@register(KIND, short_and_long, dtypes=("float32",))
def output_shape_is_t_minus_r_plus_one(impl, case, device, dtype):
    """``(B, T, C, H, W) -> (B, T-R+1, out_channels, H, W)`` in eval and train mode; ``T < R`` gives an empty time
    axis (as upstream), not an error."""
    # train mode needs more than one value per BatchNorm channel: B*T*H*W >= 2 (torch and the oracle both refuse)
    enough = case.batch * case.frames * case.height * case.width >= 2 or case.config.receptive_field == 1
    for train in (False, True) if enough else (False,):
        out = forward(build(impl, case, device, dtype, train=train), case.x, device, dtype)
        assert tuple(out.shape) == case.output_shape, (train, tuple(out.shape), case.output_shape)


@register(KIND, cases, dtypes=HIGH)
def eval_forward_matches_oracle(impl, case, device, dtype):
    """Eval mode (running statistics) output equals the float64 oracle on the same rounded inputs, and the call
    leaves every BatchNorm buffer untouched."""
    case = rounded_case(case, dtype)
    module = build(impl, case, device, dtype)
    actual = forward(module, case.x, device, dtype)
    baseline = forward(build(EAGER, case, device, dtype), case.x, device, dtype)
    assert_close(actual, case.oracle_output(), baseline=baseline, dtype=dtype, what="eval output")
    after = current_state(module)
    for key, value in case.params.items():
        if key.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked"):
            assert np.array_equal(after[key], value), f"eval forward changed {key}"


@register(KIND, cases, dtypes=HIGH, needs=('training',))
def train_forward_matches_oracle(impl, case, device, dtype):
    """Train mode output (batch statistics over (B, T, H, W), biased variance, eps 1e-5) and the updated running
    statistics (momentum update with the unbiased variance; num_batches_tracked + 1) equal the oracle's."""
    case = rounded_case(case, dtype)
    module, eager = build(impl, case, device, dtype, train=True), build(EAGER, case, device, dtype, train=True)
    expected = case.oracle_forward(training=True)
    actual = forward(module, case.x, device, dtype)
    assert_close(actual, expected.out, baseline=forward(eager, case.x, device, dtype), dtype=dtype,
                 what="train output")
    state, eager_state = current_state(module), current_state(eager)
    for key, value in expected.running_stats.items():
        if _is_count(key):
            assert int(state[key]) == int(value), (key, int(state[key]), int(value))
        else:
            assert_close(state[key], value, baseline=eager_state[key], dtype=dtype, what=f"updated {key}")


def _check_gradients(impl, case, device, dtype, *, train: bool):
    case = rounded_case(case, dtype)
    expected = case.oracle_vjp(training=train)
    actual = gradients(build(impl, case, device, dtype, train=train), case, device, dtype)
    baseline = gradients(build(EAGER, case, device, dtype, train=train), case, device, dtype)
    # the oracle's VJP also lists the BatchNorm statistics (buffers, not parameters), with zero gradients
    assert_close_mapping(actual, expected, baseline=baseline, dtype=dtype, what="grad",
                         optional=lambda key: key.rsplit(".", 1)[-1] in BUFFERS and not np.any(expected[key]))


@register(KIND, cases, dtypes=HIGH, needs=('gradients',))
def eval_gradients_match_oracle(impl, case, device, dtype):
    """Eval mode: gradients of sum(out * grad_out) with respect to x and every parameter equal the oracle's
    hand-written VJP (nothing flows into the dropped time steps)."""
    _check_gradients(impl, case, device, dtype, train=False)


@register(KIND, cases, dtypes=HIGH, needs=('training', 'gradients'))
def train_gradients_match_oracle(impl, case, device, dtype):
    """Train mode: gradients, through the batch statistics, equal the oracle's hand-written VJP."""
    _check_gradients(impl, case, device, dtype, train=True)


@register(KIND, cases, dtypes=FLOAT64)
def eval_is_causal_with_receptive_field_r(impl, case, device, dtype):
    """Eval mode: perturbing frame t leaves every output at a time before t, and at a time t + R or later,
    bit-identical: output s sees exactly frames s-R+1 .. s."""
    module = build(impl, case, device, dtype)
    rng = np.random.default_rng(case.seed + 1)
    t = int(rng.integers(case.frames))
    x = case.x.copy()
    x[:, t] += 3.0 * rng.standard_normal(x[:, t].shape)
    with torch.no_grad():
        before, after = forward(module, case.x, device, dtype), forward(module, x, device, dtype)
    r = case.config.receptive_field
    for j in range(before.shape[1]):  # output j is time s = j + R - 1
        s = j + r - 1
        if s < t or s >= t + r:
            assert torch.equal(before[:, j], after[:, j]), f"perturbing frame {t} changed the output at time {s}"


@register(KIND, cases, dtypes=HIGH)
def kept_outputs_equal_their_own_window(impl, case, device, dtype):
    """Eval mode: every output the slice keeps (time s >= R-1) equals the model run on frames s-R+1 .. s alone,
    so the slice removes every trace of the temporal zero padding (expected: the oracle on the whole clip)."""
    case = rounded_case(case, dtype)
    module, eager = build(impl, case, device, dtype), build(EAGER, case, device, dtype)
    expected = case.oracle_output()
    r = case.config.receptive_field
    with torch.no_grad():
        for j in range(expected.shape[1]):
            window = case.x[:, j : j + r]
            actual = forward(module, window, device, dtype)
            baseline = forward(eager, window, device, dtype)
            assert_close(actual, expected[:, j : j + 1], baseline=baseline, dtype=dtype,
                         what=f"output at time {j + r - 1} from its own {r}-frame window")


def _monotone(case: rst.TemporalModelCase) -> rst.TemporalModelCase:
    """The case made monotone: positive conv weights, gamma and beta, non-positive running means, positive inputs.
    Every BatchNorm then maps non-negative values to positive ones, so every ReLU passes its input and every
    activation is a strictly increasing function of every input value it sees."""
    params = {}
    for key, a in case.params.items():
        leaf = key.rsplit(".", 1)[1]
        if _is_count(key) or leaf == "running_var":
            params[key] = a
        elif leaf == "running_mean":
            params[key] = -np.abs(a)
        else:  # conv weights, gamma, beta
            params[key] = np.abs(a) + 0.05
    return case.with_arrays(params=params, x=np.abs(case.x) + 0.1)


@register(KIND, with_blocks, dtypes=FLOAT64)
def dropped_outputs_depend_on_the_padding(impl, case, device, dtype):
    """The outputs the slice drops (times 0 .. R-2, oracle before the slice) are not the outputs with a real
    history: prepending R-1 frames (the module on history + clip) strictly raises every one of them in a monotone
    case (so no dead ReLU can hide the dependence), while the kept ones do not move."""
    case = _monotone(case)
    r = case.config.receptive_field
    padded = case.oracle_forward().full  # (B, T, C', H, W): the first R-1 steps saw the zero padding
    # History far above the clip: every activation it feeds dwarfs the clip's own, so the 2-frame pooling averages
    # at the clip's start go up too (a history smaller than frame 0 could pull them down against path A's rise).
    history = np.repeat(case.x[:, :1] + 100.0, r - 1, axis=1)
    module = build(impl, case, device, dtype)
    with torch.no_grad():
        with_history = forward(module, np.concatenate([history, case.x], axis=1), device, dtype).double().numpy()
    # with_history[:, s] is time s of the clip, now with R-1 real frames before it
    rise = with_history[:, : r - 1] - padded[:, : r - 1]
    assert (rise > 0).all(), f"a dropped output did not rise with a real history: min rise {rise.min():.3g}"
    scale = np.abs(padded).max()
    np.testing.assert_allclose(with_history[:, r - 1 :], padded[:, r - 1 :], rtol=0, atol=1e-9 * scale)


def _active(case: rst.TemporalModelCase) -> rst.TemporalModelCase:
    """Every BatchNorm shift raised above |gamma| sqrt(n): in train mode |normalized value| <= sqrt(n - 1) for a
    batch of n values, so every ReLU passes its input and nothing can hide the statistics' reach."""
    n = case.batch * (case.frames + 1) * case.height * case.width  # the largest batch of any BatchNorm here
    params = dict(case.params)
    for key in case.params:
        if key.endswith(".bias"):  # FIERY's convolutions have no bias: every ".bias" is a BatchNorm shift
            gamma = params[key[: -len("bias")] + "weight"]
            params[key] = np.abs(gamma) * np.sqrt(n) + 1.0
    return case.with_arrays(params=params)


@register(KIND, leak_cases, dtypes=FLOAT64, needs=('training',))
def train_mode_leaks_across_time_and_batch(impl, case, device, dtype):
    """Train mode is NOT causal: BatchNorm statistics span (B, T, H, W). Perturbing the last frame of the last
    sample changes the earlier outputs of that sample and of every other sample, and a kept output differs from
    the model run on its own window. (Eval mode has none of this: see the causality properties.)"""
    case = _active(case)
    module = build(impl, case, device, dtype, train=True)
    rng = np.random.default_rng(case.seed + 2)
    x = case.x.copy()
    x[-1, -1] += 3.0 * rng.standard_normal(x[-1, -1].shape)
    with torch.no_grad():
        before = forward(module, case.x, device, dtype)[:, :-1]  # outputs before the last frame
        after = forward(module, x, device, dtype)[:, :-1]
        own_window = forward(module, case.x[:, : case.config.receptive_field], device, dtype)
        whole_clip = forward(module, case.x, device, dtype)[:, :1]
    scale = float(before.abs().max())
    for b in range(case.batch):
        change = float((after[b] - before[b]).abs().max())
        assert change > 1e-9 * scale, (f"train mode: perturbing sample {case.batch - 1}'s last frame left sample {b} "
                                       "unchanged")
    gap = float((own_window - whole_clip).abs().max())
    assert gap > 1e-9 * scale, "train mode: the first kept output equals its own window's"


@register(KIND, cases, dtypes=HIGH, needs=("streaming",))
def streaming_equals_full_recompute(impl, case, device, dtype):
    """``stream().step(frame)`` fed one frame at a time returns None for the first R-1 frames, then the present
    output, equal to the whole-clip output at that time (the oracle); ``reset()`` starts a new clip."""
    case = rounded_case(case, dtype)
    module = build(impl, case, device, dtype)
    assert callable(getattr(module, "stream", None)), "the target opts into streaming but has no stream() method"
    expected = case.oracle_output()
    baseline = forward(build(EAGER, case, device, dtype), case.x, device, dtype)
    r = case.config.receptive_field
    stream = module.stream()
    x = to_tensor(case.x, device, dtype)
    for rounds in range(2):
        for t in range(case.frames):
            out = stream.step(x[:, t])
            if t < r - 1:
                assert out is None, f"step {t} returned an output before R={r} frames were seen"
                continue
            assert_close(out, expected[:, t - r + 1], baseline=baseline[:, t - r + 1], dtype=dtype,
                         what=f"streamed output at frame {t}" + (" after reset()" if rounds else ""))
        stream.reset()


@register(KIND, cases, dtypes=HIGH, needs=('training', 'gradients'))
def folded_weights_never_go_stale(impl, case, device, dtype):
    """In eval mode the output follows the current parameters and running statistics after load_state_dict, a
    training step (train-mode forward updating the statistics + an optimizer step), an in-place edit of a running
    variance and a ``.data`` swap of a conv weight (whatever the implementation folds or caches)."""
    case = rounded_case(case, dtype)
    module = build(impl, case, device, dtype)
    eager = build(EAGER, case, device, dtype)
    x = to_tensor(case.x, device, dtype)
    rng = np.random.default_rng(case.seed + 3)

    def check(step):
        module.eval()
        with torch.no_grad():
            actual = module(x)
            eager.load_state_dict(module.state_dict(), strict=True)
            baseline = eager.eval()(x)
        state = current_state(module)
        expected = case.oracle_forward(params=state).out
        assert_close(actual, expected, baseline=baseline, dtype=dtype, what=f"eval output after {step}")

    check("the first call")  # fills any cache
    fresh = {k: a if _is_count(k) else round_to(a, dtype)
             for k, a in rst.random_temporal_model_params(case.config, rng).items()}
    module.load_state_dict(state_tensors(fresh, device, dtype), strict=True)
    check("load_state_dict")
    if not list(module.parameters()):
        return  # R = 1: the identity has nothing to update
    module.train()
    (module(x) * to_tensor(case.grad_out, device, dtype)).sum().backward()
    with torch.no_grad():  # a gentle step: every parameter moves by at most 0.05, so the case stays well
        for p in module.parameters():  # conditioned (a plain SGD step on a sum over B*T*H*W outputs blew weights
            if p.grad is not None:     # up to outputs of ~1e10, where 32 ulps is below honest float64 noise)
                p -= 0.05 * p.grad / p.grad.abs().max().clamp_min(1e-12)
    check("a training step")
    norm = batch_norms(module)[0]
    with torch.no_grad():
        norm.running_var.mul_(3.0)
    check("an in-place edit of a running_var")
    conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv3d))
    conv.weight.data = to_tensor(rng.standard_normal(tuple(conv.weight.shape)) / np.sqrt(conv.weight[0].numel()),
                                 device, dtype)
    check("a .data swap of a conv weight")


# --------------------------------------------------------------------------------------------------
# The kind: FIERY's protocol, checked before any property
# --------------------------------------------------------------------------------------------------


def _protocol_temporal_model(factory) -> None:
    kwargs = dict(in_channels=4, receptive_field=3, input_shape=(2, 2), start_out_channels=6, extra_in_channels=1)
    module = build_target(factory, kwargs, "FIERY's TemporalModel(in_channels, receptive_field, input_shape, ...)")
    check_state_keys(dict(module.state_dict()), temporal_model_state_shapes(**kwargs), "FIERY", exact=True)
    out = call_target(module.eval(), (torch.zeros(1, 4, 4, 2, 2),), "forward(x)")
    if tuple(out.shape) != (1, 2, 7, 2, 2):
        raise ProtocolError(f"forward on x (1, 4, 4, 2, 2) (B, T, C, H, W) with R=3 returned shape "
                            f"{tuple(out.shape)}; expected (B, T-R+1, out_channels, H, W) = (1, 2, 7, 2, 2)")


register_kind(Kind(KIND, upstream="FIERY's TemporalModel", default_target="refimpl.optimized:TemporalModel",
                   protocol=_protocol_temporal_model, modes=MODES,
                   default_max_examples=50))
