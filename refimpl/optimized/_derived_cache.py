"""One cache for what a window-attention drop-in derives from its parameters and a window mask (the gathered
position bias, plus the mask, ready for the attention call), shared by the V1, V2 and 3-D modules.

An entry is used only while the tensors it was built from are the very tensors, at the very versions it saw:
``_version`` moves on every in-place write (``load_state_dict``'s ``copy_``, optimizer steps, ``mul_``) and
``data_ptr`` on ``.data =`` swaps; a module clears its cache in ``_apply`` (``.to()``, ``.half()``). An entry holds
the mask it was built from, so no other tensor can take that mask's ``id`` while the entry lives.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

__all__ = ["DerivedTensorCache", "mask_state", "tensor_state", "untracked"]


def tensor_state(*tensors: torch.Tensor) -> tuple:
    """What a cached entry built from ``tensors`` depends on: storage, version, dtype and device of each."""
    return tuple([(t.data_ptr(), t._version, t.dtype, t.device) for t in tensors])


def mask_state(mask: torch.Tensor | None) -> tuple | None:
    """The window mask's identity and version (None without a mask)."""
    return None if mask is None else (id(mask), mask._version)


def untracked(*tensors: torch.Tensor | None) -> bool:
    """Whether any of ``tensors`` is an inference tensor: it has no version counter, so an in-place edit of it
    could not be seen, and nothing built from it may be cached."""
    for t in tensors:  # a loop, not a generator: torch 2.1's dynamo traces neither generators nor zip(strict=)
        if t is not None and t.is_inference():
            return True
    return False


class DerivedTensorCache:
    """A least-recently-used map of ``slots`` entries, ``key -> (mask, value)``."""

    def __init__(self, slots: int):
        self.slots = slots
        self._entries: OrderedDict = OrderedDict()

    def get(self, key: Hashable, mask: torch.Tensor | None, build: Callable[[], object]):
        """The value cached under ``key`` for this very ``mask``; on a miss, ``build()`` run under ``no_grad``
        outside inference mode (a cached tensor must hold no autograd graph, and must be usable in every mode),
        stored, and returned."""
        hit = self._entries.get(key)
        if hit is not None and hit[0] is mask:
            self._entries.move_to_end(key)
            return hit[1]
        # Innermost no_grad: inference_mode(False) turns grad mode on.
        with torch.inference_mode(False), torch.no_grad():
            value = build()
        self._entries[key] = (mask, value)
        while len(self._entries) > self.slots:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
