"""Peers under the harness: timm's and torchvision's Swin window attention behind AIM's protocol.

    refimpl verify --target window_attention=refimpl.peers:TimmWindowAttention
    refimpl verify --target window_attention=refimpl.peers:TorchvisionWindowAttention

Their constructors and forwards differ from AIM's; the adapters translate them and declare what each lacks
(``refimpl_capabilities``), so those properties are reported as skips, not failures. Install the peers only with
torch pinned (``pip install -c constraints.txt torchvision timm``, constraints.txt = ``torch==<your version>``;
an unpinned install replaces torch). On a CPU-only torch build, torchvision's CUDA-linked extension does not load
and ``import torchvision`` fails on its fake-op registrations; ``_import_torchvision`` defines the two operator
schemas it expects first (its C ops stay unusable; the Swin code is pure PyTorch).
"""

from __future__ import annotations

import importlib.util
import sys

import torch

__all__ = ["TimmWindowAttention", "TorchvisionWindowAttention", "not_installed"]

_SHIM = []  # keeps the torch.library.Library alive
_REQUIRES = {"timm": ("timm", "torchvision"), "torchvision": ("torchvision",)}  # timm imports torchvision


def not_installed(peer: str) -> str | None:
    """Why ``peer`` ("timm" or "torchvision") cannot be used here, or None when everything it imports is installed."""
    missing = [package for package in _REQUIRES[peer] if importlib.util.find_spec(package) is None]
    if not missing:
        return None
    return (f"not installed: {', '.join(missing)} (the {peer} peer imports {', '.join(_REQUIRES[peer])}; tox -e peers "
            "installs them with torch pinned, or pip install -c constraints.txt timm torchvision with "
            "constraints.txt = torch==<your version>)")


def _import_torchvision():
    if "torchvision" not in sys.modules and torch.version.cuda is None:
        try:
            torch.ops.torchvision.nms  # noqa: B018  (present when torchvision's extension loads)
        except (AttributeError, RuntimeError):
            lib = torch.library.Library("torchvision", "DEF")
            for op in ("nms", "qnms"):
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _SHIM.append(lib)
    import torchvision

    return torchvision


def _timm_class():
    _import_torchvision()  # timm imports torchvision
    from timm.models.swin_transformer import WindowAttention as TimmAttention

    class TimmWindowAttention(TimmAttention):
        """timm's ``WindowAttention(dim, num_heads, head_dim, window_size, qkv_bias, attn_drop, proj_drop)`` with
        AIM's constructor. Spatial only (no temporal table), additive masks (no boolean masks; an all -inf row
        gives NaN as eager softmax does). ``qk_scale`` sets timm's ``scale``."""

        refimpl_capabilities = {"modes": ["masks", "training", "gradients"]}

        def __init__(self, dim, num_ttokens, window_size, num_heads, use_temporal=True, qkv_bias=True,
                     qk_scale=None, attn_drop=0.0, proj_drop=0.0):
            super().__init__(dim, num_heads, window_size=window_size, qkv_bias=qkv_bias, attn_drop=attn_drop,
                             proj_drop=proj_drop)
            if qk_scale:
                self.scale = float(qk_scale)

        def forward(self, x, mask=None, temporal=False):
            if temporal:
                raise NotImplementedError("timm's WindowAttention has no temporal mode")
            return super().forward(x, mask)

    return TimmWindowAttention


def _torchvision_class():
    torchvision = _import_torchvision()
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    class TorchvisionWindowAttention(ShiftedWindowAttention):
        """torchvision's map-level ``ShiftedWindowAttention`` with AIM's constructor, on AIM's rows of windows: each
        row ``(N, C)`` is run as a one-window ``(Wh, Ww)`` map with shift 0, which is plain window attention (its
        shift mask is built inside the map-level function, so arbitrary masks cannot be passed: no masks).
        Spatial only; ``qk_scale`` is not supported by torchvision (it always uses ``d^-1/2``)."""

        refimpl_capabilities = {"modes": ["training", "gradients"]}

        def __init__(self, dim, num_ttokens, window_size, num_heads, use_temporal=True, qkv_bias=True,
                     qk_scale=None, attn_drop=0.0, proj_drop=0.0):
            window = list(window_size) if not isinstance(window_size, int) else [window_size] * 2
            super().__init__(dim, window, [0, 0], num_heads, qkv_bias=qkv_bias, attention_dropout=attn_drop,
                             dropout=proj_drop)
            if qk_scale and qk_scale != (dim // num_heads) ** -0.5:
                raise ValueError(f"torchvision's attention has no qk_scale; got qk_scale={qk_scale}")

        def forward(self, x, mask=None, temporal=False):
            if temporal or mask is not None:
                raise NotImplementedError("torchvision's ShiftedWindowAttention takes neither masks nor temporal mode")
            rows, n, c = x.shape
            return super().forward(x.reshape(rows, *self.window_size, c)).reshape(rows, n, c)

    del torchvision
    return TorchvisionWindowAttention


def __getattr__(name):  # imported lazily: the peers are optional dependencies
    if name == "TimmWindowAttention":
        return _timm_class()
    if name == "TorchvisionWindowAttention":
        return _torchvision_class()
    raise AttributeError(f"module 'refimpl.peers' has no attribute {name!r}")
