"""Hypothesis profiles, registered in one place (imported by the test suite's conftest and by ``refimpl verify``).

* ``dev``: fast local iteration.
* ``ci``: what CI runs; ``CI=true`` makes Hypothesis load a profile named ``ci``, so this one is ours.
  Deterministic (derandomized), no deadline, no example database.
* ``thorough``: thousands of examples per property, for a release or a new implementation.
"""

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

settings.register_profile("dev", max_examples=25, **_COMMON)
settings.register_profile("ci", max_examples=150, derandomize=True, database=None, print_blob=True, **_COMMON)
settings.register_profile("thorough", max_examples=2000, **_COMMON)

PROFILES = ("dev", "ci", "thorough")
