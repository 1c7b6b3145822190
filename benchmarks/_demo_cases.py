"""The demo's scenes at several brightnesses, shared by bench_regimes.py and
bench_rl_stopping.py: each built-in specimen rendered as the demo renders it (seed 0), imaged
through one of the demo's microscopes and its camera (noise seed 1) at each photon count."""

from __future__ import annotations

import numpy as np
import torch

SPECIMENS = ("filaments+puncta", "mixture", "er", "nuclei")
PHOTONS = (20.0, 200.0, 2000.0)
SIZE = 256


def demo_cases(modality: str, specimens=SPECIMENS, photons=PHOTONS, size: int = SIZE):
    """The PSF, then ``(specimen, photons, gt, observed, scale)`` per case (``observed``
    float32 photo-electrons, ``scale`` photons per unit of ground-truth density)."""
    from piddpm import demo

    psf = demo.demo_psf(modality, size)

    def cases():
        for spec in specimens:
            gt = demo.render_demo_specimen(
                spec, size, demo.PIXEL_SIZE_UM, generator=np.random.default_rng(0)
            )
            for p in photons:
                obs, scale = demo.image_with_camera(gt, psf, p, torch.Generator().manual_seed(1))
                yield spec, p, gt, obs, scale

    return psf, cases()
