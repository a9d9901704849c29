"""Benchmark wiring: pinned CPU threads, and torch facts in the JSON's machine_info."""

import os

import torch
from _support import device_memory_bound, native_dtypes

THREADS = int(os.environ.get("REFIMPL_BENCH_THREADS", "1"))  # 1 thread: the 2-core box is bimodal with 2


def pytest_configure(config):
    torch.set_num_threads(THREADS)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_cuda"] = torch.version.cuda
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cpu_native_dtypes"] = native_dtypes("cpu")
    if torch.cuda.is_available():
        machine_info["cuda_device"] = torch.cuda.get_device_name()
        machine_info["cudnn"] = torch.backends.cudnn.version()
        machine_info["cuda_memory_bound_bytes_per_s"] = device_memory_bound("cuda")
