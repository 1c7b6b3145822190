"""Fit a model to your microscope (``piddpm fit``): physics-matched fine-tuning.

The user's images give the camera noise (:func:`piddpm.acquisition.estimate_noise`) and,
with the microscope the user types (or a measured PSF), the simulation that generates
training pairs for exactly that instrument (``data.microscope`` with a small jitter). The
bundled diffusion model of that modality is fine-tuned on them within a time budget; the
result is a normal run folder that ``piddpm restore --model RUN`` uses, with a card
(``FIT_CARD.md``) that compares it with the starting model and Richardson-Lucy on held-out
synthetic pairs of that microscope and shows the user's own image restored (docs/fit.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from piddpm import PiddpmError
from piddpm.fit.plan import FitPlan, noise_summary, plan_fit, read_planes

__all__ = ["FitResult", "FitPlan", "fit", "plan_fit", "read_planes"]


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    out_dir: Path
    plan: FitPlan
    report: dict[str, Any]
    interrupted: bool = False


def _write_own_images(planes, out: Path, microscope, log) -> str:
    """RL-sharpened crops of the user's planes as extra ``natural`` ground truth."""
    import numpy as np

    from piddpm.io import write_image
    from piddpm.restore import restore

    folder = out / "own-images"
    folder.mkdir(parents=True, exist_ok=True)
    for i, plane in enumerate(planes):
        path = folder / f"plane{i:03d}.tif"
        if path.exists():
            continue
        res = restore(plane.astype(np.float32), method="rl", microscope=microscope,
                      pixel_size_um=microscope["pixel_um"], progress=False, residual=False)  # fmt: skip
        write_image(path, np.asarray(res.mean, np.float32), axes="YX")
    log(f"{len(planes)} RL-sharpened planes of your images are training ground truth ({folder})")
    return str(folder)


def _restore_microscope(plan: FitPlan) -> dict[str, Any]:
    m = plan.microscope
    return {"modality": m.modality, "na": m.na, "ri": m.ri, "em_nm": m.em_wavelength_nm,
            "ex_nm": m.excitation_nm, "pinhole_au": m.pinhole_au,
            "pixel_um": m.pixel_size_um}  # fmt: skip


def _finalise_model(out: Path, plan: FitPlan, start_defaults: dict, steps: int) -> None:
    """Make ``RUN/model.json`` a usable model: the inherited restore defaults (re-tuned later
    by :func:`_tune`) and a description."""
    from piddpm.fit.report import fitted_defaults
    from piddpm.models.files import read_model_doc, write_model_doc

    doc = read_model_doc(out / "model.json")
    cfg = doc["config"]
    m = plan.microscope
    cfg["modality"] = m.modality
    cfg["restore_defaults"] = fitted_defaults(start_defaults)
    cfg["restore_defaults_note"] = (
        f"inherited from {plan.start_model} (its sampler settings, without its uncertainty "
        "calibration); not re-tuned for the fitted network"
    )
    cfg["description"] = (
        f"{plan.start_model} fine-tuned by piddpm fit for {m.modality} NA {m.na}, "
        f"{m.em_wavelength_nm:g} nm, {m.pixel_size_um * 1e3:.0f} nm pixels ({steps} steps)"
    )
    write_model_doc(out / "model.json", doc)


def _tune(out: Path, plan: FitPlan, start_defaults: dict, deadline: float, log) -> dict:
    """Re-tune the fitted model's restore defaults (:func:`piddpm.fit.tune.tune_fitted_defaults`:
    an ``eta`` sweep on synthetic dev pairs with a background guard on the user's planes) and
    write the choice and a note into ``RUN/model.json``. Returns the tuning record."""
    from piddpm.fit.report import fitted_defaults
    from piddpm.fit.tune import tune_fitted_defaults, tuning_note
    from piddpm.models.files import read_model_doc, write_model_doc
    from piddpm.models.tuning import validate_defaults

    guards = [plan.planes[0]] + ([plan.planes[-1]] if len(plan.planes) > 1 else [])
    log(f"re-tuning the restore defaults (dev pairs + a background guard on {len(guards)} of "
        "your planes) ...")  # fmt: skip
    defaults, record = tune_fitted_defaults(
        out, fitted_defaults(start_defaults), guards, _restore_microscope(plan),
        deadline=deadline, log=log,
    )  # fmt: skip
    validate_defaults(defaults, "pi-ddpm")
    doc = read_model_doc(out / "model.json")
    doc["config"]["restore_defaults"] = defaults
    doc["config"]["restore_defaults_note"] = tuning_note(record, plan.start_model)
    write_model_doc(out / "model.json", doc)
    log(f"restore defaults: {record['chosen']}"
        + (" (no setting passed the background guard)" if record["all_failed"] else ""))  # fmt: skip
    return record


