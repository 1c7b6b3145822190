"""Restore real images: ``piddpm.restore(image, ...)`` with tiling and intensity handling.

The package, by responsibility:

- :mod:`~piddpm.restore.api`: :func:`restore` itself, the pipeline in order;
- :mod:`~piddpm.restore.inputs`: checks of the image, axes, dtype, device and options;
- :mod:`~piddpm.restore.psf`: the PSF, given or computed (:func:`piddpm.optics.make_psf`);
- :mod:`~piddpm.restore.settings`: the model, its percentiles, tiling and schedule;
- :mod:`~piddpm.restore.sampling`: resampling into the model's pixel-size range;
- :mod:`~piddpm.restore.runners`: per method, how tiles are restored;
- :mod:`~piddpm.restore.planes`: the plane loop; :mod:`~piddpm.restore.result`: the result.

Sampler settings come from :class:`piddpm.diffusion.SamplerConfig`; the automatic RL
iteration rule from :mod:`piddpm.baselines`.
"""

from __future__ import annotations

import sys
import types

from piddpm.baselines.stopping import RL_MAX_ITER, RL_TAU, noise_sigma, rl_iterations
from piddpm.choices import GuidanceChoice, RegulariserChoice, RestoreMethod, Sampler, options
from piddpm.normalisation import DEFAULT_PERCENTILES
from piddpm.optics.kernels import make_psf
from piddpm.restore.api import restore
from piddpm.restore.inputs import MIN_PLANE_SIZE, resolve_device
from piddpm.restore.psf import load_psf
from piddpm.restore.result import RestoreResult
from piddpm.restore.settings import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    TILE_MARGIN_FRACTION,
    schedule_for,
)

#: Restoration methods (``rl`` needs a PSF and no model).
METHODS = options(RestoreMethod)
#: Diffusion samplers.
SAMPLERS = options(Sampler)
#: Physics guidance a caller can ask for.
GUIDANCES = options(GuidanceChoice)
#: Sampling regularisers as a setting.
REGULARISERS = options(RegulariserChoice)

# older private names, kept for scripts that used them
_schedule_for = schedule_for

__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_PERCENTILES",
    "DEFAULT_TILE",
    "GUIDANCES",
    "METHODS",
    "MIN_PLANE_SIZE",
    "REGULARISERS",
    "RL_MAX_ITER",
    "RL_TAU",
    "SAMPLERS",
    "TILE_MARGIN_FRACTION",
    "RestoreResult",
    "load_psf",
    "make_psf",
    "noise_sigma",
    "resolve_device",
    "restore",
    "rl_iterations",
]


class _CallableModule(types.ModuleType):
    """Makes ``piddpm.restore(...)`` work even after ``import piddpm.restore``.

    Importing the sub-package sets the attribute ``piddpm.restore`` to this module, which
    would shadow the lazily exported function; calling the module calls :func:`restore`.
    """

    def __call__(self, *args, **kwargs):
        return restore(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
