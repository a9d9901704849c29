"""Every registered temporal-model property, on every device present and every dtype it applies to."""

import pytest

from refimpl.suite import properties_for, property_grid, run_property
from refimpl.suite.temporal_model import EAGER, KIND

CASES = [pytest.param(prop, device, dtype, id=f"{prop.name}-{device}-{dtype}")
         for prop, device, dtype in property_grid(KIND)]


@pytest.mark.parametrize("prop, device, dtype", CASES)
def test_temporal_model(prop, device, dtype, temporal_model_impl):
    run_property(prop, temporal_model_impl, device, dtype)


@pytest.mark.parametrize(
    "name", ["eval_forward_matches_oracle", "train_forward_matches_oracle", "eval_gradients_match_oracle",
             "train_gradients_match_oracle"],
)
def test_eager_baseline_is_exact_in_float64(name):
    """The tolerance baseline itself agrees with the oracle in float64 (within the policy's floor)."""
    (prop,) = [p for p in properties_for(KIND) if p.name == name]
    run_property(prop, EAGER, "cpu", "float64")
