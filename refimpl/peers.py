"""Peers under the harness: third-party Swin window attention behind AIM's protocol.

    refimpl verify --target window_attention=refimpl.peers:TimmWindowAttention
    refimpl verify --target window_attention=refimpl.peers:TorchvisionWindowAttention
    refimpl verify --target window_attention=refimpl.peers:HFSwinAttentionEager     (transformers 5.x SwinAttention)
    refimpl verify --target window_attention=refimpl.peers:HFSwinAttentionSdpa
    refimpl verify --target window_attention=refimpl.peers:HFDonutSwinAttention     (transformers' 4.x-style layout)
    refimpl verify --target window_attention=refimpl.peers:MMPretrainWindowMSA
    refimpl verify --target window_attention=refimpl.peers:MMAction2WindowAttention3D
    refimpl verify --target window_attention_v2=refimpl.peers:TimmWindowAttentionV2            (Swin V2, below)
    refimpl verify --target window_attention_v2=refimpl.peers:TorchvisionShiftedWindowAttentionV2
    refimpl verify --target window_attention_v2=refimpl.peers:HFSwinv2Attention
    refimpl verify --target window_attention_v2=refimpl.peers:MMPretrainWindowMSAV2
    refimpl verify --target window_attention_3d=refimpl.peers:MMAction2VideoWindowAttention3D   (Video Swin, below)
    refimpl verify --target window_attention_3d=refimpl.peers:TorchvisionShiftedWindowAttention3d
    refimpl verify --target shifted_window_mask_3d=refimpl.peers:mmaction2_compute_mask_3d
    refimpl verify --target shifted_window_mask_3d=refimpl.peers:torchvision_attention_mask_3d

Their constructors, state dicts and forwards differ from AIM's; the adapters translate them and declare what each
lacks (``refimpl_capabilities``), so those properties are reported as skips, not failures. Every adapter computes
with the peer's own code: timm's, torchvision's and the mm* modules are subclassed; transformers' modules name their
parameters differently, so the adapter owns AIM's parameters and runs the peer's real forward through
``torch.func.functional_call`` with the peer's names bound to views of AIM's (``q_proj.weight = qkv.weight[:C]``),
so that gradients, optimizer steps, in-place edits and ``.data`` swaps reach the peer. The index buffer each adapter
exposes as ``relative_position_index`` is the one the peer built itself.

Install the peers only with torch pinned (``pip install -c constraints.txt torchvision timm transformers ...``,
constraints.txt = ``torch==<your version>``; an unpinned install replaces torch). On a CPU-only torch build,
torchvision's CUDA-linked extension does not load and ``import torchvision`` fails on its fake-op registrations;
``_import_torchvision`` defines the two operator schemas it expects first (its C ops stay unusable; the Swin code is
pure PyTorch). transformers and mmpretrain import torchvision when it is installed, so they get the shim too.

The Swin V2 adapters (``V2_ADAPTERS``, ``V2_RECORDS``) put the peers' V2 window attention behind microsoft's
protocol (kind ``window_attention_v2``) the same way, and their verdicts have a table of their own. The Video Swin
adapters (``V3D_ADAPTERS``) put mmaction2's and torchvision's 3-D window attention behind Video Swin's
``WindowAttention3D`` protocol (kind ``window_attention_3d``, declaring upstream's truncated index convention) and
their shifted-window mask functions behind kind ``shifted_window_mask_3d``; one table per kind.

``python -m refimpl.peers verify`` writes ``docs/peer-NAME.json`` for every installed peer and ``python -m
refimpl.peers markdown docs/peers.md`` renders their verdicts into the table of docs/peers.md.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from typing import ClassVar

import torch

# the adapters, built on first access (the module's __getattr__): each peer is an optional dependency
_LAZY = ("TimmWindowAttention", "TorchvisionWindowAttention", "HFSwinAttentionEager", "HFSwinAttentionSdpa",
         "HFSwinAttentionEagerAllDtypes", "HFDonutSwinAttention", "MMPretrainWindowMSA", "MMAction2WindowAttention3D")
# Swin V2 (kind window_attention_v2, microsoft's protocol)
_LAZY += ("TimmWindowAttentionV2", "TorchvisionShiftedWindowAttentionV2", "HFSwinv2Attention",
          "HFSwinv2AttentionWithMasks", "MMPretrainWindowMSAV2")
# Video Swin 3-D (kinds window_attention_3d and shifted_window_mask_3d: Video Swin's protocol)
_LAZY += ("MMAction2VideoWindowAttention3D", "TorchvisionShiftedWindowAttention3d", "mmaction2_compute_mask_3d",
          "torchvision_attention_mask_3d")
__all__ = ["ADAPTERS", "RECORDS", "V2_ADAPTERS", "V2_RECORDS", "V3D_ADAPTERS", "not_installed", "render_table",
           "update_markdown", "write_reports"]
__all__ += _LAZY

_SHIM = []  # keeps the torch.library.Library alive

# peer -> the top-level modules it imports (timm and mmpretrain import torchvision; mmaction2's Swin imports einops)
_REQUIRES = {
    "timm": ("timm", "torchvision"),
    "torchvision": ("torchvision",),
    "transformers": ("transformers",),
    "mmpretrain": ("mmpretrain", "mmengine", "mmcv", "torchvision"),
    "mmaction2": ("mmaction", "mmengine", "mmcv", "einops"),
}
# peer -> what to pip install for it (with torch pinned); the versions tox -e peers installs
_PIP = {
    "timm": "timm==1.0.31 torchvision==0.28.0",
    "torchvision": "torchvision==0.28.0",
    "transformers": "transformers==5.24.0",
    "mmpretrain": "mmpretrain==1.2.0 mmengine mmcv-lite==2.1.0 torchvision==0.28.0",
    "mmaction2": "mmaction2==1.2.0 mmengine mmcv-lite==2.1.0",
}
# the distributions whose versions a report records, per peer
_DISTRIBUTIONS = {"timm": ("timm",), "torchvision": ("torchvision",), "transformers": ("transformers",),
                  "mmpretrain": ("mmpretrain", "mmcv-lite"), "mmaction2": ("mmaction2", "mmcv-lite")}

# report name (docs/peer-NAME.json) -> (peer, adapter attribute of this module): each passes every property it
# declares (properties/test_peers.py)
ADAPTERS = {
    "timm": ("timm", "TimmWindowAttention"),
    "torchvision": ("torchvision", "TorchvisionWindowAttention"),
    "transformers-eager": ("transformers", "HFSwinAttentionEager"),
    "transformers-sdpa": ("transformers", "HFSwinAttentionSdpa"),
    "transformers-donut": ("transformers", "HFDonutSwinAttention"),
    "mmpretrain": ("mmpretrain", "MMPretrainWindowMSA"),
    "mmaction2": ("mmaction2", "MMAction2WindowAttention3D"),
}
# reports kept as the record of a peer's real difference, next to the adapter that declares it away: the peer name
# it sits after in the docs table, (peer, adapter attribute)
RECORDS = {"transformers-eager-all-dtypes": ("transformers-eager", ("transformers", "HFSwinAttentionEagerAllDtypes"))}
# Swin V2 window attention (kind window_attention_v2): the same two dicts, reports in their own table of docs/peers.md
V2_ADAPTERS = {
    "timm-v2": ("timm", "TimmWindowAttentionV2"),
    "torchvision-v2": ("torchvision", "TorchvisionShiftedWindowAttentionV2"),
    "transformers-v2": ("transformers", "HFSwinv2Attention"),
    "mmpretrain-v2": ("mmpretrain", "MMPretrainWindowMSAV2"),
}
V2_RECORDS = {"transformers-v2-masks": ("transformers-v2", ("transformers", "HFSwinv2AttentionWithMasks"))}
# Video Swin 3-D: report name -> (peer, adapter attribute, kind); one table of docs/peers.md per kind
V3D_ADAPTERS = {
    "mmaction2-3d": ("mmaction2", "MMAction2VideoWindowAttention3D", "window_attention_3d"),
    "torchvision-3d": ("torchvision", "TorchvisionShiftedWindowAttention3d", "window_attention_3d"),
    "mmaction2-mask-3d": ("mmaction2", "mmaction2_compute_mask_3d", "shifted_window_mask_3d"),
    "torchvision-mask-3d": ("torchvision", "torchvision_attention_mask_3d", "shifted_window_mask_3d"),
}
KIND_OF = {name: "window_attention_v2" for name in (*V2_ADAPTERS, *V2_RECORDS)}  # others: window_attention
KIND_OF.update({name: kind for name, (_peer, _attr, kind) in V3D_ADAPTERS.items()})


def _reports() -> dict[str, tuple[str, str]]:
    """Every report name -> (peer, adapter attribute), in the order of the docs table."""
    ordered = {}
    for adapters, records in ((ADAPTERS, RECORDS), (V2_ADAPTERS, V2_RECORDS)):
        for name, entry in adapters.items():
            ordered[name] = entry
            ordered.update({record: e for record, (after, e) in records.items() if after == name})
    ordered.update({name: (peer, attr) for name, (peer, attr, _kind) in V3D_ADAPTERS.items()})
    return ordered


def not_installed(peer: str) -> str | None:
    """Why ``peer`` (a key of ``_REQUIRES``, or a report name of ``ADAPTERS``) cannot be used here, or None when
    everything it imports is installed."""
    peer = _reports()[peer][0] if peer in _reports() else peer
    missing = [package for package in _REQUIRES[peer] if importlib.util.find_spec(package) is None]
    if not missing:
        return None
    return (f"not installed: {', '.join(missing)} (the {peer} peer imports {', '.join(_REQUIRES[peer])}; tox -e peers "
            f"installs them with torch pinned, or pip install -c constraints.txt {_PIP[peer]} with "
            "constraints.txt = torch==<your version>)")


def _require(peer: str) -> None:
    reason = not_installed(peer)
    if reason:
        raise ImportError(f"refimpl.peers: the {peer} peer is {reason}")


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


def _shim_torchvision_if_installed() -> None:
    """transformers imports torchvision whenever it is installed (not otherwise): shim it first."""
    if importlib.util.find_spec("torchvision") is not None:
        _import_torchvision()


def _window(window_size) -> tuple[int, int]:
    return (window_size, window_size) if isinstance(window_size, int) else tuple(int(s) for s in window_size)


def _refuse_qk_scale(peer: str, dim: int, num_heads: int, qk_scale) -> None:
    """A peer whose scale is fixed at head_dim^-1/2: AIM's default (None, or 0, which AIM also takes as the
    default) is fine, anything else is refused rather than silently ignored."""
    if qk_scale and qk_scale != (dim // num_heads) ** -0.5:
        raise ValueError(f"{peer} has no qk_scale (its scale is fixed at head_dim**-0.5); got qk_scale={qk_scale}")


# ---- timm and torchvision: subclasses ----


@functools.cache
def _timm_class():
    _require("timm")
    _import_torchvision()  # timm imports torchvision
    from timm.models.swin_transformer import WindowAttention as TimmAttention

    class TimmWindowAttention(TimmAttention):
        """timm's ``WindowAttention(dim, num_heads, head_dim, window_size, qkv_bias, attn_drop, proj_drop)`` with
        AIM's constructor. Spatial only (no temporal table), additive masks (no boolean masks; an all -inf row
        gives NaN as eager softmax does). ``qk_scale`` sets timm's ``scale``."""

        refimpl_capabilities: ClassVar[dict] = {"modes": ["masks", "training", "gradients"]}

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


