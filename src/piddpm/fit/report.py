"""What ``piddpm fit`` reports: the fitted model against the starting model and RL on
held-out synthetic pairs of the user's microscope and noise, the user's own image restored,
and the card (``RUN/FIT_CARD.md``, ``RUN/fit.json``)."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from piddpm.fit.plan import noise_summary
from piddpm.models.tuning import EVAL_SEED, restore_pairs, score, synthetic_pairs

__all__ = ["compare_on_heldout", "restore_showcase", "write_card"]

#: Keys of the starting model's restore defaults that belong to that model only (its
#: uncertainty calibration); the fitted model does not inherit them.
CALIBRATION_KEYS = ("std_scale", "std_floor", "std_gradient")


def fitted_defaults(start_defaults: dict[str, Any]) -> dict[str, Any]:
    """The restore defaults a fitted model starts from: the starting model's sampler
    settings (tuned for that network), without its uncertainty calibration."""
    return {k: v for k, v in start_defaults.items() if k not in CALIBRATION_KEYS}


def compare_on_heldout(
    run_dir: Path,
    start_dir: Path,
    start_defaults: dict,
    fitted: dict | None = None,
    *,
    n: int,
    size: int = 128,
    log=print,
) -> dict[str, Any]:
    """PSNR / MS-SSIM / NRMSE of input, RL (true PSF, automatic stop), the starting model and
    the fitted model (with its restore defaults ``fitted``; default the inherited ones) on
    ``n`` held-out pairs drawn like the fit's training data (its microscope with jitter and
    its noise ranges) from seed :data:`EVAL_SEED`."""
    pairs = synthetic_pairs(run_dir, n=n, seed=EVAL_SEED, size=size)
    runs = [
        ("rl", None, {}, "rl"),
        ("start", start_dir, start_defaults, None),
        ("fitted", run_dir, fitted_defaults(fitted or start_defaults), None),
    ]
    per: dict[str, list[dict[str, float]]] = {
        "input": [score(p["observed"].astype(np.float64), p["gt"]) for p in pairs]
    }
    seconds = {"input": 0.0}
    for key, model, defaults, method in runs:
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # model-unit pairs carry no pixel size, by design
            warnings.filterwarnings("ignore", message=".*no microscope given.*")
            ests = restore_pairs(model or run_dir, pairs, defaults, method=method)
        seconds[key] = (time.perf_counter() - t0) / n
        per[key] = [score(e, p["gt"]) for e, p in zip(ests, pairs, strict=True)]
        log(f"  held-out {key}: {np.mean([s['psnr_db'] for s in per[key]]):.2f} dB")
    rows = {}
    for key, vals in per.items():
        rows[key] = {m: float(np.mean([v[m] for v in vals])) for m in ("psnr_db", "ms_ssim",
                                                                      "nrmse")}  # fmt: skip
        rows[key]["psnr_db_std"] = float(np.std([v["psnr_db"] for v in vals]))
        rows[key]["seconds"] = seconds[key]
    fitted = [v["psnr_db"] for v in per["fitted"]]
    wins = {
        other: int(sum(f > o["psnr_db"] for f, o in zip(fitted, per[other], strict=True)))
        for other in ("input", "rl", "start")
    }
    specimens: dict[str, int] = {}
    for p in pairs:
        specimens[p["specimen"]] = specimens.get(p["specimen"], 0) + 1
    return {"rows": rows, "fitted_wins": wins, "n": n, "size": size, "seed": EVAL_SEED,
            "specimens": specimens}  # fmt: skip


def _stretch(img: np.ndarray, lo_hi: tuple[float, float]) -> np.ndarray:
    lo, hi = lo_hi
    return np.clip((img - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def restore_showcase(
    plane: np.ndarray,
    run_dir: Path,
    start_dir: Path,
    start_defaults: dict,
    fitted: dict | None,
    microscope: dict,
    *,
    crop: int = 512,
    seed: int = 0,
    psf_file: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Restore the user's plane (its centre, at most ``crop`` px square) with RL (PSF from the
    microscope, or the measured ``psf_file``), the starting model and the fitted model (with
    its restore defaults ``fitted``; None: the inherited ones); write TIFFs and a PNG with a
    stretched display range (1st-99.5th percentile of the input) under ``RUN/showcase``."""
    from piddpm.io import write_image, write_png
    from piddpm.models.tuning import restore_kwargs
    from piddpm.restore import restore

    h, w = plane.shape
    y0, x0 = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
    img = np.ascontiguousarray(plane[y0 : y0 + crop, x0 : x0 + crop], dtype=np.float32)
    out = run_dir / "showcase"
    out.mkdir(exist_ok=True)
    common = dict(microscope=microscope, pixel_size_um=microscope["pixel_um"], progress=False,
                  device="cpu", seed=seed, residual=False)  # fmt: skip
    results = {"input": img}
    seconds = {}
    rl = {"method": "rl"}
    if psf_file is not None:  # the measured PSF the fit trained with, as it prepared it
        from piddpm.data.measured_bank import measured_kernel

        rl["psf"] = measured_kernel(psf_file, 33)
    for key, kw in (
        ("rl", rl),
        ("start", {"model": str(start_dir), **restore_kwargs(start_defaults)}),
        (
            "fitted",
            {"model": str(run_dir), **restore_kwargs(fitted_defaults(fitted or start_defaults))},
        ),  # fmt: skip
    ):
        t0 = time.perf_counter()
        results[key] = np.asarray(restore(img, **common, **kw).mean, np.float32)
        seconds[key] = time.perf_counter() - t0
        log(f"  showcase {key}: {seconds[key]:.1f} s")
    for key, arr in results.items():
        write_image(out / f"{key}.tif", arr, axes="YX", pixel_size_um=microscope["pixel_um"],
                    overwrite=True)  # fmt: skip
    lo_hi = tuple(float(v) for v in np.percentile(img, (1.0, 99.5)))
    panels = [_stretch(results[k], lo_hi) for k in ("input", "rl", "start", "fitted")]
    gap = np.ones((img.shape[0], 4), np.float32)
    strip = np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)
    write_png(out / "showcase.png", strip, overwrite=True)
    return {"crop": [int(y0), int(x0), int(img.shape[0]), int(img.shape[1])],
            "display_range": list(lo_hi), "seconds": seconds,
            "files": sorted(p.name for p in out.iterdir())}  # fmt: skip


