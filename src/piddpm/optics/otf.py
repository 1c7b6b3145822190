"""Optical transfer functions of sampled PSFs."""

from __future__ import annotations

import operator

import torch

from piddpm import PiddpmError
from piddpm.optics.psf import check_psf

__all__ = ["otf", "frequencies_per_um"]


def otf(psf: torch.Tensor, shape: tuple[int, ...] | None = None, *, ndim: int = 2) -> torch.Tensor:
    """Centred optical transfer function of a PSF, normalised so that ``OTF(0) = 1``.

    Parameters
    ----------
    psf : Tensor ``(..., H, W)`` (or ``(..., Z, H, W)`` with ``ndim=3``)
        Non-negative PSF with its centre at pixel ``n // 2`` on each transformed axis.
    shape : tuple of int, optional
        Grid of the OTF along the last ``ndim`` axes, each ``>=`` the PSF's; the PSF is
        zero-padded around its centre (finer frequency sampling). Default: the PSF's shape.
    ndim : {2, 3}
        Number of trailing axes to transform (2: lateral OTF of each plane / 2-D kernel).

    Returns
    -------
    complex Tensor ``(..., *shape)``
        ``OTF[k] = sum_x psf(x) exp(-2 pi i k x)`` / ``sum psf``, zero frequency at index
        ``n // 2`` of each axis (``fftshift`` order); frequency ``k`` of index ``i`` is
        ``(i - n // 2) / (n * pixel)``, see :func:`frequencies_per_um`.

    Raises
    ------
    PiddpmError
        If the PSF is negative, all zero, not finite, or ``shape`` is smaller than the PSF.
    """
    if ndim not in (2, 3):
        raise PiddpmError(f"ndim {ndim!r} is invalid: expected 2 or 3")
    psf = check_psf(psf, "psf", min_dim=ndim)
    dims = tuple(range(-ndim, 0))
    in_shape = tuple(psf.shape[-ndim:])
    if shape is None:
        shape = in_shape
    shape = tuple(operator.index(s) for s in shape)
    if len(shape) != ndim or any(s < n for s, n in zip(shape, in_shape, strict=True)):
        raise PiddpmError(
            f"OTF shape {shape} is invalid for a PSF of shape {in_shape}: expected {ndim} sizes, "
            "each at least the PSF's"
        )
    if shape != in_shape:
        pad = []
        for s, n in zip(reversed(shape), reversed(in_shape), strict=True):
            before = s // 2 - n // 2  # keeps the centre pixel at index s // 2
            pad += [before, s - n - before]
        psf = torch.nn.functional.pad(psf, pad)
    psf = psf / psf.sum(dim=dims, keepdim=True)
    spec = torch.fft.fftn(torch.fft.ifftshift(psf, dim=dims), dim=dims)
    return torch.fft.fftshift(spec, dim=dims)


def frequencies_per_um(n: int, pixel_size_um: float, *, dtype=torch.float64) -> torch.Tensor:
    """Spatial frequencies (cycles per micrometre) of a centred OTF axis of length ``n``."""
    if not pixel_size_um > 0:
        raise PiddpmError(f"pixel_size_um = {pixel_size_um!r} is invalid: expected > 0")
    return (torch.arange(n, dtype=dtype) - n // 2) / (n * float(pixel_size_um))
