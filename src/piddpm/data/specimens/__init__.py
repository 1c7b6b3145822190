"""Synthetic 2-D specimens drawn at physical sizes and rendered to any pixel grid.

Every generator works in two stages:

1. **draw** a :class:`Scene`: a physical description of the specimen in nanometres over a
   square field of view ``[0, extent_nm)^2`` (filament centre lines, vesicle centres and
   diameters, nuclear outlines, ...). Only this stage consumes random numbers, and it never
   looks at the pixel size.
2. **render** the scene onto a pixel grid: every pixel receives the *area average* of the
   fluorophore density over its square (structures are described analytically, with a
   Gaussian cross-section for thin ones, and integrated exactly over each pixel with error
   functions; extended regions are supersampled). So the same scene gives consistent images
   at 20 nm or 200 nm pixels: binning a 20 nm rendering by 2 reproduces the 40 nm rendering.

Intensities are fluorophore densities relative to a fully labelled structure (1 = a structure
that covers the whole pixel at full labelling). :func:`render_specimen` draws and renders one
specimen and, by default, rescales it to a peak of 1 (values in ``[0, 1]``).

Physical sizes (defaults; every one is a keyword option of the generator):

===========  ==============================================================================
filaments    microtubule-like smooth random curves, equivalent width 25 nm, persistence
             length 2-30 um, 3-20 um long, 30 % in bundles of 2-4 at 30-60 nm spacing
puncta       vesicles (filled disks) and clathrin-coated pits (rings of 20-30 nm wall),
             diameters 50-150 nm, 0.3-3 per um^2
er           tubular network (edges of a random Voronoi tessellation, mesh 0.4-1.5 um),
             tubule equivalent width 50-90 nm, plus 0-3 sheets (0.5-3 um, density 0.15-0.5)
nuclei       textured blobs 5-15 um across (chromatin texture 0.2-1 um, dark nucleoli)
metaballs    implicit blobs: sum of Gaussian kernels (radii 1.5-12 % of the field)
             thresholded, intensity rising with the distance to the edge, sinusoidal
             texture; scale-free (a generic shape prior, as in the paper's reference)
phantom      Shepp-Logan phantom, 40-110 % of the field, rotated, flipped, shifted
natural      grey photographs (scikit-image's bundled images, or any folder), crops of
             25-100 % of the photograph's side, flipped/rotated; scale-free
images       a user's folder of high-resolution images (SIM, STORM ...): scale-free, or at
             their physical pixel size when ``source_pixel_size_um`` is given
===========  ==============================================================================

The package holds the pieces by responsibility, all importable from here: ``scene`` (the
scene and its layers), ``cells`` (filaments, puncta, er, nuclei), ``shapes`` (metaballs,
phantom), ``images`` (natural photographs and image folders) and ``registry``
(:data:`SPECIMENS`, :data:`DEFAULT_MIXTURE`, :func:`render_specimen`, :class:`SpecimenMixture`).
"""

# The generators (draw_*) and Layer are importable from here as before, but not in __all__.
from piddpm.data.specimens.cells import draw_er, draw_filaments, draw_nuclei, draw_puncta  # noqa: F401
from piddpm.data.specimens.images import (
    IMAGE_SUFFIXES,
    draw_images,  # noqa: F401
    draw_natural,  # noqa: F401
    list_image_files,
    natural_image_files,
)
from piddpm.data.specimens.registry import (
    DEFAULT_MIXTURE,
    SPECIMENS,
    SpecimenMixture,
    draw_specimen,
    render_specimen,
)
from piddpm.data.specimens.scene import (
    CurveLayer,
    FieldLayer,
    Layer,  # noqa: F401
    RasterLayer,
    Scene,
    SpotLayer,
)
from piddpm.data.specimens.shapes import draw_metaballs, draw_phantom  # noqa: F401

__all__ = [
    "DEFAULT_MIXTURE",
    "IMAGE_SUFFIXES",
    "SPECIMENS",
    "CurveLayer",
    "FieldLayer",
    "RasterLayer",
    "Scene",
    "SpecimenMixture",
    "SpotLayer",
    "draw_specimen",
    "list_image_files",
    "natural_image_files",
    "render_specimen",
]
