"""pytest wiring of the repository's tests: the Hypothesis profile (dev unless CI or HYPOTHESIS_PROFILE says
otherwise), torch's global generator seeded before each test, the mutant tests skipped under the ``floor`` profile,
and ``Unsupported`` as a skip. The implementation under test of the registered properties is chosen with refimpl's
pytest plugin (``--refimpl-target KIND=MODULE:ATTR``; ``refimpl/pytest_plugin.py``)."""

import os

import pytest
import torch
from hypothesis import settings

import refimpl.profiles  # noqa: F401  (registers dev / ci / thorough)
from refimpl.suite import Unsupported

if not os.environ.get("CI"):  # under CI=true Hypothesis loads "ci" itself; --hypothesis-profile overrides both
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Plain tests that draw with ``torch.randn`` draw the same inputs on every run and every xdist worker, so a CI
    failure replays locally; searching over inputs is Hypothesis's job, not the global generator's."""
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Under the ``floor`` profile (CI's run on the oldest torch, refimpl/profiles.py) the mutant tests are skipped:
    that the suite catches each catalogued bug is proven once, by the ``ci`` run on the newest torch; the floor run
    checks that the implementations and the properties hold on the oldest one."""
    if config.getoption("hypothesis_profile", default=None) != "floor":
        return
    skip = pytest.mark.skip(reason="floor profile: the mutant tests run in the ci profile's run (newest torch)")
    for item in items:
        if item.get_closest_marker("mutants"):
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    """A capability the implementation under test lacks (``Unsupported``) is a skip with its reason."""
    try:
        return (yield)
    except Unsupported as exc:
        pytest.skip(str(exc))
