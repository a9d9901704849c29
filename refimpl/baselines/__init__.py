"""Upstream-faithful implementations, written fresh the way upstream writes them (quirks included), one module per
kind. They serve three jobs:

* the tolerance baseline of the suite: the error a straightforward same-dtype torch computation makes on the same
  inputs (``refimpl.tolerance``);
* the targets of the fair-verdicts test: ``refimpl verify`` at its defaults must pass each of them unchanged
  (``properties/test_upstream_faithful.py``), so a new default mode can never again fail correct upstream code;
* the "before" side of the benchmarks.

They depend on torch only (never on ``refimpl.optimized``), so a bug in the optimized side cannot leak into the
baseline it is measured against.

* ``window_attention``: AIM's ``WindowAttention``; ``EagerWindowAttention`` adds refimpl's extensions (boolean
  masks, rows with no allowed key) around the same computation, for the cases that use them.
* ``temporal_model``: FIERY's ``TemporalModel`` and its blocks.
* ``shifted_window``: Swin's mask (``shifted_window_mask``) and its block's map-level code around any window
  attention module (``shifted_window_attention``).
* ``window_attention_3d``: Video Swin's ``WindowAttention3D`` (upstream's truncated bias lookup ``index[:N, :N]``).
* ``shifted_window_3d``: Video Swin's 3-D geometry (``get_window_size``, ``window_partition``, ``window_reverse``,
  ``compute_mask``) and ``SwinTransformerBlock3D``'s map-level attention part (``shifted_window_attention_3d``).
"""
