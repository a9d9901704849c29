"""Shared pieces of the benchmark modules: the devices to run on, honest CUDA timing, module construction."""

import numpy as np
import torch

from refimpl import strategies as rst

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def sync(device):
    """Wait for queued kernels, so that a CUDA timing covers the work and not only its launch."""
    if device == "cuda":
        torch.cuda.synchronize()


def random_window_attention(module_class, config, device):
    """An eval-mode ``module_class(**config.kwargs())`` on ``device`` with the same randomized parameters
    (seed 0, bias tables at scale 0.5) for every variant, so variants are timed on identical work."""
    params = rst.random_window_attention_params(config, np.random.default_rng(0), table_scale=0.5)
    module = module_class(**config.kwargs()).to(device).eval()
    module.load_state_dict({k: torch.as_tensor(a, dtype=torch.float32) for k, a in params.items()}, strict=False)
    return module
