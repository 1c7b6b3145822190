"""Synthetic training data: specimens, random microscopes, a PSF bank and paired datasets.

See ``docs/data.md``. The pieces::

    render_specimen(name, size, pixel_size_um, generator=rng)   # (size, size) float32 in [0, 1]
    SpecimenMixture("filaments:0.3,natural:0.7")                 # weighted choice per sample
    sample_microscope(MicroscopeRanges(), rng)                   # one random microscope
    PSFBank(ranges, n_kernels=256)                               # batched, disk-cached kernels
    PairedDataset(size=128, specimens="mixture")                 # torch Dataset of pairs
"""

from piddpm.data.dataset import PairedDataset, normalisation_map, normalisation_note
from piddpm.data.microscopes import (
    FixedMicroscope,
    MicroscopeJitter,
    MicroscopeParams,
    MicroscopeRanges,
    sample_microscope,
    sample_microscopes,
    sample_noise,
)
from piddpm.data.psf_bank import PSFBank, compute_kernels, default_cache_dir
from piddpm.data.specimens import (
    DEFAULT_MIXTURE,
    SPECIMENS,
    Scene,
    SpecimenMixture,
    draw_specimen,
    list_image_files,
    natural_image_files,
    render_specimen,
)

__all__ = [
    "DEFAULT_MIXTURE",
    "SPECIMENS",
    "FixedMicroscope",
    "MicroscopeJitter",
    "MicroscopeParams",
    "MicroscopeRanges",
    "PSFBank",
    "PairedDataset",
    "Scene",
    "SpecimenMixture",
    "compute_kernels",
    "default_cache_dir",
    "draw_specimen",
    "list_image_files",
    "natural_image_files",
    "normalisation_map",
    "normalisation_note",
    "render_specimen",
    "sample_microscope",
    "sample_microscopes",
    "sample_noise",
]
