"""refimpl: NumPy float64 oracles, optimized torch implementations and Hypothesis property suites for
window attention (AIM / Swin) and FIERY's temporal model.

``refimpl.reference`` imports without torch; import ``refimpl.optimized`` for the torch modules.
"""

__version__ = "0.1.0"
