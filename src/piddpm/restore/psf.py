"""The PSF of a restore: given (array or file) or computed from the microscope settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from piddpm import PiddpmError
from piddpm.optics.kernels import make_psf, psf_size_for
from piddpm.restore.inputs import check_dtype

__all__ = ["load_psf", "microscope_options", "resolve_psf"]


def load_psf(psf, where: str = "psf") -> tuple[np.ndarray, str]:
    """A 2-D unit-sum PSF from an array (2-D, or 3-D ``(Z, kh, kw)``) or an image file.

    A 3-D PSF is reduced to its in-focus plane, taken as the plane with the brightest pixel
    (measured bead stacks are rarely centred). Negative values beyond round-off are refused;
    the result is renormalised to unit sum.

    Returns
    -------
    (numpy.ndarray ``(kh, kw)`` float32, description str)
    """
    desc = "array"
    if isinstance(psf, str | Path):
        from piddpm.io import read_image

        img = read_image(psf)
        where, desc = str(psf), f"file {psf}"
        if "S" in img.axes:
            raise PiddpmError(f"PSF file {psf} is a colour image; expected a grey PSF")
        arr = np.asarray(img.data)
        lead = tuple(i for i, a in enumerate(img.axes[:-2]) if arr.shape[i] > 1 and a != "Z")
        if lead:
            raise PiddpmError(
                f"PSF file {psf} has axes {img.axes!r} with more than one "
                f"{''.join(img.axes[i] for i in lead)} entry; expected a 2-D PSF or a Z stack"
            )
        arr = arr.reshape(-1, *arr.shape[-2:])
    else:
        if hasattr(psf, "detach"):
            psf = psf.detach().cpu().numpy()
        arr = np.asarray(psf)
        arr = arr.reshape(-1, *arr.shape[-2:]) if arr.ndim >= 2 else arr
    check_dtype(arr.dtype, where)
    if arr.ndim < 2 or arr.size == 0:
        raise PiddpmError(f"{where}: PSF has shape {arr.shape}; expected (kh, kw) or (Z, kh, kw)")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise PiddpmError(f"{where}: PSF contains NaN or infinite values")
    if arr.shape[0] > 1:
        k = int(np.argmax(arr.reshape(arr.shape[0], -1).max(axis=1)))
        arr = arr[k]
        desc += f" (plane {k} of a 3-D stack, the brightest)"
    else:
        arr = arr[0]
    peak = np.abs(arr).max()
    if arr.min() < -1e-6 * peak:
        raise PiddpmError(
            f"{where}: PSF has negative values (min {arr.min():.3g}); subtract the background "
            "and clip at 0 first"
        )
    arr = np.clip(arr, 0, None)
    total = arr.sum()
    if not total > 0:
        raise PiddpmError(f"{where}: PSF sums to zero; expected a positive kernel")
    return (arr / total).astype(np.float32), desc


def microscope_options(microscope: dict, pixel_um, where: str) -> dict:
    """The given microscope settings for :func:`~piddpm.optics.make_psf` (or ``make_psf_3d``):
    ``None`` values dropped, the pixel size filled in (required), widefield by default."""
    opts = {k: v for k, v in dict(microscope).items() if v is not None}
    opts.setdefault("pixel_um", pixel_um)
    if opts.get("pixel_um") is None:
        raise PiddpmError(
            f"{where}: the pixel size is unknown; a computed PSF needs --pixel-um "
            "(micrometres per pixel in the sample)"
        )
    opts.setdefault("modality", "widefield")
    return opts


def resolve_psf(psf, microscope: dict | None, pixel_um, plane_shape, where: str):
    """The restore's PSF: ``psf`` when given (it wins over the microscope settings, which then
    only set the sampling plan), else computed from ``microscope``, else none.

    Returns
    -------
    (psf array or None, description or None, pixel size in um or None)
        The pixel size is the one a computed PSF used (the microscope's ``pixel_um`` wins).
    """
    height, width = plane_shape
    psf_np, psf_desc = None, None
    if psf is not None:
        psf_np, psf_desc = load_psf(psf)
    elif microscope and any(microscope.get(k) is not None for k in ("na", "em_nm", "ex_nm")):
        opts = microscope_options(microscope, pixel_um, where)
        pixel_um = float(opts["pixel_um"])
        size_cap = min(height, width) - (1 - min(height, width) % 2)
        if opts.get("size") is None:
            from piddpm.optics import airy_unit_um

            opts["size"] = min(
                psf_size_for(airy_unit_um(float(opts["na"]), float(opts["em_nm"])), pixel_um)
                if opts.get("na") and opts.get("em_nm")
                else 9,
                size_cap,
            )
        psf_np = make_psf(**opts)
        psf_desc = "computed: " + ", ".join(f"{k}={v}" for k, v in sorted(opts.items()))
    if psf_np is not None:
        kh, kw = psf_np.shape
        if kh > height or kw > width:
            raise PiddpmError(
                f"the PSF ({kh} x {kw} pixels, {psf_desc}) is larger than the image plane "
                f"({height} x {width}); crop the PSF to its central part"
            )
    return psf_np, psf_desc, pixel_um
