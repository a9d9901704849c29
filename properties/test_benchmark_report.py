"""docs/benchmarks.md's results are generated from the committed benchmark JSON (benchmarks/report.py), and the
report's arithmetic (speed-ups, targets, cross-run comparison) is what it says."""

import json
from pathlib import Path

import report  # benchmarks/report.py (pytest's pythonpath)

ROOT = Path(__file__).resolve().parents[1]


def _run(group, variant, median, **extra):
    return {"group": group, "params": {"variant": variant}, "stats": {"median": median}, "extra_info": extra}


def _json(tmp_path, name, benchmarks, device="cpu"):
    info = {"torch": "x", "torch_threads": 1, "cpu": {"brand_raw": "test cpu"}}
    if device == "cuda":
        info["cuda_device"] = "test gpu"
    path = tmp_path / name
    path.write_text(json.dumps({"machine_info": info, "datetime": "2026-11-24T00:00:00", "benchmarks": benchmarks}))
    return path


PAGE = ROOT / "docs" / "benchmarks.md"


def test_benchmark_page_results_are_the_committed_json_rendered():
    assert report.PAGE == PAGE
    blocks = report.BLOCK.findall(PAGE.read_text())
    assert len(blocks) >= 3, "docs/benchmarks.md lost its generated blocks"
    assert report.update_page(PAGE, check_only=True) == [], (
        "docs/benchmarks.md differs from benchmarks/results/*.json: run "
        "python benchmarks/report.py --update docs/benchmarks.md")
    results = {path for _, _, path, _, _ in blocks}
    committed = {f"../benchmarks/results/{p.name}" for p in (ROOT / "benchmarks" / "results").glob("*.json")}
    assert committed <= results, f"committed results without a block in docs/benchmarks.md: {committed - results}"


def test_the_readme_holds_no_benchmark_blocks():
    assert not report.BLOCK.findall((ROOT / "README.md").read_text()), "benchmark results belong in docs/benchmarks.md"


def test_table_speedups_and_targets(tmp_path):
    group = "swin-t-stage1-shift cpu forward float32 denormals"
    path = _json(tmp_path, "a.json", [
        _run(group, "eager", 0.030), _run(group, "timm-fused", 0.012),
        _run(group, "optimized", 0.010, flop=2e9),
    ])
    data = report.load(path)
    row = next(line for line in report.table(data).splitlines() if line.startswith("| swin-t-stage1-shift"))
    assert "| 30.00 | 12.00 | 10.00 | 3.00x | 1.20x | 200 |" in row, row
    targets = report.targets(data).splitlines()
    assert "| 3.00x | yes |" in next(t for t in targets if "default float settings: >= 2.5x" in t)
    assert "| 1.20x | yes |" in next(t for t in targets if "default float settings: ahead of timm" in t)
    assert "not measured" in next(t for t in targets if "flushed: >= 1.2x" in t)


def test_compare_matches_runs_across_devices(tmp_path):
    cpu = _json(tmp_path, "cpu.json", [_run("swin-t-stage1 cpu forward float32 denormals", "optimized", 0.020)])
    gpu = _json(tmp_path, "gpu.json", [_run("swin-t-stage1 cuda forward float32 denormals", "optimized", 0.001),
                                       _run("swin-t-stage3 cuda forward float32 denormals", "optimized", 0.001)],
                device="cuda")
    lines = report.compare(cpu, gpu).splitlines()
    assert "| swin-t-stage1 | forward | float32 | denormals | optimized | 20.00 | 1.00 | 20.00 |" in lines
    assert "| swin-t-stage3 | forward | float32 | denormals | optimized | — | 1.00 | — |" in lines
