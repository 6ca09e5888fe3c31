"""Pictures for the UI without any UI library: thumbnail strips as uint8 arrays."""

from __future__ import annotations

import numpy as np
import torch


def thumbnail_strip(images: torch.Tensor, scale: int = 3, pad: int = 2, per_row: int | None = None) -> np.ndarray:
    """Images ``n x C x H x W`` in [0, 1] → one ``rows·(H·scale+pad) x cols·(W·scale+pad) x 3``
    uint8 array, upscaled by nearest neighbour so 28×28 images stay crisp; grey becomes RGB."""
    if images.dim() != 4:
        raise ValueError(f"thumbnail_strip needs n x C x H x W images, got shape {tuple(images.shape)}")
    x = images.detach().float().clamp(0, 1).cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    n, _, h, w = x.shape
    cols = n if per_row is None else min(per_row, n)
    rows = -(-n // cols)
    canvas = torch.ones(3, rows * (h + pad) - pad, cols * (w + pad) - pad)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[:, r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = x[i]
    return (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def number_tiles(canvas: np.ndarray, origins: list[tuple[int, int]]) -> np.ndarray:
    """Write 1, 2, … in a small white box at each tile's top-left corner (``origins``: (y, x)), so
    captions that say "image 7" can be matched to the picture."""
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.fromarray(canvas)
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default(size=11)
    for k, (y, x) in enumerate(origins, 1):
        left, top, right, bottom = draw.textbbox((x + 1, y), str(k), font=font)
        draw.rectangle((x, y, right + 1, bottom + 1), fill=(255, 255, 255))
        draw.text((x + 1, y), str(k), fill=(0, 0, 0), font=font)
    return np.asarray(picture)


def heat_grid(images: torch.Tensor, values: np.ndarray, scale: int = 2, per_row: int | None = None, border: int = 3,
              numbered: bool = False) -> np.ndarray:
    """Thumbnails framed by a heat colour: green for positive values, red for negative, the frame's
    strength proportional to |value| / max |value| (white for zero), so the eye finds the images
    that carry a score. Same layout as ``thumbnail_strip``; ``numbered`` writes 1, 2, … on them."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) != len(images):
        raise ValueError(f"heat_grid needs one value per image, got {len(values)} values for {len(images)} images")
    peak = float(np.abs(values).max()) or 1.0
    tiles = thumbnail_strip(images, scale=scale, pad=0, per_row=1).reshape(len(images), -1, images.shape[-1] * scale, 3)
    h, w = tiles.shape[1:3]
    framed = np.empty((len(images), h + 2 * border, w + 2 * border, 3), dtype=np.uint8)
    green, red, white = np.array([46, 125, 50]), np.array([198, 40, 40]), np.array([255, 255, 255])
    for i, v in enumerate(values):
        strength = abs(v) / peak
        framed[i] = ((1 - strength) * white + strength * (green if v > 0 else red)).round().astype(np.uint8)
        framed[i, border : border + h, border : border + w] = tiles[i]
    cols = len(images) if per_row is None else min(per_row, len(images))
    rows = -(-len(images) // cols)
    canvas = np.full((rows * (h + 2 * border + 2), cols * (w + 2 * border + 2), 3), 255, dtype=np.uint8)
    for i in range(len(images)):
        r, c = divmod(i, cols)
        y, x = r * (h + 2 * border + 2), c * (w + 2 * border + 2)
        canvas[y : y + h + 2 * border, x : x + w + 2 * border] = framed[i]
    if numbered:
        origins = [(r * (h + 2 * border + 2) + border, c * (w + 2 * border + 2) + border)
                   for r, c in (divmod(i, cols) for i in range(len(images)))]  # fmt: skip
        canvas = number_tiles(canvas, origins)
    return canvas


def grouped_bars(spec: dict):
    """A Plotly figure of grouped bars from a report figure spec (``reproduce.lds_report``): one bar
    series per ``series`` entry over ``categories`` (None = not measured, ``error`` = ± bars), and
    ``markers`` (e.g. the noise ceiling) as one symbol per category, drawn over the groups."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for s in spec["series"]:
        err = [0.0 if e is None else e for e in s.get("error") or []]
        fig.add_trace(go.Bar(x=spec["categories"], y=s["y"], name=s["name"], error_y={"type": "data", "array": err, "visible": True, "thickness": 1} if err else None))
    for m in spec.get("markers", []):
        fig.add_trace(go.Scatter(x=spec["categories"], y=m["y"], name=m["name"], mode="markers",
                                 marker={"symbol": m.get("symbol", "diamond"), "size": 14, "color": "black", "line": {"width": 2, "color": "black"}}))  # fmt: skip
    fig.update_layout(title=spec["title"], xaxis_title=spec["x_title"], yaxis_title=spec["y_title"], barmode="group", template="plotly_white",
                      width=1100, height=480, margin={"l": 60, "r": 20, "t": 60, "b": 120}, legend={"orientation": "h", "y": -0.3})  # fmt: skip
    return fig
