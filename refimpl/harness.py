"""The conformance harness behind ``refimpl verify``, callable from Python::

    from refimpl.harness import verify
    report = verify({"window_attention": "my_kernels:MyWindowAttention"}, dtypes=["float32"])
    report.exit_code, report.failed, report.markdown()

Each target is first checked against the upstream protocol (constructor, state-dict keys, output shape): a target
that does not follow it raises ``ProtocolError`` (exit status 2) before any property runs. Then every registered
property of its kind runs on every requested device and dtype the property applies to; what the target declares
it does not support (``refimpl_capabilities``) is a skip with the reason.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import hypothesis
import torch

import refimpl.profiles  # noqa: F401  (registers the ci profile the harness runs under)
from refimpl.properties import (DTYPES, Capabilities, Implementation, Unsupported, available_devices,
                                load_implementation, property_grid, run_property)

DEFAULT_TARGETS = {
    "window_attention": "refimpl.optimized:WindowAttention",
    "shifted_window_mask": "refimpl.optimized:shifted_window_mask",
    "temporal_model": "refimpl.optimized:TemporalModel",
}


class ProtocolError(Exception):
    """The target cannot be imported or built, or does not follow the upstream protocol (exit status 2)."""


@dataclass
class Outcome:
    kind: str
    target: str
    property: str
    device: str
    dtype: str
    status: str  # "passed" | "failed" | "skipped"
    seconds: float
    detail: str = ""
    replay: str = ""
    examples: int = 0  # drawn cases checked (a target's undeclared modes skip the rest)
    examples_skipped: int = 0


@dataclass
class Report:
    targets: dict
    max_examples: int
    seed: int | None
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def counts(self) -> dict[str, int]:
        return {s: sum(o.status == s for o in self.outcomes) for s in ("passed", "failed", "skipped")}

    def json(self) -> str:
        return json.dumps({"targets": self.targets, "torch": torch.__version__, "max_examples": self.max_examples,
                           "seed": self.seed, "counts": self.counts(),
                           "outcomes": [asdict(o) for o in self.outcomes]}, indent=2)

    def markdown(self) -> str:
        """One row per property x device x dtype: passed / failed (first line of the reason) / skipped (why)."""
        lines = ["| kind | property | device | dtype | result |", "|---|---|---|---|---|"]
        for o in self.outcomes:
            why = f": {o.detail.splitlines()[0]}" if o.status != "passed" and o.detail else ""
            lines.append(f"| {o.kind} | {o.property} | {o.device} | {o.dtype} | {o.status}{why} |")
        return "\n".join(lines) + "\n"


# ---- the protocol each kind must follow, checked once before the properties ----


def _protocol_window_attention(factory) -> None:
    modes = Capabilities.declared_by(factory).modes
    kwargs = dict(dim=8, num_ttokens=3, window_size=(2, 2), num_heads=2)
    module = _build(factory, kwargs, "AIM's WindowAttention(dim, num_ttokens, window_size, num_heads, ...)")
    keys = dict(module.state_dict())
    expected = {"qkv.weight": (24, 8), "proj.weight": (8, 8), "proj.bias": (8,), "relative_position_bias_table": (9, 2)}
    if "temporal" in modes:  # a target that declares no temporal mode need not have the temporal table
        expected["temporal_position_bias_table"] = (5, 2)
    _check_keys(keys, expected, "AIM")
    x = torch.zeros(4, 4, 8)
    calls = [(x,)] + [(x, torch.zeros(2, 4, 4))] * ("masks" in modes) + [(torch.zeros(4, 3, 8), None, True)] * (
        "temporal" in modes)
    for args in calls:
        out = _call(module, args, "forward(x, mask=None, temporal=False)")
        if tuple(out.shape) != tuple(args[0].shape):
            raise ProtocolError(f"forward on x {tuple(args[0].shape)} returned shape {tuple(out.shape)}; expected "
                                f"x's shape (B_, N, C)")


def _protocol_temporal_model(factory) -> None:
    from refimpl.reference import temporal_model_state_shapes

    kwargs = dict(in_channels=4, receptive_field=3, input_shape=(2, 2), start_out_channels=6, extra_in_channels=1)
    module = _build(factory, kwargs, "FIERY's TemporalModel(in_channels, receptive_field, input_shape, ...)")
    _check_keys(dict(module.state_dict()), temporal_model_state_shapes(**kwargs), "FIERY", exact=True)
    out = _call(module.eval(), (torch.zeros(1, 4, 4, 2, 2),), "forward(x)")
    if tuple(out.shape) != (1, 2, 7, 2, 2):
        raise ProtocolError(f"forward on x (1, 4, 4, 2, 2) (B, T, C, H, W) with R=3 returned shape "
                            f"{tuple(out.shape)}; expected (B, T-R+1, out_channels, H, W) = (1, 2, 7, 2, 2)")


def _protocol_shifted_window_mask(factory) -> None:
    out = _call(factory, (4, 4, 2, 1), "mask(H, W, window_size, shift_size)")
    if tuple(getattr(out, "shape", ())) != (4, 4, 4):
        raise ProtocolError(f"mask(4, 4, 2, 1) returned shape {tuple(getattr(out, 'shape', ()))}; expected "
                            f"(nW, N, N) = (4, 4, 4)")


PROTOCOLS: dict[str, Callable] = {
    "window_attention": _protocol_window_attention,
    "temporal_model": _protocol_temporal_model,
    "shifted_window_mask": _protocol_shifted_window_mask,
}


def _build(factory, kwargs, signature):
    try:
        module = factory(**kwargs)
    except Exception as exc:
        raise ProtocolError(f"constructing it with {kwargs} failed: {type(exc).__name__}: {exc} "
                            f"(expected the constructor {signature})") from None
    if not isinstance(module, torch.nn.Module):
        raise ProtocolError(f"it built a {type(module).__name__}, not a torch.nn.Module")
    return module


def _call(fn, args, signature):
    try:
        with torch.no_grad():
            return fn(*args)
    except Exception as exc:
        raise ProtocolError(f"{signature} failed: {type(exc).__name__}: {exc}") from None


def _check_keys(got: dict, expected: dict, upstream: str, exact: bool = False) -> None:
    missing = sorted(set(expected) - set(got))
    if missing:
        raise ProtocolError(f"its state dict lacks {upstream}'s keys {missing}")
    if exact and set(got) != set(expected):
        raise ProtocolError(f"its state dict has keys {upstream}'s has not: {sorted(set(got) - set(expected))}")
    wrong = {k: (tuple(got[k].shape), shape) for k, shape in expected.items() if tuple(got[k].shape) != tuple(shape)}
    if wrong:
        raise ProtocolError(f"state-dict shapes differ from {upstream}'s (got, expected): {wrong}")


def check_protocol(impl) -> None:
    """Raise ``ProtocolError`` saying what is wrong unless ``impl`` follows its kind's upstream protocol."""
    PROTOCOLS[impl.kind](impl.factory)


