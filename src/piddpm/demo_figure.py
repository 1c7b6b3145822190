"""The demo's figure: each restoration in full and in a zoomed crop of the richest quarter."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_demo_figure"]


def _zoom_box(gt: np.ndarray) -> tuple[int, int, int]:
    """``(y0, x0, side)`` of a square quarter-size crop holding the most structure."""
    from scipy import ndimage

    size = gt.shape[0]
    side = max(size // 4, 16)
    local = ndimage.uniform_filter(gt.astype(np.float64), side, mode="constant")
    half = side // 2
    inner = local[half : size - side + half + 1, half : size - side + half + 1]
    iy, ix = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return int(iy), int(ix), side


def write_demo_figure(
    path: Path, panels, std, gt, title: str, overwrite: bool, pixel_size_um: float
) -> Path:
    """One PNG: the full field (top) and a zoomed crop (bottom) of each panel.

    ``panels``: ``(label, image, subtitle)`` in ground-truth units; ``std``: the PI-DDPM
    spread (or None), drawn as an extra panel; a 1 um scale bar from ``pixel_size_um``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from piddpm.io import atomic_path

    y0, x0, side = _zoom_box(gt)
    vmax = float(np.percentile(gt, 99.8)) or 1.0
    items = [(label, img, sub, "gray", (0.0, vmax)) for label, img, sub in panels]
    if std is not None:
        top_std = float(np.percentile(std, 99.8)) or 1.0
        sub = f"std, black 0 to yellow {top_std:.2g}"
        items.append(("PI-DDPM uncertainty", std, sub, "magma", (0.0, top_std)))
    n = len(items)
    fig = Figure(figsize=(max(2.3 * n, 7.5), 5.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, n, squeeze=False)
    for j, (label, img, sub, cmap, (lo, hi)) in enumerate(items):
        top, bottom = axes[0, j], axes[1, j]
        top.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        top.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), side, side, fill=False, ec="yellow", lw=0.8))
        bottom.imshow(
            img[y0 : y0 + side, x0 : x0 + side], cmap=cmap, vmin=lo, vmax=hi,
            interpolation="nearest",
        )  # fmt: skip
        top.set_title(label + (f"\n{sub}" if sub else ""), fontsize=9)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    scale_px = 1.0 / pixel_size_um  # 1 um scale bar in the zoom
    axes[1, 0].plot([2, 2 + scale_px], [side - 3, side - 3], color="white", lw=2)
    axes[1, 0].text(2, side - 5, "1 µm", color="white", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.82, bottom=0.02, wspace=0.05, hspace=0.08)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
    return path
