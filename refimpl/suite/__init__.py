"""The conformance suite: a generic core and one module per kind.

* ``_core``: the property registry (``register``, ``PROPERTIES``), kinds and their modes (``Kind``, ``Mode``),
  what a target declares (``Capabilities``), and running one property on one target (``run_property``);
* ``_protocol``: the helpers each kind's protocol check uses (``ProtocolError``);
* ``window_attention``, ``window_attention_v2``, ``window_attention_3d``, ``shifted_window_mask``,
  ``shifted_window_mask_3d``, ``temporal_model``: one module per kind,
  holding its modes, its protocol check and default target, and its properties (each defined once, the
  implementation under test a parameter). The baselines they compare against live in ``refimpl.baselines``, one
  module per kind.

Importing this package registers every kind and property. ``properties/`` (pytest) and ``refimpl verify``
(``refimpl.harness``) run the same registered objects.
"""

from refimpl.suite import (  # noqa: F401  (registers the kinds)
    shifted_window_mask,
    shifted_window_mask_3d,
    temporal_model,
    window_attention,
    window_attention_3d,
    window_attention_v2,
)
from refimpl.suite._core import (
    DTYPES,
    KINDS,
    PROPERTIES,
    Capabilities,
    Implementation,
    Kind,
    KindModes,
    Mode,
    Property,
    Unsupported,
    available_devices,
    load_implementation,
    properties_for,
    property_grid,
    run_property,
)
from refimpl.suite._protocol import ProtocolError

__all__ = ["available_devices", "DTYPES", "PROPERTIES", "Implementation", "Property", "load_implementation",
           "properties_for", "property_grid", "run_property", "Capabilities", "Mode", "KindModes", "Kind", "KINDS",
           "ProtocolError", "Unsupported"]
