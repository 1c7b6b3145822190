"""Whole-image check of a ``piddpm fit`` run on example images with a ground truth (those of
``scripts/make_fit_example.py``): each camera image is restored whole (tiled as restore
tiles it) by Richardson-Lucy (PSF computed from the microscope, automatic stop), the
starting model and the fitted model, each with its restore defaults, and scored against its
ground truth after a least-squares affine fit (the ground truth is in specimen units, the
restorations in ADU). Prints a table.

    python benchmarks/bench_fit_images.py runs/fit-oil runs/fit-example/oil
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    from piddpm.fit.report import fitted_defaults
    from piddpm.io import read_image
    from piddpm.metrics import fit_affine, ms_ssim, psnr
    from piddpm.models import resolve_model
    from piddpm.models.tuning import restore_kwargs
    from piddpm.restore import restore

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the fit run folder")
    ap.add_argument("images", type=Path, help="folder with *.ome.tif camera images and gt_*")
    ap.add_argument("--inherited", action="store_true", help="also restore with the starting "
                    "model's restore defaults (the fit's defaults before re-tuning)")  # fmt: skip
    args = ap.parse_args()
    plan = json.loads((args.run / "fit.json").read_text())["plan"]
    m = plan["microscope"]
    micro = {"modality": m["modality"], "na": m["na"], "ri": m["ri"],
             "em_nm": m["em_wavelength_nm"], "pixel_um": m["pixel_size_um"]}  # fmt: skip
    start = resolve_model(plan["start_model"])
    defaults = dict(start.config.get("restore_defaults") or {})
    methods = {
        "rl": {"method": "rl"},
        "start": {"model": str(start.config_path.parent), **restore_kwargs(defaults)},
        # the run's own restore_defaults (model.json: re-tuned by piddpm fit unless --no-tune)
        "fitted": {"model": str(args.run)},
    }
    if args.inherited:
        methods["fitted-inherited"] = {"model": str(args.run),
                                       **restore_kwargs(fitted_defaults(defaults))}  # fmt: skip
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in ("input", *methods)}
    seconds: dict[str, float] = dict.fromkeys(rows, 0.0)
    cams = sorted(p for p in args.images.glob("*.ome.tif") if not p.name.startswith("gt_"))
    for cam in cams:
        gt_path = next(args.images.glob("gt_" + cam.name.split("_", 1)[1]))
        gt = np.asarray(read_image(gt_path).data, np.float64)
        img = np.asarray(read_image(cam).data, np.float32)
        outs = {"input": img}
        for key, kw in methods.items():
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = restore(img, microscope=micro, pixel_size_um=micro["pixel_um"],
                              progress=False, device="cpu", residual=False, **kw)  # fmt: skip
            seconds[key] += time.perf_counter() - t0
            outs[key] = np.asarray(res.mean, np.float64)
        for key, est in outs.items():
            fitted = fit_affine(np.asarray(est, np.float64), gt)
            rows[key].append((float(psnr(fitted, gt)), float(ms_ssim(fitted, gt))))
        print(f"{cam.name}: " + ", ".join(f"{k} {v[-1][0]:.2f}" for k, v in rows.items()),
              flush=True)  # fmt: skip
    print(f"\n{len(cams)} whole images ({img.shape[0]} x {img.shape[1]}), PSNR / MS-SSIM against "
          "the ground truth after an affine fit\n")  # fmt: skip
    print("| method | PSNR (dB) | MS-SSIM | s / image |")
    print("|---|---|---|---|")
    for key, vals in rows.items():
        arr = np.array(vals)
        print(f"| {key} | {arr[:, 0].mean():.2f} | {arr[:, 1].mean():.4f} | "
              f"{seconds[key] / len(cams):.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
