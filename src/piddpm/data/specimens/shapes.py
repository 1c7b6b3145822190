"""Generic, scale-free shape priors: metaballs and the Shepp-Logan phantom."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from piddpm.data.specimens._random import _uniform
from piddpm.data.specimens.scene import RasterLayer, Scene, _block_mean, _subgrid


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
