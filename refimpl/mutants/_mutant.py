"""The catalog entry every kind's mutants module fills."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    kind: str  # the harness kind
    name: str
    bug: str  # what is wrong, in one line
    target: object  # a class or function with the kind's protocol
    shows_on: str = "every input"  # where the bug can show at all
