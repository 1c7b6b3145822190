"""``piddpm fit``: fine-tune a model for your microscope from your images (docs/fit.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from piddpm import PiddpmError

DESCRIPTION = """\
Fit a model to your microscope: estimate the camera noise from IMAGE(s), simulate training
pairs for exactly your optics (the PSF from piddpm.optics, or --psf a measured one, with a
small random jitter of NA, wavelength, pixel size, defocus and aberrations) and your noise,
and fine-tune the bundled PI-DDPM of the modality (or --from MODEL) within --minutes.
After training, the restore defaults (the guidance weight eta) are re-tuned for the fitted
network on synthetic dev pairs, with a background guard on your images (--no-tune: keep the
starting model's). Writes a run folder that `piddpm restore --model RUN` uses, with
RUN/FIT_CARD.md comparing
the fitted model with the starting model and Richardson-Lucy on held-out synthetic pairs of
your microscope, and RUN/showcase/ with your image restored. Ctrl-C exports the newest
checkpoint as the model; --resume continues.
"""


def _range(text: str) -> tuple[float, float]:
    try:
        parts = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 0 <= parts[0] <= parts[1]:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a range 'LO,HI' (or one value) with 0 <= LO <= HI"
        )
    return parts[0], parts[1]


def add_parser(subparsers) -> argparse.ArgumentParser:
    from piddpm.choices import Modality, options

    p = subparsers.add_parser(
        "fit",
        help="fine-tune a model for your microscope from your images",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="images taken with "
                   "the microscope (TIFF, OME-TIFF, PNG, OME-Zarr)")  # fmt: skip
    p.add_argument("-o", "--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--modality", choices=options(Modality), required=True)
    p.add_argument("--na", type=float, required=True, help="numerical aperture")
    p.add_argument("--ri", type=float, default=1.33, help="immersion refractive index")
    p.add_argument("--em-nm", type=float, required=True, help="emission wavelength (nm)")
    p.add_argument("--ex-nm", type=float, default=None,
                   help="excitation wavelength (nm; confocal); default emission - 30")  # fmt: skip
    p.add_argument("--pinhole-au", type=float, default=1.0,
                   help="confocal pinhole diameter (Airy units)")  # fmt: skip
    p.add_argument("--pixel-um", type=float, default=None,
                   help="pixel size (um); default: the files' pixel size")  # fmt: skip
    p.add_argument("--psf", type=Path, default=None,
                   help="a measured PSF (2-D or z-stack) at the images' pixel size, used "
                   "instead of the computed one")  # fmt: skip
    p.add_argument("--from", dest="start", default=None, metavar="MODEL",
                   help="model to fine-tune (default: the bundled PI-DDPM of the modality)")  # fmt: skip
    p.add_argument("--minutes", type=float, default=30.0,
                   help="wall-clock budget of the whole command (80 %% training, up to 8 %% "
                   "re-tuning the restore defaults, the rest evaluation)")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue the fit in --out")
    p.add_argument("--report-only", action="store_true",
                   help="no training: re-tune the restore defaults (unless --no-tune: keep "
                   "those in --out/model.json), measure and write the card of the model in "
                   "--out")  # fmt: skip
    p.add_argument("--no-tune", action="store_true",
                   help="keep the starting model's restore defaults instead of re-tuning the "
                   "guidance weight for the fitted model on dev pairs and your images")  # fmt: skip
    p.add_argument("--offset", type=float, default=None,
                   help="camera offset (ADU) if known; default: fitted")  # fmt: skip
    p.add_argument("--photons", type=_range, default=None, metavar="LO,HI",
                   help="photons at the brightest pixel to simulate (default: fitted)")  # fmt: skip
    p.add_argument("--background", type=_range, default=None, metavar="LO,HI",
                   help="background as a fraction of the photons (default: fitted)")  # fmt: skip
    p.add_argument("--read-noise", type=_range, default=None, metavar="LO,HI",
                   help="read noise, electrons rms (default: fitted)")  # fmt: skip
    p.add_argument("--own-images", action="store_true",
                   help="also train on RL-sharpened copies of your images (risk: RL's noise "
                   "and ringing become ground truth; docs/fit.md)")  # fmt: skip
    p.add_argument("--axes", default=None, help="axes of the images (default: the files')")
    p.add_argument("--eval-n", type=int, default=32, help="held-out pairs for the card")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from piddpm.cli import set_threads
    from piddpm.fit import fit

    set_threads(args.threads)
    if args.eval_n < 0:
        raise PiddpmError(f"--eval-n must be >= 0 (got {args.eval_n})")
    for path in [*args.images, *([args.psf] if args.psf else [])]:
        if not path.exists():
            raise PiddpmError(f"{path}: no such file or folder")
    result = fit(
        args.images,
        out_dir=args.out,
        minutes=args.minutes,
        resume=args.resume,
        report_only=args.report_only,
        tune=not args.no_tune,
        own_images=args.own_images,
        eval_n=args.eval_n,
        device=args.device,
        progress=not args.no_progress,
        modality=args.modality,
        na=args.na,
        ri=args.ri,
        em_nm=args.em_nm,
        ex_nm=args.ex_nm,
        pinhole_au=args.pinhole_au,
        pixel_um=args.pixel_um,
        start=args.start,
        seed=args.seed,
        offset=args.offset,
        psf_file=str(args.psf) if args.psf else None,
        noise_overrides={
            "photons": args.photons,
            "background_fraction": args.background,
            "read_noise": args.read_noise,
        },  # fmt: skip
        axes=args.axes,
    )
    if result.interrupted:
        return 130
    rows = (result.report.get("heldout") or {}).get("rows")
    if rows:
        print("held-out PSNR (dB): " + ", ".join(f"{k} {v['psnr_db']:.2f}"
                                                for k, v in rows.items()))  # fmt: skip
    print(f"model: {result.out_dir}  (piddpm restore IMAGE --model {result.out_dir})")
    return 0
