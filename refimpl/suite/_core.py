"""The property registry and the machinery to run a property on an implementation.

A property is defined once, with the strategy that draws its cases and a ``check(impl, case, device, dtype)``
that raises ``AssertionError`` when it does not hold. The project's ``properties/`` suite and ``refimpl verify``
both run the same registered objects; the implementation under test is always a parameter.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import hypothesis
import numpy as np
import torch
from hypothesis import given
from hypothesis.strategies import SearchStrategy

__all__ = [
    "available_devices", "Implementation", "Property", "PROPERTIES", "register", "run_property", "load_implementation",
    "DTYPES", "Unsupported", "property_grid", "Capabilities", "Mode", "KindModes", "Kind", "KINDS", "register_kind",
    "kind_modes", "opt_in_line", "round_to", "to_tensor",
]

DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class Unsupported(Exception):
    """Raised by a check when the implementation under test lacks an optional capability the property needs
    (e.g. streaming), or by ``run_property`` when torch itself has no kernels for the dtype on the device (torch
    2.1 has no float16 matmul on CPU); ``run_property`` re-raises it once, so it becomes a reported skip with the
    reason. ``modes``: the kind's modes whose absence caused it (for the report's list of unchecked extensions)."""

    def __init__(self, reason: str, *, modes=()):
        super().__init__(reason)
        self.modes = tuple(modes)


@dataclass(frozen=True)
class Implementation:
    """An implementation under test: ``factory(**constructor_kwargs) -> nn.Module`` with the upstream protocol
    (constructor signature, state-dict keys, forward)."""

    kind: str  # "window_attention"
    name: str
    factory: Callable

    @property
    def capabilities(self) -> Capabilities:
        """What the target declares it supports (``refimpl_capabilities`` on the factory); without a declaration,
        its kind's upstream protocol."""
        return Capabilities.declared_by(self.factory, self.kind)


@dataclass(frozen=True)
class Mode:
    """One thing a drawn case may use (a temporal call, a mask convention, train mode, ...).

    ``upstream`` modes are part of the kind's upstream protocol: assumed supported unless a target declares
    otherwise. Extension modes (``upstream=False``) are what refimpl defines beyond upstream: checked only on
    targets that opt in. ``meaning`` says what a case in this mode does; ``upstream_behaviour`` how the upstream
    code behaves there (the likely cause when a target fails only in this mode)."""

    name: str
    meaning: str
    upstream: bool = True
    upstream_behaviour: str = ""


@dataclass(frozen=True)
class KindModes:
    """The modes of one kind, and how to read them off a drawn case."""

    modes: tuple[Mode, ...]
    case_modes: Callable  # case -> names of the modes the case uses
    case_edges: Callable = lambda case: ()  # case -> descriptions of edges the case sits on (a failure names them)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modes)

    @property
    def upstream(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modes if m.upstream)

    @property
    def extensions(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modes if not m.upstream)

    def mode(self, name: str) -> Mode:
        return next(m for m in self.modes if m.name == name)


_NO_MODES = KindModes((), lambda case: ())


@dataclass(frozen=True)
class Kind:
    """One kind of implementation under test, registered by its module in ``refimpl.suite``: the upstream code it
    follows, refimpl's default target (what ``refimpl verify`` checks without ``--target``), the protocol check
    run before any property (``protocol(factory)`` raises ``ProtocolError``), and its modes."""

    name: str
    upstream: str
    default_target: str
    protocol: Callable
    modes: KindModes = _NO_MODES
    declarations: tuple[str, ...] = ()  # keys of refimpl_capabilities the kind itself reads (e.g. index_convention)
    # examples per property that `refimpl verify` draws without --max-examples (None: the harness's default, 100);
    # a kind sets fewer only where its catalogued mutants all fail within half of it (properties/test_mutants.py)
    default_max_examples: int | None = None


# Every kind, by name: filled by the kind modules (``register_kind``), in import order.
KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> None:
    KINDS[kind.name] = kind


def kind_modes(kind: str) -> KindModes:
    return KINDS[kind].modes if kind in KINDS else _NO_MODES


def opt_in_line(extensions) -> str:
    """The one line a target adds to opt into ``extensions``."""
    return f"refimpl_capabilities = {{\"extensions\": {sorted(extensions)!r}}}".replace("'", '"')


