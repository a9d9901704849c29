"""Turn a pytest-benchmark JSON into a Markdown table of eager / refimpl median ratios per group (one row per
refimpl variant: the optimized forward, and e.g. the streamed step).

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
        print("| workload | device | denormals | eager ms | refimpl ms | speed-up |")
        print("|---|---|---|---:|---:|---:|")
        for group, medians in groups.items():
            if "eager" not in medians:
                continue
            workload, device, denormals = group.split()
            eager = medians["eager"] * 1e3
            for variant, median in medians.items():  # "optimized", then refimpl's other routes (e.g. "stream")
                if variant != "eager":
                    label = workload if variant == "optimized" else f"{workload} ({variant})"
                    print(f"| {label} | {device} | {denormals} | {eager:.2f} | {median * 1e3:.2f} | "
                          f"{eager / (median * 1e3):.2f}x |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
