"""A catalog of deliberately wrong implementations, each with one realistic bug, to prove the suite catches bugs.

``properties/test_mutants.py`` runs the harness on every entry (CI profile) and requires each to be caught, while
refimpl's own implementations pass the same harness. ``python -m refimpl.mutants`` prints the catalog with the
property that caught each mutant; ``--json docs/mutants.json`` also records it, and ``python -m refimpl.docs
--update`` renders docs/mutants.md's table from the catalog and that file. Several bugs only show on some inputs
(non-square windows, more than 4 heads, batches of more than one image, long clips, qk_scale=0, dropout): the
strategies must draw those, or the mutant survives.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from refimpl.mutants import (
    shifted_window_mask,
    shifted_window_mask_3d,
    temporal_model,
    window_attention,
    window_attention_3d,
    window_attention_v2,
)
from refimpl.mutants._mutant import Mutant
from refimpl.mutants.window_attention import SnippetWindowAttention

__all__ = ["Mutant", "CATALOG", "SnippetWindowAttention", "catch", "main"]

# one list per kind, in its own module
CATALOG = (window_attention.CATALOG + temporal_model.CATALOG + shifted_window_mask.CATALOG + window_attention_v2.CATALOG
           + window_attention_3d.CATALOG + shifted_window_mask_3d.CATALOG)


def catch(mutant: Mutant, **verify_kwargs):
    """Run the harness on ``mutant`` until a property fails; the first failing ``Outcome``, or None (survived)."""
    return catch_report(mutant, **verify_kwargs)[0]


def catch_report(mutant: Mutant, **verify_kwargs):
    """``(first failing Outcome or None, the report)`` of the harness run on ``mutant`` up to that failure."""
    from refimpl.harness import verify
    from refimpl.suite import Implementation

    impl = Implementation(mutant.kind, f"{mutant.target.__module__}:{mutant.target.__name__}", mutant.target)
    report = verify({mutant.kind: impl}, fail_fast=True, **verify_kwargs)
    return (report.failed[0] if report.failed else None), report


DEVICES, DTYPES = ("cpu",), ("float64", "float32")  # what ``main`` (and docs/mutants.json) runs


def caught_by(failure, report=None) -> dict | None:
    """What caught a mutant, as docs/mutants.json records it (None: it survived): the property, device and dtype,
    and with the run's report how soon: ``examples`` drawn in that property up to the first failing one (before
    shrinking) and ``seconds`` the harness ran until its verdict (every property before it, and the shrinking)."""
    if failure is None:
        return None
    found = {"property": failure.property, "device": failure.device, "dtype": failure.dtype}
    if report is not None:
        found.update(examples=failure.examples, seconds=round(sum(o.seconds for o in report.outcomes), 1))
    return found


def main(argv=None) -> int:
    """Print the catalog as a Markdown table with the property that caught each mutant (CPU, CI profile); with
    ``--json PATH``, also write what caught each one there (the "caught by" column of docs/mutants.md)."""
    parser = argparse.ArgumentParser(prog="python -m refimpl.mutants", description=main.__doc__)
    parser.add_argument("--json", metavar="PATH", help="write {mutant name: what caught it} to PATH")
    args = parser.parse_args(argv)
    print("| kind | mutant | bug | shows on | caught by | examples | seconds |\n|---|---|---|---|---|---:|---:|")
    results = {}
    for mutant in CATALOG:
        failure, report = catch_report(mutant, devices=list(DEVICES), dtypes=DTYPES)
        results[mutant.name] = found = caught_by(failure, report)
        caught = f"`{failure.property}` ({failure.dtype}) | {found['examples']} | {found['seconds']}" if failure \
            else "**survived** | | "
        print(f"| {mutant.kind} | `{mutant.name}` | {mutant.bug} | {mutant.shows_on} | {caught} |", flush=True)
    if args.json:
        record = {"command": f"python -m refimpl.mutants --json {args.json}", "torch": torch.__version__,
                  "profile": "ci", "devices": list(DEVICES), "dtypes": list(DTYPES), "caught_by": results}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 1 if None in results.values() else 0