def opt_out_line(kind: str, without) -> str:
    """The one line a target adds to declare that it lacks the upstream modes ``without``."""
    keep = [m for m in kind_modes(kind).upstream if m not in without]
    return f"refimpl_capabilities = {{\"modes\": {keep!r}}}".replace("'", '"')


@dataclass(frozen=True)
class Capabilities:
    """What an implementation supports. Declare it on the class or factory as ``refimpl_capabilities = {...}``
    with any of ``dtypes`` (names), ``devices``, ``modes`` and ``extensions``.

    Without a declaration a target is checked on its kind's upstream protocol: every upstream mode, every dtype
    and device, no extension. ``extensions`` opts into modes refimpl defines beyond upstream (for window
    attention: boolean masks, rows with no allowed key); ``modes``, when given, is the exact list of modes the
    target supports (upstream and extension names), to declare that it lacks an upstream mode. Whatever a target
    does not support is a reported skip with the reason, never a failure and never silently untested. A kind may
    read keys of its own (``Kind.declarations``: ``index_convention`` for ``window_attention_3d``)."""

    dtypes: tuple[str, ...] | None = None
    devices: tuple[str, ...] | None = None
    modes: tuple[str, ...] = ()
    kind: str = ""

    @classmethod
    def declared_by(cls, factory, kind: str = "") -> Capabilities:
        known = kind_modes(kind)
        declared = getattr(factory, "refimpl_capabilities", None)
        if declared is None:
            return cls(modes=known.upstream, kind=kind)
        if not isinstance(declared, dict):
            raise ValueError(f"refimpl_capabilities must be a dict, got {type(declared).__name__}")
        own = KINDS[kind].declarations if kind in KINDS else ()
        unknown = set(declared) - {"dtypes", "devices", "modes", "extensions", *own}
        if unknown:
            raise ValueError(f"refimpl_capabilities has unknown keys {sorted(unknown)}; expected dtypes, devices, "
                             f"modes, extensions" + "".join(f", {key}" for key in own))
        modes = tuple(declared.get("modes", known.upstream))
        if set(modes) - set(known.names):
            raise ValueError(f"refimpl_capabilities['modes'] has unknown modes {sorted(set(modes) - set(known.names))}"
                             f"; the {kind} modes are {list(known.names)}")
        extensions = tuple(declared.get("extensions", ()))
        if set(extensions) - set(known.extensions):
            raise ValueError(f"refimpl_capabilities['extensions'] has unknown extensions "
                             f"{sorted(set(extensions) - set(known.extensions))}; the {kind} extensions are "
                             f"{list(known.extensions)}")
        modes += tuple(e for e in extensions if e not in modes)
        as_tuple = lambda key: None if declared.get(key) is None else tuple(declared[key])  # noqa: E731
        return cls(as_tuple("dtypes"), as_tuple("devices"), modes, kind)

    def missing(self, needs) -> list[str]:
        """The modes of ``needs`` this target does not support."""
        return [m for m in needs if m not in self.modes]

    def why_not(self, device: str, dtype: str, needs=()) -> str | None:
        """The reason a run on ``device``/``dtype`` needing modes ``needs`` is not supported, or None."""
        if self.devices is not None and device not in self.devices:
            return f"the target declares devices {list(self.devices)}"
        if self.dtypes is not None and dtype not in self.dtypes:
            return f"the target declares dtypes {list(self.dtypes)}"
        missing = self.missing(needs)
        if not missing:
            return None
        known = kind_modes(self.kind)
        extensions = [m for m in missing if m in known.extensions]
        if extensions and extensions == missing:
            return f"extensions the target did not opt into: {', '.join(extensions)} ({opt_in_line(extensions)})"
        return f"the target declares modes {list(self.modes)}, not {missing}"


@dataclass(frozen=True)
class Property:
    name: str
    kind: str
    doc: str
    cases: SearchStrategy = field(repr=False)
    check: Callable = field(repr=False)
    dtypes: tuple[str, ...] = tuple(DTYPES)
    needs: tuple[str, ...] = ()  # modes every case of this property uses (its kind's ``Mode`` names)


PROPERTIES: list[Property] = []


