"""Random geometry shared by the specimen generators (all in nm, independent of pixels)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


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
