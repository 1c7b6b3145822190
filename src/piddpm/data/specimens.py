"""Synthetic 2-D specimens drawn at physical sizes and rendered to any pixel grid.

Every generator works in two stages:

1. **draw** a :class:`Scene`: a physical description of the specimen in nanometres over a
   square field of view ``[0, extent_nm)^2`` (filament centre lines, vesicle centres and
   diameters, nuclear outlines, ...). Only this stage consumes random numbers, and it never
   looks at the pixel size.
2. **render** the scene onto a pixel grid: every pixel receives the *area average* of the
   fluorophore density over its square (structures are described analytically, with a
   Gaussian cross-section for thin ones, and integrated exactly over each pixel with error
   functions; extended regions are supersampled). So the same scene gives consistent images
   at 20 nm or 200 nm pixels: binning a 20 nm rendering by 2 reproduces the 40 nm rendering.

Intensities are fluorophore densities relative to a fully labelled structure (1 = a structure
that covers the whole pixel at full labelling). :func:`render_specimen` draws and renders one
specimen and, by default, rescales it to a peak of 1 (values in ``[0, 1]``).

Physical sizes (defaults; every one is a keyword option of the generator):

===========  ==============================================================================
filaments    microtubule-like smooth random curves, equivalent width 25 nm, persistence
             length 2-30 um, 3-20 um long, 30 % in bundles of 2-4 at 30-60 nm spacing
puncta       vesicles (filled disks) and clathrin-coated pits (rings of 20-30 nm wall),
             diameters 50-150 nm, 0.3-3 per um^2
er           tubular network (edges of a random Voronoi tessellation, mesh 0.4-1.5 um),
             tubule equivalent width 50-90 nm, plus 0-3 sheets (0.5-3 um, density 0.15-0.5)
nuclei       textured blobs 5-15 um across (chromatin texture 0.2-1 um, dark nucleoli)
metaballs    implicit blobs: sum of Gaussian kernels (radii 1.5-12 % of the field)
             thresholded, intensity rising with the distance to the edge, sinusoidal
             texture; scale-free (a generic shape prior, as in the paper's reference)
phantom      Shepp-Logan phantom, 40-110 % of the field, rotated, flipped, shifted
natural      grey photographs (scikit-image's bundled images, or any folder), crops of
             25-100 % of the photograph's side, flipped/rotated; scale-free
images       a user's folder of high-resolution images (SIM, STORM ...): scale-free, or at
             their physical pixel size when ``source_pixel_size_um`` is given
===========  ==============================================================================
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage, special

from piddpm import PiddpmError

__all__ = [
    "DEFAULT_MIXTURE",
    "IMAGE_SUFFIXES",
    "SPECIMENS",
    "CurveLayer",
    "FieldLayer",
    "RasterLayer",
    "Scene",
    "SpecimenMixture",
    "SpotLayer",
    "draw_specimen",
    "list_image_files",
    "natural_image_files",
    "render_specimen",
]

#: File suffixes read from image folders (case-insensitive).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

#: scikit-image's bundled photographs used by ``natural`` (those shipped in the wheel, so
#: available offline; motion-blurred, binary and text images are left out).
_SKIMAGE_NATURAL = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)


# --------------------------------------------------------------------------------------
# Scene description and rendering
# --------------------------------------------------------------------------------------
def _splat(
    x_nm: np.ndarray,
    y_nm: np.ndarray,
    weight_nm2: np.ndarray,
    sigma_nm: np.ndarray | float,
    size: int,
    pixel_nm: float,
) -> np.ndarray:
    """Area-average isotropic Gaussians onto a pixel grid, exactly (error functions).

    Pixel ``(i, j)`` covers ``[j p, (j+1) p) x [i p, (i+1) p)`` nm. A Gaussian of integrated
    intensity ``w`` (density x nm^2) adds ``w / p^2`` times the fraction of its mass inside the
    pixel, so the result is the mean density over each pixel. Mass falling outside the field
    is dropped.
    """
    out = np.zeros(size * size, dtype=np.float64)
    if x_nm.size == 0:
        return out.reshape(size, size)
    u = x_nm / pixel_nm
    v = y_nm / pixel_nm
    s = np.broadcast_to(np.asarray(sigma_nm, dtype=np.float64) / pixel_nm, u.shape)
    r = max(1, int(math.ceil(4.0 * float(s.max()))))
    k = np.arange(-r, r + 2, dtype=np.float64)  # 2r+2 pixel edges around the home pixel
    u0 = np.floor(u)
    v0 = np.floor(v)
    inv = 1.0 / (_SQRT2 * np.maximum(s, 1e-6))[:, None]
    cx = special.erf((u0[:, None] + k - u[:, None]) * inv)
    cy = special.erf((v0[:, None] + k - v[:, None]) * inv)
    wx = 0.5 * np.diff(cx, axis=1)  # (N, 2r+1)
    wy = 0.5 * np.diff(cy, axis=1)
    cols = u0[:, None].astype(np.int64) + np.arange(-r, r + 1)
    rows = v0[:, None].astype(np.int64) + np.arange(-r, r + 1)
    wx = np.where((cols >= 0) & (cols < size), wx, 0.0)
    wy = np.where((rows >= 0) & (rows < size), wy, 0.0) * (weight_nm2 / pixel_nm**2)[:, None]
    np.clip(cols, 0, size - 1, out=cols)
    np.clip(rows, 0, size - 1, out=rows)
    idx = rows[:, :, None] * size + cols[:, None, :]
    vals = wy[:, :, None] * wx[:, None, :]
    out += np.bincount(idx.ravel(), weights=vals.ravel(), minlength=size * size)
    return out.reshape(size, size)


@dataclass
class CurveLayer:
    """Thin curvilinear structures (filaments, tubules) with a Gaussian cross-section.

    Attributes
    ----------
    curves : list of ndarray (M_i, 2)
        Centre lines as ``(x, y)`` vertices in nm (any vertex spacing, typically 50 nm).
    brightness : list of ndarray (M_i,)
        Labelling density at each vertex (1 = fully labelled), linearly interpolated.
    width_nm : list of float
        Equivalent width of each curve: integrated density across the curve divided by its
        peak density (a Gaussian profile of standard deviation ``width / sqrt(2 pi)``).
    """

    curves: list[np.ndarray]
    brightness: list[np.ndarray]
    width_nm: list[float]

    def render(self, size: int, pixel_nm: float) -> np.ndarray:
        curves = [(p, b, w) for p, b, w in zip(*self._fields(), strict=True) if len(p) >= 2]
        if not curves:
            return np.zeros((size, size))
        pts = np.concatenate([c[0] for c in curves])
        bright = np.concatenate([c[1] for c in curves]).astype(np.float64)
        nv = np.array([len(c[0]) for c in curves])
        width = np.array([c[2] for c in curves], dtype=np.float64)
        cid = np.repeat(np.arange(len(curves)), nv)
        seg = np.hypot(*np.diff(pts, axis=0).T)
        first = np.cumsum(nv) - nv
        seg[first[1:] - 1] = 0.0  # no segment between consecutive curves
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        start = arc[first]
        length = arc[first + nv - 1] - start
        # Rendering blur: a Gaussian an eighth of a pixel wide hides the point spacing
        # (sampling at 1.5 sigma_r leaves a ripple of exp(-2 pi^2 / 1.5^2) ~ 1e-4) and is
        # small against the pixel's own box (variance p^2/64 against p^2/12).
        sigma_r = np.hypot(width / _SQRT2PI, pixel_nm / 8.0)
        n = np.maximum(2, np.ceil(length / (1.5 * sigma_r)).astype(np.int64) + 1)
        owner = np.repeat(np.arange(len(curves)), n)
        k = np.arange(owner.size) - np.repeat(np.cumsum(n) - n, n)
        ds = length / (n - 1)
        # a global, strictly increasing coordinate: curve i's arc shifted by i (nm)
        glob = arc + cid
        t = start[owner] + owner + k * ds[owner]
        # trapezoid weights: each point carries density x width x its arc length
        w = ds[owner] * np.where((k == 0) | (k == n[owner] - 1), 0.5, 1.0)
        x = np.interp(t, glob, pts[:, 0])
        y = np.interp(t, glob, pts[:, 1])
        b = np.interp(t, glob, bright)
        return _splat(x, y, b * width[owner] * w, sigma_r[owner], size, pixel_nm)

    def _fields(self):
        return self.curves, self.brightness, self.width_nm


@dataclass
class SpotLayer:
    """Filled disks (vesicles) and rings (coated pits) of given diameters.

    Attributes
    ----------
    centres_nm : ndarray (N, 2)
    diameter_nm : ndarray (N,)
        Outer diameter of each disk / ring centre-line diameter.
    brightness : ndarray (N,)
        Labelling density inside the disk / on the ring wall.
    ring : ndarray (N,) bool
        True for rings.
    ring_width_nm : ndarray (N,)
        Equivalent width of the ring wall (integrated density across the wall / peak).
    """

    centres_nm: np.ndarray
    diameter_nm: np.ndarray
    brightness: np.ndarray
    ring: np.ndarray
    ring_width_nm: np.ndarray

    def render(self, size: int, pixel_nm: float) -> np.ndarray:
        xs, ys, ws, ss = [], [], [], []
        disks = ~self.ring
        if disks.any():
            # Disks: sunflower (Vogel) point sets, uniform over the disk; the point spacing
            # (d/8, or up to pixel/8 when pixels are large) is hidden by a Gaussian of half the spacing.
            d = self.diameter_nm[disks]
            delta = np.minimum(d / 2.0, np.maximum(d / 8.0, pixel_nm / 8.0))
            m = np.clip(np.round(np.pi / 4.0 * (d / delta) ** 2), 1, 2000).astype(int)
            owner = np.repeat(np.arange(d.size), m)
            k = np.arange(owner.size) - np.repeat(np.cumsum(m) - m, m)
            mm = m[owner]
            rad = 0.5 * d[owner] * np.sqrt((k + 0.5) / mm)
            ang = k * (math.pi * (3.0 - math.sqrt(5.0)))
            c = self.centres_nm[disks][owner]
            xs.append(c[:, 0] + rad * np.cos(ang))
            ys.append(c[:, 1] + rad * np.sin(ang))
            area = np.pi / 4.0 * d**2
            ws.append((self.brightness[disks] * area / m)[owner])
            ss.append(0.5 * delta[owner])
        if self.ring.any():
            d = self.diameter_nm[self.ring]
            width = self.ring_width_nm[self.ring]
            sigma_r = np.hypot(width / _SQRT2PI, pixel_nm / 8.0)
            m = np.maximum(8, np.ceil(np.pi * d / (1.5 * sigma_r))).astype(int)
            owner = np.repeat(np.arange(d.size), m)
            k = np.arange(owner.size) - np.repeat(np.cumsum(m) - m, m)
            ang = 2.0 * np.pi * k / m[owner]
            c = self.centres_nm[self.ring][owner]
            xs.append(c[:, 0] + 0.5 * d[owner] * np.cos(ang))
            ys.append(c[:, 1] + 0.5 * d[owner] * np.sin(ang))
            ws.append((self.brightness[self.ring] * width * np.pi * d / m)[owner])
            ss.append(sigma_r[owner])
        if not xs:
            return np.zeros((size, size))
        return _splat(*map(np.concatenate, (xs, ys, ws, ss)), size, pixel_nm)


@dataclass
class FieldLayer:
    """Extended structures: a density defined analytically in nm coordinates.

    ``coverage(x_nm, y_nm) -> bool`` gives the sharp outline (supersampled ``supersample``
    times per axis to area-average the edges); ``density(x_nm, y_nm) -> float`` is smooth at
    the pixel scale and is evaluated at pixel centres. The pixel value is
    ``mean(coverage) * density``.
    """

    coverage: Callable[[np.ndarray, np.ndarray], np.ndarray]
    density: Callable[[np.ndarray, np.ndarray], np.ndarray]
    supersample: int = 3

    def render(self, size: int, pixel_nm: float) -> np.ndarray:
        s = self.supersample
        sub = (np.arange(size * s) + 0.5) * (pixel_nm / s)
        cov = self.coverage(sub[None, :], sub[:, None]).astype(np.float32)
        cov = cov.reshape(size, s, size, s).mean(axis=(1, 3))
        centre = (np.arange(size) + 0.5) * pixel_nm
        return cov * self.density(centre[None, :], centre[:, None])


@dataclass
class RasterLayer:
    """A raster image (photograph, phantom, SIM image) placed in the field by an affine map.

    Attributes
    ----------
    image : ndarray (h, w)
        Grey values in [0, 1].
    nm_per_source_pixel : float
        Physical size of one source pixel in the field.
    centre_nm : (float, float)
        Where the source image centre lands, ``(x, y)`` in nm.
    angle_rad : float
        Rotation of the source image.
    flip : bool
        Mirror the source horizontally first.
    """

    image: np.ndarray
    nm_per_source_pixel: float
    centre_nm: tuple[float, float]
    angle_rad: float = 0.0
    flip: bool = False

    def render(self, size: int, pixel_nm: float) -> np.ndarray:
        zoom = pixel_nm / self.nm_per_source_pixel  # source pixels per output pixel
        # anti-aliasing: a box of `zoom` source pixels has the variance of a Gaussian of
        # sigma zoom / sqrt(12); remove what linear interpolation already provides
        sigma = math.sqrt(max(zoom**2 - 1.0, 0.0) / 12.0)
        centre = (np.arange(size) + 0.5) * pixel_nm
        gx = centre[None, :] - self.centre_nm[0]
        gy = centre[:, None] - self.centre_nm[1]
        c, s = math.cos(self.angle_rad), math.sin(self.angle_rad)
        h, w = self.image.shape
        sx = (c * gx + s * gy) / self.nm_per_source_pixel
        sy = (-s * gx + c * gy) / self.nm_per_source_pixel + (h - 1) / 2.0
        sx = (-sx if self.flip else sx) + (w - 1) / 2.0
        # filter only the part of the source that the field sees
        m = int(math.ceil(4 * sigma)) + 2
        x0, x1 = max(int(sx.min()) - m, 0), min(int(sx.max()) + m + 2, w)
        y0, y1 = max(int(sy.min()) - m, 0), min(int(sy.max()) + m + 2, h)
        if x1 <= x0 or y1 <= y0:
            return np.zeros((size, size))
        img = self.image[y0:y1, x0:x1]
        if sigma > 0:
            img = ndimage.gaussian_filter(img, sigma=sigma)
        coords = np.stack(np.broadcast_arrays(sy - y0, sx - x0), axis=0).astype(np.float32)
        out = ndimage.map_coordinates(img, coords, order=1, mode="constant", cval=0.0)
        return out.astype(np.float64)


Layer = CurveLayer | SpotLayer | FieldLayer | RasterLayer


@dataclass
class Scene:
    """A specimen described physically: a field ``[0, extent_nm)^2`` and its layers.

    ``render(size, pixel_size_um)`` gives the area-averaged density (not rescaled) on a
    ``size x size`` grid that starts at the field's origin; choose ``size * pixel`` equal to
    the extent to see the whole field.
    """

    extent_nm: float
    layers: list = field(default_factory=list)
    name: str = ""

    def render(self, size: int, pixel_size_um: float) -> np.ndarray:
        """Render to a ``(size, size)`` float64 array of area-averaged densities."""
        pixel_nm = 1000.0 * float(pixel_size_um)
        out = np.zeros((size, size), dtype=np.float64)
        for layer in self.layers:
            out += layer.render(size, pixel_nm)
        return out


# --------------------------------------------------------------------------------------
# Helpers for random geometry (all in nm, independent of pixels)
# --------------------------------------------------------------------------------------
def _uniform(rng: np.random.Generator, lo_hi: Sequence[float]) -> float:
    lo, hi = lo_hi
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def _loguniform(rng: np.random.Generator, lo_hi: Sequence[float]) -> float:
    lo, hi = lo_hi
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)


class _SmoothNoise:
    """Gaussian-correlated noise on a fixed physical grid (``extent / n`` spacing, periodic),
    sampled by linear interpolation; zero mean, unit standard deviation. Pixel-independent.

    Made in Fourier space (white noise times a Gaussian transfer function), so the cost does
    not grow with the correlation length ``corr_nm`` (the Gaussian's standard deviation).
    """

    def __init__(self, rng: np.random.Generator, extent_nm: float, corr_nm: float, n: int = 128):
        self.step = extent_nm / n
        spec = np.fft.rfft2(rng.standard_normal((n, n)))
        fy = np.fft.fftfreq(n)[:, None]
        fx = np.fft.rfftfreq(n)[None, :]
        sig = max(corr_nm / self.step, 0.5)
        spec *= np.exp(-2.0 * np.pi**2 * sig**2 * (fx**2 + fy**2))
        f = np.fft.irfft2(spec, s=(n, n))
        f -= f.mean()
        self.grid = f / (f.std() + 1e-12)

    def __call__(self, x_nm: np.ndarray, y_nm: np.ndarray) -> np.ndarray:
        x_nm, y_nm = np.broadcast_arrays(x_nm, y_nm)
        coords = np.stack([y_nm / self.step - 0.5, x_nm / self.step - 0.5]).astype(np.float32)
        return ndimage.map_coordinates(self.grid, coords, order=1, mode="grid-wrap")


def _labelling(rng: np.random.Generator, extent_nm: float, strength: float):
    """Cell-scale labelling-density variation: ``exp(strength * noise)`` (3-10 um patches)."""
    if strength <= 0:
        return lambda x, y: np.ones(np.broadcast_shapes(np.shape(x), np.shape(y)))
    noise = _SmoothNoise(rng, extent_nm, corr_nm=_uniform(rng, (3000.0, 10000.0)))
    return lambda x, y: np.exp(strength * noise(x, y))


def _random_curves(
    rng: np.random.Generator,
    starts: np.ndarray,
    lengths_nm: np.ndarray,
    persistence_nm: np.ndarray,
    h: float,
) -> list[np.ndarray]:
    """Worm-like chains of vertex spacing ``h`` (vectorised over curves): the tangent angle
    diffuses with variance ``h / persistence`` per step, then is smoothed over ~300 nm so the
    curves have no kinks. Returns one ``(M_i, 2)`` array (nm) per curve."""
    n = np.maximum(2, (lengths_nm / h).astype(int) + 1)
    m = int(n.max())
    dtheta = rng.standard_normal((len(n), m - 1)) * np.sqrt(h / persistence_nm)[:, None]
    theta0 = rng.uniform(0.0, 2.0 * np.pi, len(n))[:, None]
    theta = theta0 + np.concatenate([np.zeros((len(n), 1)), np.cumsum(dtheta, axis=1)], axis=1)
    theta = ndimage.gaussian_filter1d(theta, sigma=max(300.0 / h, 1.0), axis=1, mode="nearest")
    steps = h * np.stack([np.cos(theta[:, :-1]), np.sin(theta[:, :-1])], axis=-1)
    pts = starts[:, None, :] + np.concatenate(
        [np.zeros((len(n), 1, 2)), np.cumsum(steps, axis=1)], axis=1
    )
    return [pts[i, : n[i]] for i in range(len(n))]


def _offset_curve(pts: np.ndarray, offset_nm: float) -> np.ndarray:
    tangent = np.gradient(pts, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    return pts + offset_nm * normal


def _along_variation(
    rng: np.random.Generator, counts: Sequence[int], h: float, strength: float
) -> list[np.ndarray]:
    """Labelling fluctuation along curves of ``counts`` vertices: exp(strength * smoothed
    noise), correlated over ~0.5 um (one filter pass over all curves end to end)."""
    total = int(sum(counts))
    if strength <= 0 or total == 0:
        return [np.ones(c) for c in counts]
    z = ndimage.gaussian_filter1d(rng.standard_normal(total), sigma=max(500.0 / h, 1.0))
    z *= strength / (z.std() + 1e-12)
    return np.split(np.exp(z), np.cumsum(counts)[:-1])


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


def _subgrid(size: int, pixel_nm: float, s: int) -> np.ndarray:
    """Centres (nm) of the ``size * s`` sub-pixels along one axis."""
    return (np.arange(size * s) + 0.5) * (pixel_nm / s)


def _block_mean(a: np.ndarray, s: int) -> np.ndarray:
    n = a.shape[0] // s
    return a.reshape(n, s, n, s).mean(axis=(1, 3)) if s > 1 else a


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


@dataclass
class _MetaballLayer:
    """Implicit blobs on a 2x supersampled grid, area-averaged to pixels."""

    centres: np.ndarray
    radius: np.ndarray
    weight: np.ndarray
    threshold: float
    depth_nm: float
    wave_k: np.ndarray
    wave_phase: np.ndarray
    wave_amp: float

    def render(self, size: int, pixel_nm: float) -> np.ndarray:
        s = 2
        sub = _subgrid(size, pixel_nm, s).astype(np.float32)
        c = self.centres.astype(np.float32)
        r2 = (2 * self.radius[:, None] ** 2).astype(np.float32)
        # separable Gaussian kernels: potential = sum_i w_i g_i(y) g_i(x), one matrix product
        gx = np.exp(-((sub[None, :] - c[:, :1]) ** 2) / r2)
        gy = np.exp(-((sub[None, :] - c[:, 1:]) ** 2) / r2)
        pot = (gy * self.weight[:, None].astype(np.float32)).T @ gx
        dy, dx = np.gradient(pot, np.float32(pixel_nm / s))
        # distance inside the outline from the level set: (f - th) / |grad f| (first order;
        # exact near the edge of a lone ball); the intensity rises over `depth_nm`
        ramp = (pot - self.threshold) / ((np.hypot(dx, dy) + 1e-12) * self.depth_nm)
        np.clip(ramp, 0.0, 1.0, out=ramp)
        ramp *= 2.0 - ramp  # concave rise, flat at the top
        tex = np.ones_like(pot)
        n = len(self.wave_phase)
        for i in range(n):  # sin(a x + b y + p) = sin(a x) cos(b y + p) + cos(a x) sin(b y + p)
            ax, by = self.wave_k[i, 0] * sub, self.wave_k[i, 1] * sub + self.wave_phase[i]
            a = self.wave_amp / n
            tex += a * np.cos(by)[:, None] * np.sin(ax)[None, :]
            tex += a * np.sin(by)[:, None] * np.cos(ax)[None, :]
        dens = np.where(pot > self.threshold, (0.2 + 0.8 * ramp) * tex, 0.0)
        return _block_mean(dens, s).astype(np.float64)


def draw_metaballs(
    extent_nm: float,
    rng: np.random.Generator,
    *,
    n_balls: tuple[int, int] = (3, 25),
    radius_fraction: tuple[float, float] = (0.015, 0.12),
    threshold: tuple[float, float] = (0.4, 0.7),
    edge_depth_fraction: tuple[float, float] = (0.2, 1.0),
    texture_period_fraction: tuple[float, float] = (0.1, 0.6),
    texture_strength: tuple[float, float] = (0.1, 0.5),
    brightness_sigma: float = 0.3,
) -> Scene:
    """Implicit blobs ('metaballs'), as in the paper's reference: a sum of Gaussian kernels
    (radii ``radius_fraction`` of the field) thresholded; inside, the intensity rises with
    the distance to the outline (over ``edge_depth_fraction`` of the mean radius) and carries
    a low-frequency sinusoidal texture (periods ``texture_period_fraction`` of the field).

    Metaballs are a generic, scale-free shape prior, so their sizes are relative to the field.
    """
    n = int(rng.integers(n_balls[0], n_balls[1] + 1))
    radius = rng.uniform(*radius_fraction, n) * extent_nm
    centres = rng.uniform(0.0, extent_nm, (n, 2))
    weight = np.exp(brightness_sigma * rng.standard_normal(n))
    n_waves = int(rng.integers(1, 4))
    k = rng.normal(size=(n_waves, 2))
    period = rng.uniform(*texture_period_fraction, n_waves) * extent_nm
    k *= (2 * np.pi / period)[:, None] / np.linalg.norm(k, axis=1, keepdims=True)
    layer = _MetaballLayer(
        centres=centres,
        radius=radius,
        weight=weight,
        threshold=_uniform(rng, threshold),
        depth_nm=_uniform(rng, edge_depth_fraction) * float(radius.mean()),
        wave_k=k,
        wave_phase=rng.uniform(0, 2 * np.pi, n_waves),
        wave_amp=_uniform(rng, texture_strength),
    )
    return Scene(extent_nm, [layer], "metaballs")


@functools.lru_cache(maxsize=1)
def _shepp_logan() -> np.ndarray:
    from skimage.data import shepp_logan_phantom

    img = shepp_logan_phantom().astype(np.float32)
    return img / img.max()


def draw_phantom(
    extent_nm: float,
    rng: np.random.Generator,
    *,
    size_fraction: tuple[float, float] = (0.4, 1.1),
) -> Scene:
    """The Shepp-Logan phantom, scaled to 40-110 % of the field, rotated, mirrored, shifted."""
    img = _shepp_logan()
    side = _uniform(rng, size_fraction) * extent_nm
    centre = tuple(rng.uniform(0.3, 0.7, 2) * extent_nm)
    layer = RasterLayer(
        img, side / img.shape[0], centre, rng.uniform(0, 2 * np.pi), bool(rng.random() < 0.5)
    )
    return Scene(extent_nm, [layer], "phantom")


# ----- image folders ------------------------------------------------------------------
def natural_image_files() -> list[Path]:
    """The scikit-image photographs that ship with the installed package (offline)."""
    import skimage.data

    root = Path(skimage.data.__file__).parent
    return [root / name for name in _SKIMAGE_NATURAL if (root / name).is_file()]


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files (tif/tiff/png/jpg/jpeg, any case) directly in ``folder``, sorted.

    Raises
    ------
    PiddpmError
        If the folder does not exist or holds no image file.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise PiddpmError(f"image folder {str(path)!r} does not exist or is not a folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PiddpmError(
            f"image folder {str(path)!r} holds no image file (expected {', '.join(IMAGE_SUFFIXES)})"
        )
    return files


@functools.lru_cache(maxsize=256)
def _read_grey(path: str, mtime: float) -> np.ndarray:
    """Decode an image file to grey float32 planes ``(P, h, w)`` in [0, 1] (cached)."""
    try:
        if path.lower().endswith((".tif", ".tiff")):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode not in ("L", "I", "I;16", "F", "RGB", "RGBA"):
                    im = im.convert("RGB")
                arr = np.asarray(im)
    except Exception as err:  # noqa: BLE001 - any decoder failure is the file's fault
        raise PiddpmError(f"cannot read image file {path!r}: {err}") from err
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float32)
        arr = rgb @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
    arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim < 2 or min(arr.shape[-2:]) < 8:
        raise PiddpmError(
            f"image file {path!r} has shape {arr.shape}; expected a 2-D image of at least 8x8"
        )
    arr = arr.reshape(-1, *arr.shape[-2:])
    lo = np.percentile(arr, 0.1, axis=(1, 2), keepdims=True)
    hi = np.percentile(arr, 99.9, axis=(1, 2), keepdims=True)
    out = np.clip((arr - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0).astype(np.float32)
    if not np.isfinite(out).all() or (hi <= lo).all():
        raise PiddpmError(f"image file {path!r} is constant or not finite; expected a picture")
    return out


def _read_image(path: Path) -> np.ndarray:
    try:
        mtime = path.stat().st_mtime
    except OSError as err:
        raise PiddpmError(f"cannot read image file {str(path)!r}: {err}") from err
    return _read_grey(str(path), mtime)


def _draw_from_files(
    files: Sequence[Path],
    extent_nm: float,
    rng: np.random.Generator,
    crop_fraction: tuple[float, float],
    source_pixel_size_um: float | None,
    zoom_jitter: tuple[float, float],
    name: str,
) -> Scene:
    path = files[int(rng.integers(len(files)))]
    planes = _read_image(path)
    img = planes[int(rng.integers(len(planes)))]
    h, w = img.shape
    if source_pixel_size_um is not None:
        nm_per = source_pixel_size_um * 1000.0 * _uniform(rng, zoom_jitter)
    else:
        # scale-free: the field shows a crop of `crop_fraction` of the image's short side
        nm_per = extent_nm / (_uniform(rng, crop_fraction) * min(h, w))
    angle = 0.5 * np.pi * int(rng.integers(4))
    # place the crop: the source point under the field centre, kept inside the image
    half = 0.5 * extent_nm / nm_per
    ox = _uniform(rng, (-max(w / 2 - half, 0.0), max(w / 2 - half, 0.0)))
    oy = _uniform(rng, (-max(h / 2 - half, 0.0), max(h / 2 - half, 0.0)))
    c, s = math.cos(angle), math.sin(angle)
    # source offset (ox, oy) (relative to its centre) must appear at the field centre
    flip = bool(rng.random() < 0.5)
    ox_eff = -ox if flip else ox
    cx = 0.5 * extent_nm - nm_per * (c * ox_eff - s * oy)
    cy = 0.5 * extent_nm - nm_per * (s * ox_eff + c * oy)
    gamma = _loguniform(rng, (0.7, 1.5))
    return Scene(extent_nm, [RasterLayer(img**gamma, nm_per, (cx, cy), angle, flip)], name)


def draw_natural(
    extent_nm: float,
    rng: np.random.Generator,
    *,
    images_dir: str | os.PathLike | None = None,
    crop_fraction: tuple[float, float] = (0.25, 1.0),
) -> Scene:
    """Grey photographs as a generic texture prior (as the paper's ImageNet pre-training):
    random crop (``crop_fraction`` of the short side), quarter-turn, mirror, gamma 0.7-1.5.
    ``images_dir``: a folder instead of scikit-image's bundled images (e.g. ImageNet)."""
    files = list_image_files(images_dir) if images_dir is not None else natural_image_files()
    if not files:
        raise PiddpmError("no scikit-image sample photographs found; pass images_dir=FOLDER")
    return _draw_from_files(files, extent_nm, rng, crop_fraction, None, (1.0, 1.0), "natural")


def draw_images(
    extent_nm: float,
    rng: np.random.Generator,
    *,
    images_dir: str | os.PathLike | None = None,
    source_pixel_size_um: float | None = None,
    crop_fraction: tuple[float, float] = (0.25, 1.0),
    zoom_jitter: tuple[float, float] = (0.8, 1.25),
) -> Scene:
    """A user's own high-resolution images (SIM, STORM ...) as ground truth.

    With ``source_pixel_size_um`` the images keep their physical scale (times a random zoom
    of ``zoom_jitter``); otherwise the field shows a crop of ``crop_fraction`` of the image.
    """
    if images_dir is None:
        raise PiddpmError("specimen 'images' needs images_dir (a folder of tif/png/jpg files)")
    files = list_image_files(images_dir)
    return _draw_from_files(
        files, extent_nm, rng, crop_fraction, source_pixel_size_um, zoom_jitter, "images"
    )


#: name -> scene generator ``(extent_nm, rng, **options) -> Scene``.
SPECIMENS: Mapping[str, Callable[..., Scene]] = {
    "filaments": draw_filaments,
    "puncta": draw_puncta,
    "er": draw_er,
    "nuclei": draw_nuclei,
    "metaballs": draw_metaballs,
    "phantom": draw_phantom,
    "natural": draw_natural,
    "images": draw_images,
}

#: The default mixture (what ``--specimen mixture`` means): cell-biology structures first,
#: plus generic shape/texture priors. ``images`` needs a folder and is not included.
DEFAULT_MIXTURE: Mapping[str, float] = {
    "filaments": 0.2,
    "puncta": 0.15,
    "er": 0.15,
    "nuclei": 0.1,
    "metaballs": 0.1,
    "phantom": 0.05,
    "natural": 0.25,
}


def _check_name(name: str) -> None:
    if name not in SPECIMENS:
        raise PiddpmError(
            f"unknown specimen {name!r}; expected one of {', '.join(SPECIMENS)} or 'mixture'"
        )


def draw_specimen(
    name: str,
    extent_nm: float,
    *,
    generator: np.random.Generator,
    images_dir: str | os.PathLike | None = None,
    **options,
) -> Scene:
    """Draw the physical description of one specimen over a field ``extent_nm`` wide."""
    _check_name(name)
    if name in ("natural", "images"):
        options["images_dir"] = images_dir
    try:
        return SPECIMENS[name](float(extent_nm), generator, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise PiddpmError(f"specimen {name!r}: {err}") from err
        raise


def render_specimen(
    name: str,
    size: int,
    pixel_size_um: float,
    *,
    generator: np.random.Generator,
    images_dir: str | os.PathLike | None = None,
    normalise: bool = True,
    haze: tuple[float, float] = (0.0, 0.03),
    **options,
) -> np.ndarray:
    """Draw and render one specimen.

    Parameters
    ----------
    name : str
        One of :data:`SPECIMENS` (``filaments, puncta, er, nuclei, metaballs, phantom,
        natural, images``) or ``"mixture"`` (the :data:`DEFAULT_MIXTURE`).
    size : int
        Output side in pixels.
    pixel_size_um : float
        Pixel size in um; the field of view is ``size * pixel_size_um`` um wide.
    generator : numpy.random.Generator
        Source of all randomness (the result is a function of its state).
    images_dir : path, optional
        Image folder for ``natural`` (default: scikit-image's photographs) and ``images``
        (required).
    normalise : bool
        Rescale to a peak of 1 (default). ``False`` returns the raw area-averaged density.
    haze : (float, float)
        Range of a diffuse out-of-structure fluorescence added after normalisation, as a
        fraction of the peak (smooth, 5-20 um correlation); ``(0, 0)`` disables it.
    **options
        Passed to the generator (e.g. ``width_nm=25`` for filaments).

    Returns
    -------
    numpy.ndarray, shape (size, size), float32
        Values in ``[0, 1]`` when ``normalise`` (the default).
    """
    if name == "mixture":
        return SpecimenMixture().render(
            size, pixel_size_um, generator=generator, images_dir=images_dir
        )
    size = int(size)
    if size < 1 or not (pixel_size_um > 0):
        raise PiddpmError(
            f"size {size} and pixel_size_um {pixel_size_um} must be positive for a specimen"
        )
    extent = size * pixel_size_um * 1000.0
    for _ in range(50):  # a sparse specimen can miss a small field: draw again
        scene = draw_specimen(name, extent, generator=generator, images_dir=images_dir, **options)
        img = scene.render(size, pixel_size_um)
        peak = float(img.max())
        if not normalise or peak > 0:
            break
    else:
        raise PiddpmError(
            f"specimen {name!r} left a {extent / 1000:.3g} um field empty in 50 draws; "
            f"check its options {options}"
        )
    if not normalise:
        return img.astype(np.float32)
    img /= peak
    h = _uniform(generator, haze) if haze[1] > 0 else 0.0
    if h > 0:
        bg = _SmoothNoise(generator, extent, corr_nm=_uniform(generator, (5000.0, 20000.0)), n=32)
        centre = (np.arange(size) + 0.5) * pixel_size_um * 1000.0
        img += h * np.exp(0.5 * bg(centre[None, :], centre[:, None]))
        img /= img.max()
    return np.clip(img, 0.0, 1.0).astype(np.float32)


class SpecimenMixture:
    """A weighted choice of specimen generators: each sample is one specimen, picked with
    probability proportional to its weight.

    Parameters
    ----------
    weights : mapping name -> weight, or str, optional
        ``{"filaments": 0.3, "natural": 0.7}`` or the string ``"filaments:0.3,natural:0.7"``
        (a bare name means weight 1; ``"mixture"`` means :data:`DEFAULT_MIXTURE`). Default:
        :data:`DEFAULT_MIXTURE`.
    options : mapping name -> dict, optional
        Generator options per specimen (e.g. ``{"images": {"source_pixel_size_um": 0.03}}``).
    """

    def __init__(
        self,
        weights: Mapping[str, float] | str | None = None,
        options: Mapping[str, Mapping] | None = None,
    ):
        if weights is None or weights == "mixture":
            weights = dict(DEFAULT_MIXTURE)
        elif isinstance(weights, str):
            weights = self.parse(weights)
        weights = dict(weights)
        for name, w in weights.items():
            _check_name(name)
            if not (np.isfinite(w) and w >= 0):
                raise PiddpmError(f"mixture weight for {name!r} is {w}; expected >= 0")
        total = float(sum(weights.values()))
        if total <= 0:
            raise PiddpmError(f"mixture weights {weights} sum to 0; expected a positive sum")
        self.names = list(weights)
        self.probabilities = np.array([weights[n] / total for n in self.names])
        self.options = {k: dict(v) for k, v in (options or {}).items()}

    @staticmethod
    def parse(spec: str) -> dict[str, float]:
        """Parse ``"name:weight,name:weight"`` (a bare ``name`` has weight 1)."""
        out: dict[str, float] = {}
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            name, _, w = part.partition(":")
            name = name.strip()
            if name == "mixture":
                out.update(DEFAULT_MIXTURE)
                continue
            _check_name(name)
            try:
                out[name] = float(w) if w.strip() else 1.0
            except ValueError:
                raise PiddpmError(
                    f"mixture entry {part!r}: weight {w!r} is not a number; expected name:weight"
                ) from None
        if not out:
            raise PiddpmError(f"empty specimen mixture {spec!r}; expected 'name:weight,...'")
        return out

    def __repr__(self) -> str:
        body = ",".join(f"{n}:{p:.3g}" for n, p in zip(self.names, self.probabilities, strict=True))
        return f"SpecimenMixture({body!r})"

    def choose(self, generator: np.random.Generator) -> str:
        """Pick a specimen name (consumes one uniform draw)."""
        i = int(np.searchsorted(np.cumsum(self.probabilities), generator.random(), side="right"))
        return self.names[min(i, len(self.names) - 1)]

    def render(
        self,
        size: int,
        pixel_size_um: float,
        *,
        generator: np.random.Generator,
        images_dir: str | os.PathLike | None = None,
        name: str | None = None,
    ) -> np.ndarray:
        """Pick a specimen (or use ``name``) and render it; see :func:`render_specimen`."""
        name = name or self.choose(generator)
        return render_specimen(
            name,
            size,
            pixel_size_um,
            generator=generator,
            images_dir=images_dir,
            **self.options.get(name, {}),
        )
