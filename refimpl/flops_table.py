"""``refimpl flops``: the analytic counts of named configurations, as a table in both conventions.

Every number comes from a formula in ``refimpl.flops``; MACs are multiply-accumulates (what Swin, AIM and
fvcore call FLOPs), FLOPs count 2 per MAC (``torch.utils.flop_counter``, deepspeed's "flops").
"""

from __future__ import annotations

from refimpl import flops

SWIN = {  # Swin image models at 224x224 (embed_dim, depths, heads), window 7, patch 4
    "swin-t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "swin-s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "swin-b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}
PRESETS = ("swin-t", "swin-s", "swin-b", "aim-swin-t", "aim-swin-b", "fiery")


def _rows_swin(name, image_size):
    terms = flops.swin_model_mac_terms(**SWIN[name], image_size=image_size)
    rows = [(f"{name} {image_size}x{image_size}: {term}", macs) for term, macs in terms.items()]
    return rows + [(f"{name} {image_size}x{image_size}: total (Swin's model.flops())", sum(terms.values()))]


def _rows_aim(name, image_size, frames):
    swin = SWIN[name.removeprefix("aim-")]
    common = dict(**swin, window_size=7, image_size=image_size, patch_size=4, T=frames)
    rows = []
    sides = flops.stage_resolutions(image_size, 4, len(swin["depths"]))  # the same rule as the total below
    for stage, (depth, heads, side) in enumerate(zip(swin["depths"], swin["num_heads"], sides, strict=True)):
        block = flops.aim_block_attention_macs(swin["embed_dim"] * 2**stage, heads, side, side,
                                               min(7, side), frames)
        rows.append((f"{name} T={frames}: stage {stage + 1} block ({side}x{side}, C={swin['embed_dim'] * 2**stage})",
                     block))
        rows.append((f"{name} T={frames}: stage {stage + 1} x {depth} blocks", depth * block))
    rows.append((f"{name} T={frames}: total (AIM's model.flops(): attention matmuls only)",
                 flops.aim_model_attention_macs(**common)))
    return rows


def _rows_fiery(frames, size):
    config = dict(in_channels=70, receptive_field=3, input_shape=(size, size), start_out_channels=64)
    total = flops.temporal_model_macs(**config, batch=1, frames=frames, height=size, width=size)
    return [(f"fiery temporal model (70 ch, R 3, {size}x{size}, T={frames}, batch 1): every convolution", total)]


def rows_for(name: str, *, image_size: int = 224, frames: int | None = None, bev: int = 200):
    if name in SWIN:
        return _rows_swin(name, image_size)
    if name.startswith("aim-"):
        return _rows_aim(name, image_size, 8 if frames is None else frames)
    if name == "fiery":
        return _rows_fiery(3 if frames is None else frames, bev)
    raise ValueError(f"unknown configuration {name!r}; expected one of {PRESETS}")


def _si(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f} {unit}"
    return f"{n:g}"


def table(rows) -> str:
    """A Markdown table: what is counted, MACs (exact, then SI), FLOPs = 2 x MACs."""
    lines = ["| count | MACs | MACs (SI) | FLOPs = 2 x MACs |", "|---|---:|---:|---:|"]
    for label, macs in rows:
        exact = f"{macs:,.0f}" if float(macs).is_integer() else f"{macs:,.3f}"
        lines.append(f"| {label} | {exact} | {_si(macs)} | {_si(flops.macs_to_flops(macs))} |")
    return "\n".join(lines)


def window_attention_rows(dim, num_heads, n, t):
    """One AIM ``WindowAttention`` window: AIM's formula (both modes, with its convention) and Swin's."""
    return [
        (f"AIM flops(N={n}, T={t}, temporal=False): q@k^T + attn@v",
         flops.window_attention_flops(dim, num_heads, n, t)),
        (f"AIM flops(N={n}, T={t}, temporal=True): q@k^T + attn@v",
         flops.window_attention_flops(dim, num_heads, n, t, True)),
        (f"Swin flops(N={n}) (one frame): qkv + q@k^T + attn@v + proj",
         flops.swin_window_attention_macs(dim, num_heads, n)),
    ]
