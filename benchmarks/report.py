"""Turn a pytest-benchmark JSON into a Markdown table of eager/optimized median ratios per group.

    python benchmarks/report.py bench.json [more.json ...]
"""

import json
import sys
from collections import defaultdict


def main(paths):
    for path in paths:
        data = json.load(open(path))
        info = data["machine_info"]
        print(f"{path}: torch {info.get('torch')}, {info.get('cpu', {}).get('brand_raw', '?')}, "
              f"{info.get('torch_threads')} thread(s){', ' + info['cuda_device'] if info.get('cuda_device') else ''}\n")
        groups = defaultdict(dict)
        for bench in data["benchmarks"]:
            groups[bench["group"]][bench["params"]["variant"]] = bench["stats"]["median"]
        print("| workload | device | denormals | eager ms | optimized ms | speed-up |")
        print("|---|---|---|---:|---:|---:|")
        for group, medians in groups.items():
            if {"eager", "optimized"} <= medians.keys():
                workload, device, denormals = group.split()
                eager, fast = medians["eager"] * 1e3, medians["optimized"] * 1e3
                print(f"| {workload} | {device} | {denormals} | {eager:.2f} | {fast:.2f} | {eager / fast:.2f}x |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
