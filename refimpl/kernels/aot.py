"""Ahead-of-time compilation of the Triton window-attention kernels for GPUs this machine need not have.

``python -m refimpl.kernels.aot [--targets 80,90] [--scope cover|full]`` compiles every kernel (forward, the
backward's delta, dQ, dK/dV and dBias kernels) with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc,
32))`` for each compute capability in ``--targets``, and checks that PTX and a cubin come out and that the shared
memory fits every GPU the gate admits. No GPU and no CUDA driver are needed (Triton ships ptxas). It proves the
kernels compile for those targets; it does not run them (``docs/kernels.md``).

Configurations (``configurations``): every compile-time parameter set the wrapper can launch, read off its own
``launch_meta`` over all window sizes, for each head dim the gate admits (16, 32, ..., 128), each dtype and with
and without a mask. ``--scope full`` compiles all of them; ``--scope cover`` (the default) compiles every kernel
at every ``(head dim, tile)`` pair once, rotating the ``(dtype, mask)`` pairs across them so that each appears
with every kernel: a third of the time, and every code path the full sweep has.

Must run without ``TRITON_INTERPRET`` (under the interpreter ``@triton.jit`` gives functions that do not compile).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass

__all__ = ["Config", "configurations", "compile_config", "main", "KERNELS", "SHARED_MEMORY_LIMIT"]

KERNELS = ("_fwd_kernel", "_bwd_preprocess_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel", "_bwd_dbias_kernel")
POINTER = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
_FLOAT32_BUFFERS = {"LSE", "Delta", "DBiasPartial"}  # the wrapper's float32 side tensors, whatever the dtype
_INTS = {"N", "nH", "nW", "B", "windows_per_chunk"}
_CONSTEXPRS = {"HAS_MASK", "BLOCK_M", "BLOCK_N", "HEAD_DIM", "BLOCK_D"}
# The smallest opt-in shared memory per block among the GPUs the gate admits (compute capability >= 8.0):
# 99 KiB on sm_86 / sm_89 (sm_80: 163 KiB, sm_90: 227 KiB).
SHARED_MEMORY_LIMIT = 101376


@dataclass(frozen=True)
class Config:
    kernel: str
    dtype: str
    has_mask: bool
    meta: tuple  # sorted (name, value) pairs of launch_meta, num_warps and num_stages included

    def describe(self) -> str:
        meta = dict(self.meta)
        return (f"{self.kernel} {self.dtype} mask={self.has_mask} d={meta['HEAD_DIM']} "
                f"tile={meta['BLOCK_M']}x{meta.get('BLOCK_N', '-')} warps={meta['num_warps']} "
                f"stages={meta['num_stages']}")


def _metas() -> list[dict]:
    """Every distinct ``launch_meta`` the wrapper can use, over the gate's head dims and all window sizes."""
    from refimpl.kernels._triton_window_attention import HEAD_DIMS, launch_meta

    seen = {tuple(sorted(launch_meta(n, d).items())) for d in HEAD_DIMS for n in range(1, 1025)}
    return [dict(m) for m in sorted(seen)]


def configurations(scope: str = "cover") -> list[Config]:
    """The configurations to compile (see the module docstring for the two scopes)."""
    if scope not in ("cover", "full"):
        raise ValueError(f"scope must be 'cover' or 'full', got {scope!r}")
    configs = []
    for kernel in KERNELS:
        metas = _metas()
        if kernel == "_bwd_preprocess_kernel":  # the delta kernel reads no mask and no tile of keys
            pairs = [(dtype, False) for dtype in POINTER]
            keep = ("BLOCK_M", "HEAD_DIM", "BLOCK_D", "num_warps", "num_stages")
            metas = [dict(m) for m in sorted({tuple((k, m[k]) for k in keep) for m in metas})]
        else:
            pairs = list(itertools.product(POINTER, (False, True)))  # (dtype, has_mask)
        for i, meta in enumerate(metas):
            for dtype, has_mask in pairs if scope == "full" else [pairs[i % len(pairs)]]:
                configs.append(Config(kernel, dtype, has_mask, tuple(sorted(meta.items()))))
    return configs


def compile_config(config: Config, capability: int):
    """``triton.compile`` one configuration for ``sm_<capability>``; returns the compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from refimpl.kernels import _triton_kernels

    fn = getattr(_triton_kernels, config.kernel)
    meta = dict(config.meta)
    options = {"num_warps": meta.pop("num_warps"), "num_stages": meta.pop("num_stages")}
    signature, constexprs = {}, {}
    for name in fn.arg_names:
        if name in _CONSTEXPRS:
            signature[name] = "constexpr"
            constexprs[name] = config.has_mask if name == "HAS_MASK" else meta[name]
        elif name in _INTS:
            signature[name] = "i32"
        elif name == "scale":
            signature[name] = "fp32"
        else:
            signature[name] = "*fp32" if name in _FLOAT32_BUFFERS else POINTER[config.dtype]
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refimpl.kernels.aot", description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="80,90", help="compute capabilities, comma-separated (default 80,90)")
    parser.add_argument("--scope", default="cover", choices=("cover", "full"))
    args = parser.parse_args(argv)
    targets = [int(t) for t in args.targets.split(",")]
    configs = configurations(args.scope)
    failures, seconds, largest_shared = [], {}, 0
    start = time.perf_counter()
    for capability in targets:
        t0 = time.perf_counter()
        for config in configs:
            try:
                compiled = compile_config(config, capability)
            except Exception as exc:  # noqa: BLE001  (report every failing configuration, not just the first)
                failures.append(f"sm_{capability} {config.describe()}: {type(exc).__name__}: {exc}"[:2000])
                continue
            problems = [f"no {kind}" for kind in ("ptx", "cubin") if not compiled.asm.get(kind)]
            shared = int(compiled.metadata.shared)
            largest_shared = max(largest_shared, shared)
            if shared > SHARED_MEMORY_LIMIT:
                problems.append(f"{shared} bytes of shared memory > {SHARED_MEMORY_LIMIT}")
            if problems:
                failures.append(f"sm_{capability} {config.describe()}: {', '.join(problems)}")
        seconds[f"sm_{capability}"] = round(time.perf_counter() - t0, 1)
    summary = {"scope": args.scope, "configurations": len(configs), "targets": targets, "seconds": seconds,
               "total_seconds": round(time.perf_counter() - start, 1), "largest_shared_bytes": largest_shared,
               "failures": failures}
    print(json.dumps(summary, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
