"""Shared pieces of the benchmark modules: devices and dtypes, honest CUDA timing, module construction, peers,
and the work and traffic figures recorded next to each time."""

import contextlib

import numpy as np
import pytest
import torch

from refimpl import reference
from refimpl import strategies as rst
from refimpl.peers import not_installed

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MODES = ["forward", "forward+backward"]


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as info:
            return set(next(line for line in info if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return set()


def native_dtypes(device) -> list:
    """float32, plus the half types the device computes natively: on CPU bfloat16 with AVX512-BF16 or AMX, float16
    with AVX512-FP16 or AMX-FP16 (torch runs them elsewhere too, by conversion, which is not worth timing); on CUDA
    bfloat16 where supported and float16."""
    if device == "cuda":
        return ["float32"] + (["bfloat16"] if torch.cuda.is_bf16_supported() else []) + ["float16"]
    flags = _cpu_flags()
    return (["float32"] + (["bfloat16"] if flags & {"avx512_bf16", "amx_bf16"} else [])
            + (["float16"] if flags & {"avx512_fp16", "amx_fp16"} else []))


DEVICE_DTYPES = [(device, dtype) for device in DEVICES for dtype in native_dtypes(device)]


def sync(device):
    """Wait for queued kernels, so that a CUDA timing covers the work and not only its launch."""
    if device == "cuda":
        torch.cuda.synchronize()


def skip_unless_installed(peer):
    """Skip the benchmark (with the reason) when ``peer`` ("timm" or "torchvision") cannot be imported here."""
    reason = not_installed(peer)
    if reason:
        pytest.skip(reason)


def settings(device_dtypes=None):
    """``(device, dtype, denormals)`` to time: denormals kept ("denormals", torch's default) everywhere, and
    flushed ("ftz") for CPU float32, where Swin's -100 mask makes softmax outputs subnormal."""
    return [(device, dtype, denormals) for device, dtype in (device_dtypes or DEVICE_DTYPES)
            for denormals in (["denormals", "ftz"] if (device, dtype) == ("cpu", "float32") else ["denormals"])]


@contextlib.contextmanager
def denormal_setting(denormals):
    """``torch.set_flush_denormal`` for the duration of one benchmark ("ftz": flushed; "denormals": kept)."""
    torch.set_flush_denormal(denormals == "ftz")
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def random_window_attention(module_class, config, device, dtype="float32"):
    """An eval-mode ``module_class(**config.kwargs())`` on ``device`` in ``dtype`` with the same randomized
    parameters (seed 0, bias tables at scale 0.5) for every variant, so variants are timed on identical work."""
    params = rst.random_window_attention_params(config, np.random.default_rng(0), table_scale=0.5)
    module = module_class(**config.kwargs())
    module.load_state_dict({k: torch.as_tensor(a, dtype=torch.float32) for k, a in params.items()}, strict=False)
    return module.to(device=device, dtype=getattr(torch, dtype)).eval()


def window_attention_work(dim, heads, tokens, rows, dtype, mode):
    """``extra_info`` figures for ``rows`` windows of ``tokens`` tokens: ``flop`` (2 per MAC: qkv, q@k^T, attn@v,
    proj; forward+backward counted as 3x the forward, the usual estimate), and for the forward the minimum
    traffic: ``io_bytes`` (read x and the weights, write the output) and ``core_io_bytes`` (read q, k, v, write
    the attention output: what a fused attention kernel cannot avoid)."""
    flop = reference.macs_to_flops(rows * reference.swin_window_attention_macs(dim, heads, tokens))
    size = torch.finfo(getattr(torch, dtype)).bits // 8
    work = {"flop": flop * (3 if mode == "forward+backward" else 1)}
    if mode == "forward":
        work["io_bytes"] = size * (2 * rows * tokens * dim + 4 * dim * dim + 4 * dim)
        work["core_io_bytes"] = size * 4 * rows * tokens * dim
    return work


def timed_step(call, x, module, mode, device):
    """The function to time: ``call(x)`` under ``torch.inference_mode`` ("forward"), or in train mode with dropout 0
    (the same computation, as in a training step) followed by the backward of a fixed random cotangent into x and
    every parameter ("forward+backward"); synchronized on CUDA so the time covers the work."""
    if mode == "forward":
        def run():
            with torch.inference_mode():
                out = call(x)
            sync(device)
            return out
        return run
    module.train()
    x.requires_grad_(True)
    grad_out = torch.randn_like(x)

    def run():
        module.zero_grad(set_to_none=True)
        x.grad = None
        out = call(x)
        out.backward(grad_out)
        sync(device)
        return out.detach()
    return run


def record_rates(benchmark):
    """Add the achieved rates (per second of the median) next to the work figures, when the run was timed."""
    stats = getattr(benchmark, "stats", None)
    if stats is None or not getattr(stats, "stats", None) or not stats.stats.data:
        return  # --benchmark-disable: nothing timed
    median = stats.stats.median
    for key in ("flop", "io_bytes", "core_io_bytes"):
        if key in benchmark.extra_info:
            benchmark.extra_info[f"{key}_per_s"] = benchmark.extra_info[key] / median


def device_memory_bound(device) -> float | None:
    """The device's peak memory bandwidth in bytes/s (CUDA: 2 transfers per memory clock x bus width; read from
    the device properties where this torch reports them), None elsewhere."""
    if device != "cuda":
        return None
    props = torch.cuda.get_device_properties(0)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None


class FlexWindowAttention(torch.nn.Module):
    """A FlexAttention baseline with AIM's constructor and keys (``refimpl.baselines`` parameters): the bias (and
    the window mask, row ``b`` reading ``mask[b % nW]``) added in a ``score_mod``, on compiled ``flex_attention``
    (torch >= 2.5; its eager form materializes the scores). Spatial only, additive masks."""

    def __init__(self, **kwargs):
        super().__init__()
        from refimpl.baselines.window_attention import WindowAttention

        self.inner = WindowAttention(**kwargs)
        self._flex = None

    def load_state_dict(self, state, strict=True):
        return self.inner.load_state_dict(state, strict=strict)

    def forward(self, x, mask=None, temporal=False):
        if temporal:
            raise NotImplementedError("FlexWindowAttention times spatial window attention only")
        if self._flex is None:
            from torch.nn.attention.flex_attention import flex_attention

            self._flex = torch.compile(flex_attention)
        inner = self.inner
        rows, n, c = x.shape
        heads = inner.num_heads
        qkv = inner.qkv(x).reshape(rows, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        bias = inner.relative_position_bias_table[inner.relative_position_index.view(-1)]
        bias = bias.view(n, n, heads).permute(2, 0, 1).contiguous().to(x.dtype)  # (nH, N, N)
        windows = 1 if mask is None else mask.shape[0]

        def score_mod(score, b, h, q_idx, kv_idx):
            score = score + bias[h, q_idx, kv_idx]
            return score if mask is None else score + mask[b % windows, q_idx, kv_idx]

        out = self._flex(qkv[0], qkv[1], qkv[2], score_mod=score_mod, scale=inner.scale)
        return inner.proj(out.transpose(1, 2).reshape(rows, n, c))
