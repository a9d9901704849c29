"""Benchmark wiring: pinned CPU threads, the denormal setting, and torch facts in the JSON's machine_info."""

import os

import pytest
import torch

THREADS = int(os.environ.get("REFIMPL_BENCH_THREADS", "1"))  # 1 thread: the 2-core box is bimodal with 2


def pytest_configure(config):
    torch.set_num_threads(THREADS)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_cuda"] = torch.version.cuda
    machine_info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        machine_info["cuda_device"] = torch.cuda.get_device_name()


@pytest.fixture(params=[False, True], ids=["denormals", "ftz"])
def flush_denormal(request):
    """Swin's -100 mask makes float32 softmax outputs subnormal, which slows eager matmuls several times on CPU:
    every CPU number is reported with denormals kept (torch's default) and flushed."""
    previous = torch.set_flush_denormal(request.param)
    yield request.param
    torch.set_flush_denormal(False)
    del previous
