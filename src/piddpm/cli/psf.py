"""``piddpm psf``: write a widefield or confocal PSF (2D kernel or 3D stack) to a TIFF."""

from __future__ import annotations

import argparse

from piddpm.choices import Modality, options

DESCRIPTION = """\
Compute a vectorial (Richards-Wolf, unpolarised) intensity PSF and write it as a float32
OME-TIFF carrying its voxel size in micrometres, normalised to unit sum.

widefield: the emission PSF. confocal: excitation PSF x (emission PSF convolved with the
pinhole disc, diameter in Airy units back-projected to the sample, 1 AU = 1.22 em / NA);
--ex-nm is required and --pinhole-au 0 is an ideal point detector.

Without --z-size the output is a 2D kernel: the in-focus plane, or with --projection
mean/max the projection of a stack of --z-range-um around focus sampled every --z-step-um.
With --z-size the output is a 3D stack of that many planes (focus in plane z-size // 2),
unless --projection is given, which projects that stack to 2D.
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "psf",
        help="compute a widefield or confocal PSF and write it to a TIFF",
        description=DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--modality", choices=options(Modality), default="widefield", help="microscope type"
    )
    p.add_argument("--na", type=float, required=True, help="numerical aperture (unitless)")
    p.add_argument("--ri", type=float, default=1.33, help="immersion refractive index (unitless)")
    p.add_argument("--em-nm", type=float, required=True, help="emission wavelength, nm")
    p.add_argument(
        "--ex-nm", type=float, default=None, help="excitation wavelength, nm (confocal: required)"
    )
    p.add_argument(
        "--pinhole-au",
        type=float,
        default=1.0,
        help="confocal pinhole diameter, Airy units back-projected to the sample",
    )
    p.add_argument("--pixel-um", type=float, required=True, help="lateral pixel size, um")
    p.add_argument("--size", type=int, required=True, help="lateral size, pixels (odd: centred)")
    p.add_argument(
        "--z-size", type=int, default=None, help="number of z planes for a 3D PSF (planes)"
    )
    p.add_argument("--z-step-um", type=float, default=0.1, help="axial step between planes, um")
    p.add_argument(
        "--projection",
        choices=["focus", "mean", "max"],
        default=None,
        help="2D kernel from a stack: in-focus plane, z-mean or z-max (default: in-focus plane)",
    )
    p.add_argument(
        "--z-range-um",
        type=float,
        default=2.0,
        help="axial range of the stack projected by --projection mean/max without --z-size, um",
    )
    p.add_argument(
        "--zernike",
        action="append",
        default=[],
        metavar="NOLL=WAVES",
        help="pupil aberration: Noll index = coefficient in waves rms (repeatable; none default)",
    )
    p.add_argument("--scalar", action="store_true", help="scalar instead of vectorial model (flag)")
    p.add_argument(
        "--dtype", choices=["float32", "float64"], default="float32", help="compute precision"
    )
    p.add_argument("-o", "--output", required=True, help="output TIFF path (float32, unit sum)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the output file if it exists (flag)"
    )
    return p


def _parse_zernike(items: list[str]) -> dict[int, float]:
    from piddpm import PiddpmError

    out: dict[int, float] = {}
    for item in items:
        try:
            key, value = item.split("=", 1)
            out[int(key)] = float(value)
        except ValueError:
            raise PiddpmError(
                f"--zernike {item!r} is invalid: expected NOLL=WAVES, e.g. 11=0.1"
            ) from None
    return out


def run(args) -> int:
    import math
    from pathlib import Path

    import torch

    from piddpm import PiddpmError
    from piddpm.io import write_tiff
    from piddpm.optics import confocal_psf, project_psf, widefield_psf, z_positions_um

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise PiddpmError(f"{out} exists: pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise PiddpmError(f"{out.parent}: no such folder for the output")
    if args.modality == "confocal" and args.ex_nm is None:
        raise PiddpmError("--ex-nm is required for --modality confocal (excitation wavelength, nm)")
    if args.z_size is not None and args.z_size < 1:
        raise PiddpmError(f"--z-size {args.z_size} is invalid: expected a positive integer")
    if not (math.isfinite(args.z_step_um) and args.z_step_um > 0):
        raise PiddpmError(f"--z-step-um {args.z_step_um} is invalid: expected a positive number")

    if args.z_size is not None:
        z = z_positions_um(args.z_size, args.z_step_um)
    elif args.projection in ("mean", "max"):
        if not (math.isfinite(args.z_range_um) and args.z_range_um > 0):
            raise PiddpmError(f"--z-range-um {args.z_range_um} is invalid: expected > 0")
        n_z = 2 * int(round(0.5 * args.z_range_um / args.z_step_um)) + 1
        z = z_positions_um(n_z, args.z_step_um)
    else:
        z = None
    common = dict(
        ri=args.ri,
        z_um=z,
        zernike_waves=_parse_zernike(args.zernike) or None,
        vectorial=not args.scalar,
        dtype=getattr(torch, args.dtype),
    )
    if args.modality == "widefield":
        psf = widefield_psf(args.na, args.em_nm, args.pixel_um, args.size, **common)
    else:
        psf = confocal_psf(
            args.na, args.ex_nm, args.em_nm, args.pinhole_au, args.pixel_um, args.size, **common
        )
    three_d = args.z_size is not None and args.projection is None
    if three_d:
        data, axes, pixel = psf, "ZYX", (args.z_step_um, args.pixel_um, args.pixel_um)
    else:
        data = project_psf(psf, args.projection or "focus")
        axes, pixel = "YX", (args.pixel_um, args.pixel_um)
    meta = {
        "kind": "psf",
        "modality": args.modality,
        "na": args.na,
        "ri": args.ri,
        "em_wavelength_nm": args.em_nm,
        "ex_wavelength_nm": args.ex_nm,
        "pinhole_au": args.pinhole_au if args.modality == "confocal" else None,
        "projection": None if three_d else (args.projection or "focus"),
        "z_um": None if z is None else [float(v) for v in z],
        "zernike_waves": {str(k): v for k, v in _parse_zernike(args.zernike).items()},
        "model": "scalar" if args.scalar else "vectorial",
        "normalisation": "unit sum",
    }
    write_tiff(
        out,
        data.detach().cpu().numpy().astype("float32"),
        axes=axes,
        pixel_size_um=pixel,
        metadata=meta,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}: {axes} {tuple(data.shape)} float32, pixel {args.pixel_um} um")
    return 0
