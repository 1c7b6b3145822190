"""What ``piddpm fit`` trains: the user's microscope, the camera noise fitted from the user's
images, and the fine-tuning configuration built from the starting model's own training
configuration (:func:`plan_fit`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from piddpm import PiddpmError

__all__ = ["FitPlan", "plan_fit", "read_planes", "TRAIN_SHARE", "TUNE_SHARE"]

#: Share of ``--minutes`` given to training; the rest pays for the PSF bank, the re-tuning of
#: the restore defaults, the held-out comparison and the restoration of the user's image
#: (measured at 30 minutes on 2 CPU cores: 1.6-1.9 min for the PSF bank, card and showcase;
#: about 1.5 min for the re-tuning).
TRAIN_SHARE = 0.80
#: Share of ``--minutes`` after which the re-tuning tries no further setting (it starts when
#: training ends and may use what training left, up to TRAIN_SHARE + TUNE_SHARE of the budget).
TUNE_SHARE = 0.08
#: Planes per file used for the noise fit and the showcase (a stack's middle planes).
MAX_PLANES_PER_FILE = 8


@dataclass
class FitPlan:
    """Everything a fit run is made from (written to ``RUN/fit.json``)."""

    config: Any  # TrainConfig
    microscope: Any  # FixedMicroscope
    noise: dict[str, Any]
    ranges: dict[str, Any]
    start_model: str
    images: list[str]
    planes: list[np.ndarray] = field(repr=False)
    pixel_size_um: float
    pixel_size_source: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "start_model": self.start_model,
            "images": self.images,
            "microscope": self.microscope.model_dump(mode="json"),
            "pixel_size_source": self.pixel_size_source,
            "noise": self.noise,
            "ranges": self.ranges,
        }


def read_planes(paths: list[str | Path], axes: str | None = None):
    """The 2-D planes of the user's images (float64; at most :data:`MAX_PLANES_PER_FILE` per
    file, the middle ones of a stack) and the lateral pixel size the files state (or None).

    Raises
    ------
    PiddpmError
        A file that cannot be read, holds RGB data, or whose pixel sizes disagree.
    """
    from piddpm.io import read_image

    planes, sizes = [], []
    for path in paths:
        img = read_image(path, axes=axes)
        if "S" in img.axes:
            raise PiddpmError(f"{path}: RGB image (axes {img.axes}); convert it to grey first")
        data = np.asarray(img.data)
        flat = data.reshape((-1, *data.shape[-2:]))
        n = flat.shape[0]
        lo = max(0, n // 2 - MAX_PLANES_PER_FILE // 2)
        planes += [flat[i].astype(np.float64) for i in range(lo, min(n, lo + MAX_PLANES_PER_FILE))]
        if img.pixel_size_um[2] is not None:
            sizes.append((str(path), float(img.pixel_size_um[2])))
    if sizes and max(s for _, s in sizes) > 1.01 * min(s for _, s in sizes):
        raise PiddpmError(
            "the images state different pixel sizes ("
            + ", ".join(f"{p}: {s:g} um" for p, s in sizes)
            + "); fit one microscope at a time, or give --pixel-um"
        )
    return planes, (sizes[0][1] if sizes else None)


def noise_summary(fit: dict | str) -> str:
    """One line for a fitted :class:`piddpm.acquisition.NoiseFit` (``as_dict()``)."""
    if not isinstance(fit, dict):
        return str(fit)
    given = " (given)" if fit.get("offset_given") else ""
    return (
        f"gain {fit['gain']:.4g} ADU/e- (+-{fit.get('gain_se', float('nan')):.2g}), offset "
        f"{fit['offset']:.4g} ADU{given}, read noise {fit['read_noise_e']:.3g} e- rms, from "
        f"{fit.get('n_bins', '?')} intensity bins of {fit.get('n_images', '?')} image(s)"
    )


def _noise(planes, offset, overrides: dict[str, Any]) -> tuple[dict, dict]:
    """The fitted camera noise and the simulation ranges it gives (explicit ranges win;
    all three given: no fit)."""
    keys = ("photons", "background_fraction", "read_noise")
    if all(overrides.get(k) is not None for k in keys):
        out = {k: (float(overrides[k][0]), float(overrides[k][1])) for k in keys}
        return {"fit": "not fitted: all camera ranges given", "per_image": []}, out
    from piddpm.acquisition import estimate_noise, noise_ranges

    fit = estimate_noise(planes, offset=offset)
    ranges = noise_ranges(planes, fit)
    out = {k: tuple(float(v) for v in ranges[k]) for k in ("photons", "background_fraction",
                                                          "read_noise")}  # fmt: skip
    for key, value in overrides.items():
        if value is not None:
            out[key] = (float(value[0]), float(value[1]))
    lo, hi = out["photons"]
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise PiddpmError(f"photons range {out['photons']} must be positive and ordered")
    return {"fit": fit.as_dict(), "per_image": ranges.get("per_image", [])}, out


def _start_entry(modality: str, start: str | None):
    from piddpm.models import resolve_model

    entry = resolve_model(start or f"pi-ddpm-{modality}")
    if entry.method == "unet":
        raise PiddpmError(f"--from {start}: fit fine-tunes diffusion models (pi-ddpm or ddpm)")
    train = (entry.config.get("training") or {}).get("config")
    if not isinstance(train, dict):
        raise PiddpmError(f"--from {start}: {entry.config_path} holds no training configuration")
    return entry, train


def plan_fit(
    images: list[str | Path],
    *,
    modality: str,
    na: float,
    em_nm: float,
    ri: float = 1.33,
    ex_nm: float | None = None,
    pinhole_au: float = 1.0,
    pixel_um: float | None = None,
    start: str | None = None,
    minutes: float = 30.0,
    out_dir: str | Path = "runs/fit",
    seed: int = 0,
    offset: float | None = None,
    psf_file: str | None = None,
    noise_overrides: dict[str, Any] | None = None,
    jitter: dict[str, Any] | None = None,
    axes: str | None = None,
) -> FitPlan:
    """Build the fine-tuning run for one microscope (see :func:`piddpm.fit.fit`)."""
    from piddpm.config import config_from_dict
    from piddpm.data.microscopes import FixedMicroscope

    if not images:
        raise PiddpmError("give at least one image of your microscope")
    if not (minutes > 0 and math.isfinite(minutes)):
        raise PiddpmError(f"--minutes {minutes}: expected a positive number")
    planes, file_pixel = read_planes(images, axes)
    if pixel_um is None and file_pixel is None:
        raise PiddpmError(
            f"{images[0]}: the file states no pixel size; give --pixel-um (um per pixel)"
        )
    source = "--pixel-um" if pixel_um is not None else f"file {images[0]}"
    pixel = float(pixel_um if pixel_um is not None else file_pixel)
    try:
        micro = FixedMicroscope(
            modality=modality, na=na, ri=ri, em_wavelength_nm=em_nm, ex_wavelength_nm=ex_nm,
            pinhole_au=pinhole_au, pixel_size_um=pixel, jitter=jitter or {},
        )  # fmt: skip
    except Exception as err:  # pydantic.ValidationError
        raise PiddpmError(f"microscope: {err}") from None
    noise, ranges = _noise(planes, offset, noise_overrides or {})
    entry, train = _start_entry(modality, start)
    data = dict(train.get("data") or {})
    data.update(
        modality=modality,
        microscope=micro.model_dump(mode="json"),
        ranges={k: list(v) for k, v in ranges.items()},
        psf_file=psf_file,
        n_kernels=64,
    )
    opt = dict(train.get("optimizer") or {})
    opt.update(lr=0.5 * float(opt.get("lr", 1e-4)), warmup_steps=20, lr_decay="constant")
    val = dict(train.get("validation") or {})
    val.update(every=0, num_samples=min(int(val.get("num_samples", 4)), 4))
    cfg_dict = dict(train)
    cfg_dict.update(
        name=f"fit-{entry.name}",
        data=data,
        optimizer=opt,
        validation=val,
        steps=1_000_000,
        max_time_s=max(5.0, TRAIN_SHARE * minutes * 60.0),
        seed=seed,
        init_from=entry.name if entry.bundled else str(entry.config_path.parent),
        checkpoint_every=100,
        keep_checkpoints=2,
        log_every=10,
        out_dir=str(out_dir),
        num_workers=1 if (os.cpu_count() or 1) >= 2 else 0,  # simulate beside training
        compile=False,
    )
    cfg = config_from_dict(cfg_dict, source="piddpm fit", check_libraries=False)
    return FitPlan(cfg, micro, noise, ranges, entry.name, [str(p) for p in images], planes,
                   pixel, source)  # fmt: skip
