"""The automatic Richardson-Lucy iteration rule of ``restore`` (Morozov's discrepancy
principle with a noise level estimated from the data)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["RL_MAX_ITER", "RL_TAU", "noise_sigma", "rl_iterations"]

#: Richardson-Lucy automatic rule: stop when the rms residual reaches RL_TAU x noise ...
RL_TAU = 1.1
#: ... or after this many iterations.
RL_MAX_ITER = 200


def noise_sigma(plane: np.ndarray) -> float:
    """Standard deviation of additive noise in a plane (Immerkaer 1996).

    ``sigma = sqrt(pi / 2) / (6 (W - 2) (H - 2)) * sum |x conv M|`` with the Laplacian-difference
    mask ``M = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]``, which cancels smooth structure. For
    Poisson (signal-dependent) noise it estimates the root of the mean variance closely.

    Reference: J. Immerkaer, "Fast noise variance estimation", CVIU 64, 300 (1996).
    """
    from scipy import ndimage

    x = np.asarray(plane, dtype=np.float64)
    h, w = x.shape
    if h < 3 or w < 3:
        return 0.0
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    c = ndimage.correlate(x, mask, mode="nearest")[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2.0) * np.abs(c).sum() / (6.0 * (w - 2) * (h - 2)))


def rl_iterations(plane01: np.ndarray, psf: np.ndarray, tile: int) -> int:
    """Iteration count for Richardson-Lucy on one plane (the documented automatic rule).

    Morozov's discrepancy principle with an estimated noise level: RL runs on the central
    ``min(tile, H) x min(tile, W)`` crop of the plane and stops at the first iteration ``k``
    where the root-mean-square residual ``||A u_k - x|| / sqrt(N)`` falls to ``tau * sigma``,
    with ``sigma`` the noise level estimated from the data by :func:`noise_sigma` and
    ``tau =`` :data:`RL_TAU` ``= 1.1`` (Morozov's safety factor; the estimate is a little low
    for signal-dependent noise, and a band-limited PSF cannot fit all of the noise), at most
    :data:`RL_MAX_ITER` = 200 iterations. Noisy data stop early (RL would fit the noise), clean data run longer.
    The count found is used for every tile of the plane, so all tiles get the same operator
    (no seams). The rule is invariant to the intensity scale (no camera gain needed).
    """
    import torch

    from piddpm.acquisition import blur
    from piddpm.baselines.richardson_lucy import richardson_lucy
    from piddpm.padding import reflect_pad

    h, w = plane01.shape
    th, tw = min(tile, h), min(tile, w)
    y0, x0 = (h - th) // 2, (w - tw) // 2
    crop = np.ascontiguousarray(plane01[y0 : y0 + th, x0 : x0 + tw], dtype=np.float32)
    kh, kw = psf.shape
    if kh > th or kw > tw:
        return 30
    sigma = noise_sigma(crop)
    ph, pw = kh // 2, kw // 2
    x = torch.from_numpy(crop)[None, None]
    xp = reflect_pad(x, ph, pw).clamp_min(0)
    k_t = torch.from_numpy(psf)[None, None]
    u = None
    with torch.no_grad():
        for k in range(1, RL_MAX_ITER + 1):
            u = (
                richardson_lucy(xp, k_t, 1, init=u)
                if u is not None
                else richardson_lucy(xp, k_t, 1)
            )
            fit = blur(u, k_t, boundary="zero")[..., ph : ph + th, pw : pw + tw]
            rms = float(((fit - x) ** 2).mean().sqrt())
            if rms <= RL_TAU * sigma:
                return k
    return RL_MAX_ITER
