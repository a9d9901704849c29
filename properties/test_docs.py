"""The docs are kept true by construction: generated tables equal what the code renders now, every relative link
leads to a file and heading that exist, the README stays short, and nothing cites files outside the repository."""

import re
import subprocess
from pathlib import Path

import pytest

from refimpl import docs

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT = 16_000  # bytes

# Citations of files that are not in the repository (the project's private specs and notes). Built from pieces so
# that this file does not match itself.
OUTSIDE = re.compile("|".join([
    r"\bspec" + r"(-swin-family)?\.md",
    r"\bcontract" + r"\.md",
    r"(?<![\w-])" + "notes" + r"/",
    r"(\.\./|/work/)" + r"shared\b",
]))
# Files whose citations their owners are still rewriting away; each entry goes once its file is clean.
OUTSIDE_EXCEPTIONS: set[str] = set()


def _pages():
    return docs.pages(ROOT)


def test_generated_blocks_are_what_the_code_renders_now():
    stale = docs.stale_blocks(ROOT)
    assert stale == [], f"out of date: {stale}; run python -m refimpl.docs --update"


def test_every_generated_table_is_on_a_page():
    specs = {m.group(2) for page in _pages() for m in docs.BLOCK.finditer(page.read_text())}
    kinds = {p.kind for p in docs.PROPERTIES}
    expected = {f"properties {kind}" for kind in kinds} | {"mutants"}
    assert expected <= specs, f"no generated block for {sorted(expected - specs)}"


def test_every_catalogued_mutant_has_a_recorded_catcher():
    from refimpl.mutants import CATALOG

    table = docs.mutants_table(ROOT)  # raises, naming them, when docs/mutants.json lacks an entry
    assert all(f"`{m.name}`" in table for m in CATALOG)
    assert "**survived**" not in table, "docs/mutants.json records a mutant that survived the harness"


def test_every_kind_budget_leaves_its_mutants_room():
    """A kind may draw fewer examples than the harness's default only while every catalogued mutant of it fails
    within half of that budget (docs/mutants.json, measured at the kinds' default budgets): the faster main job
    keeps the catalog's power, and a mutant that needs more shows here."""
    import json

    from refimpl.harness import default_budget
    from refimpl.mutants import CATALOG

    record = json.loads((ROOT / "docs" / "mutants.json").read_text())["caught_by"]
    tight = {m.name: (record[m.name]["examples"], default_budget(m.kind)) for m in CATALOG
             if record[m.name]["examples"] > default_budget(m.kind) // 2}
    assert not tight, f"mutants needing more than half their kind's budget (examples, budget): {tight}"


def test_the_readme_is_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes (at most {README_LIMIT}): move material to docs/"


# ---- links ----

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    """The text without fenced blocks and code spans, where link syntax is literal."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (links reduced to their text, formatting dropped), lowercased,
    every character other than letters, digits, spaces, hyphens and underscores removed, spaces turned into
    hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def _links():
    for page in _pages():
        for target in LINK.findall(_prose(page.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:
                continue
            yield page, target


def test_slugs_follow_github():
    assert slug("Which FLOPs?") == "which-flops"
    assert slug("FIERY's temporal model") == "fierys-temporal-model"
    assert slug("Results (CPU)") == "results-cpu"
    assert slug("Masks: -100 vs -inf") == "masks--100-vs--inf"


def test_relative_links_point_to_existing_files_and_headings():
    links = list(_links())
    assert links, "no relative links found: the link pattern is broken"
    broken = []
    for page, target in links:
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{page.relative_to(ROOT)}: {target} (no heading with that anchor)")
    assert not broken, "\n".join(broken)


def test_the_readme_links_every_docs_page():
    text = (ROOT / "README.md").read_text()
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"(docs/{p.name})" not in text]
    assert not missing, f"README.md's table of docs pages lacks {missing}"


# ---- no citations of files outside the repository ----


def _repository_files() -> list[str]:
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return sorted({f for f in listed if (ROOT / f).is_file()})


def test_the_pattern_catches_each_kind_of_citation():
    notes = "notes"
    for cited in ("spec" + ".md §2", "spec" + "-swin-family.md", "contract" + ".md", f"shared/{notes}/perf.md",
                  "../" + "shared/x", "/work/" + "shared/y", f"({notes}/ecosystem.md)"):
        assert OUTSIDE.search(cited), cited
    for fine in ("docs/semantics.md", "release-notes/x", "inspect.md", "specs.md"):
        assert not OUTSIDE.search(fine), fine


def test_nothing_cites_files_outside_the_repository():
    offenders = []
    for name in _repository_files():
        if name in OUTSIDE_EXCEPTIONS:
            continue
        try:
            text = (ROOT / name).read_text()
        except UnicodeDecodeError:
            continue
        offenders += [f"{name}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1)
                      if OUTSIDE.search(line)]
    assert not offenders, "cites files outside the repository:\n" + "\n".join(offenders)
