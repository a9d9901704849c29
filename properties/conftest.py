"""pytest wiring: profiles, and the implementation under test of each kind.

``--window-attention-impl MODULE:ATTR`` points every window-attention property at another implementation (a class
or factory with AIM's constructor); likewise ``--shifted-window-mask-impl`` (``(H, W, window_size, shift_size) ->
(nW, N, N)``) and ``--temporal-model-impl`` (FIERY's constructor). Options and defaults come from the kinds
registered in ``refimpl.suite`` (``Kind.default_target``: refimpl's own implementations).
"""

import os

import pytest
from hypothesis import settings

import refimpl.profiles  # noqa: F401  (registers dev / ci / thorough)
from refimpl.suite import KINDS, Unsupported, load_implementation

if not os.environ.get("CI"):  # under CI=true Hypothesis loads "ci" itself; --hypothesis-profile overrides both
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _option(kind: str) -> str:
    return f"--{kind.replace('_', '-')}-impl"


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    """A capability the implementation under test lacks (``Unsupported``) is a skip with its reason."""
    try:
        return (yield)
    except Unsupported as exc:
        pytest.skip(str(exc))


def pytest_addoption(parser):
    for name, kind in KINDS.items():
        parser.addoption(_option(name), default=kind.default_target,
                         help=f"MODULE:ATTR of the {name} implementation under test ({kind.upstream}'s protocol)")


def _impl(request, kind: str):
    return load_implementation(kind, request.config.getoption(_option(kind)))


@pytest.fixture(scope="session")
def window_attention_impl(request):
    return _impl(request, "window_attention")


@pytest.fixture(scope="session")
def shifted_window_mask_impl(request):
    return _impl(request, "shifted_window_mask")


@pytest.fixture(scope="session")
def temporal_model_impl(request):
    return _impl(request, "temporal_model")
