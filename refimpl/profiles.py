"""Hypothesis profiles, registered in one place (imported by the test suite's conftest and by ``refimpl verify``).

* ``dev``: fast local iteration.
* ``ci``: what CI runs; ``CI=true`` makes Hypothesis load a profile named ``ci``, so this one is ours.
  Deterministic (derandomized), no deadline, no example database.
* ``thorough``: thousands of examples per property, for a release or a new implementation.

Each is also registered as ``refimpl-dev``, ``refimpl-ci``, ``refimpl-thorough``, which a user's own profiles of
the same short name never shadow.
"""

from hypothesis import HealthCheck, settings
from hypothesis import _settings as _hypothesis_settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_PROFILES = {
    "dev": dict(max_examples=25, **_COMMON),
    "ci": dict(max_examples=150, derandomize=True, database=None, print_blob=True, **_COMMON),
    "thorough": dict(max_examples=2000, **_COMMON),
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
