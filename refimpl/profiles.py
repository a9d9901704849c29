"""Hypothesis profiles, registered in one place (imported by the test suite's conftest and by ``refimpl verify``).

* ``dev``: fast local iteration.
* ``ci``: what CI runs; ``CI=true`` makes Hypothesis load a profile named ``ci``, so this one is ours.
  Deterministic (derandomized), no deadline, no example database.
* ``floor``: ``ci`` at a third of its budget, for CI's second run of the suite on the oldest supported torch: that run
  checks that every property holds on that torch's kernels and compiler; the search for hard inputs is ``ci``'s job
  on the newest torch, and so is proving that the suite catches its catalogued mutants (the repository's tests
  skip those under this profile): two full runs would take CI past its 20 minutes.
* ``thorough``: thousands of examples per property, for a release or a new implementation.

Each is also registered as ``refimpl-dev``, ``refimpl-ci``, ``refimpl-thorough``, which a user's own profiles of
the same short name never shadow.
"""

from hypothesis import HealthCheck, settings
from hypothesis import _settings as _hypothesis_settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_CI = dict(derandomize=True, database=None, print_blob=True, **_COMMON)
_PROFILES = {
    "dev": dict(max_examples=25, **_COMMON),
    "ci": dict(max_examples=150, **_CI),
    "floor": dict(max_examples=50, **_CI),
    "thorough": dict(max_examples=2000, **_COMMON),
}

# What each profile is for, as docs/verify.md's generated table shows it: (other settings, used by).
PROFILE_USES = {
    "dev": ("no deadline", "pytest by default"),
    "ci": ("derandomized, no deadline, no example database",
           "pytest when `CI=true`; `.ci/run`'s torch 2.13.0 run; `refimpl verify` with its kinds' budgets"),
    "floor": ("as `ci`; the repository's mutant tests skipped (`properties/conftest.py`)",
              "`.ci/run`'s torch 2.1.2 run (`REFIMPL_FLOOR_PROFILE=floor`, read by `tox.ini`)"),
    "thorough": ("no deadline", "by hand, for a release or a new implementation"),
}

PROFILES = tuple(_PROFILES)


# Hypothesis registers a "ci" profile of its own at import (recent versions, ``hypothesis._settings.CI``): ours
# replaces that one, never one a user registered.
_HYPOTHESIS_BUILTIN = {"ci": getattr(_hypothesis_settings, "CI", None)}


def _registered(name: str) -> bool:
    """Whether the run has its own profile ``name`` (Hypothesis' built-in "ci" does not count)."""
    try:
        profile = settings.get_profile(name)
    except Exception:  # hypothesis raises InvalidArgument for an unknown profile
        return False
    return profile is not _HYPOTHESIS_BUILTIN.get(name)


for _name, _options in _PROFILES.items():
    # Always as "refimpl-<name>"; under the short name only where the user's own run has not registered one
    # (the pytest plugin imports this inside users' test runs, whose "ci" profile must stay theirs).
    settings.register_profile(f"refimpl-{_name}", **_options)
    if not _registered(_name):
        settings.register_profile(_name, **_options)