@functools.cache
def _torchvision_class():
    _require("torchvision")
    _import_torchvision()
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    class TorchvisionWindowAttention(ShiftedWindowAttention):
        """torchvision's map-level ``ShiftedWindowAttention`` with AIM's constructor, on AIM's rows of windows: each
        row ``(N, C)`` is run as a one-window ``(Wh, Ww)`` map with shift 0, which is plain window attention (its
        shift mask is built inside the map-level function, so arbitrary masks cannot be passed: no masks).
        Spatial only; ``qk_scale`` is not supported by torchvision (it always uses ``d^-1/2``)."""

        refimpl_capabilities: ClassVar[dict] = {"modes": ["training", "gradients"]}

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

    return TorchvisionWindowAttention


# ---- transformers: AIM's parameters, the peer's forward through functional_call ----


class _BoundPeer(torch.nn.Module):
    """AIM's parameters (``qkv``, ``proj``, ``relative_position_bias_table``), computed with a peer module whose
    parameters have other names. The peer is kept out of the module tree (its own parameters would be extra,
    never-loaded state-dict keys); each forward binds every one of its parameters and buffers to AIM's tensors, or
    views of them, through ``torch.func.functional_call``, so autograd, optimizer steps, in-place edits, ``.data``
    swaps, ``.to()`` and ``load_state_dict`` all act on what the peer computes with. Subclasses set ``self.peer``
    (``_set_peer``) and the buffer ``relative_position_index`` (the peer's own), and define ``_bindings``."""

    def __init__(self, dim, window_size, num_heads, qkv_bias):
        super().__init__()
        wh, ww = _window(window_size)
        self.dim, self.num_heads, self.window_size = dim, num_heads, (wh, ww)
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = torch.nn.Linear(dim, dim)
        self.relative_position_bias_table = torch.nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))

    def _set_peer(self, module: torch.nn.Module) -> None:
        self.__dict__["peer"] = module  # not via nn.Module.__setattr__: no submodule, no extra state-dict keys

    def _qkv_bindings(self, q: str, k: str, v: str) -> dict[str, torch.Tensor]:
        """The peer's three projections as row blocks of AIM's fused ``qkv`` (rows [0, C) are q, then k, v)."""
        c, bindings = self.dim, {}
        for block, name in enumerate((q, k, v)):
            bindings[f"{name}.weight"] = self.qkv.weight[block * c : (block + 1) * c]
            if self.qkv.bias is not None:
                bindings[f"{name}.bias"] = self.qkv.bias[block * c : (block + 1) * c]
        return bindings

    def _bindings(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _call(self, x, mask) -> torch.Tensor:
        """The peer's forward on ``x`` ``(B_, N, C)`` and ``mask`` ``(nW, N, N)`` or None, with its parameters bound."""
        self.peer.train(self.training)  # the peer is outside the tree: .train()/.eval() do not reach it
        # strict: every parameter and buffer of the peer must be bound, or a forgotten one would silently compute
        # with the peer's own never-loaded tensor
        return torch.func.functional_call(self.peer, self._bindings(), (x, mask), strict=True)

    def forward(self, x, mask=None, temporal=False):
        """``x`` ``(B_, N, C)``, ``mask`` additive ``(nW, N, N)`` (row b uses ``mask[b % nW]``) -> ``(B_, N, C)``."""
        if temporal:
            raise NotImplementedError(f"{type(self).__name__}: the peer has no temporal mode")
        return self._call(x, mask)


@functools.cache
def _transformers_swin():
    _require("transformers")
    _shim_torchvision_if_installed()
    from transformers import SwinConfig
    from transformers.models.swin.modeling_swin import SwinAttention, SwinRelativePositionBias

    class _HFSwinAttention(_BoundPeer):
        """transformers 5.x ``SwinAttention(config, hidden_size, num_attention_heads, window_size)`` (modeling_swin.py)
        behind AIM's protocol, its attention function chosen by ``config._attn_implementation``.

        * Parameters: ``q_proj``/``k_proj``/``v_proj`` are bound to the row blocks of AIM's ``qkv``, ``o_proj`` to
          ``proj``, ``relative_position_bias.relative_position_bias_table`` to AIM's table.
        * ``relative_position_index`` is the peer's own buffer: HF stores it flat ``(N*N,)`` and non-persistent
          (the harness compares it flat).
        * Windows: HF's Swin has square windows only (``config.window_size`` is an int). For a non-square
          ``(Wh, Ww)`` the adapter replaces the peer's bias module by HF's own ``SwinRelativePositionBias(num_heads,
          (Wh, Ww))``, which takes a pair, so non-square windows are still computed by HF's code.
        * Masks: additive ``(nW, N, N)``, expanded batch-major by HF (row b gets ``mask[b % nW]``). No boolean
          masks: HF adds the mask to the bias, so a bool mask would add 1/0 (not declared, not translated).
        * qk_scale: HF's scale is fixed at ``head_dim**-0.5``: mode ``qk_scale`` is not declared, and a
          non-default ``qk_scale`` is refused by the constructor.
        * Dropout: ``attn_drop`` is HF's ``attention_probs_dropout_prob``. ``SwinAttention`` has no output dropout
          (``SwinLayer`` applies ``nn.Dropout(hidden_dropout_prob)`` to its output); the adapter applies
          ``nn.Dropout(proj_drop)`` there, as ``SwinLayer`` does.
        * No temporal mode.
        """

        ATTN_IMPLEMENTATION = ""

        def __init__(self, dim, num_ttokens, window_size, num_heads, use_temporal=True, qkv_bias=True,
                     qk_scale=None, attn_drop=0.0, proj_drop=0.0):
            super().__init__(dim, window_size, num_heads, qkv_bias)
            _refuse_qk_scale("transformers' SwinAttention", dim, num_heads, qk_scale)
            wh, ww = self.window_size
            config = SwinConfig(window_size=wh, qkv_bias=bool(qkv_bias), attention_probs_dropout_prob=attn_drop,
                                hidden_dropout_prob=proj_drop, attn_implementation=self.ATTN_IMPLEMENTATION)
            self._set_peer(SwinAttention(config, dim, num_heads, window_size=wh))
            if wh != ww:
                self.peer.relative_position_bias = SwinRelativePositionBias(num_heads, (wh, ww))
            self.register_buffer("relative_position_index",
                                 self.peer.relative_position_bias.relative_position_index, persistent=False)
            self.proj_drop = torch.nn.Dropout(config.hidden_dropout_prob)

        def _bindings(self):
            return {**self._qkv_bindings("q_proj", "k_proj", "v_proj"),
                    "o_proj.weight": self.proj.weight, "o_proj.bias": self.proj.bias,
                    "relative_position_bias.relative_position_bias_table": self.relative_position_bias_table,
                    "relative_position_bias.relative_position_index": self.relative_position_index}

        def forward(self, x, mask=None, temporal=False):
            if temporal:
                raise NotImplementedError("transformers' SwinAttention has no temporal mode")
            out, _weights = self._call(x, mask)  # SwinAttention returns (output, attention weights or None)
            return self.proj_drop(out)

    class HFSwinAttentionEagerAllDtypes(_HFSwinAttention):
        __doc__ = _HFSwinAttention.__doc__ + """
        Attention function "eager" (``eager_attention_forward``), declaring every dtype: the honest record of its
        float64 outcome. The softmax is computed ``softmax(..., dtype=torch.float32).to(query.dtype)``, so a float64
        module's probabilities are only float32-accurate: every float64 property that compares values fails, first
        diverging at softmax(bias + mask), e.g. (CPU, torch 2.13.0) probabilities off by 3.6e-8 (relative 5.3e-8,
        float32's unit roundoff 6.0e-8) where float64 allows 4.9e-15. ``HFSwinAttentionEager`` declares the dtypes
        it computes faithfully.
        """

        ATTN_IMPLEMENTATION = "eager"
        refimpl_capabilities: ClassVar[dict] = {"modes": ["masks", "training", "gradients"]}

    class HFSwinAttentionEager(HFSwinAttentionEagerAllDtypes):
        __doc__ = _HFSwinAttention.__doc__ + """
        Attention function "eager" (``eager_attention_forward``): the softmax runs in float32 and is cast back
        (``softmax(..., dtype=torch.float32).to(query.dtype)``), so in a float64 module it is only float32-accurate
        (``HFSwinAttentionEagerAllDtypes`` records the float64 failures: probabilities off by 3.6e-8 where float64
        allows 4.9e-15). This adapter declares the dtypes it computes faithfully: float32, float16 and bfloat16 (for
        the half dtypes a float32 softmax is more accurate, not less). Rows with no allowed key: eager softmax over
        an all -inf row gives NaN, so no ``fully_masked_rows``.
        """

        refimpl_capabilities: ClassVar[dict] = {"dtypes": ["float32", "float16", "bfloat16"],
                                                "modes": ["masks", "training", "gradients"]}

    class HFSwinAttentionSdpa(_HFSwinAttention):
        __doc__ = _HFSwinAttention.__doc__ + """
        Attention function "sdpa" (``sdpa_attention_forward``, the default of ``SwinModel``): bias + mask are one
        float ``attn_mask`` of ``torch.nn.functional.scaled_dot_product_attention``, computed in the module dtype.
        Rows with no allowed key (all -inf): torch's SDPA gives them attention output 0, so the output token is
        ``o_proj.bias``, refimpl's ``fully_masked_rows`` extension, which the adapter therefore declares (measured
        on CPU with torch 2.13.0, all four dtypes; where eager gives NaN for the same HF model). Only additive
        masks reach SDPA (HF adds the mask to the bias first), so no ``boolean_masks``.
        """

        ATTN_IMPLEMENTATION = "sdpa"
        refimpl_capabilities: ClassVar[dict] = {"modes": ["masks", "training", "gradients"],
                                                "extensions": ["fully_masked_rows"]}

    return HFSwinAttentionEager, HFSwinAttentionSdpa, HFSwinAttentionEagerAllDtypes


@functools.cache
def _transformers_donut_class():
    _require("transformers")
    _shim_torchvision_if_installed()
    from transformers.models.donut.configuration_donut_swin import DonutSwinConfig
    from transformers.models.donut.modeling_donut_swin import DonutSwinAttention

    class HFDonutSwinAttention(_BoundPeer):
        """transformers' ``DonutSwinAttention(config, dim, num_heads, window_size)`` (modeling_donut_swin.py): the
        4.x Swin layout kept by Donut and MaskFormer (``MaskFormerSwinAttention`` is a "Copied from" twin),
        ``self.{query,key,value,relative_position_bias_table,relative_position_index}`` and ``output.dense``.

        * Parameters: ``self.query``/``self.key``/``self.value`` are bound to the row blocks of AIM's ``qkv``,
          ``output.dense`` to ``proj``, ``self.relative_position_bias_table`` to AIM's table.
        * ``relative_position_index`` is the peer's own persistent ``(N, N)`` buffer.
        * Windows: the class takes ``(Wh, Ww)``, non-square included.
        * Masks: additive, added through the batch-major view ``(B_/nW, nW, nH, N, N)``; softmax in the module
          dtype. No boolean masks (a bool would be added as 1/0), and an all -inf row gives NaN.
        * qk_scale: the scores are divided by ``sqrt(head_dim)``, fixed: no ``qk_scale`` mode, and a non-default
          ``qk_scale`` is refused.
        * Dropout: the layout has one rate, ``config.attention_probs_dropout_prob``, for the attention dropout and
          the output dropout. The adapter builds it with ``attn_drop`` and sets the output dropout's ``p`` to
          ``proj_drop``: the peer's own ``nn.Dropout`` modules, each with the rate AIM gives it.
        * No temporal mode.
        """

        refimpl_capabilities: ClassVar[dict] = {"modes": ["masks", "training", "gradients"]}

        def __init__(self, dim, num_ttokens, window_size, num_heads, use_temporal=True, qkv_bias=True,
                     qk_scale=None, attn_drop=0.0, proj_drop=0.0):
            super().__init__(dim, window_size, num_heads, qkv_bias)
            _refuse_qk_scale("transformers' DonutSwinAttention", dim, num_heads, qk_scale)
            config = DonutSwinConfig(qkv_bias=bool(qkv_bias), attention_probs_dropout_prob=attn_drop)
            self._set_peer(DonutSwinAttention(config, dim, num_heads, window_size=self.window_size))
            self.peer.output.dropout.p = proj_drop
            self.register_buffer("relative_position_index", self.peer.self.relative_position_index)

        def _bindings(self):
            return {**self._qkv_bindings("self.query", "self.key", "self.value"),
                    "output.dense.weight": self.proj.weight, "output.dense.bias": self.proj.bias,
                    "self.relative_position_bias_table": self.relative_position_bias_table,
                    "self.relative_position_index": self.relative_position_index}

        def forward(self, x, mask=None, temporal=False):
            if temporal:
                raise NotImplementedError("transformers' DonutSwinAttention has no temporal mode")
            return self._call(x, mask)[0]  # (output,) (+ attention probabilities when asked for)

    return HFDonutSwinAttention


# ---- OpenMMLab: AIM's state-dict keys already; subclasses ----


@functools.cache
def _mmpretrain_class():
    _require("mmpretrain")
    _import_torchvision()  # mmpretrain imports torchvision at package import
    from mmpretrain.models.utils.attention import WindowMSA

    class MMPretrainWindowMSA(WindowMSA):
        """mmpretrain's ``WindowMSA(embed_dims, window_size, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop)``
        (mmpretrain/models/utils/attention.py) with AIM's constructor: the same state-dict keys, so the module is
        the peer itself. Its ``relative_position_index`` is built by another formula (``double_step_seq``, flipped)
        and is checked as built. ``qk_scale`` is ``qk_scale or head_dim**-0.5``, as AIM's. Additive masks through
        the batch-major view; no boolean masks (a bool would be added as 1/0), an all -inf row gives NaN.
        Spatial only (no temporal table)."""

        refimpl_capabilities: ClassVar[dict] = {"modes": ["masks", "qk_scale", "training", "gradients"]}

        def __init__(self, dim, num_ttokens, window_size, num_heads, use_temporal=True, qkv_bias=True,
                     qk_scale=None, attn_drop=0.0, proj_drop=0.0):
            super().__init__(dim, _window(window_size), num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                             attn_drop=attn_drop, proj_drop=proj_drop)

        def forward(self, x, mask=None, temporal=False):
            if temporal:
                raise NotImplementedError("mmpretrain's WindowMSA has no temporal mode")
            return super().forward(x, mask)

    return MMPretrainWindowMSA


def _mmaction2_swin_module():
    """``mmaction/models/backbones/swin.py`` loaded by file path: the mmaction2 1.2.0 wheel lacks
    ``mmaction/models/localizers/drn/``, so ``import mmaction.models`` fails (open-mmlab/mmaction2#2714). Loaded
    once: the file registers ``SwinTransformer3D`` in mmaction's registry, and a second load would register it
    again."""
    name = "refimpl_peers_mmaction2_swin"
    if name not in sys.modules:
        package = importlib.util.find_spec("mmaction")
        path = os.path.join(package.submodule_search_locations[0], "models", "backbones", "swin.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


@functools.cache
def _mmaction2_class():
    _require("mmaction2")
    WindowAttention3D = _mmaction2_swin_module().WindowAttention3D

    class MMAction2WindowAttention3D(WindowAttention3D):
        """mmaction2's video-Swin ``WindowAttention3D(embed_dims, window_size=(Wd, Wh, Ww), num_heads, qkv_bias,
        qk_scale, attn_drop, proj_drop)`` (mmaction/models/backbones/swin.py) built with the window ``(1, Wh, Ww)``:
        one frame per window, so its 3-D table has ``1 * (2Wh-1) * (2Ww-1)`` rows, AIM's table, and its 3-D index
        (depth offset always 0) is AIM's 2-D index: the module is the peer itself, with AIM's keys. Its forward
        takes the bias as ``index[:N, :N]``. ``qk_scale`` as AIM's; additive masks through the batch-major view; no
        boolean masks, an all -inf row gives NaN. No temporal mode: mmaction2's time axis is part of its 3-D
        windows, not AIM's per-position attention over frames with a separate table."""

        refimpl_capabilities: ClassVar[dict] = {"modes": ["masks", "qk_scale", "training", "gradients"]}

        def __init__(self, dim, num_ttokens, window_size, num_heads, use_temporal=True, qkv_bias=True,
                     qk_scale=None, attn_drop=0.0, proj_drop=0.0):
            super().__init__(dim, (1, *_window(window_size)), num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                             attn_drop=attn_drop, proj_drop=proj_drop)

        def forward(self, x, mask=None, temporal=False):
            if temporal:
                raise NotImplementedError("mmaction2's WindowAttention3D has no AIM temporal mode")
            return super().forward(x, mask)

    return MMAction2WindowAttention3D


# ---- Swin V2 (kind window_attention_v2): microsoft's constructor, keys and forward(x, mask=None) ----

@functools.cache
def _timm_v2_class():
    _require("timm")
    _import_torchvision()
    from timm.models.swin_transformer_v2 import WindowAttention as TimmAttentionV2

    class TimmWindowAttentionV2(TimmAttentionV2):
        """timm's Swin V2 ``WindowAttention(dim, window_size, num_heads, qkv_bias, qkv_bias_separate, attn_drop,
        proj_drop, pretrained_window_size)`` (timm/models/swin_transformer_v2.py) with microsoft's constructor: the
        same parameter keys, so the module is the peer itself. Its ``k_bias`` (zeros), ``relative_coords_table`` and
        ``relative_position_index`` are non-persistent buffers (microsoft's two are persistent): a microsoft
        checkpoint loads with ``strict=False`` only. Its clamp bound is float64 ``ln 100``. Declares microsoft's
        whole protocol."""

        def __init__(self, dim, window_size, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0,
                     pretrained_window_size=(0, 0)):
            super().__init__(dim, _window(window_size), num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                             proj_drop=proj_drop, pretrained_window_size=_window(pretrained_window_size))

    return TimmWindowAttentionV2


@functools.cache
def _mmpretrain_v2_class():
    _require("mmpretrain")
    _import_torchvision()
    from mmpretrain.models.utils.attention import WindowMSAV2

    class MMPretrainWindowMSAV2(WindowMSAV2):
        """mmpretrain's ``WindowMSAV2(embed_dims, window_size, num_heads, qkv_bias, attn_drop, proj_drop,
        cpb_mlp_hidden_dims=512, pretrained_window_size)`` (mmpretrain/models/utils/attention.py) with microsoft's
        constructor: microsoft's keys, persistent buffers included, so the module is the peer itself. Declares
        microsoft's whole protocol."""

        def __init__(self, dim, window_size, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0,
                     pretrained_window_size=(0, 0)):
            super().__init__(dim, _window(window_size), num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                             proj_drop=proj_drop, pretrained_window_size=_window(pretrained_window_size))

    return MMPretrainWindowMSAV2


class _BoundPeerV2(_BoundPeer):
    """microsoft's Swin V2 parameters (``logit_scale``, ``q_bias``/``v_bias``, ``qkv.weight``, ``proj``,
    ``cpb_mlp``), computed with a peer module whose parameters have other names or layout, bound through
    ``torch.func.functional_call`` as ``_BoundPeer`` does for V1. Subclasses set the peer, register its own
    coordinate and index buffers, and define ``_bindings``."""

    def __init__(self, dim, window_size, num_heads, qkv_bias):
        torch.nn.Module.__init__(self)
        wh, ww = _window(window_size)
        self.dim, self.num_heads, self.window_size = dim, num_heads, (wh, ww)
        self.logit_scale = torch.nn.Parameter(torch.log(10 * torch.ones((num_heads, 1, 1))))
        self.cpb_mlp = torch.nn.Sequential(torch.nn.Linear(2, 512, bias=True), torch.nn.ReLU(inplace=True),
                                           torch.nn.Linear(512, num_heads, bias=False))
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = torch.nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = torch.nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.proj = torch.nn.Linear(dim, dim)

    def _register_peer_buffers(self, coords: torch.Tensor, index: torch.Tensor, persistent: bool) -> None:
        self.register_buffer("relative_coords_table", coords, persistent=persistent)
        self.register_buffer("relative_position_index", index, persistent=persistent)

    def _common_bindings(self, mlp: str) -> dict[str, torch.Tensor]:
        return {"logit_scale": self.logit_scale, f"{mlp}.0.weight": self.cpb_mlp[0].weight,
                f"{mlp}.0.bias": self.cpb_mlp[0].bias, f"{mlp}.2.weight": self.cpb_mlp[2].weight}

    def forward(self, x, mask=None):
        raise NotImplementedError


def _no_pretrained_window(peer: str, pretrained_window_size) -> None:
    if tuple(_window(pretrained_window_size)) != (0, 0):
        raise ValueError(f"{peer} has no pretrained_window_size; got {pretrained_window_size}")


@functools.cache
def _torchvision_v2_class():
    _require("torchvision")
    _import_torchvision()
    from torchvision.models.swin_transformer import ShiftedWindowAttentionV2

    class TorchvisionShiftedWindowAttentionV2(_BoundPeerV2):
        """torchvision's map-level ``ShiftedWindowAttentionV2(dim, window_size, shift_size, num_heads, qkv_bias,
        proj_bias, attention_dropout, dropout)`` behind microsoft's protocol, each row ``(N, C)`` run as a one-window
        ``(Wh, Ww)`` map with shift 0 (plain window attention; its shift mask is built inside the map-level
        function, so no masks can be passed).

        * Parameters: torchvision has one fused ``qkv.bias`` (3C) whose k third it zeroes in every forward; it is
          bound to ``cat(q_bias, 0, v_bias)``. ``logit_scale``, ``cpb_mlp``, ``qkv.weight``, ``proj`` are bound to
          microsoft's.
        * Buffers: torchvision's own, persistent; its ``relative_position_index`` is flat ``(N*N,)`` (the harness
          compares it flat).
        * No ``pretrained_window_size`` argument: mode ``pretrained_window`` is not declared, and a pretrained
          window other than (0, 0) is refused. No masks (see above).
        """

        refimpl_capabilities: ClassVar[dict] = {"modes": ["training", "gradients"]}

        def __init__(self, dim, window_size, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0,
                     pretrained_window_size=(0, 0)):
            _no_pretrained_window("torchvision's ShiftedWindowAttentionV2", pretrained_window_size)
            super().__init__(dim, window_size, num_heads, qkv_bias)
            self._set_peer(ShiftedWindowAttentionV2(dim, list(self.window_size), [0, 0], num_heads,
                                                    qkv_bias=qkv_bias, attention_dropout=attn_drop,
                                                    dropout=proj_drop))
            self._register_peer_buffers(self.peer.relative_coords_table, self.peer.relative_position_index, True)

        def _bindings(self):
            bindings = {**self._common_bindings("cpb_mlp"), "qkv.weight": self.qkv.weight,
                        "proj.weight": self.proj.weight, "proj.bias": self.proj.bias,
                        "relative_coords_table": self.relative_coords_table,
                        "relative_position_index": self.relative_position_index}
            if self.q_bias is not None:
                bindings["qkv.bias"] = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
            return bindings

        def forward(self, x, mask=None):
            if mask is not None:
                raise NotImplementedError("torchvision's ShiftedWindowAttentionV2 takes no window mask")
            rows, n, c = x.shape
            self.peer.train(self.training)
            out = torch.func.functional_call(self.peer, self._bindings(), (x.reshape(rows, *self.window_size, c),),
                                             strict=True)
            return out.reshape(rows, n, c)

    return TorchvisionShiftedWindowAttentionV2


@functools.cache
def _transformers_v2_classes():
    _require("transformers")
    _shim_torchvision_if_installed()
    from transformers import Swinv2Config
    from transformers.models.swinv2.modeling_swinv2 import Swinv2Attention

    class HFSwinv2Attention(_BoundPeerV2):
        """transformers' ``Swinv2Attention(config, dim, num_heads, window_size, pretrained_window_size)``
        (modeling_swinv2.py) behind microsoft's protocol.

        * Parameters: ``self.query`` (with ``q_bias``), ``self.key`` (no bias), ``self.value`` (with ``v_bias``) are
          bound to the row blocks of microsoft's ``qkv.weight``; ``self.logit_scale`` and
          ``self.continuous_position_bias_mlp`` to ``logit_scale`` and ``cpb_mlp``; ``output.dense`` to ``proj``.
        * Buffers: HF's own, non-persistent (a microsoft checkpoint loads with ``strict=False`` only).
        * Masks: HF adds the window mask **twice** (``scores.view(...) + mask``, then ``+ mask`` again), so Swin's
          -100 acts as -200: where the cosine logits put a masked key more than 100 above the others, microsoft's
          -100 lets it through and HF's -200 does not. Mode ``masks`` is therefore not declared here;
          ``HFSwinv2AttentionWithMasks`` declares it and records the failures.
        * Dropout: HF's ``Swinv2SelfOutput`` drops with ``attention_probs_dropout_prob`` too; the adapter sets its
          ``p`` to ``proj_drop`` (the peer's own ``nn.Dropout``).
        """

        refimpl_capabilities: ClassVar[dict] = {"modes": ["pretrained_window", "training", "gradients"]}

        def __init__(self, dim, window_size, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0,
                     pretrained_window_size=(0, 0)):
            super().__init__(dim, window_size, num_heads, qkv_bias)
            config = Swinv2Config(qkv_bias=bool(qkv_bias), attention_probs_dropout_prob=attn_drop)
            self._set_peer(Swinv2Attention(config, dim, num_heads, window_size=self.window_size,
                                           pretrained_window_size=_window(pretrained_window_size)))
            self.peer.output.dropout.p = proj_drop
            self._register_peer_buffers(self.peer.self.relative_coords_table,
                                        self.peer.self.relative_position_index, False)

        def _bindings(self):
            c = self.dim
            bindings = {f"self.{k}": t for k, t in self._common_bindings("continuous_position_bias_mlp").items()}
            bindings.update({"self.query.weight": self.qkv.weight[:c], "self.key.weight": self.qkv.weight[c:2 * c],
                             "self.value.weight": self.qkv.weight[2 * c:], "output.dense.weight": self.proj.weight,
                             "output.dense.bias": self.proj.bias,
                             "self.relative_coords_table": self.relative_coords_table,
                             "self.relative_position_index": self.relative_position_index})
            if self.q_bias is not None:
                bindings["self.query.bias"], bindings["self.value.bias"] = self.q_bias, self.v_bias
            return bindings

        def forward(self, x, mask=None):
            return self._call(x, mask)[0]  # (output,) (+ attention probabilities when asked for)

    class HFSwinv2AttentionWithMasks(HFSwinv2Attention):
        __doc__ = HFSwinv2Attention.__doc__ + """
        This one declares mode ``masks`` as well: the record of HF's doubled mask under the window-mask
        properties.
        """

        refimpl_capabilities: ClassVar[dict] = {"modes": ["masks", "pretrained_window", "training", "gradients"]}

    return HFSwinv2Attention, HFSwinv2AttentionWithMasks


# ---- Video Swin 3-D (kinds window_attention_3d and shifted_window_mask_3d): Video Swin's constructor, keys and
# forward(x, mask=None); the mask functions (D, H, W, window_size, shift_size) -> (nW, N, N) on padded sizes ----


@functools.cache
def _mmaction2_3d_class():
    _require("mmaction2")
    WindowAttention3D = _mmaction2_swin_module().WindowAttention3D

    class MMAction2VideoWindowAttention3D(WindowAttention3D):
        """mmaction2's ``WindowAttention3D(embed_dims, window_size, num_heads, qkv_bias=True, qk_scale, attn_drop,
        proj_drop)`` (mmaction/models/backbones/swin.py, loaded by file path) with Video Swin's constructor, whose
        ``qkv_bias`` defaults to False (mmaction2's to True): the same state-dict keys (persistent ``(N0, N0)``
        ``relative_position_index`` included), so the module is the peer itself. Its forward takes the bias as
        ``table[index[:N, :N]]``, upstream's truncated lookup, which it declares. ``qk_scale`` is ``qk_scale or
        head_dim**-0.5``, as Video Swin's; additive masks through the batch-major view ``(B_/nW, nW, nH, N, N)``.
        Declares Video Swin's whole protocol."""

        refimpl_capabilities: ClassVar[dict] = {"index_convention": "truncated"}

        def __init__(self, dim, window_size, num_heads, qkv_bias=False, qk_scale=None, attn_drop=0.0,
                     proj_drop=0.0):
            super().__init__(dim, tuple(window_size), num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                             attn_drop=attn_drop, proj_drop=proj_drop)

    return MMAction2VideoWindowAttention3D


def _box_of(n: int, window: tuple[int, int, int]) -> tuple[int, int, int]:
    """A map ``(t, h, w)`` of ``n`` tokens that fits in ``window`` on every axis (the largest ``t``, then ``h``,
    first): run through torchvision's map-level forward it is one window of ``n`` tokens in ``(d, h, w)``
    row-major order, the row's own order."""
    for t in range(min(n, window[0]), 0, -1):
        for h in range(min(n // t, window[1]), 0, -1):
            if n % (t * h) == 0 and n // (t * h) <= window[2]:
                return t, h, n // (t * h)
    raise ValueError(f"N = {n} tokens do not fill a box inside the window {window}: no used window has that size")


@functools.cache
def _torchvision_3d_class():
    _require("torchvision")
    _import_torchvision()
    from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

    class TorchvisionShiftedWindowAttention3d(ShiftedWindowAttention3d):
        """torchvision's map-level ``ShiftedWindowAttention3d(dim, window_size, shift_size, num_heads, qkv_bias=True,
        proj_bias=True, attention_dropout, dropout)`` (torchvision/models/video/swin_transformer.py) with Video Swin's
        constructor (``qkv_bias`` defaults to False here, to True in torchvision) and shift ``(0, 0, 0)``; the same
        state-dict keys, so the module is the peer itself.

        Window level: each row ``(N, C)`` of ``x`` ``(B_, N, C)`` is run through torchvision's own ``forward`` as a
        one-window map ``(t, h, w)`` with ``t*h*w = N`` inside the module window (``_box_of``). torchvision's
        ``_get_window_and_shift_size`` then uses that map as the window, so the map is a single window whose tokens
        are the row's in its order, and ``_get_relative_position_bias`` takes ``index[:N, :N]`` (it depends on the
        window's volume only): upstream's truncated lookup for any used window of ``N`` tokens, declared as such.
        No masks: torchvision builds its shift mask inside the map-level function, so an arbitrary ``(nW, N, N)``
        mask cannot be passed. No ``qk_scale``: torchvision scales by ``head_dim**-0.5``, always (a non-default one
        is refused). Dropout: ``F.dropout(..., training=self.training)`` in torchvision 0.28 (checked).
        """

        refimpl_capabilities: ClassVar[dict] = {"modes": ["training", "gradients"], "index_convention": "truncated"}

        def __init__(self, dim, window_size, num_heads, qkv_bias=False, qk_scale=None, attn_drop=0.0,
                     proj_drop=0.0):
            super().__init__(dim, [int(s) for s in window_size], [0, 0, 0], num_heads, qkv_bias=qkv_bias,
                             attention_dropout=attn_drop, dropout=proj_drop)
            _refuse_qk_scale("torchvision's ShiftedWindowAttention3d", dim, num_heads, qk_scale)

        def forward(self, x, mask=None):
            """``x`` ``(B_, N, C)`` -> ``(B_, N, C)``; ``mask`` must be None (see the class docstring)."""
            if mask is not None:
                raise NotImplementedError("torchvision's ShiftedWindowAttention3d takes no window mask: it builds "
                                          "its shift mask inside its map-level forward")
            rows, n, c = x.shape
            box = _box_of(n, tuple(self.window_size))
            return super().forward(x.reshape(rows, *box, c)).reshape(rows, n, c)

    return TorchvisionShiftedWindowAttention3d


def _mmaction2_compute_mask_3d():
    _require("mmaction2")
    compute_mask = _mmaction2_swin_module().compute_mask

    def mmaction2_compute_mask_3d(D, H, W, window_size, shift_size):
        """mmaction2's ``compute_mask(D, H, W, window_size, shift_size, device)`` (swin.py) on CPU: padded sizes,
        the used window and shift, ``(nW, N, N)`` float32, 0 within a region and -100.0 across. It is
        ``lru_cache``d: the tensor returned is the peer's shared one (window and shift are passed as tuples, its
        cache keys)."""
        return compute_mask(D, H, W, tuple(window_size), tuple(shift_size), "cpu")

    return mmaction2_compute_mask_3d


def _torchvision_attention_mask_3d():
    _require("torchvision")
    _import_torchvision()
    from torchvision.models.video.swin_transformer import _compute_attention_mask_3d

    def torchvision_attention_mask_3d(D, H, W, window_size, shift_size):
        """torchvision's ``_compute_attention_mask_3d(x, size_dhw, window_size, shift_size)``
        (torchvision/models/video/swin_transformer.py; private, the function its map-level forward calls on the
        padded size when ``sum(shift_size) > 0``). It builds the mask with ``x.new_zeros``, in ``x``'s dtype and
        device: here an empty float32 CPU tensor, the dtype of Video Swin's mask."""
        return _compute_attention_mask_3d(torch.empty(0), (D, H, W), tuple(window_size), tuple(shift_size))

    return torchvision_attention_mask_3d


_BUILDERS = {
    "TimmWindowAttentionV2": _timm_v2_class,
    "TorchvisionShiftedWindowAttentionV2": _torchvision_v2_class,
    "HFSwinv2Attention": lambda: _transformers_v2_classes()[0],
    "HFSwinv2AttentionWithMasks": lambda: _transformers_v2_classes()[1],
    "MMPretrainWindowMSAV2": _mmpretrain_v2_class,
    "TimmWindowAttention": _timm_class,
    "TorchvisionWindowAttention": _torchvision_class,
    "HFSwinAttentionEager": lambda: _transformers_swin()[0],
    "HFSwinAttentionSdpa": lambda: _transformers_swin()[1],
    "HFSwinAttentionEagerAllDtypes": lambda: _transformers_swin()[2],
    "HFDonutSwinAttention": _transformers_donut_class,
    "MMPretrainWindowMSA": _mmpretrain_class,
    "MMAction2WindowAttention3D": _mmaction2_class,
    "MMAction2VideoWindowAttention3D": _mmaction2_3d_class,
    "TorchvisionShiftedWindowAttention3d": _torchvision_3d_class,
    "mmaction2_compute_mask_3d": _mmaction2_compute_mask_3d,
    "torchvision_attention_mask_3d": _torchvision_attention_mask_3d,
}


def __getattr__(name):  # imported lazily: the peers are optional dependencies
    if name in _BUILDERS:
        return _BUILDERS[name]()
    raise AttributeError(f"module 'refimpl.peers' has no attribute {name!r}")


# ---- the verdicts: docs/peer-NAME.json and the table of docs/peers.md ----

DOCS = Path(__file__).resolve().parent.parent / "docs"
TABLE_START, TABLE_END = "<!-- peers-table: start (python -m refimpl.peers markdown) -->", "<!-- peers-table: end -->"


def _versions(peer: str) -> dict[str, str]:
    versions = {}
    for dist in _DISTRIBUTIONS[peer]:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def write_reports(names=(), *, max_examples: int | None = None, out: Path = DOCS, log=print) -> None:
    """Run ``refimpl verify`` (CPU, all four dtypes) on each adapter and record of ``names`` (default: every
    installed one) and write ``out/peer-NAME.json``: the harness's JSON report plus ``"peer"`` (the
    distributions' versions). ``max_examples`` defaults to the ``ci`` profile's (150), not to each kind's shorter
    ``refimpl verify`` budget: a published verdict gets the deep search."""
    from hypothesis import settings

    import refimpl.profiles  # noqa: F401  (registers refimpl-ci)
    from refimpl.harness import verify

    if max_examples is None:
        max_examples = settings.get_profile("refimpl-ci").max_examples

    for name in names or _reports():
        peer, attr = _reports()[name]
        reason = not_installed(peer)
        if reason:
            log(f"{name}: skipped, {reason}")
            continue
        kind = KIND_OF.get(name, "window_attention")
        report = verify({kind: f"refimpl.peers:{attr}"}, devices=["cpu"], max_examples=max_examples)
        data = json.loads(report.json())
        data["peer"] = {"name": peer, "adapter": f"refimpl.peers:{attr}", "versions": _versions(peer)}
        (out / f"peer-{name}.json").write_text(json.dumps(data, indent=2) + "\n")
        log(f"{name}: {data['counts']}")


_DTYPE = {"float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16"}


def _reason(outcome: dict) -> str:
    """A short reason for a skip or failure: the harness's first line, its capability messages shortened."""
    line = outcome["detail"].splitlines()[0] if outcome["detail"] else ""
    names = lambda text: ", ".join(re.findall(r"'([a-z_0-9]+)'", text))  # noqa: E731
    if match := re.match(r"the target declares modes \[.*?\], not (\[.*?\])", line):
        return f"lacks {names(match[1])}"
    if line.startswith("the target declares dtypes"):
        return "dtype not declared"
    if line.startswith("the target declares devices"):
        return "device not declared"
    if match := re.match(r"(?:extensions the target did not opt into: ([a-z_, ]+)|needs the extension\(s\) (\[.*?\]))",
                         line):
        return f"extension not declared: {(match[1] or names(match[2])).strip()}"
    if line.startswith("no flops("):
        return "no flops() method"
    # a failure: its measured numbers, without the exception type, the bound's derivation and the rest
    lines = outcome["detail"].removeprefix("AssertionError: ").splitlines()
    prefix = ""
    if re.fullmatch(r"\d+ of \d+ keys fail:", lines[0]) and len(lines) > 1:  # the first failing key stands for all
        prefix, lines = f"{lines[0].removesuffix(':')}, first ", [lines[1].removeprefix("- ")]
    line = re.sub(r" \(= max\((?:[^()]|\([^()]*\))*\)\)", "", lines[0])
    if match := re.match(r"(.*?): (\d+ of \d+) elements exceed the allowed (\S+); max abs error ([^,;]+)", line):
        line = f"{match[1]}: max abs error {match[4]} > allowed {match[3]} ({match[2]} elements)"
    line = prefix + line.split("; mean abs error")[0]
    return line if len(line) <= 140 else line[:137] + "..."


def _cell(outcomes: list[dict]) -> str:
    """One property's outcomes on one peer: 'passed (dtypes)', 'failed (dtypes): reason', 'skipped (dtypes):
    reason', joined by '; ' (dtypes named wherever a property's dtypes do not share one verdict)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for o in outcomes:
        why = "" if o["status"] == "passed" else _reason(o)
        groups.setdefault((o["status"], why), []).append(_DTYPE.get(o["dtype"], o["dtype"]))
    parts = []
    for status in ("failed", "passed", "skipped"):
        for (s, why), dtypes in groups.items():
            if s == status:
                dt = f" ({' '.join(dtypes)})" if status == "passed" or len(groups) > 1 else ""
                parts.append(f"{'**failed**' if status == 'failed' else status}{dt}" + (f": {why}" if why else ""))
    return "; ".join(parts).replace("|", "\\|")


def render_table(reports: Path = DOCS, kind: str = "window_attention") -> str:
    """The Markdown table property x peer of ``kind`` from ``reports/peer-NAME.json`` (the report names of that
    kind, ``KIND_OF``, found there)."""
    loaded = {name: json.loads((reports / f"peer-{name}.json").read_text()) for name in _reports()
              if KIND_OF.get(name, "window_attention") == kind and (reports / f"peer-{name}.json").exists()}
    properties = list(dict.fromkeys(o["property"] for data in loaded.values() for o in data["outcomes"]))
    header = []
    for name, data in loaded.items():
        versions = ", ".join(f"{d} {v}" for d, v in data.get("peer", {}).get("versions", {}).items())
        header.append(f"`{name}`" + (f" ({versions})" if versions else ""))
    lines = ["| property | " + " | ".join(header) + " |", "|---" * (len(loaded) + 1) + "|"]
    for prop in properties:
        cells = [_cell([o for o in data["outcomes"] if o["property"] == prop]) or "not run" for data in loaded.values()]
        lines.append(f"| `{prop}` | " + " | ".join(cells) + " |")
    totals = [f"{d['counts']['passed']} passed, {d['counts']['failed']} failed, {d['counts']['skipped']} skipped "
              f"({d['max_examples']} examples, torch {d['torch']})" for d in loaded.values()]
    lines.append("| **outcomes** | " + " | ".join(totals) + " |")
    return "\n".join(lines) + "\n"


def _table_markers(kind: str) -> tuple[str, str]:
    """The markers of ``kind``'s table in docs/peers.md (window attention keeps its original unnamed pair)."""
    if kind == "window_attention":
        return TABLE_START, TABLE_END
    return (f"<!-- peers-table {kind}: start (python -m refimpl.peers markdown) -->",
            f"<!-- peers-table {kind}: end -->")


V2_TABLE_START, V2_TABLE_END = _table_markers("window_attention_v2")
TABLE_KINDS = ("window_attention", "window_attention_v2", "window_attention_3d", "shifted_window_mask_3d")


def update_markdown(path: Path) -> None:
    """Replace each kind's table (``TABLE_KINDS``) between its markers in ``path`` (``_table_markers``; those the
    page has) by ``render_table()`` of that kind."""
    text = path.read_text()
    for kind in TABLE_KINDS:
        first, last = _table_markers(kind)
        if first not in text:
            continue
        start, end = text.index(first) + len(first), text.index(last)
        text = text[:start] + "\n" + render_table(path.parent, kind) + text[end:]
    path.write_text(text)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m refimpl.peers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("verify", help="run the harness on the peers and write docs/peer-NAME.json")
    run.add_argument("names", nargs="*", metavar="NAME", help=f"of {list(_reports())} (default: all)")
    run.add_argument("--max-examples", type=int, default=None, help="examples per property (default: ci profile)")
    show = sub.add_parser("markdown", help="render the verdict table (into FILE between its markers, or print it)")
    show.add_argument("file", nargs="?", type=Path, help="a Markdown file with the table markers, e.g. docs/peers.md")
    args = parser.parse_args(argv)
    if args.command == "verify":
        unknown = sorted(set(args.names) - set(_reports()))
        if unknown:
            parser.error(f"unknown peer(s) {unknown}; expected some of {list(_reports())}")
        write_reports(args.names, max_examples=args.max_examples)
    elif args.file:
        update_markdown(args.file)
    else:
        sys.stdout.write(render_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
