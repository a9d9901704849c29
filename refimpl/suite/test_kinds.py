"""The property suite as pytest tests: one test case per kind x property x device x dtype, against the targets
named with ``--refimpl-target KIND=MODULE:ATTR`` (none: refimpl's own implementation of every kind).

Run from anywhere after ``pip install refimpl``: ``pytest --pyargs refimpl.suite``. The repository's test command
collects this same module, and ``refimpl verify`` runs the same registered properties (``refimpl.harness``).
Options, the report header, xdist and the reports: ``refimpl.pytest_plugin``.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from refimpl.pytest_plugin import parse_shard, parse_targets, shard_seed
from refimpl.suite import KINDS, Unsupported, load_implementation, property_grid, run_property


def _targets(config) -> dict[str, str]:
    named = parse_targets(config.getoption("refimpl_target", default=[]))
    unknown = sorted(set(named) - set(KINDS))
    if unknown:
        raise pytest.UsageError(f"--refimpl-target names unknown kind(s) {unknown}; kinds: {sorted(KINDS)}")
    return named or {name: kind.default_target for name, kind in KINDS.items()}


def pytest_generate_tests(metafunc):
    if "refimpl_case" not in metafunc.fixturenames:
        return
    params = []
    for kind, spec in _targets(metafunc.config).items():
        for prop, device, dtype in property_grid(kind):
            marks = [pytest.mark.refimpl(kind, prop.name)] + ([pytest.mark.cuda] if device == "cuda" else [])
            params.append(pytest.param((kind, spec, prop, device, dtype), marks=marks,
                                       id=f"{kind}-{prop.name}-{device}-{dtype}"))
    metafunc.parametrize("refimpl_case", params)


_LOADED: dict = {}


def _load(kind: str, spec: str):
    if (kind, spec) not in _LOADED:
        try:
            _LOADED[kind, spec] = load_implementation(kind, spec)
        except ValueError as exc:
            _LOADED[kind, spec] = exc
    loaded = _LOADED[kind, spec]
    if isinstance(loaded, ValueError):
        raise pytest.UsageError(f"--refimpl-target {kind}={spec}: {loaded}")
    return loaded


def _run_settings():
    """The active Hypothesis profile (``--hypothesis-profile``), without the deadline (a property's first example
    pays torch's warm-up) and without the health checks that slow tensor code trips."""
    current = settings()
    return settings(current, deadline=None, suppress_health_check=[*current.suppress_health_check,
                                                                    HealthCheck.too_slow, HealthCheck.data_too_large])


def _seed(request) -> int | None:
    """An explicit seed where the run asks for one: per shard (``--refimpl-shard``) a stream of its own, and
    ``--hypothesis-seed`` honoured even under a derandomized profile (which would otherwise ignore it)."""
    config = request.config
    base = config.getoption("hypothesis_seed", default=None)
    shard = parse_shard(config.getoption("refimpl_shard", default=None))
    if shard is not None:
        return shard_seed(int(base or 0), shard, request.node.name)
    return None if base is None else int(base)


def _replay(request, kind: str, spec: str, seed: int | None) -> str:
    config = request.config
    parts = ["pytest --pyargs refimpl.suite", f"--refimpl-target {kind}={spec}", f'-k "{request.node.name}"',
             "-p no:randomly"]
    if config.getoption("refimpl_shard", default=None):
        parts.append(f"--refimpl-shard {config.getoption('refimpl_shard')}")
    if config.getoption("hypothesis_seed", default=None) is not None:
        parts.append(f"--hypothesis-seed {config.getoption('hypothesis_seed')}")
    profile = config.getoption("hypothesis_profile", default=None)
    if profile:
        parts.append(f"--hypothesis-profile {profile}")
    return " ".join(parts)


def test_property(refimpl_case, request):
    kind, spec, prop, device, dtype = refimpl_case
    impl = _load(kind, spec)
    seed = _seed(request)
    info = {"kind": kind, "target": spec, "property": prop.name, "device": device, "dtype": dtype,
            "replay": _replay(request, kind, spec, seed)}
    request.node.user_properties.append(("refimpl", info))
    try:
        examples = run_property(prop, impl, device, dtype, settings=_run_settings(), seed=seed)
    except Unsupported as exc:
        request.node.user_properties.append(("refimpl_missing_modes", list(exc.modes or [])))
        pytest.skip(str(exc))
    except Exception as exc:
        exc.add_note(f"Replay: {info['replay']}")
        raise
    request.node.user_properties += [("refimpl_examples", examples["run"]),
                                     ("refimpl_examples_skipped", examples["skipped"]),
                                     ("refimpl_missing_modes", sorted(examples["missing_modes"]))]
