"""Cell-biology specimens: filaments, puncta, endoplasmic reticulum and nuclei."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from piddpm.data.specimens._random import (
    _along_variation,
    _labelling,
    _loguniform,
    _offset_curve,
    _random_curves,
    _SmoothNoise,
    _uniform,
)
from piddpm.data.specimens.scene import (
    CurveLayer,
    FieldLayer,
    Scene,
    SpotLayer,
    _block_mean,
    _subgrid,
)


# --------------------------------------------------------------------------------------
# Generators: (extent_nm, rng, **options) -> Scene
# --------------------------------------------------------------------------------------
def draw_filaments(
    extent_nm: float,
    rng: np.random.Generator,
    *,
    density_um_per_um2: tuple[float, float] = (0.2, 1.2),
    length_um: tuple[float, float] = (3.0, 20.0),
    persistence_um: tuple[float, float] = (2.0, 30.0),
    width_nm: float = 25.0,
    bundle_probability: float = 0.3,
    bundle_spacing_nm: tuple[float, float] = (30.0, 60.0),
    brightness_sigma: float = 0.4,
    along_variation: float = 0.3,
    labelling_variation: float = 0.3,
    n_filaments: int | None = None,
    max_total_length_um: float = 1000.0,
) -> Scene:
    """Microtubule-like filaments: smooth worm-like curves crossing and bundling.

    ``density_um_per_um2`` is the filament length per field area; filaments start anywhere in
    a field extended by 25 % so that they also enter from the edges. Brightness of each
    filament is log-normal (``brightness_sigma``), varies along it (``along_variation``) and
    across the cell (``labelling_variation``).
    """
    h = 50.0
    ext_um2 = (extent_nm / 1000.0) ** 2
    if n_filaments is None:
        dens = _uniform(rng, density_um_per_um2)
        mean_len = 0.5 * (length_um[0] + length_um[1])
        total = min(dens * ext_um2 * 1.5, max_total_length_um)
        n_filaments = int(np.clip(rng.poisson(total / mean_len), 1, None))
    lab = _labelling(rng, extent_nm, labelling_variation)
    margin = 0.25 * extent_nm
    starts = rng.uniform(-margin, extent_nm + margin, (n_filaments, 2))
    lengths = rng.uniform(*length_um, n_filaments) * 1000.0
    lp = np.exp(rng.uniform(*np.log(persistence_um), n_filaments)) * 1000.0
    levels = np.exp(brightness_sigma * rng.standard_normal(n_filaments))
    bundled = rng.random(n_filaments) < bundle_probability
    spacing = rng.uniform(*bundle_spacing_nm, n_filaments)
    n_extra = rng.integers(1, 4, n_filaments)
    curves, level_of = [], []
    for i, pts in enumerate(_random_curves(rng, starts, lengths, lp, h)):
        curves.append(pts)
        level_of.append(levels[i])
        if bundled[i]:  # 2-4 strands, alternating sides, a sub-resolution spacing apart
            for j in range(1, int(n_extra[i]) + 1):
                curves.append(_offset_curve(pts, spacing[i] * ((j + 1) // 2) * (-1) ** j))
                level_of.append(levels[i])
    counts = [len(c) for c in curves]
    allpts = np.concatenate(curves)
    field = np.split(lab(allpts[:, 0], allpts[:, 1]), np.cumsum(counts)[:-1])
    along = _along_variation(rng, counts, h, along_variation)
    bright = [lv * f * a for lv, f, a in zip(level_of, field, along, strict=True)]
    widths = [width_nm] * len(curves)
    return Scene(extent_nm, [CurveLayer(curves, bright, widths)], "filaments")


def draw_puncta(
    extent_nm: float,
    rng: np.random.Generator,
    *,
    density_per_um2: tuple[float, float] = (0.3, 3.0),
    diameter_nm: tuple[float, float] = (50.0, 150.0),
    ring_probability: tuple[float, float] = (0.0, 0.6),
    ring_width_nm: tuple[float, float] = (20.0, 30.0),
    brightness_sigma: float = 0.6,
    labelling_variation: float = 0.3,
    clustering: tuple[float, float] = (0.0, 0.7),
    n_puncta: int | None = None,
    max_puncta: int = 3000,
) -> Scene:
    """Vesicles (filled disks) and clathrin-coated pits (rings), 50-150 nm across.

    A fraction ``clustering`` of the puncta sit in clusters (around 1-3 um wide), the rest
    uniformly; brightness is log-normal per punctum.
    """
    if n_puncta is None:
        dens = _loguniform(rng, density_per_um2)
        n_puncta = int(np.clip(rng.poisson(dens * (extent_nm / 1000.0) ** 2), 1, max_puncta))
    n = n_puncta
    centres = rng.uniform(0.0, extent_nm, (n, 2))
    frac = _uniform(rng, clustering)
    n_cl = int(round(frac * n))
    if n_cl > 0:
        hubs = rng.uniform(0.0, extent_nm, (max(1, n_cl // 20), 2))
        spread = rng.uniform(300.0, 1500.0, len(hubs))
        which = rng.integers(0, len(hubs), n_cl)
        centres[:n_cl] = hubs[which] + spread[which, None] * rng.standard_normal((n_cl, 2))
    diam = rng.uniform(*diameter_nm, n)
    ring = rng.random(n) < _uniform(rng, ring_probability)
    lab = _labelling(rng, extent_nm, labelling_variation)
    bright = np.exp(brightness_sigma * rng.standard_normal(n)) * lab(centres[:, 0], centres[:, 1])
    widths = rng.uniform(*ring_width_nm, n)
    return Scene(extent_nm, [SpotLayer(centres, diam, bright, ring, widths)], "puncta")


def draw_er(
    extent_nm: float,
    rng: np.random.Generator,
    *,
    mesh_um: tuple[float, float] = (0.4, 1.5),
    tubule_width_nm: tuple[float, float] = (50.0, 90.0),
    edge_keep: tuple[float, float] = (0.6, 0.95),
    n_sheets: tuple[int, int] = (0, 3),
    sheet_size_um: tuple[float, float] = (0.5, 3.0),
    sheet_density: tuple[float, float] = (0.15, 0.5),
    brightness_sigma: float = 0.25,
    labelling_variation: float = 0.3,
    max_cells: int = 4000,
) -> Scene:
    """Endoplasmic reticulum: a polygonal tubular network with three-way junctions (edges of
    a Voronoi tessellation, gently curved) and a few flat sheets (smooth-outlined regions of
    lower density, with small fenestrations)."""
    from scipy.spatial import Voronoi

    mesh = _uniform(rng, mesh_um) * 1000.0
    margin = mesh
    lo, hi = -margin, extent_nm + margin
    n_seeds = int(np.clip(rng.poisson(((hi - lo) / mesh) ** 2), 4, max_cells))
    vor = Voronoi(rng.uniform(lo, hi, (n_seeds, 2)))
    ridges = np.asarray(vor.ridge_vertices, dtype=np.int64).reshape(-1, 2)
    ridges = ridges[(ridges >= 0).all(axis=1)]
    verts = vor.vertices
    keep = rng.random(len(ridges)) < _uniform(rng, edge_keep)
    ridges = ridges[keep]
    lab = _labelling(rng, extent_nm, labelling_variation)
    width = _uniform(rng, tubule_width_nm)
    t = np.linspace(0.0, 1.0, 9)[:, None]
    a, b = verts[ridges[:, 0]], verts[ridges[:, 1]]
    inside = (np.minimum(a, b) < hi).all(1) & (np.maximum(a, b) > lo).all(1)
    a, b = a[inside], b[inside]
    seg_len = np.linalg.norm(b - a, axis=1)
    ok = seg_len < 4 * mesh  # drop the long ridges at the tessellation's border
    a, b, seg_len = a[ok], b[ok], seg_len[ok]
    normal = np.stack([-(b - a)[:, 1], (b - a)[:, 0]], axis=1) / (seg_len[:, None] + 1e-9)
    bow = rng.normal(0.0, 0.12, len(a))[:, None] * seg_len[:, None]
    levels = np.exp(brightness_sigma * rng.standard_normal(len(a)))
    # quadratic Bezier through a displaced midpoint: tubules are gently curved
    ctrl = 0.5 * (a + b) + bow * normal
    t = t[None]  # (1, 9, 1)
    pts = (1 - t) ** 2 * a[:, None] + 2 * (1 - t) * t * ctrl[:, None] + t**2 * b[:, None]
    bright_arr = levels[:, None] * lab(pts[..., 0], pts[..., 1])
    curves, bright = list(pts), list(bright_arr)
    widths = [width] * len(curves)
    layers: list = [CurveLayer(curves, bright, widths)]
    k = int(rng.integers(n_sheets[0], n_sheets[1] + 1))
    if k > 0:
        centres = rng.uniform(0.0, extent_nm, (k, 2))
        radii = np.array([_uniform(rng, sheet_size_um) * 500.0 for _ in range(k)])
        outline = _SmoothNoise(rng, extent_nm, corr_nm=0.3 * float(radii.mean()))
        holes = _SmoothNoise(rng, extent_nm, corr_nm=60.0, n=256)
        dens = _uniform(rng, sheet_density)

        def coverage(x, y, centres=centres, radii=radii):
            d = np.full(np.broadcast_shapes(x.shape, y.shape), np.inf)
            for (cx, cy), r in zip(centres, radii, strict=True):
                d = np.minimum(d, np.hypot(x - cx, y - cy) / r)
            return (d < 1.0 + 0.25 * outline(x, y)) & (holes(x, y) < 1.6)

        layers.append(FieldLayer(coverage, lambda x, y: dens * lab(x, y), supersample=2))
    return Scene(extent_nm, layers, "er")


@dataclass
class _NucleiLayer:
    """Nuclei: wavy ellipses (outline supersampled 2x per axis, each nucleus evaluated only
    inside its bounding box), times a smooth chromatin texture and nucleoli at pixel centres."""

    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    aspect: np.ndarray
    angle: np.ndarray
    harm: np.ndarray
    phase: np.ndarray
    level: np.ndarray
    texture: Callable
    texture_strength: float
    nucleoli: list

    def render(self, size: int, pixel_nm: float) -> np.ndarray:
        s = 2
        sub = _subgrid(size, pixel_nm, s)
        acc = np.zeros((size * s, size * s))
        step = pixel_nm / s
        for i in range(len(self.cx)):
            rmax = self.radius[i] * 1.3
            j0 = max(int((self.cx[i] - rmax) / step), 0)
            j1 = min(int((self.cx[i] + rmax) / step) + 1, size * s)
            i0 = max(int((self.cy[i] - rmax) / step), 0)
            i1 = min(int((self.cy[i] + rmax) / step) + 1, size * s)
            if j1 <= j0 or i1 <= i0:
                continue
            dx = sub[None, j0:j1] - self.cx[i]
            dy = sub[i0:i1, None] - self.cy[i]
            c, sn = math.cos(self.angle[i]), math.sin(self.angle[i])
            u, v = c * dx + sn * dy, (-sn * dx + c * dy) / self.aspect[i]
            theta = np.arctan2(v, u)
            wobble = 1.0
            for k in range(self.harm.shape[1]):
                wobble = wobble + self.harm[i, k] * np.cos((k + 2) * theta + self.phase[i, k])
            inside = np.hypot(u, v) < self.radius[i] * wobble
            acc[i0:i1, j0:j1][inside] = self.level[i]  # later nuclei lie on top
        out = _block_mean(acc, s)
        centre = _subgrid(size, pixel_nm, 1)
        x, y = centre[None, :], centre[:, None]
        out = out * np.clip(1.0 + self.texture_strength * self.texture(x, y), 0.1, None)
        for (ncx, ncy), r in self.nucleoli:
            out = out * (1.0 - 0.6 * np.exp(-((x - ncx) ** 2 + (y - ncy) ** 2) / (2 * r**2)))
        return out


def draw_nuclei(
    extent_nm: float,
    rng: np.random.Generator,
    *,
    diameter_um: tuple[float, float] = (5.0, 15.0),
    area_fraction: tuple[float, float] = (0.15, 0.5),
    texture_nm: tuple[float, float] = (200.0, 1000.0),
    texture_strength: tuple[float, float] = (0.1, 0.35),
    nucleoli: tuple[int, int] = (0, 3),
    brightness_sigma: float = 0.4,
    max_nuclei: int = 40,
) -> Scene:
    """Cell nuclei: ellipses with wavy outlines, chromatin texture, darker nucleoli."""
    ext_um2 = (extent_nm / 1000.0) ** 2
    mean_area = np.pi / 4.0 * np.mean(diameter_um) ** 2
    n = int(np.clip(rng.poisson(_uniform(rng, area_fraction) * ext_um2 / mean_area), 1, max_nuclei))
    margin = 0.1 * extent_nm
    cx, cy = rng.uniform(-margin, extent_nm + margin, (2, n))
    if n == 1:  # a field about the size of a nucleus or smaller: keep it in view
        cx[0], cy[0] = rng.uniform(0.2, 0.8, 2) * extent_nm
    radius = rng.uniform(*diameter_um, n) * 500.0
    harm = rng.normal(0.0, 0.04, (n, 4)) / np.arange(1, 5)  # wavy outline, harmonics 2..5
    nuc = []
    n_nuc = rng.integers(nucleoli[0], nucleoli[1] + 1, n)
    for i in range(n):
        for _ in range(int(n_nuc[i])):
            rr = rng.uniform(0.0, 0.5) * radius[i]
            th = rng.uniform(0.0, 2.0 * np.pi)
            centre = (cx[i] + rr * np.cos(th), cy[i] + rr * np.sin(th))
            nuc.append((centre, rng.uniform(0.06, 0.15) * radius[i]))
    layer = _NucleiLayer(
        cx=cx,
        cy=cy,
        radius=radius,
        aspect=rng.uniform(0.65, 1.0, n),
        angle=rng.uniform(0.0, np.pi, n),
        harm=harm,
        phase=rng.uniform(0.0, 2.0 * np.pi, (n, 4)),
        level=np.exp(brightness_sigma * rng.standard_normal(n)),
        texture=_SmoothNoise(rng, extent_nm, corr_nm=_uniform(rng, texture_nm), n=256),
        texture_strength=_uniform(rng, texture_strength),
        nucleoli=nuc,
    )
    return Scene(extent_nm, [layer], "nuclei")
