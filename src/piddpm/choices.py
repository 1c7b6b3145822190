"""Every choice list of piddpm, written once.

Each choice is a :data:`typing.Literal`; :func:`options` turns one into the tuple of its
values for CLI ``choices=``, error messages and checks. Compose, do not repeat: a new value
added here reaches the API, the configuration files, the CLI and the docs' tables.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "DiffusionMethod",
    "Guidance",
    "GuidanceChoice",
    "GuidanceNorm",
    "Method",
    "Modality",
    "Precision",
    "RegulariserChoice",
    "Regulariser",
    "RestoreMethod",
    "Sampler",
    "TrainingModality",
    "options",
]

#: Trained methods whose network is a diffusion model.
DiffusionMethod = Literal["pi-ddpm", "ddpm"]
#: Trained methods: the two diffusion models and the supervised U-Net.
Method = Literal[DiffusionMethod, "unet"]
#: What ``restore`` can run: a trained method, or Richardson-Lucy (no model): ``rl`` plane by
#: plane with a 2-D PSF, ``rl-3d`` on z-stacks with a 3-D PSF.
RestoreMethod = Literal[Method, "rl", "rl-3d"]

#: Microscope modality of an image or a PSF.
Modality = Literal["widefield", "confocal"]
#: Modality of simulated training data: one of both, or both drawn per sample.
TrainingModality = Literal[Modality, "mixed"]

#: Diffusion samplers: ancestral DDPM (all T steps), DDIM and DPM-Solver++(2M).
Sampler = Literal["ddim", "ddpm", "dpm-solver++"]
#: Physics guidance a user can ask for.
GuidanceChoice = Literal["learned", "known", "both", "none"]
#: ... plus ``auto``: learned for a PI-DDPM network, none otherwise.
Guidance = Literal["auto", GuidanceChoice]
#: Sampling regularisers (the sampler functions take ``None`` for none).
Regulariser = Literal["l1", "l2"]
#: ... as a setting, where ``none`` switches it off.
RegulariserChoice = Literal[Regulariser, "none"]
#: How the learned physics gradient is scaled before it is applied (see
#: :mod:`piddpm.diffusion.correction`).
GuidanceNorm = Literal["per-image", "none"]
#: Arithmetic of the diffusion network while restoring: ``auto`` is the model's default
#: (bf16 autocast where its ``restore_defaults`` ask for it and the device computes bf16
#: natively, else float32).
Precision = Literal["auto", "float32", "bf16"]


def options(choice) -> tuple[str, ...]:
    """The values of a choice :data:`~typing.Literal`, in order (nested ones flattened).

    Examples
    --------
    >>> options(RegulariserChoice)
    ('l1', 'l2', 'none')
    """
    return tuple(get_args(choice))
