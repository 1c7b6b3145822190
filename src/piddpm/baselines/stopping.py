"""The automatic Richardson-Lucy iteration rule of ``restore`` (Morozov's discrepancy
principle with a noise level estimated from the data)."""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "RL_MAX_ITER",
    "RL_TAU",
    "best_iteration_count",
    "noise_sigma",
    "rl_iterations",
    "rl_iterations_3d",
]

#: Richardson-Lucy automatic rule: stop when the rms residual reaches RL_TAU x noise ...
RL_TAU = 1.1
#: ... or after this many iterations.
RL_MAX_ITER = 200


def noise_sigma(plane: np.ndarray) -> float:
    """Standard deviation of additive noise in a plane (Immerkaer 1996).

    ``sigma = sqrt(pi / 2) / (6 (W - 2) (H - 2)) * sum |x conv M|`` with the Laplacian-difference
    mask ``M = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]``, which cancels smooth structure. For
    Poisson (signal-dependent) noise it estimates the root of the mean variance closely.

    A 3-D stack ``(Z, H, W)`` gives the root mean square of its planes' estimates (the noise
    of each plane is independent; the mask works within a plane, where the sampling is
    finest).

    Reference: J. Immerkaer, "Fast noise variance estimation", CVIU 64, 300 (1996).
    """
    from scipy import ndimage

    x = np.asarray(plane, dtype=np.float64)
    if x.ndim == 3:
        return float(math.sqrt(np.mean([noise_sigma(p) ** 2 for p in x])))
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

    A 3-D stack ``(Z, H, W)`` with a 3-D PSF ``(kz, kh, kw)`` gets the same rule in 3-D
    (:func:`rl_iterations_3d`, used by ``rl-3d``); 2-D input is unchanged by it.
    """
    if np.ndim(psf) == 3:
        return rl_iterations_3d(plane01, psf, tile)
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


def rl_iterations_3d(stack01: np.ndarray, psf: np.ndarray, tile: int) -> int:
    """Iteration count for 3-D Richardson-Lucy on a stack: the rule of :func:`rl_iterations`.

    Morozov's discrepancy principle on the central ``min(tile, H) x min(tile, W)`` XY crop
    of the whole stack: 3-D RL (:mod:`piddpm.baselines.rl3d`, extended-object boundary, so
    no reflect padding is needed) stops at the first iteration ``k >= 1`` where the rms
    residual ``||A u_k - x|| / sqrt(N)`` over the crop's voxels falls to
    :data:`RL_TAU` ``x sigma``, ``sigma`` the rms over planes of the Immerkaer noise level
    (:func:`noise_sigma`), at most :data:`RL_MAX_ITER` iterations.

    Parameters
    ----------
    stack01 : numpy.ndarray ``(Z, H, W)``
        The stack, any intensity scale, ``>= 0``.
    psf : numpy.ndarray ``(kz, kh, kw)``
        3-D PSF, odd sides, unit sum (see :func:`piddpm.baselines.rl3d.check_psf_3d`).
    tile : int
        Crop side in pixels.

    Returns
    -------
    int
        The iteration count (30 when the PSF does not fit in the crop).
    """
    import torch

    from piddpm.baselines.rl3d import _rl_block

    z, h, w = stack01.shape
    th, tw = min(tile, h), min(tile, w)
    y0, x0 = (h - th) // 2, (w - tw) // 2
    crop = np.ascontiguousarray(stack01[:, y0 : y0 + th, x0 : x0 + tw], dtype=np.float32)
    kz, kh, kw = psf.shape
    if kz > z or kh > th or kw > tw:
        return 30
    target = RL_TAU * noise_sigma(crop)
    x = torch.from_numpy(np.clip(crop, 0, None))

    def monitor(k: int, model: torch.Tensor) -> bool:
        return k >= 1 and float(((model - x) ** 2).mean().sqrt()) <= target

    with torch.no_grad():
        _, done = _rl_block(x, torch.from_numpy(psf.astype(np.float32)), RL_MAX_ITER, 0.0,
                            1e-12, monitor)  # fmt: skip
    return int(done)


def best_iteration_count(
    image: np.ndarray, psf: np.ndarray, truth: np.ndarray, max_iter: int = RL_MAX_ITER, **rl_kwargs
) -> tuple[np.ndarray, int, float]:
    """The oracle stopping rule: 2-D Richardson-Lucy stopped at the iteration count (``1 ..
    max_iter``) whose estimate has the best PSNR against ``truth``.

    A reference for automatic rules on simulated data (the ceiling of any rule that picks a
    count for these iterates), not a method: a real image has no ground truth.

    Parameters
    ----------
    image, psf : numpy.ndarray ``(H, W)``, ``(kh, kw)``
        As for :func:`piddpm.baselines.richardson_lucy`.
    truth : numpy.ndarray ``(H, W)``
        The object in the estimate's units (e.g. the ground truth times the photons per
        unit); PSNR uses its range (max - min).
    max_iter : int
        Largest count tried.
    **rl_kwargs
        Passed to :func:`~piddpm.baselines.richardson_lucy` (``background``, ``read_noise``,
        ``boundary``, ...).

    Returns
    -------
    (numpy.ndarray, int, float)
        The best estimate (float64), its iteration count and its PSNR in dB.
    """
    from piddpm.baselines.richardson_lucy import richardson_lucy
    from piddpm.metrics import psnr

    truth = np.asarray(truth, np.float64)
    u = richardson_lucy(image, psf, 1, **rl_kwargs)
    best, best_n, best_db = u, 1, psnr(u.astype(np.float64), truth)
    for n in range(2, int(max_iter) + 1):
        u = richardson_lucy(image, psf, 1, init=u, **rl_kwargs)
        db = psnr(u.astype(np.float64), truth)
        if db > best_db:
            best, best_n, best_db = u, n, db
    return best.astype(np.float64), best_n, float(best_db)
