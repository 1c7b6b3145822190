"""Resampling a plane into the pixel-size range a model was trained on (and back)."""

from __future__ import annotations

import warnings

import numpy as np

from piddpm.resample import fourier_resample
from piddpm.restore.inputs import MIN_PLANE_SIZE

__all__ = ["model_nyquist_range", "psf_on_model_grid", "sampling_plan_for", "zoomed_shape"]


def model_nyquist_range(cfg: dict | None) -> tuple[float, float]:
    """Pixel sizes (Nyquist units) a model was trained on; the old default if unrecorded."""
    ranges = ((cfg or {}).get("data") or {}).get("ranges") or {}
    lo, hi = ranges.get("pixel_nyquist_factor") or (0.8, 1.2)
    return float(lo), float(hi)


def sampling_plan_for(entry, microscope, pixel_um, where, resample):
    """The resampling plan for a learned model, or None (with a one-time note) without optics."""
    from piddpm.resample import sampling_plan

    lo, hi = model_nyquist_range(entry.config)
    mic = microscope or {}
    if not (mic.get("na") and mic.get("em_nm") and pixel_um is not None):
        # said once per image and model: the warnings registry drops repeats
        warnings.warn(
            f"{where}: no microscope given (--na, --em-nm and a pixel size): assuming the "
            f"pixels are {lo:g}-{hi:g} x the Nyquist size lambda / (4 NA), the range model "
            f"{entry.name} was trained on; give them to resample other images into it",
            UserWarning,
            stacklevel=3,
        )
        return None
    plan = sampling_plan(float(pixel_um), float(mic["na"]), float(mic["em_nm"]), (lo, hi))
    if not resample and plan.resamples:
        warnings.warn(
            f"{where}: pixels are {plan.nyquist_factor:.2f} x Nyquist, outside model "
            f"{entry.name}'s {lo:g}-{hi:g}; not resampled (resample=False)",
            UserWarning,
            stacklevel=3,
        )
        from piddpm.resample import SamplingPlan

        return SamplingPlan(plan.nyquist_factor, plan.nyquist_factor, 1.0, float(pixel_um))
    return plan


def zoomed_shape(shape: tuple[int, int], zoom: float) -> tuple[int, int]:
    return tuple(max(int(round(n * zoom)), MIN_PLANE_SIZE) for n in shape)


def psf_on_model_grid(psf_np: np.ndarray, plan) -> np.ndarray:
    """The PSF resampled to the model's pixel size (band-limited; non-negative, unit sum)."""
    n = max(int(round(psf_np.shape[0] * plan.zoom)) | 1, 3)
    m = max(int(round(psf_np.shape[1] * plan.zoom)) | 1, 3)
    k = np.clip(fourier_resample(psf_np, (n, m), pad=0), 0.0, None)
    return (k / max(float(k.sum()), 1e-12)).astype(np.float32)
