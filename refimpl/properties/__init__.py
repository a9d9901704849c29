"""Property definitions shared by the ``properties/`` test suite and ``refimpl verify``.

Importing this package registers every property in ``PROPERTIES``; each one takes the implementation under test
as a parameter (see ``refimpl.properties._core.Implementation``).
"""

from refimpl.properties import window_attention  # noqa: F401  (registers the window-attention properties)
from refimpl.properties import shifted_window  # noqa: F401  (map-level and mask-generator properties)
from refimpl.properties import temporal_model  # noqa: F401  (registers the temporal-model properties)
from refimpl.properties._core import (
    CASE_MODES,
    MODES,
    Capabilities,
    DTYPES,
    PROPERTIES,
    available_devices,
    Implementation,
    Property,
    load_implementation,
    properties_for,
    property_grid,
    run_property,
    Unsupported,
)

__all__ = ["available_devices", "DTYPES", "PROPERTIES", "Implementation", "Property", "load_implementation", "properties_for", "property_grid", "run_property", "Capabilities", "MODES", "CASE_MODES",
           "Unsupported"]
