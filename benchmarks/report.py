"""Markdown tables from pytest-benchmark JSON: docs/benchmarks.md's results are generated here, never typed.

    python benchmarks/report.py bench.json [more.json ...]     # one table per file: variants side by side
    python benchmarks/report.py --targets bench.json            # issue 8's speed targets against the measured ratios
    python benchmarks/report.py --compare cpu.json gpu.json     # two runs side by side (e.g. a GPU and a CPU run)
    python benchmarks/report.py --update docs/benchmarks.md     # regenerate the page's blocks from their JSON files
    python benchmarks/report.py --check docs/benchmarks.md      # exit 1 if a block differs from its JSON

A block is ``<!-- report: PATH -->`` or ``<!-- targets: PATH -->`` (PATH relative to the page that holds it)
followed by the generated text and ``<!-- end -->``. Benchmarks are grouped by ``benchmark.group`` = "workload
device mode dtype denormals" and told apart by their ``variant`` parameter.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

# refimpl's routes (on CUDA "optimized" is the Triton kernel where it applies, "optimized-sdpa" the SDPA route);
# every other variant is a baseline or a peer
REFIMPL = ("optimized", "optimized-sdpa", "optimized-compiled", "stream")
BASELINE = "eager"
ORDER = ("eager", "eager-compiled", "timm", "timm-fused", "timm-compiled", "torchvision", "flex-attention",
         "optimized", "optimized-sdpa", "optimized-compiled", "stream")
BLOCK = re.compile(r"(<!-- (report|targets): (\S+) -->\n)(.*?)(<!-- end -->)", re.S)


def load(path) -> dict:
    return json.loads(Path(path).read_text())


def describe(data) -> str:
    info = data["machine_info"]
    where = info.get("cuda_device") or info.get("cpu", {}).get("brand_raw", "?")
    bound = info.get("cuda_memory_bound_bytes_per_s")
    return (f"torch {info.get('torch')}, {where}, {info.get('torch_threads')} CPU thread(s), "
            f"{data.get('datetime', '?')[:10]}" + (f", memory bound {bound / 1e9:.0f} GB/s" if bound else ""))


def medians(data) -> dict:
    """``{(workload, device, mode, dtype, denormals): {variant: (median seconds, extra_info)}}``."""
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        key = tuple(bench["group"].split())
        groups[key][bench["params"]["variant"]] = (bench["stats"]["median"], bench.get("extra_info", {}))
    return groups


def _ms(value) -> str:
    return "—" if value is None else f"{value * 1e3:.2f}"


def table(data) -> str:
    """One row per workload x setting x refimpl route: the time of every variant (ms, median), refimpl's
    speed-up over the eager code and over the fastest peer, and the FLOP rate refimpl reached."""
    groups = medians(data)
    variants = [v for v in ORDER if any(v in g for g in groups.values())]
    others = [v for v in variants if v not in REFIMPL]
    peers = [v for v in others if v != BASELINE]
    head = ["workload", "device", "mode", "dtype", "denormals"] + [f"{v} ms" for v in others] + [
        "refimpl ms", "vs eager"] + (["vs best peer"] if peers else []) + ["refimpl GFLOP/s", "refimpl GB/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 5 + "---:|" * (len(head) - 5)]
    for (workload, device, mode, dtype, denormals), runs in groups.items():
        for route in (r for r in REFIMPL if r in runs):
            mine, extra = runs[route]
            label = workload if route == "optimized" else f"{workload} ({route})"
            cells = [label, device, mode, dtype, denormals] + [_ms(runs.get(v, (None,))[0]) for v in others]
            cells += [_ms(mine), f"{runs[BASELINE][0] / mine:.2f}x" if BASELINE in runs else "—"]
            if peers:
                best = min((runs[p][0] for p in peers if p in runs), default=None)
                cells.append("—" if best is None else f"{best / mine:.2f}x")
            cells.append(f"{extra['flop'] / mine / 1e9:.0f}" if "flop" in extra else "—")
            cells.append(f"{extra['io_bytes'] / mine / 1e9:.0f}" if "io_bytes" in extra else "—")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# (target, group, the variant refimpl's optimized path is compared with, the ratio to reach, or to exceed if strict)
TARGETS = [
    ("CPU float32 stage 1 + shift, forward, default float settings: >= 2.5x eager",
     ("swin-t-stage1-shift", "cpu", "forward", "float32", "denormals"), BASELINE, 2.5, False),
    ("CPU float32 stage 1 + shift, forward, denormals flushed: >= 1.2x eager",
     ("swin-t-stage1-shift", "cpu", "forward", "float32", "ftz"), BASELINE, 1.2, False),
    ("CPU float32 stage 1 + shift, forward, default float settings: ahead of timm's fused SDPA path",
     ("swin-t-stage1-shift", "cpu", "forward", "float32", "denormals"), "timm-fused", 1.0, True),
    ("CPU float32 stage 1 + shift, forward, denormals flushed: ahead of timm's fused SDPA path",
     ("swin-t-stage1-shift", "cpu", "forward", "float32", "ftz"), "timm-fused", 1.0, True),
    ("CUDA bfloat16 stage 1 + shift, batch 64, forward: >= 3x eager",
     ("swin-t-stage1-shift-b64", "cuda", "forward", "bfloat16", "denormals"), BASELINE, 3.0, False),
]


def targets(data) -> str:
    groups = medians(data)
    lines = ["| target | measured | met |", "|---|---:|---|"]
    for text, key, against, minimum, strict in TARGETS:
        runs = groups.get(key, {})
        if "optimized" not in runs or against not in runs:
            lines.append(f"| {text} | not measured in this run | — |")
            continue
        ratio = runs[against][0] / runs["optimized"][0]
        met = ratio > minimum or (ratio == minimum and not strict)
        lines.append(f"| {text} | {ratio:.2f}x | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def compare(path_a, path_b) -> str:
    """Every benchmark of both runs, matched on workload, mode, dtype, denormals and variant (not the device):
    median in each, and run A's time over run B's."""
    a, b = load(path_a), load(path_b)
    index_a = {(k[0],) + k[2:] + (v,): t for k, runs in medians(a).items() for v, (t, _) in runs.items()}
    index_b = {(k[0],) + k[2:] + (v,): t for k, runs in medians(b).items() for v, (t, _) in runs.items()}
    lines = [f"A: {path_a} ({describe(a)})", f"B: {path_b} ({describe(b)})", "",
             "| workload | mode | dtype | denormals | variant | A ms | B ms | A / B |",
             "|---|---|---|---|---|---:|---:|---:|"]
    for key in sorted(set(index_a) | set(index_b)):
        ta, tb = index_a.get(key), index_b.get(key)
        ratio = f"{ta / tb:.2f}" if ta is not None and tb is not None else "—"
        lines.append("| " + " | ".join(key) + f" | {_ms(ta)} | {_ms(tb)} | {ratio} |")
    return "\n".join(lines) + "\n"


def render_block(kind, path) -> str:
    data = load(path)
    return f"Measured: {describe(data)}.\n\n" + (table(data) if kind == "report" else targets(data))


PAGE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"  # the page that holds the results


def update_page(page=PAGE, check_only=False) -> list[str]:
    """Regenerate every block of ``page``; return the JSON paths whose block was out of date (and, unless
    ``check_only``, rewrite the file)."""
    page = Path(page)
    text, stale = page.read_text(), []

    def regenerate(match):
        fresh = render_block(match.group(2), page.parent / match.group(3))
        if fresh != match.group(4):
            stale.append(f"{match.group(2)}: {match.group(3)}")
        return match.group(1) + fresh + match.group(5)

    new = BLOCK.sub(regenerate, text)
    if stale and not check_only:
        page.write_text(new)
    return stale


def main(argv) -> int:
    if argv[:1] in (["--update"], ["--check"]):
        stale = update_page(argv[1] if len(argv) > 1 else PAGE, check_only=argv[0] == "--check")
        for block in stale:
            print(f"{'out of date' if argv[0] == '--check' else 'regenerated'}: {block}")
        return 1 if stale and argv[0] == "--check" else 0
    if argv[:1] == ["--compare"] and len(argv) == 3:
        print(compare(argv[1], argv[2]))
        return 0
    if argv[:1] == ["--targets"]:
        for path in argv[1:]:
            print(render_block("targets", path))
        return 0
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    for path in argv:
        print(f"{path}: " + render_block("report", path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