def _table(rows: dict[str, dict[str, float]]) -> list[str]:
    names = {"input": "input (no restoration)", "rl": "Richardson-Lucy (true PSF, auto stop)",
             "start": "starting model", "fitted": "fitted model"}  # fmt: skip
    lines = ["| method | PSNR (dB) | MS-SSIM | NRMSE | s / image |", "|---|---|---|---|---|"]
    for key in ("input", "rl", "start", "fitted"):
        r = rows[key]
        lines.append(
            f"| {names[key]} | {r['psnr_db']:.2f} ± {r['psnr_db_std']:.2f} | {r['ms_ssim']:.4f} "
            f"| {r['nrmse']:.4f} | {r['seconds']:.2f} |"
        )
    return lines


def _tuning_lines(report: dict[str, Any]) -> list[str]:
    """The card's section on the restore defaults: the sweep table and the choice."""
    tu = report.get("tuning")
    rd = report.get("restore_defaults") or {}
    if not tu:
        if not rd:
            return []
        v = rd.get("values", {})
        return ["", "## Restore defaults", "",
                f"Not re-tuned (`--no-tune`): guidance {v.get('guidance')}, eta {v.get('eta')}, "
                f"lam {v.get('lam')}, {v.get('steps')} {v.get('sampler')} steps. "
                f"Note: {rd.get('note')}."]  # fmt: skip
    lines = [
        "",
        "## Restore defaults (re-tuned for the fitted network)",
        "",
        f"Dev PSNR on {tu['n_pairs']} synthetic pairs of {tu['size']}² of this microscope "
        f"(seed {tu['seed']}, not the held-out test's); background guard on the centre "
        f"{tu['guard_crop']}² of {tu['guard_images']} of your planes (worst plane): level "
        "shift = restored background median minus the input's, over the input's signal "
        "range; dark excess = share of pixels more than 5 % of that range below the input's "
        "background, minus the input's share; texture = 2-8 px band-pass rms of the "
        "background over the input's (floored at 1 % of the range).",
        "",
        "| setting | dev PSNR (dB) | level shift | dark excess | texture | guard | chosen |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for t in tu["trials"]:
        w = t["worst"]
        lines.append(
            f"| {t['label']} | {t['psnr_db']:.2f} | {w['level_shift']:+.4f} | "
            f"{w['dark_excess']:+.4f} | {w['texture']:.2f} | "
            f"{'pass' if t['passes'] else 'REJECTED'} | {'**yes**' if t['chosen'] else ''} |"
        )
    lines += ["", f"Rule: {tu['rule']}."
              + (" **No setting passed the guard**; the one closest to passing is used."
                 if tu["all_failed"] else "")
              + (f" Not tried (time budget): {', '.join(tu['cut_short'])}."
                 if tu["cut_short"] else "")
              + f" Chosen: **{tu['chosen']}**, written to `model.json` `restore_defaults` "
              f"({tu['seconds']:.0f} s)."]  # fmt: skip
    return lines


def write_card(run_dir: Path, report: dict[str, Any]) -> Path:
    """Write ``RUN/fit.json`` (everything measured) and ``RUN/FIT_CARD.md`` (for people)."""
    from piddpm.config import write_text_atomic

    write_text_atomic(run_dir / "fit.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    m, noise, ev = report["plan"]["microscope"], report["plan"]["ranges"], report.get("heldout")
    tr = report["training"]
    took = f"{tr['seconds']:.0f} s of training, " if tr.get("seconds") is not None else ""
    lines = [
        f"# Fitted model: {run_dir.name}",
        "",
        f"Fine-tuned from `{report['plan']['start_model']}` by `piddpm fit` for "
        f"{tr['steps']} steps ({took}{tr['device']}).",
        "",
        "## Microscope",
        f"- {m['modality']}, NA {m['na']}, immersion index {m['ri']}, emission "
        f"{m['em_wavelength_nm']} nm"
        + (f", pinhole {m['pinhole_au']} AU" if m["modality"] == "confocal" else "")
        + f", pixel {m['pixel_size_um'] * 1e3:.1f} nm ({report['plan']['pixel_size_source']}).",
        f"- Jitter in training: {m['jitter']}.",
        "",
        "## Camera noise (fitted from the images)",
        f"- {noise_summary(report['plan']['noise']['fit'])}.",
        f"- Simulated: photons at the brightest pixel {noise['photons']}, background fraction "
        f"{noise['background_fraction']}, read noise {noise['read_noise']} e-.",
    ]
    lines += _tuning_lines(report)
    if ev:
        lines += ["", f"## Held-out synthetic test ({ev['n']} pairs of {ev['size']}², seed "
                  f"{ev['seed']}, this microscope and noise)", ""] + _table(ev["rows"])  # fmt: skip
        lines += ["", f"The fitted model beats the input on {ev['fitted_wins']['input']}, RL on "
                  f"{ev['fitted_wins']['rl']} and the starting model on "
                  f"{ev['fitted_wins']['start']} of {ev['n']} pairs (PSNR)."]  # fmt: skip
    if report.get("showcase"):
        s = report["showcase"]
        lines += ["", "## Your image", "", "Input, RL, starting model, fitted model (display "
                  f"range {s['display_range'][0]:.4g}-{s['display_range'][1]:.4g}, the input's "
                  "1st-99.5th percentile):", "", "![showcase](showcase/showcase.png)"]  # fmt: skip
    if report.get("showcase_error"):
        lines += ["", f"## Your image\n\nNot restored: {report['showcase_error']}"]
    lines += ["", "Uncertainty (`--samples N`) is not calibrated for this model (the starting "
              "model's calibration is not inherited).", ""]  # fmt: skip
    path = run_dir / "FIT_CARD.md"
    write_text_atomic(path, "\n".join(lines))
    return path
