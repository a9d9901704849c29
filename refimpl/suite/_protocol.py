"""Checking a target against its kind's upstream protocol (constructor, state-dict keys, forward shape) before any
property runs: each kind module writes its check with these helpers."""

from __future__ import annotations

import torch

__all__ = ["ProtocolError", "build_target", "call_target", "check_state_keys"]


class ProtocolError(Exception):
    """The target cannot be imported or built, or does not follow the upstream protocol (exit status 2)."""


def build_target(factory, kwargs, signature):
    try:
        module = factory(**kwargs)
    except Exception as exc:
        raise ProtocolError(f"constructing it with {kwargs} failed: {type(exc).__name__}: {exc} "
                            f"(expected the constructor {signature})") from None
    if not isinstance(module, torch.nn.Module):
        raise ProtocolError(f"it built a {type(module).__name__}, not a torch.nn.Module")
    return module


def call_target(fn, args, signature):
    try:
        with torch.no_grad():
            return fn(*args)
    except Exception as exc:
        raise ProtocolError(f"{signature} failed: {type(exc).__name__}: {exc}") from None


def check_state_keys(got: dict, expected: dict, upstream: str, exact: bool = False) -> None:
    missing = sorted(set(expected) - set(got))
    if missing:
        raise ProtocolError(f"its state dict lacks {upstream}'s keys {missing}")
    if exact and set(got) != set(expected):
        raise ProtocolError(f"its state dict has keys {upstream}'s has not: {sorted(set(got) - set(expected))}")
    wrong = {k: (tuple(got[k].shape), shape) for k, shape in expected.items() if tuple(got[k].shape) != tuple(shape)}
    if wrong:
        raise ProtocolError(f"state-dict shapes differ from {upstream}'s (got, expected): {wrong}")
