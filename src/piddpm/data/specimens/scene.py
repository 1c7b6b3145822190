"""The physical scene description of a specimen and its exact rendering to a pixel grid.

A :class:`Scene` is a field ``[0, extent_nm)^2`` and a list of layers (curves, spots,
analytic fields, rasters); each layer renders the area average of its fluorophore density
over every pixel, so one scene gives consistent images at any pixel size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, special

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


def _subgrid(size: int, pixel_nm: float, s: int) -> np.ndarray:
    """Centres (nm) of the ``size * s`` sub-pixels along one axis."""
    return (np.arange(size * s) + 0.5) * (pixel_nm / s)


def _block_mean(a: np.ndarray, s: int) -> np.ndarray:
    n = a.shape[0] // s
    return a.reshape(n, s, n, s).mean(axis=(1, 3)) if s > 1 else a