def fit(
    images: list[str | Path],
    *,
    out_dir: str | Path,
    minutes: float = 30.0,
    resume: bool = False,
    own_images: bool = False,
    eval_n: int = 32,
    report_only: bool = False,
    tune: bool = True,
    device: str = "auto",
    progress: bool = True,
    log=print,
    **microscope_and_noise: Any,
) -> FitResult:
    """Fine-tune a diffusion model for one microscope from images taken with it.

    Parameters
    ----------
    images : list of path
        The user's images (TIFF, OME-TIFF, PNG, OME-Zarr); their pixel size is used unless
        ``pixel_um`` is given. They give the camera noise and the showcase restoration.
    out_dir : path
        The run folder (a normal training run: ``model.json``, ``model.safetensors``,
        checkpoints, logs) plus ``fit.json``, ``FIT_CARD.md`` and ``showcase/``.
    minutes : float
        Wall-clock budget of the whole command: :data:`piddpm.fit.plan.TRAIN_SHARE` of it
        trains; the re-tuning stops trying new settings once
        :data:`~piddpm.fit.plan.TRAIN_SHARE` + :data:`~piddpm.fit.plan.TUNE_SHARE` of it has
        passed (at least two are always tried); the rest evaluates.
    resume : bool
        Continue an interrupted or finished fit in ``out_dir`` (another ``minutes``).
    own_images : bool
        Also use RL-sharpened copies of the user's planes as ``natural`` ground truth. Risk:
        RL's noise and ringing become "truth" the model learns to reproduce; off by default.
    eval_n : int
        Held-out synthetic pairs for the card (0: none).
    report_only : bool
        No training: re-tune (unless ``tune`` is False), measure and write the card of the
        model already in ``out_dir``.
    tune : bool
        After training, re-tune the restore defaults for the fitted network
        (:func:`piddpm.fit.tune.tune_fitted_defaults`: the guidance weight ``eta`` on
        synthetic dev pairs, with a background guard on the user's planes) and write them
        into ``model.json``. False: a fresh fit keeps the starting model's defaults;
        ``report_only`` keeps the defaults ``model.json`` holds.
    device, progress, log
        Training device (``auto``: CUDA when present), a progress bar, a message sink.
    **microscope_and_noise
        :func:`piddpm.fit.plan.plan_fit` keywords: ``modality``, ``na``, ``em_nm``, ``ri``,
        ``ex_nm``, ``pinhole_au``, ``pixel_um``, ``start`` (the model to fine-tune; default
        the bundled PI-DDPM of the modality), ``seed``, ``offset`` (camera offset in ADU,
        else fitted), ``psf_file`` (a measured PSF), ``noise_overrides`` (explicit
        ``photons`` / ``background_fraction`` / ``read_noise`` ranges), ``jitter``, ``axes``.

    Returns
    -------
    FitResult
        On an interrupt (Ctrl-C) the newest checkpoint is exported as the model and
        ``interrupted`` is True; no evaluation is run then.
    """
    from piddpm.models import resolve_model
    from piddpm.training import train

    t0 = time.perf_counter()
    out = Path(out_dir)
    if report_only and not (out / "model.json").is_file():
        raise PiddpmError(f"{out}: no model.json to report on; run the fit first")
    if out.exists() and any(out.iterdir()) and not (resume or report_only):
        raise PiddpmError(f"{out}: already exists; pass --resume to continue that fit or "
                          "choose another -o")  # fmt: skip
    plan = plan_fit(images, out_dir=out, minutes=minutes, **microscope_and_noise)
    if own_images:
        folder = _write_own_images(plan.planes, out, _restore_microscope(plan), log)
        data = plan.config.data.model_copy(update={"images_dir": folder})
        plan.config = plan.config.model_copy(update={"data": data})
    noise = plan.ranges
    log(f"camera noise: {noise_summary(plan.noise['fit'])}")
    log(f"simulating photons {noise['photons']}, background fraction "
        f"{noise['background_fraction']}, read noise {noise['read_noise']} e-")  # fmt: skip
    start = resolve_model(plan.start_model)
    start_defaults = dict(start.config.get("restore_defaults") or {})
    report: dict[str, Any] = {"plan": plan.as_dict()}
    if report_only:
        return _report(out, plan, start, start_defaults, report, eval_n, t0, log,
                       tune=tune, minutes=minutes)  # fmt: skip
    plan.config = _fast_precision(plan.config, device, log)
    try:
        result = train(plan.config, out_dir=out, resume=resume, device=device, progress=progress)
    except KeyboardInterrupt:
        from piddpm.models.bundle import export_weights

        exported = export_weights(out, out, from_checkpoint=True)
        _finalise_model(out, plan, start_defaults, exported["step"])
        log(f"interrupted: exported the newest checkpoint (step {exported['step']}) as "
            f"{out / 'model.safetensors'}; continue with --resume")  # fmt: skip
        return FitResult(out, plan, report, interrupted=True)
    train_s = time.perf_counter() - t0
    _finalise_model(out, plan, start_defaults, result.step)
    report["training"] = {"steps": result.step, "seconds": train_s,
                          "device": str(next(result.ema.parameters()).device),
                          "stopped_by_time_limit": result.stopped_by_time_limit}  # fmt: skip
    return _report(out, plan, start, start_defaults, report, eval_n, t0, log, tune=tune,
                   minutes=minutes)  # fmt: skip


