"""pytest wiring: profiles, devices, dtypes and the implementation under test.

``--window-attention-impl MODULE:ATTR`` points every window-attention property at another implementation
(a class or factory with AIM's constructor); the default is ``refimpl.optimized:WindowAttention``.
``--temporal-model-impl MODULE:ATTR`` does the same for the temporal-model properties (FIERY's constructor);
the default is ``refimpl.optimized:TemporalModel``.
"""

import os

import pytest
from hypothesis import settings

import refimpl.profiles  # noqa: F401  (registers dev / ci / thorough)
from refimpl.properties import load_implementation

if not os.environ.get("CI"):  # under CI=true Hypothesis loads "ci" itself; --hypothesis-profile overrides both
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

def pytest_addoption(parser):
    parser.addoption(
        "--window-attention-impl",
        default="refimpl.optimized:WindowAttention",
        help="MODULE:ATTR of the window-attention implementation under test",
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
def temporal_model_impl(request):
    return load_implementation("temporal_model", request.config.getoption("--temporal-model-impl"))
