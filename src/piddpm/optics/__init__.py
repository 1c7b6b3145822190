"""Optics: vectorial widefield and confocal PSFs, 2-D kernels, OTFs (pure torch).

See ``docs/optics.md`` for the model, formulas and conventions.
"""

from piddpm.optics.kernels import make_psf, psf_size_for
from piddpm.optics.measure import fwhm, psf_fwhm_um, radial_profile
from piddpm.optics.otf import frequencies_per_um, otf
from piddpm.optics.psf import (
    airy_unit_um,
    check_psf,
    confocal_psf,
    nyquist_pixel_um,
    project_psf,
    widefield_psf,
    z_positions_um,
)
from piddpm.optics.zernike import noll_to_nm, zernike

__all__ = [
    "widefield_psf",
    "confocal_psf",
    "project_psf",
    "otf",
    "frequencies_per_um",
    "zernike",
    "noll_to_nm",
    "airy_unit_um",
    "nyquist_pixel_um",
    "z_positions_um",
    "check_psf",
    "fwhm",
    "radial_profile",
    "psf_fwhm_um",
    "make_psf",
    "psf_size_for",
]
