"""The conformance harness behind ``refimpl verify``, callable from Python::

    from refimpl.harness import verify
    report = verify({"window_attention": "my_kernels:MyWindowAttention"}, dtypes=["float32"])
    report.exit_code, report.failed, report.markdown()

Each target is first checked against the upstream protocol (constructor, state-dict keys, output shape): a target
that does not follow it raises ``ProtocolError`` (exit status 2) before any property runs. Then every registered
property of its kind runs on every requested device and dtype the property applies to.

A target without declarations is checked on its kind's upstream protocol only (for window attention: AIM's
additive masks, temporal mode, qk_scale, train mode, autograd). What refimpl defines beyond upstream (boolean
masks, rows with no allowed key, streaming) is an extension the target opts into with ``refimpl_capabilities =
{"extensions": [...]}``; the report lists, per target, the extensions that were not checked and that line. What
a target declares it lacks (``refimpl_capabilities = {"modes": [...]}``, ``"dtypes"``, ``"devices"``) is a skip
with the reason.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import hypothesis
import torch

import refimpl.profiles  # noqa: F401  (registers the ci profile the harness runs under)
from refimpl.suite import (
    DTYPES,
    Implementation,
    Unsupported,
    available_devices,
    load_implementation,
    properties_for,
    property_grid,
    run_property,
)
from refimpl.suite._core import KINDS, kind_modes, opt_in_line
from refimpl.suite._protocol import ProtocolError

DEFAULT_TARGETS = {name: kind.default_target for name, kind in KINDS.items()}

# Examples per property of a default run. Every catalogued mutant fails a property within its first 40 examples at
# this budget (docs/mutants.md, `python -m refimpl.mutants` records it), so 100 keeps the catalog's power with room to
# spare; the test suite's ci profile draws 150, `--max-examples` and the thorough profile more.
DEFAULT_MAX_EXAMPLES = 100




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
    missing_modes: list = field(default_factory=list)  # modes whose absence skipped the property or some cases


@dataclass
class Report:
    targets: dict
    max_examples: int
    seed: int | None
    outcomes: list[Outcome] = field(default_factory=list)
    shards: list = field(default_factory=list)  # "I/N" of each shard merged into this report

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def counts(self) -> dict[str, int]:
        return {s: sum(o.status == s for o in self.outcomes) for s in ("passed", "failed", "skipped")}

    def unchecked_extensions(self) -> dict[tuple[str, str], dict[str, list[str]]]:
        """Per ``(kind, target)``, the extensions it did not opt into, each with the properties that skipped all
        or some of their cases for it."""
        unchecked: dict = {}
        for o in self.outcomes:
            for mode in o.missing_modes:
                if mode in kind_modes(o.kind).extensions:
                    props = unchecked.setdefault((o.kind, o.target), {}).setdefault(mode, [])
                    if o.property not in props:
                        props.append(o.property)
        return unchecked

    def extension_lines(self) -> list[str]:
        """What the report says about extensions that were not checked, and the line that opts into them."""
        lines = []
        for (kind, target), extensions in self.unchecked_extensions().items():
            lines.append(f"{kind} target {target}: extensions not checked (the target did not opt in):")
            for mode, props in extensions.items():
                lines.append(f"- {mode}: {kind_modes(kind).mode(mode).meaning} ({len(props)} properties: "
                             f"{', '.join(props)})")
            lines.append(f"  to opt in, add to the class or factory: {opt_in_line(extensions)}")
        return lines

    def json(self) -> str:
        return json.dumps({"targets": self.targets, "torch": torch.__version__, "max_examples": self.max_examples,
                           "seed": self.seed, "shards": self.shards, "counts": self.counts(),
                           "unchecked_extensions": {f"{k}={t}": e for (k, t), e in self.unchecked_extensions().items()},
                           "outcomes": [asdict(o) for o in self.outcomes]}, indent=2)

    def markdown(self) -> str:
        """One row per property x device x dtype: passed / failed (first line of the reason) / skipped (why);
        then the extensions each target did not opt into."""
        counts = self.counts()
        lines = [f"**refimpl**: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
                 + (f" ({len(self.shards)} shards merged)" if len(self.shards) > 1 else ""), "",
                 "| kind | property | device | dtype | examples | result |", "|---|---|---|---|---:|---|"]
        for o in self.outcomes:
            why = f": {_cell(o.detail.splitlines()[0])}" if o.status != "passed" and o.detail else ""
            lines.append(f"| {o.kind} | {o.property} | {o.device} | {o.dtype} | {o.examples} | {o.status}{why} |")
        for o in self.failed:
            lines += ["", f"<details><summary>{o.kind} {o.property} {o.device} {o.dtype}: replay</summary>", "",
                      f"```\n{o.replay}\n```", "</details>"]
        extensions = self.extension_lines()
        if extensions:
            lines += [""] + extensions
        return "\n".join(lines) + "\n"


def report_from_outcomes(outcomes, *, shard: str | None = None) -> Report:
    """A ``Report`` from outcome dicts (the pytest plugin's record of each test, or a JSON report's
    ``outcomes``)."""
    fields = set(Outcome.__dataclass_fields__)
    rows = [Outcome(**{k: v for k, v in o.items() if k in fields}) for o in outcomes]
    targets = {}
    for o in rows:
        targets.setdefault(o.kind, o.target)
    report = Report(targets, max((o.examples for o in rows), default=0), None, rows)
    report.shards = [shard] if shard else []
    return report


_SEVERITY = {"failed": 2, "passed": 1, "skipped": 0}


def merge_reports(reports: list[dict]) -> Report:
    """One verdict from the JSON reports of n shards (or any runs) of the same suite: per kind x target x
    property x device x dtype, failed if any shard failed (every failure kept, with its replay command), else
    passed if any shard checked it, else skipped; examples and seconds add up."""
    merged: dict = {}
    shards = []
    for data in reports:
        shards += data.get("shards", [])
        for o in data["outcomes"]:
            key = (o["kind"], o["target"], o["property"], o["device"], o["dtype"])
            if key not in merged:
                merged[key] = dict(o)
                continue
            into = merged[key]
            if _SEVERITY[o["status"]] > _SEVERITY[into["status"]]:
                into.update(status=o["status"], detail=o["detail"], replay=o["replay"])
            elif o["status"] == "failed":
                into["detail"] += "\n\n" + o["detail"]
            for count in ("examples", "examples_skipped", "seconds"):
                into[count] = round(into.get(count, 0) + o.get(count, 0), 3)
            into["missing_modes"] = sorted(set(into.get("missing_modes", [])) | set(o.get("missing_modes", [])))
    report = report_from_outcomes(list(merged.values()))
    report.shards = shards
    return report


def _cell(text: str, limit: int = 200) -> str:
    """One Markdown table cell: no pipes, bounded length (GitHub's step summary holds 1 MiB)."""
    text = text.replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_protocol(impl) -> None:
    """Raise ``ProtocolError`` saying what is wrong unless ``impl`` follows its kind's upstream protocol."""
    KINDS[impl.kind].protocol(impl.factory)


# ---- running ----


def verify(targets: dict | None = None, *, devices=None, dtypes=("float64", "float32", "float16", "bfloat16"),
           max_examples: int | None = None, seed: int | None = None, properties=(), fail_fast: bool = False,
           log: Callable[[str], None] | None = None, settings=None, jobs: int = 1) -> Report:
    """Run every property of each target's kind. ``targets``: ``{kind: "module:attr"}`` (or an
    ``Implementation``); default ``DEFAULT_TARGETS``. ``devices``: default every device present. ``fail_fast``:
    stop a target at its first failing property. ``log``: called with one line per outcome (e.g. ``print``).
    ``jobs``: properties run in that many worker processes (one CPU thread each), the outcomes reported in the
    same order and with the same examples as one process gives; targets given as ``"module:attr"`` only (an
    ``Implementation`` object, ``fail_fast`` or ``settings`` run in this process).
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
    run_settings = {kind: hypothesis.settings(base, max_examples=max_examples or (
        base.max_examples if settings else default_budget(kind)), derandomize=seed is None, print_blob=False)
        for kind in targets}
    report = Report({k: getattr(t, "name", t) for k, t in targets.items()},
                    max_examples or (base.max_examples if settings else DEFAULT_MAX_EXAMPLES), seed)

    work = []  # (kind, target, impl, property, device, dtype) in report order
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
        work += [(kind, target, impl, prop, device, dtype)
                 for prop, device, dtype in property_grid(kind, devices, dtypes)
                 if not properties or prop.name in properties]
    parallel = jobs > 1 and len(work) > 1 and not fail_fast and settings is None and all(
        isinstance(t, str) for t in targets.values())
    outcomes = (_run_in_workers(work, jobs, max_examples, seed) if parallel
                else (_run_one(prop, impl, device, dtype, run_settings[kind], seed)
                      for kind, _, impl, prop, device, dtype in work))
    for outcome in outcomes:
        report.outcomes.append(outcome)
        if log:
            _log_outcome(log, outcome)
        if fail_fast and outcome.status == "failed":
            break
    return report


def default_budget(kind: str) -> int:
    """Examples per property of ``kind`` without ``--max-examples``: the kind's own default (set where its
    catalogued mutants all fail within half of it), else ``DEFAULT_MAX_EXAMPLES``."""
    return KINDS[kind].default_max_examples or DEFAULT_MAX_EXAMPLES


def _run_in_workers(work, jobs: int, max_examples, seed):
    """Outcomes of ``work`` computed by ``jobs`` spawned processes, yielded in ``work``'s order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_setup, initargs=(os.getcwd(),)) as pool:
        futures = [pool.submit(_worker_run, kind, target, prop.name, device, dtype, max_examples, seed)
                   for kind, target, _, prop, device, dtype in work]
        for future in futures:
            yield future.result()