def available_devices() -> list[str]:
    """``["cpu"]``, plus ``"cuda"`` when a CUDA device is present."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@functools.cache
def missing_kernels(device: str, dtype: str) -> str | None:
    """Why this torch cannot compute in ``dtype`` on ``device`` at all, or None when it can.

    Feature detection, not a version check: torch 2.1 has no CPU float16 kernels for matmul, softmax or
    convolution ("addmm_impl_cpu_" not implemented for 'Half'), so no implementation of an upstream module can run
    there; later versions have them (docs/torch-versions.md)."""
    dt = DTYPES[dtype]
    probes = {
        "linear": lambda: torch.nn.functional.linear(torch.ones(2, 2, dtype=dt, device=device),
                                                     torch.ones(2, 2, dtype=dt, device=device)),
        "bmm": lambda: torch.ones(1, 2, 2, dtype=dt, device=device) @ torch.ones(1, 2, 2, dtype=dt, device=device),
        "softmax": lambda: torch.ones(2, 2, dtype=dt, device=device).softmax(-1),
        "conv2d": lambda: torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3, dtype=dt, device=device),
                                                     torch.ones(1, 1, 2, 2, dtype=dt, device=device)),
    }
    for name, probe in probes.items():
        try:
            probe()
        except (RuntimeError, NotImplementedError) as exc:
            return f"torch {torch.__version__} has no {dtype} {name} kernel on {device}: {exc}"
    return None


@contextlib.contextmanager
def cpu_threads(n: int):
    """Run the body with ``torch.set_num_threads(n)``: kernels may pick other routes, and parallel ones reduce in
    other orders, at other thread counts."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def thread_counts() -> tuple[int, int]:
    """One thread, and the process's setting (at least two, so that the parallel routes run on any machine)."""
    return 1, max(2, torch.get_num_threads())


def register(kind: str, cases: SearchStrategy, dtypes: tuple[str, ...] = tuple(DTYPES), needs: tuple[str, ...] = ()):
    """Decorator: register ``check(impl, case, device, dtype)`` as a property; its docstring is the statement.
    ``needs``: the modes (the kind's ``Mode`` names) every case uses, so targets that declare they lack one skip it."""

    def wrap(check):
        doc = " ".join((check.__doc__ or "").split())
        PROPERTIES.append(Property(check.__name__, kind, doc, cases, check, dtypes, tuple(needs)))
        return check

    return wrap


def properties_for(kind: str) -> list[Property]:
    return [p for p in PROPERTIES if p.kind == kind]


def property_grid(kind: str, devices=None, dtypes=None) -> list[tuple[Property, str, str]]:
    """Every ``(property, device, dtype)`` of ``kind`` to run: each of ``devices`` (default: every device present)
    and each of ``dtypes`` (default: all) that the property applies to."""
    devices = available_devices() if devices is None else devices
    return [(prop, device, dtype) for prop in properties_for(kind) for device in devices
            for dtype in (prop.dtypes if dtypes is None else [d for d in dtypes if d in prop.dtypes])]


def run_property(
    prop: Property, impl: Implementation, device: str, dtype: str, settings=None, seed: int | None = None
) -> dict:
    """Run one property under Hypothesis (the active profile unless ``settings`` is given, and Hypothesis' seed
    ``seed`` when given); raises after shrinking, with the falsifying case and what it used (modes, edges, dtype,
    and how to declare a behaviour that is intended) in the exception's notes, or raises ``Unsupported`` when the
    implementation lacks a capability the property needs, or torch lacks the kernels for ``dtype`` on ``device``.
    Returns ``{"run": n, "skipped": m, "why_skipped": reason, "missing_modes": modes}``: the drawn cases
    checked, and those rejected because they need modes the target does not support (and why); rejected cases do
    not count against the example budget."""

    missing = missing_kernels(device, dtype)
    if missing is not None:
        raise Unsupported(missing)
    capabilities = impl.capabilities
    reason = capabilities.why_not(device, dtype, prop.needs)
    if reason:
        raise Unsupported(reason, modes=capabilities.missing(prop.needs))
    unsupported: list[Unsupported] = []
    examples = {"run": 0, "skipped": 0, "why_skipped": "", "missing_modes": set()}
    modes = kind_modes(prop.kind)

    @given(case=prop.cases)
    def run(case):
        if unsupported:  # the capability is missing: nothing left to check on later examples
            return
        used = modes.case_modes(case)
        lacking = capabilities.missing(used)  # e.g. a temporal case, a target without temporal mode
        if lacking:  # rejected, not counted: Hypothesis draws on until max_examples cases the target supports
            examples["skipped"] += 1
            examples["missing_modes"].update(lacking)
            hypothesis.reject()
        examples["run"] += 1
        try:
            prop.check(impl, case, device, DTYPES[dtype])
        except Unsupported as exc:
            unsupported.append(exc)
        except Exception as exc:
            exc.add_note(failing_case_note(impl, modes, used, case, dtype))
            examples.setdefault("first_failure", examples["run"])  # before shrinking: how soon the bug showed
            exc.refimpl_examples_to_failure = examples["first_failure"]
            raise

    # rejected cases (modes the target lacks) must not end the run early
    base = settings or hypothesis.settings()
    run = hypothesis.settings(base, suppress_health_check=(*base.suppress_health_check,
                                                           hypothesis.HealthCheck.filter_too_much))(run)
    if seed is not None:
        run = hypothesis.seed(seed)(run)
    run.__name__ = run.__qualname__ = f"{prop.name}[{impl.name}-{device}-{dtype}]"
    try:
        # One CPU thread unless a property varies it (``thread_counts``: 1 and at least 2, where kernels take other
        # routes): the drawn tensors are small, where a parallel region costs more than it saves, and on a shared
        # machine waiting threads stall every op (a temporal-model property: 3.9 s on one thread, 59 s on two
        # with the 2-core machine loaded; docs/verify.md).
        with cpu_threads(1):
            run()
    except hypothesis.errors.Unsatisfiable:
        if examples["run"]:
            raise
    if unsupported:
        raise unsupported[0]
    if examples["skipped"]:
        examples["why_skipped"] = capabilities.why_not(device, dtype, sorted(examples["missing_modes"]))
    if examples["run"] == 0 and examples["skipped"]:
        raise Unsupported(f"every drawn case needs a mode the target does not support: {examples['why_skipped']}",
                          modes=sorted(examples["missing_modes"]))
    return examples


