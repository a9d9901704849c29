"""The property registry and the machinery to run a property on an implementation.

A property is defined once, with the strategy that draws its cases and a ``check(impl, case, device, dtype)``
that raises ``AssertionError`` when it does not hold. The project's ``properties/`` suite and ``refimpl verify``
both run the same registered objects; the implementation under test is always a parameter.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import hypothesis
from hypothesis import given
from hypothesis.strategies import SearchStrategy

__all__ = [
    "available_devices", "Implementation", "Property", "PROPERTIES", "register", "run_property", "load_implementation",
    "DTYPES", "Unsupported", "property_grid", "Capabilities", "MODES", "CASE_MODES",
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
    reason."""


@dataclass(frozen=True)
class Implementation:
    """An implementation under test: ``factory(**constructor_kwargs) -> nn.Module`` with the upstream protocol
    (constructor signature, state-dict keys, forward)."""

    kind: str  # "window_attention"
    name: str
    factory: Callable

    @property
    def capabilities(self) -> "Capabilities":
        """What the target declares it supports (``refimpl_capabilities`` on the factory; everything if absent)."""
        return Capabilities.declared_by(self.factory)


# temporal mode; window masks (additive -100 / -inf); boolean may-attend masks; masks with rows that may attend to
# nothing; a qk_scale other than the default; train mode (dropout, batch statistics); autograd.
MODES = ("temporal", "masks", "boolean_masks", "fully_masked_rows", "qk_scale", "training", "gradients")


@dataclass(frozen=True)
class Capabilities:
    """What an implementation supports. Declare it on the class or factory as ``refimpl_capabilities = {...}``
    with any of ``dtypes`` (names), ``devices``, and ``modes`` (a subset of ``MODES``: temporal mode, masks,
    train mode / dropout, autograd). What is not declared is assumed supported. Whatever a target does not
    support is a reported skip with the reason, never a failure and never silently untested."""

    dtypes: tuple[str, ...] | None = None
    devices: tuple[str, ...] | None = None
    modes: tuple[str, ...] = MODES

    @classmethod
    def declared_by(cls, factory) -> "Capabilities":
        declared = getattr(factory, "refimpl_capabilities", None)
        if declared is None:
            return cls()
        if not isinstance(declared, dict):
            raise ValueError(f"refimpl_capabilities must be a dict, got {type(declared).__name__}")
        unknown = set(declared) - {"dtypes", "devices", "modes"}
        if unknown:
            raise ValueError(f"refimpl_capabilities has unknown keys {sorted(unknown)}; expected dtypes, devices, modes")
        modes = tuple(declared.get("modes", MODES))
        if set(modes) - set(MODES):
            raise ValueError(f"refimpl_capabilities['modes'] has unknown modes {sorted(set(modes) - set(MODES))}; "
                             f"expected a subset of {MODES}")
        as_tuple = lambda key: None if declared.get(key) is None else tuple(declared[key])  # noqa: E731
        return cls(as_tuple("dtypes"), as_tuple("devices"), modes)

    def why_not(self, device: str, dtype: str, needs=()) -> str | None:
        """The reason a run on ``device``/``dtype`` needing modes ``needs`` is not supported, or None."""
        if self.devices is not None and device not in self.devices:
            return f"the target declares devices {list(self.devices)}"
        if self.dtypes is not None and dtype not in self.dtypes:
            return f"the target declares dtypes {list(self.dtypes)}"
        missing = [m for m in needs if m not in self.modes]
        if missing:
            return f"the target declares modes {list(self.modes)}, not {missing}"
        return None


@dataclass(frozen=True)
class Property:
    name: str
    kind: str
    doc: str
    cases: SearchStrategy = field(repr=False)
    check: Callable = field(repr=False)
    dtypes: tuple[str, ...] = tuple(DTYPES)
    needs: tuple[str, ...] = ()  # modes every case of this property uses (see MODES)


# Per kind, the modes one drawn case uses (e.g. a temporal call, a mask): registered by the kind's module.
CASE_MODES: dict[str, Callable] = {}


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
    ``needs``: the modes (``MODES``) every case uses, so targets that declare they lack one skip it."""

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
    ``seed`` when given); raises after shrinking, with the falsifying case in the exception's notes, or raises
    ``Unsupported`` when the implementation lacks a capability the property needs, or torch lacks the kernels for
    ``dtype`` on ``device``. Returns ``{"run": n, "skipped": m, "why_skipped": reasons}``: the drawn cases checked,
    and those skipped because they need a mode the target declares it lacks."""

    missing = missing_kernels(device, dtype)
    if missing is not None:
        raise Unsupported(missing)
    capabilities = impl.capabilities
    reason = capabilities.why_not(device, dtype, prop.needs)
    if reason:
        raise Unsupported(reason)
    unsupported: list[Unsupported] = []
    examples = {"run": 0, "skipped": 0, "why_skipped": set()}
    case_modes = CASE_MODES.get(prop.kind, lambda case: ())

    @given(case=prop.cases)
    def run(case):
        if unsupported:  # the capability is missing: nothing left to check on later examples
            return
        why = capabilities.why_not(device, dtype, case_modes(case))  # e.g. a temporal case, a target without it
        if why:
            examples["skipped"] += 1
            examples["why_skipped"].add(why)
            return
        examples["run"] += 1
        try:
            prop.check(impl, case, device, DTYPES[dtype])
        except Unsupported as exc:
            unsupported.append(exc)

    if settings is not None:
        run = settings(run)
    if seed is not None:
        run = hypothesis.seed(seed)(run)
    run.__name__ = run.__qualname__ = f"{prop.name}[{impl.name}-{device}-{dtype}]"
    run()
    if unsupported:
        raise unsupported[0]
    if examples["run"] == 0 and examples["skipped"]:
        raise Unsupported(f"every drawn case needs a mode the target lacks ({'; '.join(sorted(examples['why_skipped']))})")
    return examples


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
    if not callable(factory):
        raise ValueError(f"{spec} is not callable (got {type(factory).__name__})")
    return Implementation(kind, spec, factory)

