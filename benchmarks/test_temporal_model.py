"""FIERY's temporal model on FIERY's own configuration: refimpl's folded eval path against the FIERY layers.

in_channels 70 (64 encoder + 6 ego-motion), receptive field 3, 200x200 BEV, start_out_channels 64, batch 1, T = 3
(FIERY feeds exactly R frames and keeps the one present output). "eager" is
``refimpl.baselines.temporal_model.TemporalModel``:
FIERY's modules run as FIERY runs them (every Conv3d, BatchNorm3d and ReLU separately). "optimized" is
``refimpl.optimized.TemporalModel`` in inference: BatchNorm folded, the path entries as one convolution, pooled
branch aggregated before the upsample, channels_last_3d. "stream" is one ``TemporalModelStream.step`` on a warm
stream: the same present output from one new frame. Forward only, float32, under ``torch.inference_mode``.
"""

import numpy as np
import pytest
import torch
from _support import DEVICES, denormal_setting, record_rates, settings, sync

from refimpl import reference
from refimpl import strategies as rst
from refimpl.baselines.temporal_model import TemporalModel as FieryTemporalModel
from refimpl.optimized import TemporalModel
from refimpl.suite.temporal_model import state_tensors

FIERY = rst.TemporalModelConfig(in_channels=70, receptive_field=3, input_shape=(200, 200), start_out_channels=64)
VARIANTS = {"optimized": TemporalModel, "eager": FieryTemporalModel, "stream": TemporalModel}


def _model(module_class, device):
    params = rst.random_temporal_model_params(FIERY, np.random.default_rng(0))
    module = module_class(**FIERY.kwargs())
    module.load_state_dict(state_tensors(params, "cpu", torch.float32), strict=True)
    return module.to(device).eval()


# float32 only: the half-precision and training rows would time FIERY's own layers against themselves (train
# mode is FIERY's computation, unchanged), or conversions on a CPU.
CASES = [pytest.param(variant, device, denormals, id=f"{variant}-{device}-{denormals}")
         for variant in VARIANTS for device, _, denormals in settings([(d, "float32") for d in DEVICES])]


@pytest.mark.parametrize("variant, device, denormals", CASES)
def test_temporal_model(benchmark, variant, device, denormals):
    module = _model(VARIANTS[variant], device)
    clip = torch.randn(1, FIERY.receptive_field, FIERY.in_channels, *FIERY.input_shape, device=device)
    benchmark.group = f"fiery-temporal-70ch-r3-200x200 {device} forward float32 {denormals}"
    # flop: FIERY's forward on this clip (2 per MAC, reference.temporal_model_macs), the model's work by definition;
    # refimpl skips part of it (the outputs the slice drops), so its rate is an effective one
    macs = reference.temporal_model_macs(**FIERY.kwargs(), batch=1, frames=FIERY.receptive_field,
                                         height=FIERY.input_shape[0], width=FIERY.input_shape[1])
    benchmark.extra_info.update(threads=torch.get_num_threads(), ftz=denormals == "ftz",
                                flop=reference.macs_to_flops(macs))

    if variant == "stream":
        stream = module.stream()
        for t in range(clip.shape[1]):  # warm: the state of the frames before the newest
            stream.step(clip[:, t])

        def run():
            out = stream.step(clip[:, -1])
            sync(device)
            return out[:, None]
    else:
        def run():
            with torch.inference_mode():
                out = module(clip)
            sync(device)
            return out

    with denormal_setting(denormals):
        out = benchmark.pedantic(run, rounds=7, warmup_rounds=2, iterations=1)
    record_rates(benchmark)
    assert out.shape == (1, 1, module.out_channels, *FIERY.input_shape) and torch.isfinite(out).all()
