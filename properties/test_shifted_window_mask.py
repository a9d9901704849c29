"""Every registered mask-generator property against the oracle itself (its definition must satisfy the closed-form
counts too); refimpl/suite/test_kinds.py runs them against the implementation under test."""

import pytest

from refimpl import reference
from refimpl.suite import Implementation, properties_for, run_property
from refimpl.suite.shifted_window_mask import MASK_KIND

PROPERTIES = [pytest.param(prop, id=prop.name) for prop in properties_for(MASK_KIND)]
ORACLE = Implementation(MASK_KIND, "refimpl.reference:shifted_window_mask", reference.shifted_window_mask)


@pytest.mark.parametrize("prop", PROPERTIES)
def test_oracle_mask(prop):
    run_property(prop, ORACLE, "cpu", "float32")
