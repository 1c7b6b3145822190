"""2-D PSF kernels from microscope settings: what restore, evaluation and RL need.

A thin layer over :func:`widefield_psf` / :func:`confocal_psf`: it sizes the kernel from the
Airy unit and returns the in-focus plane as a unit-sum NumPy array.
"""

from __future__ import annotations

import math

import numpy as np

from piddpm import PiddpmError

__all__ = ["make_psf", "psf_size_for"]


def psf_size_for(airy_um: float, pixel_um: float) -> int:
    """Kernel side covering +-2 Airy units (to the 3rd dark ring), odd, 9..129 px."""
    n = 2 * math.ceil(2.0 * airy_um / pixel_um) + 1
    return int(min(max(n, 9), 129))


def make_psf(
    *,
    modality: str = "widefield",
    na: float,
    em_nm: float,
    pixel_um: float,
    ri: float = 1.33,
    ex_nm: float | None = None,
    pinhole_au: float = 1.0,
    size: int | None = None,
) -> np.ndarray:
    """In-focus 2-D PSF from microscope settings (via :mod:`piddpm.optics`).

    Parameters
    ----------
    modality : {"widefield", "confocal"}
    na : float
        Numerical aperture.
    em_nm : float
        Emission wavelength in nanometres.
    pixel_um : float
        Pixel size in the sample plane, micrometres.
    ri : float
        Immersion refractive index (default 1.33, water).
    ex_nm : float, optional
        Excitation wavelength in nanometres (confocal only; required there).
    pinhole_au : float
        Pinhole diameter in Airy units (confocal only; default 1).
    size : int, optional
        Kernel side in pixels (odd). Default: covering +-2 Airy units, 9 to 129 pixels.

    Returns
    -------
    numpy.ndarray ``(size, size)`` float32, unit sum.
    """
    from piddpm.optics.psf import airy_unit_um, confocal_psf, project_psf, widefield_psf

    for name, value in (("na", na), ("em_nm", em_nm), ("pixel_um", pixel_um)):
        if value is None:
            raise PiddpmError(
                f"microscope option {name} is missing; a computed PSF needs --na, --em-nm "
                "and --pixel-um (and --ex-nm for confocal), or give --psf FILE"
            )
    if size is None:
        size = psf_size_for(airy_unit_um(float(na), float(em_nm)), float(pixel_um))
    if modality == "widefield":
        psf3 = widefield_psf(float(na), float(em_nm), float(pixel_um), int(size), ri=float(ri))
    elif modality == "confocal":
        if ex_nm is None:
            raise PiddpmError("a confocal PSF needs the excitation wavelength (--ex-nm)")
        psf3 = confocal_psf(
            float(na),
            float(ex_nm),
            float(em_nm),
            float(pinhole_au),
            float(pixel_um),
            int(size),
            ri=float(ri),
        )
    else:
        raise PiddpmError(f"modality {modality!r} is not known; expected widefield or confocal")
    return project_psf(psf3, "focus").detach().cpu().numpy().astype(np.float32)
