"""A target under ``torch.compile``: the same module (constructor, state-dict keys, buffers), its forward compiled
by inductor, so that every property of its kind checks what a compiling user runs.

``compiled(impl)`` wraps an ``Implementation``: each module the factory builds gets ``forward`` replaced by
``torch.compile(forward, fullgraph=...)`` through a backend that counts the graphs it lowers, so a test can prove
that compiled code ran (with ``fullgraph=True`` a graph break raises instead of falling back to eager). Dynamo's
caches are reset per module built: a property builds many modules of many shapes, and past the recompile limit
dynamo would silently run eager code.
"""

from __future__ import annotations

from refimpl.suite._core import Implementation

__all__ = ["COMPILED_EXAMPLES", "compiled", "compiled_settings", "graphs_compiled", "inductor_counting"]

# Examples per property under compile: each compiles afresh (5-20 s on two cores), so the budget is small;
# the eager properties draw the full budget on the same code, and only the route differs under compile.
COMPILED_EXAMPLES = 3

_GRAPHS = {"count": 0}


def graphs_compiled() -> int:
    """How many graphs the compiling backend has lowered with inductor in this process."""
    return _GRAPHS["count"]


def inductor_counting(graph_module, example_inputs):
    """A ``torch.compile`` backend: inductor, counting the graphs it lowers (``graphs_compiled``)."""
    from torch._inductor.compile_fx import compile_fx

    _GRAPHS["count"] += 1
    return compile_fx(graph_module, example_inputs)


def compiled(impl: Implementation, *, fullgraph: bool = True) -> Implementation:
    """``impl`` with each built module's forward under ``torch.compile`` (inductor, ``fullgraph`` as given)."""
    import torch

    def factory(**kwargs):
        module = impl.factory(**kwargs)
        torch._dynamo.reset()
        module.forward = torch.compile(module.forward, fullgraph=fullgraph, backend=inductor_counting)
        return module

    declared = getattr(impl.factory, "refimpl_capabilities", None)
    if declared is not None:
        factory.refimpl_capabilities = declared
    return Implementation(impl.kind, f"torch.compile({impl.name}, fullgraph={fullgraph})", factory)


def compiled_settings():
    """The active Hypothesis profile with at most ``COMPILED_EXAMPLES`` examples."""
    from hypothesis import settings

    current = settings()
    return settings(current, max_examples=min(current.max_examples, COMPILED_EXAMPLES))
