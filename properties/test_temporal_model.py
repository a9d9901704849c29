"""Every registered temporal-model property, on every device present and every dtype it applies to."""

import pytest

from refimpl.optimized import TemporalModel
from refimpl.suite import properties_for, run_property
from refimpl.suite._compiled import compiled, compiled_settings, graphs_compiled
from refimpl.suite._core import Implementation, available_devices
from refimpl.suite.temporal_model import EAGER, KIND


@pytest.mark.parametrize("device", available_devices())
def test_compiled_inference_matches_the_oracle(device):
    """refimpl's TemporalModel under torch.compile (inductor, fullgraph=True) in inference (the folded path)
    equals the oracle, and compiled code really ran."""
    (prop,) = [p for p in properties_for(KIND) if p.name == "eval_forward_matches_oracle"]
    target = compiled(Implementation(KIND, "refimpl.optimized:TemporalModel", TemporalModel))
    before = graphs_compiled()
    result = run_property(prop, target, device, "float32", settings=compiled_settings())
    assert result["run"] > 0 and graphs_compiled() > before


@pytest.mark.parametrize(
    "name", ["eval_forward_matches_oracle", "train_forward_matches_oracle", "eval_gradients_match_oracle",
             "train_gradients_match_oracle"],
)
def test_eager_baseline_is_exact_in_float64(name):
    """The tolerance baseline itself agrees with the oracle in float64 (within the policy's floor)."""
    (prop,) = [p for p in properties_for(KIND) if p.name == name]
    run_property(prop, EAGER, "cpu", "float64")