# ---- running ----


def verify(targets: dict | None = None, *, devices=None, dtypes=("float64", "float32", "float16", "bfloat16"),
           max_examples: int | None = None, seed: int | None = None, properties=(), fail_fast: bool = False,
           log: Callable[[str], None] | None = None, settings=None) -> Report:
    """Run every property of each target's kind. ``targets``: ``{kind: "module:attr"}`` (or an
    ``Implementation``); default ``DEFAULT_TARGETS``. ``devices``: default every device present. ``fail_fast``:
    stop a target at its first failing property. ``log``: called with one line per outcome (e.g. ``print``).
    Raises ``ProtocolError`` for a target that cannot be imported or does not follow the protocol, ``ValueError``
    for bad arguments."""
    if os.getcwd() not in sys.path:  # the contract: MODULE is importable from the current directory
        sys.path.insert(0, os.getcwd())
    targets = dict(DEFAULT_TARGETS if targets is None else targets)
    unknown_kinds = sorted(set(targets) - set(DEFAULT_TARGETS))
    if unknown_kinds:
        raise ValueError(f"unknown kind(s) {unknown_kinds}; expected one of {sorted(DEFAULT_TARGETS)}")
    devices = available_devices() if devices in (None, "all") else list(devices)
    if "cuda" in devices and not torch.cuda.is_available():
        raise ValueError("device cuda requested, but torch sees no CUDA device")
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise ValueError(f"unknown dtype(s) {unknown}; expected a subset of {list(DTYPES)}")
    base = settings or hypothesis.settings.get_profile("ci")
    run_settings = hypothesis.settings(base, max_examples=max_examples or base.max_examples,
                                       derandomize=seed is None, print_blob=False)
    report = Report({k: getattr(t, "name", t) for k, t in targets.items()}, run_settings.max_examples, seed)

    for kind, target in targets.items():
        if isinstance(target, Implementation):
            impl = target
        else:
            try:
                impl = load_implementation(kind, target)
            except ValueError as exc:
                raise ProtocolError(f"target {kind}={target}: {exc}") from None
        try:
            check_protocol(impl)
            impl.capabilities  # noqa: B018  (a malformed declaration is a protocol error)
        except (ProtocolError, ValueError) as exc:
            raise ProtocolError(f"target {kind}={impl.name} does not follow the {kind} protocol: {exc}") from None
        for prop, device, dtype in property_grid(kind, devices, dtypes):
            if properties and prop.name not in properties:
                continue
            outcome = _run_one(prop, impl, device, dtype, run_settings, seed)
            report.outcomes.append(outcome)
            if log:
                _log_outcome(log, outcome)
            if fail_fast and outcome.status == "failed":
                break
    return report


def _run_one(prop, impl, device, dtype, run_settings, seed) -> Outcome:
    replay = shlex.join(["refimpl", "verify", "--target", f"{impl.kind}={impl.name}", "--property", prop.name,
                         "--device", device, "--dtype", dtype, "--max-examples", str(run_settings.max_examples)]
                        + ([] if seed is None else ["--seed", str(seed)]))
    start = time.perf_counter()
    examples = {"run": 0, "skipped": 0}
    try:
        examples = run_property(prop, impl, device, dtype, settings=run_settings, seed=seed)
        status, detail = "passed", ""
        if examples["skipped"]:
            detail = f"{examples['skipped']} drawn cases skipped: {'; '.join(sorted(examples['why_skipped']))}"
    except Unsupported as exc:  # a capability the target does not have: a skip with its reason
        status, detail = "skipped", str(exc)
    except Exception as exc:  # any failure of the target is a verdict, reported in full
        notes = "\n".join(getattr(exc, "__notes__", []))
        status, detail = "failed", f"{type(exc).__name__}: {exc}\n{notes}".strip()
    return Outcome(impl.kind, impl.name, prop.name, device, dtype, status, round(time.perf_counter() - start, 3),
                   detail, replay, examples["run"], examples["skipped"])


def _log_outcome(log, o: Outcome) -> None:
    mark = {"passed": "ok  ", "failed": "FAIL", "skipped": "skip"}[o.status]
    log(f"{mark} {o.kind:19s} {o.property:60s} {o.device:5s} {o.dtype:9s} {o.seconds:7.2f}s")
    if o.status == "skipped" or (o.status == "passed" and o.detail):
        log(f"     {o.detail}")
    if o.status == "failed":
        log("     " + o.detail.replace("\n", "\n     "))
        log(f"     replay: {o.replay}")

