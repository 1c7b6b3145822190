"""A PSF bank made from one measured PSF (``data.psf_file``, ``piddpm fit --psf``).

Every kernel is the measured PSF (its brightest plane for a z-stack; background removed,
centred on its centroid, cropped to the kernel size, unit sum) magnified by a random factor
in ``1 +- width_jitter`` (the bead size, focus and calibration are never exact); the
microscope parameters of each entry (used for the camera draws and records) come from the
ranges as in :class:`piddpm.data.PSFBank`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from piddpm import PiddpmError
from piddpm.data.psf_bank import PSFBank

__all__ = ["MeasuredPSFBank", "measured_kernel"]


def measured_kernel(path: str | os.PathLike, kernel_size: int) -> np.ndarray:
    """The measured PSF in ``path`` as a unit-sum ``(k, k)`` kernel centred on its centroid.

    The background (the median of the file's border pixels) is subtracted and negative
    values clipped. Raises :class:`piddpm.PiddpmError` for an unreadable, empty or flat file.
    """
    from scipy import ndimage

    from piddpm.io import read_image

    data = np.asarray(read_image(path).data, dtype=np.float64)
    if data.ndim == 3:
        data = data[int(np.argmax(data.reshape(data.shape[0], -1).max(axis=1)))]
    if data.ndim != 2 or min(data.shape) < 5:
        raise PiddpmError(f"{path}: a measured PSF must be 2-D or a z-stack (got {data.shape})")
    border = np.concatenate([data[0], data[-1], data[:, 0], data[:, -1]])
    data = np.clip(data - np.median(border), 0.0, None)
    if not data.sum() > 0:
        raise PiddpmError(f"{path}: the PSF holds no signal above its border level")
    cy, cx = ndimage.center_of_mass(data)
    k = int(kernel_size)
    coords = np.mgrid[0:k, 0:k].astype(np.float64)
    coords[0] += cy - k // 2
    coords[1] += cx - k // 2
    kernel = np.clip(ndimage.map_coordinates(data, coords, order=1, cval=0.0), 0.0, None)
    return kernel / kernel.sum()


def _magnify(kernel: np.ndarray, factor: float) -> np.ndarray:
    from scipy import ndimage

    k = kernel.shape[0]
    c = (k - 1) / 2.0
    grid = np.mgrid[0:k, 0:k].astype(np.float64)
    coords = (grid - c) / factor + c
    out = np.clip(ndimage.map_coordinates(kernel, coords, order=1, cval=0.0), 0.0, None)
    return out / out.sum()


class MeasuredPSFBank(PSFBank):
    """:class:`PSFBank` whose kernels are one measured PSF with a random magnification.

    Parameters
    ----------
    psf_path : path
        The measured PSF (TIFF/PNG/Zarr, 2-D or ZYX), sampled at the training pixel size.
    width_jitter : float
        Magnification drawn uniformly in ``1 +- width_jitter`` per kernel (default 0.05).
    **kwargs
        As :class:`PSFBank` (no disk cache: the bank is cheap).
    """

    def __init__(self, psf_path, *args, width_jitter: float = 0.05, **kwargs):
        self.psf_path = Path(psf_path)
        self.width_jitter = float(width_jitter)
        kwargs["cache_dir"] = False
        super().__init__(*args, **kwargs)

    def _load_or_build(self):
        params = self._draw()
        base = measured_kernel(self.psf_path, self.kernel_size)
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(2,)))
        factors = rng.uniform(1 - self.width_jitter, 1 + self.width_jitter, len(params))
        kernels = np.stack([_magnify(base, f) for f in factors]).astype(np.float32)
        return params, torch.from_numpy(kernels)