def _report(
    out: Path, plan, start, start_defaults, report, eval_n, t0, log, *, tune: bool, minutes: float
) -> FitResult:
    """The re-tuning, the held-out comparison, the showcase and the card of a trained fit.
    The card is written after each part, so a failure in a later one loses nothing measured."""
    from piddpm.fit.plan import TRAIN_SHARE, TUNE_SHARE
    from piddpm.fit.report import compare_on_heldout, restore_showcase, write_card
    from piddpm.models.files import read_model_doc

    if "training" not in report:  # --report-only: what the last training recorded
        training = read_model_doc(out / "model.json")["config"].get("training") or {}
        report["training"] = {"steps": training.get("steps"), "seconds": None,
                              "device": "see model.json", "stopped_by_time_limit":
                              training.get("stopped_by_time_limit")}  # fmt: skip
    start_dir = start.config_path.parent
    if tune:
        deadline = (
            time.monotonic()
            - (time.perf_counter() - t0)
            + ((TRAIN_SHARE + TUNE_SHARE) * minutes * 60.0)
        )
        report["tuning"] = _tune(out, plan, start_defaults, deadline, log)
        write_card(out, report)
    cfg = read_model_doc(out / "model.json")["config"]
    fitted = dict(cfg.get("restore_defaults") or {})
    report["restore_defaults"] = {"values": fitted, "note": cfg.get("restore_defaults_note"),
                                  "tuned": tune}  # fmt: skip
    if eval_n > 0:
        log(f"held-out comparison on {eval_n} synthetic pairs of this microscope ...")
        report["heldout"] = compare_on_heldout(out, start_dir, start_defaults, fitted, n=eval_n,
                                               log=log)  # fmt: skip
        write_card(out, report)
    log("restoring your image ...")
    try:
        report["showcase"] = restore_showcase(
            plan.planes[0], out, start_dir, start_defaults, fitted, _restore_microscope(plan),
            psf_file=plan.config.data.psf_file, log=log,
        )  # fmt: skip
    except PiddpmError as err:
        report["showcase_error"] = str(err)
        log(f"could not restore your image: {err}")
    report["total_seconds"] = time.perf_counter() - t0
    card = write_card(out, report)
    log(f"wrote {card} ({report['total_seconds'] / 60:.1f} min in all)")
    return FitResult(out, plan, report)


def _fast_precision(config, device: str, log):
    """The starting model's precision, or fp32 where bf16 would be emulated.

    A fit is time-boxed, so its arithmetic must be the fast one: bf16 autocast pays only on
    GPUs and CPUs with bf16 units; on other CPUs it is emulated (4.8 s against 0.7 s per
    tiny PI-DDPM step measured on an AVX2 AMD EPYC), which would cost most of the steps.
    """
    from piddpm.devices import bf16_is_fast
    from piddpm.training.distributed import resolve_device

    if config.precision != "bf16" or bf16_is_fast(resolve_device(device)):
        return config
    log("this CPU has no bf16 units: fine-tuning in fp32 (the starting model used bf16)")
    return config.model_copy(update={"precision": "fp32"})
