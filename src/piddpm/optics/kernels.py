"""PSF kernels from microscope settings: what restore, evaluation and RL need.

A thin layer over :func:`widefield_psf` / :func:`confocal_psf`: it sizes the kernel from the
Airy unit and returns the in-focus plane (:func:`make_psf`) or a z-stack sampled at the
stack's z step (:func:`make_psf_3d`, for ``rl-3d``) as a unit-sum NumPy array.
"""

from __future__ import annotations

import math

import numpy as np

from piddpm import PiddpmError

__all__ = ["axial_fwhm_um", "make_psf", "make_psf_3d", "psf_size_for"]


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


def axial_fwhm_um(na: float, em_nm: float, ri: float = 1.33) -> float:
    """Axial FWHM of a widefield PSF, ``0.88 lambda / (n - sqrt(n^2 - NA^2))`` (micrometres).

    The non-paraxial estimate for a point source (it tends to ``1.77 n lambda / NA^2``, the
    ``~2 n lambda / NA^2`` scale, at low NA); used to size computed 3-D PSFs.
    """
    na, n = float(na), float(ri)
    return 0.88 * float(em_nm) * 1e-3 / (n - (n * n - na * na) ** 0.5)


def make_psf_3d(
    *,
    modality: str = "widefield",
    na: float,
    em_nm: float,
    pixel_um: float,
    z_step_um: float,
    n_z: int | None = None,
    max_planes: int | None = None,
    ri: float = 1.33,
    ex_nm: float | None = None,
    pinhole_au: float = 1.0,
    size: int | None = None,
) -> np.ndarray:
    """3-D PSF ``(n_z, size, size)`` from microscope settings, on a stack's voxel grid.

    The planes are at ``z = (k - n_z // 2) * z_step_um`` (:func:`z_positions_um`; the focus
    is plane ``n_z // 2``), each computed by :func:`widefield_psf` / :func:`confocal_psf`.

    Parameters
    ----------
    modality, na, em_nm, pixel_um, ri, ex_nm, pinhole_au, size
        As for :func:`make_psf` (``size``: lateral side, default +-2 Airy units).
    z_step_um : float
        Distance between planes of the stack, micrometres.
    n_z : int, optional
        Number of planes (made odd). Default: covering +-4 axial FWHM
        (:func:`axial_fwhm_um`), at least 3, capped by ``max_planes``.
    max_planes : int, optional
        Cap on the planes (a stack's depth; an even cap gives one plane less).

    Returns
    -------
    numpy.ndarray ``(n_z, size, size)`` float32, unit sum over the volume.
    """
    import math

    from piddpm.optics.psf import airy_unit_um, confocal_psf, widefield_psf, z_positions_um

    for name, value in (("na", na), ("em_nm", em_nm), ("pixel_um", pixel_um)):
        if value is None:
            raise PiddpmError(
                f"microscope option {name} is missing; a computed 3-D PSF needs --na, --em-nm, "
                "--pixel-um and --z-step-um (and --ex-nm for confocal), or give --psf FILE"
            )
    if z_step_um is None or not (math.isfinite(float(z_step_um)) and float(z_step_um) > 0):
        raise PiddpmError(
            f"z step {z_step_um!r} um is missing or invalid; a computed 3-D PSF needs "
            "--z-step-um (micrometres between planes) or a file that records it"
        )
    if n_z is None:
        reach = 4.0 * axial_fwhm_um(na, em_nm, ri)
        n_z = max(2 * math.ceil(reach / float(z_step_um)) + 1, 3)
    if max_planes is not None:
        n_z = min(int(n_z), int(max_planes))
    n_z = max(int(n_z) - (1 - int(n_z) % 2), 1)
    if size is None:
        size = psf_size_for(airy_unit_um(float(na), float(em_nm)), float(pixel_um))
    z = z_positions_um(n_z, float(z_step_um))
    if modality == "widefield":
        psf3 = widefield_psf(float(na), float(em_nm), float(pixel_um), int(size), ri=float(ri),
                             z_um=z)  # fmt: skip
    elif modality == "confocal":
        if ex_nm is None:
            raise PiddpmError("a confocal PSF needs the excitation wavelength (--ex-nm)")
        psf3 = confocal_psf(float(na), float(ex_nm), float(em_nm), float(pinhole_au),
                            float(pixel_um), int(size), ri=float(ri), z_um=z)  # fmt: skip
    else:
        raise PiddpmError(f"modality {modality!r} is not known; expected widefield or confocal")
    arr = psf3.detach().cpu().numpy().astype(np.float64)
    return (arr / arr.sum()).astype(np.float32)
