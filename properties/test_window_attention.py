"""Every registered window-attention property, on every device present and every dtype it applies to."""

import pytest

from refimpl.properties import properties_for, property_grid, run_property
from refimpl.properties.window_attention import EAGER, KIND

CASES = [pytest.param(prop, device, dtype, id=f"{prop.name}-{device}-{dtype}") for prop, device, dtype in property_grid(KIND)]


@pytest.mark.parametrize("prop, device, dtype", CASES)
def test_window_attention(prop, device, dtype, window_attention_impl):
    run_property(prop, window_attention_impl, device, dtype)


@pytest.mark.parametrize("name", ["forward_matches_oracle", "gradients_match_oracle"])
def test_eager_baseline_is_exact_in_float64(name):
    """The tolerance baseline itself agrees with the oracle in float64 (within the policy's floor)."""
    (prop,) = [p for p in properties_for(KIND) if p.name == name]
    run_property(prop, EAGER, "cpu", "float64")
