"""The tolerance policy itself (``refimpl.tolerance``): the bound it computes, with one baseline and with several."""

import numpy as np
import pytest

from refimpl.tolerance import FLOOR_ULPS, MULTIPLE, assert_close, compare, eps, error_bound

EXPECTED = np.array([1.0, -2.0, 4.0])


def test_the_bound_is_the_larger_of_the_scaled_baseline_error_and_the_floor():
    big = EXPECTED + np.array([0.0, 1e-5, 0.0])  # baseline error 1e-5: 16x it is far above the float32 floor
    assert error_bound(EXPECTED, big, "float32") == pytest.approx(MULTIPLE * 1e-5)
    exact = EXPECTED.copy()  # an exact baseline leaves the floor: 32 ulps of max|expected| = 4
    assert error_bound(EXPECTED, exact, "float32") == FLOOR_ULPS * eps("float32") * 4.0
    assert error_bound(EXPECTED, None, "float64") == FLOOR_ULPS * eps("float64") * 4.0


def test_several_baselines_count_with_the_largest_error_in_any_order():
    small, large = EXPECTED + 1e-6, EXPECTED - 3e-5
    assert error_bound(EXPECTED, (small, large), "float32") == pytest.approx(MULTIPLE * 3e-5)
    assert error_bound(EXPECTED, (large, small), "float32") == error_bound(EXPECTED, (small, large), "float32")
    assert error_bound(EXPECTED, (small,), "float32") == error_bound(EXPECTED, small, "float32")
    result = compare(EXPECTED + 6e-4, EXPECTED, baseline=(small, large), dtype="float32")
    assert not result.ok and result.baseline_error == pytest.approx(3e-5)  # 6e-4 > 16 x 3e-5: a failure
    assert compare(EXPECTED + 4e-4, EXPECTED, baseline=(small, EXPECTED + 3e-5), dtype="float32").ok


def test_nan_never_passes_and_the_message_names_the_numbers():
    actual = EXPECTED.copy()
    actual[1] = np.nan
    with pytest.raises(AssertionError, match=r"1 of 3 elements exceed .* worst at index \(1,\): got nan"):
        assert_close(actual, EXPECTED, baseline=EXPECTED + 1.0, dtype="float32", what="out")
