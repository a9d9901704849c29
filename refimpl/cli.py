"""``refimpl``: the command line. ``refimpl verify`` runs the property suite against an implementation;
``refimpl flops`` prints analytic MAC/FLOP counts.

    refimpl verify [--target KIND=MODULE:ATTR]... [--device cpu|cuda|all] [--dtype float64,float32,...]
                   [--max-examples N] [--seed S] [--property NAME]... [--report PATH.json] [--markdown PATH.md]

Exit status: 0 every property held; 1 a property failed (the report names it, with the shrunk example and a
command that replays it); 2 the target could not be imported or built, or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass

DEFAULT_TARGETS = {
    "window_attention": "refimpl.optimized:WindowAttention",
    "shifted_window_mask": "refimpl.optimized:shifted_window_mask",
    "temporal_model": "refimpl.optimized:TemporalModel",
}


@dataclass
class Outcome:
    kind: str
    target: str
    property: str
    device: str
    dtype: str
    status: str  # "passed" | "failed" | "skipped"
    seconds: float
    detail: str = ""
    replay: str = ""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refimpl", description="Reference oracles and property suites.")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="run the property suite against an implementation")
    verify.add_argument("--target", action="append", default=[], metavar="KIND=MODULE:ATTR",
                        help="implementation under test (default: refimpl.optimized)")
    verify.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    verify.add_argument("--dtype", default="float64,float32,float16,bfloat16",
                        help="comma-separated dtypes (default: all four)")
    verify.add_argument("--max-examples", type=int, default=None, help="examples per property (default: ci profile)")
    verify.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: derandomized)")
    verify.add_argument("--property", action="append", default=[], help="run only these properties")
    verify.add_argument("--report", metavar="PATH.json", help="write a JSON report")
    verify.add_argument("--markdown", metavar="PATH.md", help="write a Markdown summary table")
    flops = sub.add_parser("flops", help="print analytic MAC and FLOP counts of named configurations")
    flops.add_argument("configs", nargs="*", metavar="NAME",
                       help="swin-t, swin-s, swin-b, aim-swin-t, aim-swin-b, fiery (default: all)")
    flops.add_argument("--window-attention", nargs=4, type=int, metavar=("DIM", "HEADS", "N", "T"),
                       help="one AIM WindowAttention window instead of a named model")
    flops.add_argument("--image-size", type=int, default=224, help="Swin/AIM input side (default 224)")
    flops.add_argument("--frames", type=int, default=None, help="AIM temporal tokens (default 8) or FIERY frames (3)")
    flops.add_argument("--bev", type=int, default=200, help="FIERY BEV side (default 200)")
    return parser


def flops(argv: list[str]) -> int:
    args = _parser().parse_args(["flops", *argv])
    from refimpl.flops_table import PRESETS, rows_for, table, window_attention_rows

    try:
        if args.window_attention:
            rows = window_attention_rows(*args.window_attention)
        else:
            rows = [row for name in (args.configs or PRESETS)
                    for row in rows_for(name, image_size=args.image_size, frames=args.frames, bev=args.bev)]
    except (TypeError, ValueError) as exc:
        print(f"refimpl flops: {exc}", file=sys.stderr)
        return 2
    print(table(rows))
    print("\nMACs: multiply-accumulates, the unit of Swin's and AIM's published \"FLOPs\" and of fvcore; "
          "FLOPs = 2 x MACs, the unit of torch.utils.flop_counter.")
    return 0


def _fail(message: str) -> int:
    print(f"refimpl verify: {message}", file=sys.stderr)
    return 2


def verify(argv: list[str]) -> int:
    args = _parser().parse_args(["verify", *argv])
    import torch
    from hypothesis import settings

    import refimpl.profiles  # noqa: F401
    from refimpl.properties import (DTYPES, Unsupported, available_devices, load_implementation, properties_for,
                                    run_property)

    if os.getcwd() not in sys.path:  # the contract: MODULE is importable from the current directory
        sys.path.insert(0, os.getcwd())
    targets = dict(DEFAULT_TARGETS) if not args.target else {}
    for item in args.target:
        kind, sep, spec = item.partition("=")
        if not sep:
            return _fail(f"--target must be KIND=MODULE:ATTR, got {item!r}")
        if kind not in DEFAULT_TARGETS:
            return _fail(f"unknown kind {kind!r}; expected one of {sorted(DEFAULT_TARGETS)}")
        targets[kind] = spec
    devices = available_devices() if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        return _fail("--device cuda, but torch sees no CUDA device")
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        return _fail(f"unknown dtype(s) {unknown}; expected a subset of {list(DTYPES)}")

    base = settings.get_profile("ci")
    run_settings = settings(base, max_examples=args.max_examples or base.max_examples,
                            derandomize=args.seed is None, print_blob=False)
    outcomes: list[Outcome] = []
    for kind, spec in targets.items():
        try:
            impl = load_implementation(kind, spec)
        except ValueError as exc:
            return _fail(f"target {kind}={spec}: {exc}")
        for prop in properties_for(kind):
            if args.property and prop.name not in args.property:
                continue
            for device in devices:
                for dtype in dtypes:
                    replay = shlex.join(["refimpl", "verify", "--target", f"{kind}={spec}", "--property", prop.name,
                                         "--device", device, "--dtype", dtype,
                                         "--max-examples", str(run_settings.max_examples)]
                                        + ([] if args.seed is None else ["--seed", str(args.seed)]))
                    if dtype not in prop.dtypes:  # e.g. a float64-only structural law: not applicable
                        continue
                    start = time.perf_counter()
                    try:
                        run_property(prop, impl, device, dtype, settings=run_settings, seed=args.seed)
                        status, detail = "passed", ""
                    except Unsupported as exc:  # a capability the target does not have: a skip with its reason
                        status, detail = "skipped", str(exc)
                    except Exception as exc:  # any failure of the target is a verdict, reported in full
                        notes = "\n".join(getattr(exc, "__notes__", []))
                        status, detail = "failed", f"{type(exc).__name__}: {exc}\n{notes}".strip()
                    outcome = Outcome(kind, spec, prop.name, device, dtype, status,
                                      round(time.perf_counter() - start, 3), detail, replay)
                    outcomes.append(outcome)
                    mark = {"passed": "ok  ", "failed": "FAIL", "skipped": "skip"}[status]
                    print(f"{mark} {kind:19s} {prop.name:60s} {device:5s} {dtype:9s} {outcome.seconds:7.2f}s",
                          flush=True)
                    if status == "skipped":
                        print(f"     {detail}")
                    if status == "failed":
                        print("     " + detail.replace("\n", "\n     "))
                        print(f"     replay: {replay}")

    failed = [o for o in outcomes if o.status == "failed"]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("passed", "failed", "skipped")}
    print(f"refimpl verify: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    if args.report:
        with open(args.report, "w") as fh:
            json.dump({"targets": targets, "torch": torch.__version__, "max_examples": run_settings.max_examples,
                       "seed": args.seed, "outcomes": [asdict(o) for o in outcomes]}, fh, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("| kind | property | device | dtype | result |\n|---|---|---|---|---|\n")
            for o in outcomes:
                why = f": {o.detail.splitlines()[0]}" if o.status == "skipped" else ""
                fh.write(f"| {o.kind} | {o.property} | {o.device} | {o.dtype} | {o.status}{why} |\n")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        _parser().print_help()
        return 0 if argv else 2
    if argv[0] == "verify":
        return verify(argv[1:])
    if argv[0] == "flops":
        return flops(argv[1:])
    _parser().parse_args(argv)  # prints the usage error and exits 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
