"""``refimpl``: the command line. ``refimpl verify`` runs the property suite against an implementation;
``refimpl flops`` prints analytic MAC/FLOP counts.

    refimpl verify [--target KIND=MODULE:ATTR]... [--device cpu|cuda|all] [--dtype float64,float32,...]
                   [--max-examples N] [--seed S] [--property NAME]... [--report PATH.json] [--markdown PATH.md]

Exit status: 0 every property held; 1 a property failed (the report names it, with the shrunk example and a
command that replays it); 2 the target could not be imported or built, does not follow the
upstream protocol (constructor, state-dict keys, output shape), or the arguments are wrong. The same harness is
callable from Python: ``refimpl.harness.verify``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refimpl", description="Reference oracles and property suites.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("merge", help="merge the JSON reports of n shards into one verdict (refimpl merge --help)",
                   add_help=False)
    verify = sub.add_parser("verify", help="run the property suite against an implementation")
    verify.add_argument("--target", action="append", default=[], metavar="KIND=MODULE:ATTR",
                        help="implementation under test (default: refimpl.optimized)")
    verify.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    verify.add_argument("--dtype", default="float64,float32,float16,bfloat16",
                        help="comma-separated dtypes (default: all four)")
    verify.add_argument("--max-examples", type=int, default=None,
                        help="examples per property (default: each kind's budget, 100 or fewer; docs/mutants.md)")
    verify.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: derandomized)")
    verify.add_argument("--property", action="append", default=[], help="run only these properties")
    verify.add_argument("--jobs", "-j", default="auto", metavar="N",
                        help="worker processes (default auto: one per CPU core, at most 8; 1: this process only)")
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
    from refimpl.harness import DEFAULT_TARGETS, ProtocolError
    from refimpl.harness import verify as run_verify

    targets = None
    for item in args.target:
        kind, sep, spec = item.partition("=")
        if not sep:
            return _fail(f"--target must be KIND=MODULE:ATTR, got {item!r}")
        if kind not in DEFAULT_TARGETS:
            return _fail(f"unknown kind {kind!r}; expected one of {sorted(DEFAULT_TARGETS)}")
        targets = {**(targets or {}), kind: spec}
    try:
        jobs = min(os.cpu_count() or 1, 8) if args.jobs == "auto" else int(args.jobs)
    except ValueError:
        return _fail(f"--jobs must be a positive integer or auto, got {args.jobs!r}")
    if jobs < 1:
        return _fail(f"--jobs must be a positive integer or auto, got {args.jobs!r}")
    try:
        report = run_verify(targets, devices=None if args.device == "all" else [args.device], jobs=jobs,
                            dtypes=[d.strip() for d in args.dtype.split(",") if d.strip()],
                            max_examples=args.max_examples, seed=args.seed, properties=args.property,
                            log=lambda line: print(line, flush=True))
    except (ProtocolError, ValueError) as exc:
        return _fail(str(exc))
    for line in report.extension_lines():
        print(line)
    counts = report.counts()
    print(f"refimpl verify: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    if args.report:
        with open(args.report, "w") as fh:
            fh.write(report.json())
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(report.markdown())
    return report.exit_code


def merge(argv: list[str]) -> int:
    """``refimpl merge SHARD.json ... [--report OUT.json] [--markdown OUT.md]``: one verdict from n shards."""
    parser = argparse.ArgumentParser(prog="refimpl merge", description="merge the JSON reports of n shards (pytest "
                                     "--refimpl-report, or refimpl verify --report) into one verdict")
    parser.add_argument("reports", nargs="+", metavar="SHARD.json")
    parser.add_argument("--report", metavar="PATH.json", help="write the merged JSON report")
    parser.add_argument("--markdown", metavar="PATH.md", help="write the merged Markdown summary")
    args = parser.parse_args(argv)
    from refimpl.harness import merge_reports

    loaded = []
    for path in args.reports:
        try:
            with open(path) as fh:
                loaded.append(json.load(fh))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"refimpl merge: cannot read {path}: {exc}", file=sys.stderr)
            return 2
    report = merge_reports(loaded)
    if args.report:
        with open(args.report, "w") as fh:
            fh.write(report.json())
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(report.markdown())
    counts = report.counts()
    print(f"refimpl merge: {len(args.reports)} reports: {counts['passed']} passed, {counts['failed']} failed, "
          f"{counts['skipped']} skipped")
    for o in report.failed:
        print(f"FAIL {o.kind} {o.property} {o.device} {o.dtype}\n     replay: {o.replay}")
    return report.exit_code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        _parser().print_help()
        return 0 if argv else 2
    if argv[0] == "verify":
        return verify(argv[1:])
    if argv[0] == "flops":
        return flops(argv[1:])
    if argv[0] == "merge":
        return merge(argv[1:])
    _parser().parse_args(argv)  # prints the usage error and exits 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
