"""refimpl's pytest plugin (entry point ``pytest11: refimpl``): the property suite inside a user's own test run.

    pytest --pyargs refimpl.suite --refimpl-target KIND=MODULE:ATTR [-n auto] [--junitxml=PATH]
           [--refimpl-shard I/N] [--refimpl-report PATH.json] [--refimpl-markdown PATH.md]

The tests live in ``refimpl/suite/test_kinds.py`` (one test case per kind x property x device x dtype); this module
only registers the options (one ``refimpl`` group), the ``refimpl`` marker, the report header, the per-worker
device and thread setup under pytest-xdist, and the JSON / Markdown reports. It imports neither torch nor the
suite: a user's test run that does not collect refimpl's tests pays nothing for it (docs/pytest-plugin.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zlib
from importlib import metadata

import pytest

__all__ = ["parse_shard", "parse_targets", "shard_seed"]


def parse_targets(values) -> dict[str, str]:
    """``["KIND=MODULE:ATTR", ...]`` -> ``{kind: "MODULE:ATTR"}``; ``ValueError`` naming the bad value."""
    targets = {}
    for value in values or []:
        kind, sep, spec = value.partition("=")
        if not sep or not kind or ":" not in spec:
            raise ValueError(f"--refimpl-target must be KIND=MODULE:ATTR (e.g. window_attention=mypkg.attn:Attn), "
                             f"got {value!r}")
        if kind in targets:
            raise ValueError(f"--refimpl-target names kind {kind!r} twice ({targets[kind]!r} and {spec!r})")
        targets[kind] = spec
    return targets


def parse_shard(value) -> tuple[int, int] | None:
    """``"I/N"`` (0 <= I < N) -> ``(I, N)``; None for None; ``ValueError`` naming the bad value."""
    if value is None:
        return None
    index, sep, count = str(value).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(f"--refimpl-shard must be I/N with 0 <= I < N (e.g. 0/4), got {value!r}")
    return i, n


def shard_seed(base_seed: int, shard: tuple[int, int], test_id: str) -> int:
    """The Hypothesis seed of one test in one shard: a different stream of examples per shard, per test, and per
    base seed; reproducible from the three."""
    index, count = shard
    return zlib.crc32(f"{base_seed}:{index}/{count}:{test_id}".encode())


def pytest_addoption(parser):
    group = parser.getgroup("refimpl", "refimpl property suite (pytest --pyargs refimpl.suite)")
    group.addoption("--refimpl-target", action="append", default=[], metavar="KIND=MODULE:ATTR",
                    help="run KIND's properties against MODULE:ATTR (repeatable; none: refimpl's own "
                         "implementations of every kind)")
    group.addoption("--refimpl-shard", default=None, metavar="I/N",
                    help="this run is shard I of N: every property runs, each shard drawing other examples "
                         "(merge the shards' --refimpl-report files with `refimpl merge`)")
    group.addoption("--refimpl-report", default=None, metavar="PATH.json",
                    help="write the verdicts as refimpl's JSON report (the format of `refimpl verify --report`)")
    group.addoption("--refimpl-markdown", default=None, metavar="PATH.md",
                    help="write a Markdown summary (default: appended to $GITHUB_STEP_SUMMARY when that is set)")


@pytest.hookimpl(tryfirst=True)  # before Hypothesis' plugin loads --hypothesis-profile
def pytest_configure(config):
    profile = config.getoption("hypothesis_profile", default=None) or ""
    if profile in ("dev", "ci", "floor", "thorough") or profile.startswith("refimpl-"):  # refimpl.profiles.PROFILES
        import refimpl.profiles  # noqa: F401  (registers refimpl's profiles; imports hypothesis, not torch)
    config.addinivalue_line("markers", "refimpl(kind, property): a refimpl property (refimpl.suite)")
    parse_targets(config.getoption("refimpl_target"))  # fail at start-up on a malformed option
    parse_shard(config.getoption("refimpl_shard"))
    worker = getattr(config, "workerinput", {}).get("workerid", "")  # "gw0", "gw1", ...: an xdist worker
    if worker:
        _pin_worker(int(worker[2:]) if worker[2:].isdigit() else 0)


def _visible_gpus() -> list[str]:
    """The CUDA devices this process may use, without initializing CUDA (which would fix the device set)."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


def _pin_worker(index: int) -> None:
    """An xdist worker takes one CUDA device (round robin) and computes on one CPU thread, so that n workers
    share the machine instead of each spawning a thread per core."""
    gpus = _visible_gpus()
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import sys

    if "torch" in sys.modules:  # imported earlier by another plugin or a conftest: the env var came too late
        sys.modules["torch"].set_num_threads(1)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def pytest_report_header(config):
    targets = parse_targets(config.getoption("refimpl_target"))
    named = ", ".join(f"{k}={v}" for k, v in targets.items()) or "refimpl's own implementations"
    gpus = _visible_gpus()
    shard = config.getoption("refimpl_shard")
    return (f"refimpl {_version('refimpl')}: targets {named}; devices cpu"
            + (f" + {len(gpus)} CUDA" if gpus else "") + f"; torch {_version('torch')}"
            + (f"; shard {shard}" if shard else ""))


def pytest_runtest_logreport(report):
    """Collect the verdict of every refimpl test (on the controller too, under xdist)."""
    props = dict(report.user_properties)
    if "refimpl" not in props:
        return
    if report.when != "call" and not (report.skipped or report.failed):
        return
    info = props["refimpl"]
    status = "passed" if report.passed else "skipped" if report.skipped else "failed"
    detail = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        detail = str(report.longrepr[2]).removeprefix("Skipped: ")
    elif report.failed:
        detail = report.longreprtext
    _OUTCOMES.append({**info, "status": status, "seconds": round(report.duration, 3), "detail": detail,
                      "examples": props.get("refimpl_examples", 0),
                      "examples_skipped": props.get("refimpl_examples_skipped", 0),
                      "missing_modes": props.get("refimpl_missing_modes", [])})


_OUTCOMES: list[dict] = []


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if hasattr(config, "workerinput") or not _OUTCOMES:
        return  # workers send their reports to the controller, which writes the files
    report_path = config.getoption("refimpl_report")
    markdown_path = config.getoption("refimpl_markdown") or os.environ.get("GITHUB_STEP_SUMMARY")
    if not (report_path or markdown_path):
        return
    from refimpl.harness import report_from_outcomes

    report = report_from_outcomes(_OUTCOMES, shard=config.getoption("refimpl_shard"))
    if report_path:
        with open(report_path, "w") as out:
            out.write(report.json())
    if markdown_path:
        with open(markdown_path, "a") as out:
            out.write(report.markdown())