def failing_case_note(impl: Implementation, modes: KindModes, used, case, dtype: str) -> str:
    """What the failing case used, for the failure report: each mode (with upstream's behaviour there, and the
    line that declares the target lacks it, or that it is an extension the target opted into), the edges the
    case sits on, and the dtype."""
    lines = [f"The failing case ran in {dtype}" + (f" and used: {', '.join(used)}." if used else " and used no "
                                                   "optional mode.")]
    for name in used:
        mode = modes.mode(name)
        line = f"- {name}: {mode.meaning}."
        if mode.upstream_behaviour:
            line += f" Upstream: {mode.upstream_behaviour}."
        if mode.upstream:
            line += f" If the target does not support this, declare: {opt_out_line(impl.kind, [name])}"
        else:
            line += (" This is an extension beyond the upstream protocol, checked because the target opted in; if "
                     f"it does not implement it, remove {name!r} from its declaration.")
        lines.append(line)
    lines += [f"- edge: {edge}" for edge in modes.case_edges(case)]
    if dtype != "float64":
        lines.append(f"- dtype {dtype}: compared within the tolerance policy for {dtype}; if the target computes "
                     f"{dtype} inputs in a lower precision on purpose, declare the dtypes it computes faithfully: "
                     f"refimpl_capabilities = {{\"dtypes\": [...]}}")
    return "\n".join(lines)


def load_implementation(kind: str, spec: str) -> Implementation:
    """``"package.module:attr"`` -> ``Implementation``; raises ``ValueError`` with the reason when it cannot."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"implementation must be given as MODULE:ATTR, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import error of the user's module is reported, not raised
        raise ValueError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    except Exception as exc:  # a lazy attribute that fails (e.g. a peer adapter whose package is not installed)
        raise ValueError(f"cannot load {spec}: {type(exc).__name__}: {exc}") from exc
    if not callable(factory):
        raise ValueError(f"{spec} is not callable (got {type(factory).__name__})")
    return Implementation(kind, spec, factory)



# ---- arrays between the oracle (float64 NumPy) and an implementation (torch, any dtype): shared by every kind ----


def round_to(array, dtype: torch.dtype) -> np.ndarray:
    """The float64 values that ``array`` takes once stored in ``dtype``."""
    return torch.as_tensor(np.asarray(array, dtype=np.float64)).to(dtype).double().numpy()


def to_tensor(array, device, dtype, requires_grad=False) -> torch.Tensor:
    """``array`` as a ``dtype`` tensor on ``device``; boolean arrays (may-attend masks) stay boolean."""
    array = np.asarray(array)
    t = torch.as_tensor(array, dtype=torch.bool if array.dtype == bool else dtype, device=device)
    return t.requires_grad_(requires_grad)