def _worker_setup(cwd: str) -> None:
    torch.set_num_threads(1)  # the workers share the cores
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def _worker_run(kind, target, prop_name, device, dtype, max_examples, seed) -> Outcome:
    """One property in a worker: the same settings and seed as ``verify`` uses in one process."""
    base = hypothesis.settings.get_profile("ci")
    run_settings = hypothesis.settings(base, max_examples=max_examples or default_budget(kind),
                                       derandomize=seed is None, print_blob=False)
    (prop,) = [p for p in properties_for(kind) if p.name == prop_name]
    return _run_one(prop, load_implementation(kind, target), device, dtype, run_settings, seed)


def _run_one(prop, impl, device, dtype, run_settings, seed) -> Outcome:
    replay = shlex.join(["refimpl", "verify", "--target", f"{impl.kind}={impl.name}", "--property", prop.name,
                         "--device", device, "--dtype", dtype, "--max-examples", str(run_settings.max_examples)]
                        + ([] if seed is None else ["--seed", str(seed)]))
    start = time.perf_counter()
    examples = {"run": 0, "skipped": 0, "missing_modes": ()}
    try:
        examples = run_property(prop, impl, device, dtype, settings=run_settings, seed=seed)
        status, detail = "passed", ""
        if examples["skipped"]:
            detail = (f"{examples['skipped']} drawn cases skipped and drawn again (not counted in the "
                      f"{examples['run']} checked): {examples['why_skipped']}")
    except Unsupported as exc:  # a capability the target does not have: a skip with its reason
        status, detail = "skipped", str(exc)
        examples = {**examples, "missing_modes": exc.modes}
    except Exception as exc:  # any failure of the target is a verdict, reported in full
        notes = "\n".join(getattr(exc, "__notes__", []))
        status, detail = "failed", f"{type(exc).__name__}: {exc}\n{notes}".strip()
        # the drawn case that first failed (Hypothesis then shrank it): how many examples the bug needed
        examples = {**examples, "run": _examples_to_failure(exc, examples["run"])}
    return Outcome(impl.kind, impl.name, prop.name, device, dtype, status, round(time.perf_counter() - start, 3),
                   detail, replay, examples["run"], examples["skipped"], sorted(examples["missing_modes"]))


def _examples_to_failure(exc: BaseException, default: int) -> int:
    """The examples a property drew up to its first failing one (``run_property`` marks the exception; Hypothesis
    may wrap it, e.g. in a FlakyFailure group when a rerun passed)."""
    pending = [exc]
    while pending:
        current = pending.pop()
        if hasattr(current, "refimpl_examples_to_failure"):
            return current.refimpl_examples_to_failure
        pending += list(getattr(current, "exceptions", ())) + [c for c in (current.__cause__, current.__context__) if c]
    return default


def _log_outcome(log, o: Outcome) -> None:
    mark = {"passed": "ok  ", "failed": "FAIL", "skipped": "skip"}[o.status]
    log(f"{mark} {o.kind:19s} {o.property:60s} {o.device:5s} {o.dtype:9s} {o.seconds:7.2f}s")
    if o.status == "skipped" or (o.status == "passed" and o.detail):
        log(f"     {o.detail}")
    if o.status == "failed":
        log("     " + o.detail.replace("\n", "\n     "))
        log(f"     replay: {o.replay}")

