"""Sample data: the demo specimen (``piddpm demo``) and how the demo's widefield and confocal
microscopes see it, made on the spot (nothing is downloaded).

The specimen comes from :func:`piddpm.demo.render_demo_specimen`, the microscopes and the
camera from :data:`piddpm.demo.MICROSCOPES` / :data:`~piddpm.demo.CAMERA`, the PSFs from
:func:`piddpm.optics.make_psf` and the noisy images from :func:`piddpm.acquisition.acquire`.
The noise draws (and the PSF kernel size) are not those of ``piddpm demo``, so the pixel
values differ from its TIFFs; the specimen, microscopes and photon counts are the same.
"""

from __future__ import annotations

import numpy as np

from piddpm.demo import CAMERA, DEFAULT_SIZE, DEFAULT_SPECIMEN, MICROSCOPES, PIXEL_SIZE_UM

__all__ = ["demo_confocal", "demo_specimen", "demo_widefield"]

_SEED = 0


def _ground_truth() -> np.ndarray:
    from piddpm.demo import render_demo_specimen

    rng = np.random.default_rng(_SEED)
    return render_demo_specimen(DEFAULT_SPECIMEN, DEFAULT_SIZE, PIXEL_SIZE_UM, generator=rng)


def _layer_kwargs(name: str, **extra) -> dict:
    scale = (PIXEL_SIZE_UM, PIXEL_SIZE_UM)
    return {"name": name, "scale": scale, "units": ("um", "um"), **extra}


def _observed(gt: np.ndarray, modality: str) -> tuple:
    import torch

    from piddpm.acquisition import acquire
    from piddpm.optics import make_psf

    micro = MICROSCOPES[modality]
    psf = make_psf(modality=modality, na=micro.na, em_nm=micro.em_wavelength_nm,
                   pixel_um=PIXEL_SIZE_UM, ri=micro.ri, ex_nm=micro.ex_wavelength_nm,
                   pinhole_au=micro.pinhole_au or 1.0)  # fmt: skip
    seed = _SEED + 1 + list(MICROSCOPES).index(modality)
    shot = acquire(torch.from_numpy(gt.astype(np.float64)), torch.from_numpy(psf),
                   photons=CAMERA["photons"], background=CAMERA["background"],
                   read_noise=CAMERA["read_noise"], boundary="zero",
                   generator=seed)  # fmt: skip
    image = shot["observed"].float().numpy()
    meta = {"piddpm": {"microscope": micro.description, "camera": dict(CAMERA),
                       "units": "photo-electrons per pixel"}}  # fmt: skip
    return image, _layer_kwargs(f"demo {modality}", metadata=meta), "image"


def _truth_layer(gt: np.ndarray) -> tuple:
    meta = {"piddpm": {"specimen": DEFAULT_SPECIMEN, "units": "relative density, peak 1"}}
    return gt, _layer_kwargs("demo ground truth", metadata=meta, colormap="gray"), "image"


def demo_specimen() -> list[tuple]:
    """Ground truth, widefield and confocal images of the demo specimen (256 x 256 px)."""
    gt = _ground_truth()
    return [_truth_layer(gt), *(_observed(gt, m) for m in MICROSCOPES)]


def demo_widefield() -> list[tuple]:
    """The demo specimen seen by the widefield microscope, and its ground truth."""
    gt = _ground_truth()
    return [_truth_layer(gt), _observed(gt, "widefield")]


def demo_confocal() -> list[tuple]:
    """The demo specimen seen by the confocal microscope, and its ground truth."""
    gt = _ground_truth()
    return [_truth_layer(gt), _observed(gt, "confocal")]
