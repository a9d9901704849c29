"""The one tolerance policy. Every property and ``refimpl verify`` compare through ``assert_close`` here.

A result computed in dtype ``D`` is compared with the float64 oracle run on the *same* (already ``D``-rounded)
inputs. The allowed max-abs error is

    bound = max(MULTIPLE * baseline_error,  FLOOR_ULPS * eps(D) * max|oracle|)

where ``baseline_error`` is the max-abs error of a naive same-dtype torch computation of the same thing
(``refimpl.baselines``: gather, matmul, add, softmax, matmul, as upstream writes it) on the same inputs. The first
term scales with what the dtype can honestly deliver for this very input (long rows, large logits and cancellation
all raise it); the floor keeps the bound from collapsing when the naive computation happens to be exact.

Where upstream code computes the same thing in more than one legitimate way, the baseline is a tuple of those naive
computations and ``baseline_error`` the largest of their errors. Swin V2 is the case: microsoft clamps the logit
scale at a float32 ``ln 100``, timm and transformers at the exact one, and in float64 a module's error there comes
from two sources (that bound, and the float32 coordinate table every upstream builds) which can cancel in one
baseline and not in another: timm's and transformers' float64 errors reached 25x microsoft's on a 1x2 window
(docs/window-attention-v2.md).

Why these numbers (``python -m refimpl.tolerance_study --cases 400``, CPU, torch 2.13; table in docs/tolerance.md):

* correct implementations (refimpl's SDPA module forward and gradients, and a variant that scales after
  ``q @ k^T``) stayed at or below 6.7x the naive error in every dtype (4.9x without that bfloat16 variant),
  and within 18.4 ulps of max|oracle|;
* the smallest real bug measured, a float32 module whose softmax runs in bfloat16, was at least 3351x the naive
  error and 4177 ulps on every input where it can show (N > 1); a float64 module that silently computes in
  float32 was at least 1.2e8x.

``MULTIPLE = 16`` leaves a 2.4x margin above the worst correct result and about 200x below that bug;
``FLOOR_ULPS = 32`` is 1.7x the largest correct ulp count and 130x below the bug. What the policy cannot see: a
bfloat16 softmax inside a *float16* module (1.1x the naive float16 error, whose own rounding is as large).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "MULTIPLE", "FLOOR_ULPS", "FINITE_DIFFERENCE_STEP", "FINITE_DIFFERENCE_RTOL",
    "assert_vjp_matches_central_differences", "eps", "error_bound", "assert_close", "assert_close_mapping",
    "Comparison", "compare",
]

MULTIPLE = 16.0
FLOOR_ULPS = 32.0

# Checking the oracle's hand-written gradients against central differences (float64, step 1e-6): truncation
# error ~ h^2 = 1e-12 and cancellation error ~ eps / h = 2e-10, relative to the loss scale.
FINITE_DIFFERENCE_STEP = 1e-6
FINITE_DIFFERENCE_RTOL = 1e-6

_EPS = {
    "float64": float(np.finfo(np.float64).eps),
    "float32": float(np.finfo(np.float32).eps),
    "float16": float(np.finfo(np.float16).eps),
    "bfloat16": 2.0**-7,
}


def dtype_name(dtype) -> str:
    """``torch.float32`` / ``np.float32`` / ``"float32"`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def eps(dtype) -> float:
    """Machine epsilon (spacing of 1.0) of a float dtype given as torch dtype, NumPy dtype or name."""
    name = dtype_name(np.dtype(dtype).name if isinstance(dtype, type) else dtype)
    try:
        return _EPS[name]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(_EPS)}, got {dtype!r}") from None


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch.Tensor, without importing torch here
        a = a.detach().to("cpu")
        if not a.dtype.is_floating_point or a.dtype.itemsize < 4:
            a = a.double()
        a = a.numpy()
    return np.asarray(a, dtype=np.float64)


def _baseline_error(expected: np.ndarray, baseline) -> float:
    """Max-abs error of the naive computation ``baseline`` (the largest over a tuple of them); 0 for None."""
    if baseline is None:
        return 0.0
    if isinstance(baseline, tuple):
        return max((_baseline_error(expected, b) for b in baseline), default=0.0)
    return float(np.max(np.abs(_to_numpy(baseline) - expected), initial=0.0))


def error_bound(expected, baseline, dtype, magnitude=None) -> float:
    """The allowed max-abs error for a ``dtype`` result whose float64 oracle value is ``expected`` and whose
    naive same-dtype computation gave ``baseline`` (a tensor or array; a tuple of them where upstream has several
    legitimate ways, whose largest error counts).

    ``baseline=None`` leaves the floor alone: for two float64 oracles, which have no naive counterpart.
    ``magnitude`` (default ``max|expected|``) is what the floor counts ulps of. Pass the cancellation-free size
    of the computation (``refimpl.magnitudes`` for the attention gradients) when the result is a small difference
    of large terms: a softmax gradient through a ``-100`` mask can be 1e-44 while every term it is computed from
    is O(1), and its rounding noise is then ulps of the terms, not of the result.
    """
    expected = _to_numpy(expected)
    baseline_error = _baseline_error(expected, baseline)
    if magnitude is None:
        magnitude = float(np.max(np.abs(expected), initial=0.0))
    return max(MULTIPLE * baseline_error, FLOOR_ULPS * eps(dtype) * magnitude)


@dataclass(frozen=True)
class Comparison:
    """Outcome of one comparison; ``ok`` says whether ``max_error <= bound``."""

    what: str
    dtype: str
    max_error: float
    mean_error: float
    bound: float
    baseline_error: float
    worst_index: tuple
    actual_at_worst: float
    expected_at_worst: float
    n_exceeding: int = 0  # elements whose error exceeds the bound (NaN counts)
    n_elements: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.max_error <= self.bound)  # NaN compares False: a NaN never passes

    def message(self) -> str:
        return (
            f"{self.what} ({self.dtype}): {self.n_exceeding} of {self.n_elements} elements exceed the allowed "
            f"{self.bound:.3g} (= max({MULTIPLE:g} x naive {self.dtype} error {self.baseline_error:.3g}, "
            f"{FLOOR_ULPS:g} ulps of the magnitude)); max abs error {self.max_error:.3g}, mean abs error "
            f"{self.mean_error:.3g}; worst at index {self.worst_index}: got {self.actual_at_worst!r}, expected "
            f"{self.expected_at_worst!r}"
        )


def compare(actual, expected, *, baseline, dtype, what: str = "result", magnitude=None) -> Comparison:
    actual, expected = _to_numpy(actual), _to_numpy(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != expected {expected.shape}")
    diff = np.abs(actual - expected)
    if diff.size == 0:
        return Comparison(what, dtype_name(dtype), 0.0, 0.0, 0.0, 0.0, (), float("nan"), float("nan"))
    nan_aware = np.where(np.isnan(diff), np.inf, diff)
    worst = np.unravel_index(int(np.argmax(nan_aware)), diff.shape)
    bound = error_bound(expected, baseline, dtype, magnitude)
    return Comparison(
        what=what,
        dtype=dtype_name(dtype),
        max_error=float(nan_aware[worst]),
        mean_error=float(np.mean(nan_aware)),
        bound=bound,
        baseline_error=_baseline_error(expected, baseline),
        worst_index=tuple(int(i) for i in worst),
        actual_at_worst=float(actual[worst]),
        expected_at_worst=float(expected[worst]),
        n_exceeding=int(np.count_nonzero(nan_aware > bound)),
        n_elements=int(diff.size),
    )


def assert_close(actual, expected, *, baseline, dtype, what: str = "result", magnitude=None) -> Comparison:
    """Raise ``AssertionError`` with a readable message unless ``actual`` is within the policy's bound."""
    __tracebackhide__ = True  # pytest shows the caller's line, not this one
    result = compare(actual, expected, baseline=baseline, dtype=dtype, what=what, magnitude=magnitude)
    if not result.ok:
        raise AssertionError(result.message())
    return result


def assert_close_mapping(actual: dict, expected: dict, *, baseline: dict, dtype, what: str = "grad",
                         magnitudes: dict | None = None, optional=lambda key: False) -> list[Comparison]:
    """Compare two mappings (e.g. gradients by parameter name) as one: every key of ``expected`` must be in
    ``actual`` (unless ``optional(key)``) and within the policy's bound, and ``actual`` may have no key that
    ``expected`` lacks. One ``AssertionError`` names every key that fails, missing or unexpected, each with its
    comparison, so a report shows the whole picture rather than the first key. ``magnitudes[key]``: what the
    floor counts ulps of for that key (see ``error_bound``)."""
    __tracebackhide__ = True
    problems, results = [], []
    for key in sorted(set(actual) - set(expected)):
        problems.append(f"{what} of {key!r}: not expected (the oracle has no such key)")
    for key, value in expected.items():
        if key not in actual:
            if not optional(key):
                problems.append(f"{what} of {key!r}: missing")
            continue
        magnitude = None if magnitudes is None else float(np.max(magnitudes[key], initial=0.0))
        result = compare(actual[key], value, baseline=baseline[key], dtype=dtype, what=f"{what} of {key!r}",
                         magnitude=magnitude)
        results.append(result)
        if not result.ok:
            problems.append(result.message())
    if problems:
        raise AssertionError(f"{len(problems)} of {len(set(actual) | set(expected))} keys fail:\n- "
                             + "\n- ".join(problems))
    return results


def assert_vjp_matches_central_differences(loss, grads: dict, inputs: dict, rng: np.random.Generator) -> None:
    """Check hand-written float64 gradients by directional derivatives: for each ``key`` of ``inputs`` and a
    random direction ``u``, ``<grads[key], u>`` must equal ``(loss(+h u) - loss(-h u)) / 2h`` within
    ``FINITE_DIFFERENCE_RTOL`` of the gradient's scale. ``loss(inputs)`` takes a dict like ``inputs``."""
    h = FINITE_DIFFERENCE_STEP
    for key, value in inputs.items():
        direction = rng.standard_normal(np.shape(value))

        def loss_at(t, key=key, value=value, direction=direction):
            return loss({**inputs, key: np.asarray(value) + t * direction})

        numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
        analytic = float(np.sum(grads[key] * direction))
        scale = max(abs(analytic), float(np.linalg.norm(grads[key]) * np.linalg.norm(direction)), 1.0)
        assert abs(numeric - analytic) <= FINITE_DIFFERENCE_RTOL * scale, (
            f"gradient of {key!r}: <grad, u> = {analytic!r}, central difference {numeric!r}"
        )
