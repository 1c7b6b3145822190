"""Bead widths before and after restoration: a real-image check of a ``piddpm fit`` run on
the psf-extractor bead field (../shared/data/psf-extractor, 200 nm beads, NA 0.95, 520 nm,
108 nm pixels; docs/fit.md).

Beads are the local maxima of the input (smoothed) that stand well above the background and
have no brighter neighbour within 12 px (brighter than 20 % of the brightest); each image's lateral FWHM is measured through the
bead centre along x and y (background = the image's median, linear interpolation) and the
median over beads is printed per image, with the number of beads measured and the image's
median (its background level: the beads cover a few per cent of the plane). A 200 nm bead
seen at NA 0.95 / 520 nm has a widefield FWHM of about 0.30 um (the bead convolved with the
Airy core 0.51 lambda / NA = 0.28 um); deconvolution may narrow it towards the bead's own
width.

    python benchmarks/bench_fit_beads.py runs/fit-beads/showcase
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from piddpm import PiddpmError
from piddpm.io import read_image
from piddpm.optics.measure import fwhm

IMAGES = ("input", "rl", "start", "fitted")


def find_beads(img: np.ndarray, *, min_separation: int = 12, k_sigma: float = 8.0):
    smooth = ndimage.gaussian_filter(img.astype(np.float64), 1.0)
    bg = np.median(smooth)
    mad = np.median(np.abs(smooth - bg)) * 1.4826 + 1e-12
    # well above the noise, and at least 20 % of the brightest bead (8-bit files: the MAD of
    # a flat, quantised background can be 0)
    level = bg + max(k_sigma * mad, 0.2 * (smooth.max() - bg))
    peaks = (smooth == ndimage.maximum_filter(smooth, size=2 * min_separation + 1)) & (
        smooth > level
    )
    ys, xs = np.nonzero(peaks)
    m = min_separation
    keep = (ys >= m) & (xs >= m) & (ys < img.shape[0] - m) & (xs < img.shape[1] - m)
    return list(zip(ys[keep].tolist(), xs[keep].tolist(), strict=True))


def bead_fwhm_px(img: np.ndarray, beads, half: int = 8) -> list[float]:
    bg = float(np.median(img))
    out = []
    for y, x in beads:
        win = img[y - 2 : y + 3, x - 2 : x + 3]
        dy, dx = np.unravel_index(int(np.argmax(win)), win.shape)
        cy, cx = y - 2 + dy, x - 2 + dx
        try:
            wx = fwhm(img[cy, cx - half : cx + half + 1], background=bg)
            wy = fwhm(img[cy - half : cy + half + 1, cx], background=bg)
        except PiddpmError:
            continue
        out.append(0.5 * (wx + wy))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("showcase", type=Path, help="RUN/showcase folder of a fit run")
    args = ap.parse_args()
    first = read_image(args.showcase / "input.tif")
    pixel_um = first.pixel_size_um[2] or 1.0
    beads = find_beads(np.asarray(first.data, np.float64))
    print(f"{len(beads)} beads found in {args.showcase / 'input.tif'} (pixel {pixel_um:g} um)")
    print("| image | beads measured | median FWHM (um) | IQR (um) | image median (ADU) |")
    print("|---|---|---|---|---|")
    for name in IMAGES:
        path = args.showcase / f"{name}.tif"
        if not path.is_file():
            continue
        img = np.asarray(read_image(path).data, np.float64)
        widths = np.array(bead_fwhm_px(img, beads))
        level = float(np.median(img))  # the background level: beads cover a few % of the plane
        if widths.size == 0:
            print(f"| {name} | 0 | - | - | {level:.2f} |")
            continue
        q1, med, q3 = np.percentile(widths * pixel_um, (25, 50, 75))
        print(f"| {name} | {widths.size} | {med:.3f} | {q1:.3f}-{q3:.3f} | {level:.2f} |")


if __name__ == "__main__":
    main()
