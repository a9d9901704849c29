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
import sys


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
        report = run_verify(targets, devices=None if args.device == "all" else [args.device],
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
