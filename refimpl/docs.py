"""The generated tables of the docs pages, rendered from the code: never typed by hand.

    python -m refimpl.docs --update   # rewrite every generated block of README.md and docs/*.md
    python -m refimpl.docs --check    # exit 1, naming the blocks, when one differs from what the code renders now

Run from the repository root (or pass ``--root``).

A block is ``<!-- generated: NAME [ARG] -->``, the rendered text, then ``<!-- end generated -->``. The names:

* ``properties KIND``: one row per registered property of KIND (``window_attention``, ``shifted_window_mask``,
  ``temporal_model``): its name, the dtypes it runs in, the modes every case of it needs, and its statement (the
  check's docstring);
* ``modes KIND``: the modes a case of KIND may use, upstream ones and opt-in extensions;
* ``profiles``: the Hypothesis profiles of ``refimpl.profiles``, their budgets and uses;
* ``mutants``: ``refimpl.mutants.CATALOG`` with what caught each mutant, read from ``docs/mutants.json``, which
  ``python -m refimpl.mutants --json docs/mutants.json`` writes (a slow run: every mutant under the harness).
  A catalog entry missing from that file is an error: rerun it.

The benchmark results are generated the same way, by ``benchmarks/report.py --update docs/benchmarks.md``.
``properties/test_docs.py`` fails when any generated block is out of date.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# The property registry, imported here and nowhere else in this module (its package may be renamed).
from refimpl.suite import KINDS, PROPERTIES

__all__ = ["BLOCK", "MUTANTS_JSON", "main", "pages", "render", "stale_blocks", "update"]

MUTANTS_JSON = "docs/mutants.json"  # relative to the repository root
BLOCK = re.compile(r"(<!-- generated: ([^>]*?) -->\n)(.*?)(<!-- end generated -->)", re.DOTALL)
DTYPE_SHORT = {"float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16"}


def _cell(text: str) -> str:
    """Docstring text as a Markdown table cell: RST double backticks become code spans, pipes are escaped, and so
    are asterisks outside code spans (``2*Wh-1`` is a product, not emphasis)."""
    parts = " ".join(text.split()).replace("``", "`").split("`")
    parts[::2] = [part.replace("*", "\\*") for part in parts[::2]]
    return "`".join(parts).replace("|", "\\|")


def properties_table(kind: str) -> str:
    rows = [p for p in PROPERTIES if p.kind == kind]
    if not rows:
        raise ValueError(f"no registered properties of kind {kind!r}")
    lines = ["| property | dtypes | needs | statement |", "|---|---|---|---|"]
    for p in rows:
        dtypes = " ".join(DTYPE_SHORT.get(d, d) for d in p.dtypes)
        needs = ", ".join(f"`{m}`" for m in p.needs) or "—"
        lines.append(f"| `{p.name}` | {dtypes} | {needs} | {_cell(p.doc)} |")
    return "\n".join(lines) + "\n"


def modes_table(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"no modes registered for kind {kind!r}")
    lines = ["| mode | checked by default | what a case in this mode does | upstream there |", "|---|---|---|---|"]
    for m in KINDS[kind].modes.modes:
        default = "yes (upstream)" if m.upstream else "no: an extension, opt in"
        lines.append(f"| `{m.name}` | {default} | {_cell(m.meaning)} | {_cell(m.upstream_behaviour) or '—'} |")
    return "\n".join(lines) + "\n"


def profiles_table() -> str:
    from hypothesis import settings

    from refimpl.profiles import PROFILE_USES, PROFILES

    lines = ["| profile | examples per property | other settings | used by |", "|---|---:|---|---|"]
    for name in PROFILES:
        other, used_by = PROFILE_USES[name]
        lines.append(f"| `{name}` | {settings.get_profile('refimpl-' + name).max_examples} | {other} | {used_by} |")
    return "\n".join(lines) + "\n"


def mutants_table(root: Path) -> str:
    from refimpl.mutants import CATALOG

    path = Path(root) / MUTANTS_JSON
    if not path.exists():
        raise ValueError(f"{MUTANTS_JSON} is missing: run python -m refimpl.mutants --json {MUTANTS_JSON}")
    caught = json.loads(path.read_text())["caught_by"]
    missing = [m.name for m in CATALOG if m.name not in caught]
    unknown = sorted(set(caught) - {m.name for m in CATALOG})
    if missing or unknown:
        raise ValueError(f"{MUTANTS_JSON} does not match refimpl.mutants.CATALOG (not recorded: {missing}; not in "
                         f"the catalog: {unknown}): run python -m refimpl.mutants --json {MUTANTS_JSON}")
    lines = ["| kind | mutant | bug | shows on | caught by | examples to failure | seconds to verdict |",
             "|---|---|---|---|---|---:|---:|"]
    for m in CATALOG:
        by = caught[m.name]
        cell = "**survived** | |" if by is None else (f"`{by['property']}` ({by['dtype']}) | "
                                                      f"{by.get('examples', '—')} | {by.get('seconds', '—')}")
        lines.append(f"| {m.kind} | `{m.name}` | {_cell(m.bug)} | {_cell(m.shows_on)} | {cell} |")
    return "\n".join(lines) + "\n"


def render(spec: str, root: Path) -> str:
    """The text of the block ``<!-- generated: SPEC -->``."""
    name, *args = spec.split()
    if name == "properties" and len(args) == 1:
        return properties_table(args[0])
    if name == "modes" and len(args) == 1:
        return modes_table(args[0])
    if name == "mutants" and not args:
        return mutants_table(root)
    if name == "profiles" and not args:
        return profiles_table()
    raise ValueError(f"unknown generated block {spec!r}; expected 'properties KIND', 'modes KIND', 'profiles' or "
                     "'mutants'")


def pages(root: Path) -> list[Path]:
    """The pages that may hold generated blocks: README.md and docs/*.md."""
    root = Path(root)
    return [root / "README.md"] + sorted((root / "docs").glob("*.md"))


def _regenerate(page: Path, root: Path, stale: list[str]) -> str:
    def fresh(match):
        text = render(match.group(2), root)
        if text != match.group(3):
            stale.append(f"{page.relative_to(root)}: {match.group(2)}")
        return match.group(1) + text + match.group(4)

    return BLOCK.sub(fresh, page.read_text())


def stale_blocks(root: Path) -> list[str]:
    """``"PAGE: SPEC"`` for every generated block that differs from what the code renders now."""
    stale: list[str] = []
    for page in pages(root):
        _regenerate(page, Path(root), stale)
    return stale


def update(root: Path) -> list[str]:
    """Rewrite the out-of-date blocks; return them as ``stale_blocks`` does."""
    stale: list[str] = []
    for page in pages(root):
        before = len(stale)
        text = _regenerate(page, Path(root), stale)
        if len(stale) > before:
            page.write_text(text)
    return stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refimpl.docs", description="Regenerate or check the tables "
                                     "generated from the code in README.md and docs/*.md.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--update", action="store_true", help="rewrite the out-of-date blocks")
    action.add_argument("--check", action="store_true", help="exit 1 when a block is out of date")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root (default: the current "
                        "directory)")
    args = parser.parse_args(argv)
    if not (args.root / "docs").is_dir() or not (args.root / "README.md").is_file():
        print(f"refimpl.docs: {args.root} has no README.md and docs/: run from the repository root", file=sys.stderr)
        return 2
    try:
        stale = update(args.root) if args.update else stale_blocks(args.root)
    except ValueError as exc:
        print(f"refimpl.docs: {exc}", file=sys.stderr)
        return 2
    for block in stale:
        print(f"{'regenerated' if args.update else 'out of date'}: {block}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
