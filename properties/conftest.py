"""pytest wiring: profiles, devices, dtypes and the implementation under test.

``--window-attention-impl MODULE:ATTR`` points every window-attention property at another implementation
(a class or factory with AIM's constructor); the default is ``refimpl.optimized:WindowAttention``.
``--shifted-window-mask-impl MODULE:ATTR`` does the same for the mask generator
(``(H, W, window_size, shift_size) -> (nW, N, N)``); the default is ``refimpl.optimized:shifted_window_mask``.
``--temporal-model-impl MODULE:ATTR`` does the same for the temporal-model properties (FIERY's constructor);
the default is ``refimpl.optimized:TemporalModel``.
"""

import os

import pytest
from hypothesis import settings

import refimpl.profiles  # noqa: F401  (registers dev / ci / thorough)
from refimpl.properties import Unsupported, load_implementation

if not os.environ.get("CI"):  # under CI=true Hypothesis loads "ci" itself; --hypothesis-profile overrides both
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    """A capability the implementation under test lacks (``Unsupported``) is a skip with its reason."""
    try:
        return (yield)
    except Unsupported as exc:
        pytest.skip(str(exc))


def pytest_addoption(parser):
    parser.addoption(
        "--window-attention-impl",
        default="refimpl.optimized:WindowAttention",
        help="MODULE:ATTR of the window-attention implementation under test",
    )
    parser.addoption(
        "--shifted-window-mask-impl",
        default="refimpl.optimized:shifted_window_mask",
        help="MODULE:ATTR of the shifted-window mask function under test",
    )
    parser.addoption(
        "--temporal-model-impl",
        default="refimpl.optimized:TemporalModel",
        help="MODULE:ATTR of the temporal-model implementation under test (FIERY's constructor)",
    )


@pytest.fixture(scope="session")
def window_attention_impl(request):
    return load_implementation("window_attention", request.config.getoption("--window-attention-impl"))


@pytest.fixture(scope="session")
def shifted_window_mask_impl(request):
    return load_implementation("shifted_window_mask", request.config.getoption("--shifted-window-mask-impl"))


@pytest.fixture(scope="session")
def temporal_model_impl(request):
    return load_implementation("temporal_model", request.config.getoption("--temporal-model-impl"))
