"""Bad calls get a clear ValueError/TypeError at the boundary, the same kind from the oracle and the module."""

import re

import numpy as np
import pytest
import torch

from refimpl import reference
from refimpl.optimized import WindowAttention

# name: (constructor kwargs, x shape, mask shape or None, temporal, expected error, words the message must name)
BAD_CALLS = {
    "C not divisible by heads": (dict(dim=10, num_heads=3), (1, 4, 10), None, False, ValueError, "num_heads=3"),
    "x not 3-D": (dict(), (4, 8), None, False, ValueError, "3-D"),
    "C != dim": (dict(), (1, 4, 6), None, False, ValueError, "C=6"),
    "N != Wh*Ww": (dict(), (1, 5, 8), None, False, ValueError, "N=5"),
    "N != num_ttokens": (dict(), (1, 4, 8), None, True, ValueError, "N=4"),
    "num_ttokens == 1 broadcast": (dict(num_ttokens=1), (1, 4, 8), None, True, ValueError, "num_ttokens == 1"),
    "mask shape": (dict(), (2, 4, 8), (2, 4, 3), False, ValueError, "(nW, N, N)"),
    "B_ % nW": (dict(), (3, 4, 8), (2, 4, 4), False, ValueError, "multiple of nW"),
}
DEFAULTS = dict(dim=8, num_ttokens=3, window_size=(2, 2), num_heads=2)


def _oracle_params(kwargs):
    module = WindowAttention(**{**DEFAULTS, **kwargs}) if kwargs.get("dim", 8) % kwargs.get("num_heads", 2) == 0 else None
    if module is None:  # the module refuses to be built; give the oracle well-formed params for dim 10
        c, nh = kwargs["dim"], kwargs["num_heads"]
        return {"qkv.weight": np.zeros((3 * c, c)), "proj.weight": np.zeros((c, c)), "proj.bias": np.zeros(c),
                "relative_position_bias_table": np.zeros((9, nh))}
    return {k: t.detach().numpy() for k, t in module.named_parameters()}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_oracle_and_module_refuse_the_same_bad_call(name):
    kwargs, x_shape, mask_shape, temporal, error, words = BAD_CALLS[name]
    cfg = {**DEFAULTS, **kwargs}
    x = np.zeros(x_shape)
    mask = None if mask_shape is None else np.zeros(mask_shape)
    with pytest.raises(error, match=re.escape(words)):
        reference.window_attention(x, _oracle_params(kwargs), num_heads=cfg["num_heads"],
                                   window_size=cfg["window_size"], mask=mask, temporal=temporal)
    with pytest.raises(error, match=re.escape(words)):
        module = WindowAttention(**cfg)
        module(torch.zeros(x_shape), None if mask is None else torch.zeros(mask_shape), temporal)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(window_size=(0, 2)), ValueError, "window_size[0] must be >= 1"),
        (dict(window_size=(2, 2, 2)), ValueError, "pair"),
        (dict(num_heads=0), ValueError, "num_heads must be >= 1"),
        (dict(dim=2.5), TypeError, "dim must be an int"),
        (dict(num_ttokens=0), ValueError, "num_ttokens must be >= 1"),
    ],
)
def test_constructor_and_oracle_refuse_bad_sizes(kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        WindowAttention(**{**DEFAULTS, **kwargs})
    if "window_size" in kwargs:
        with pytest.raises(error, match=re.escape(words)):
            reference.relative_position_index(kwargs["window_size"])
    if "num_ttokens" in kwargs:
        with pytest.raises(error, match=re.escape(words)):
            reference.temporal_relative_index(kwargs["num_ttokens"])


def test_temporal_call_on_spatial_only_module():
    module = WindowAttention(**DEFAULTS, use_temporal=False)
    assert "temporal_position_bias_table" not in module.state_dict()
    with pytest.raises(ValueError, match="use_temporal=False"):
        module(torch.zeros(1, 3, 8), temporal=True)


def test_non_tensor_and_integer_inputs():
    module = WindowAttention(**DEFAULTS)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        module(np.zeros((1, 4, 8)))
    with pytest.raises(TypeError, match="floating dtype"):
        module(torch.zeros(1, 4, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="mask must be a floating"):
        module(torch.zeros(1, 4, 8), torch.zeros(1, 4, 4, dtype=torch.bool))
