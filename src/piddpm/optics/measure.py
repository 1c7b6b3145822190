"""Measuring PSFs: sub-pixel full width at half maximum and radial profiles.

Used by the physics tests and the benchmarks; handy for checking a measured bead too.
"""

from __future__ import annotations

import numpy as np

from piddpm import PiddpmError

__all__ = ["fwhm", "radial_profile", "psf_fwhm_um"]


def fwhm(profile, spacing: float = 1.0, *, background: float = 0.0) -> float:
    """Full width at half maximum of a 1-D peak, sub-sample by linear interpolation.

    Starting from the maximum, walks left and right to the first samples below
    ``background + (max - background) / 2`` and interpolates linearly between the straddling
    samples.

    Parameters
    ----------
    profile : array-like ``(N,)``
        A single-peaked profile (e.g. a line through the PSF centre).
    spacing : float
        Sample spacing (the width is returned in the same unit).
    background : float
        Level subtracted before taking the half maximum.

    Returns
    -------
    float
        The width, in units of ``spacing``.

    Raises
    ------
    PiddpmError
        If the profile does not fall below half maximum on both sides of its peak.
    """
    y = np.asarray(profile, dtype=np.float64).reshape(-1) - float(background)
    if y.size < 3 or not np.all(np.isfinite(y)):
        raise PiddpmError(f"profile of {y.size} samples is invalid: expected >= 3 finite values")
    i0 = int(np.argmax(y))
    half = y[i0] / 2.0
    if not y[i0] > 0:
        raise PiddpmError("profile has no positive peak above the background")
    left = i0
    while left > 0 and y[left] > half:
        left -= 1
    right = i0
    while right < y.size - 1 and y[right] > half:
        right += 1
    if y[left] > half or y[right] > half:
        raise PiddpmError(
            "profile does not fall below half maximum on both sides of its peak: widen the window"
        )
    x_left = left + (half - y[left]) / (y[left + 1] - y[left])
    x_right = right - (half - y[right]) / (y[right - 1] - y[right])
    return float((x_right - x_left) * spacing)


def radial_profile(image, center=None, bin_width: float = 1.0):
    """Azimuthal mean of a 2-D image in rings of width ``bin_width`` pixels.

    Parameters
    ----------
    image : array-like ``(H, W)``
    center : (cy, cx), optional
        Centre in pixels; default ``(H // 2, W // 2)``.
    bin_width : float
        Ring width in pixels.

    Returns
    -------
    radius, mean : ndarray ``(R,)``
        Mean radius of the pixels in each ring (pixels) and their mean value.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise PiddpmError(f"image has shape {img.shape}: expected a 2-D image")
    h, w = img.shape
    cy, cx = (h // 2, w // 2) if center is None else center
    yy, xx = np.indices(img.shape)
    r = np.hypot(yy - cy, xx - cx)
    idx = np.floor(r / bin_width + 0.5).astype(int)
    counts = np.bincount(idx.ravel())
    keep = counts > 0
    mean = np.bincount(idx.ravel(), img.ravel())[keep] / counts[keep]
    radius = np.bincount(idx.ravel(), r.ravel())[keep] / counts[keep]
    return radius, mean


def psf_fwhm_um(psf3d, pixel_size_um: float, z_step_um: float | None = None) -> dict:
    """Lateral (x, y) and axial FWHM of a 3-D PSF through its brightest voxel.

    Parameters
    ----------
    psf3d : array-like ``(Z, H, W)`` or ``(H, W)``
    pixel_size_um, z_step_um : float
        Voxel size in micrometres.

    Returns
    -------
    dict with ``x_um``, ``y_um`` and (3-D input) ``z_um``.
    """
    arr = np.asarray(psf3d, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise PiddpmError(f"psf3d has shape {arr.shape}: expected (Z, H, W) or (H, W)")
    iz, iy, ix = np.unravel_index(int(np.argmax(arr)), arr.shape)
    out = {
        "x_um": fwhm(arr[iz, iy, :], pixel_size_um),
        "y_um": fwhm(arr[iz, :, ix], pixel_size_um),
    }
    if arr.shape[0] > 1:
        if z_step_um is None:
            raise PiddpmError("z_step_um is required for the axial FWHM of a 3-D PSF")
        out["z_um"] = fwhm(arr[:, iy, ix], z_step_um)
    return out
