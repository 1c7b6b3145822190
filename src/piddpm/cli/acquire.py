"""``piddpm acquire``: image a ground truth through the microscope and camera model."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Simulate a camera image of a ground truth: blur it with a PSF (a same-size convolution),
optionally bin pixels, then add Poisson shot noise, background, Gaussian read noise, camera
gain and offset and (with --bit-depth) quantisation. Writes a float32 OME-TIFF in ADU
(= photo-electrons with --gain 1 --offset 0) carrying the ground truth's pixel size.

A 2D ground truth is blurred with a 2D PSF. A stack (ZYX, TYX, CYX, ...) is blurred plane
by plane with a 2D PSF. A 3D PSF with a 2D ground truth: its in-focus plane (the plane
holding the PSF's brightest pixel) is used, with a warning. A 3D PSF with a stack is an
error (3D convolution is not supported). The PSF is normalised to unit sum and used as
given otherwise: subtract a measured bead image's background first.
--photons is the expected number of photons at the brightest pixel of the whole blurred
ground truth (all planes together), so planes keep their relative brightness.
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "acquire",
        help="simulate a noisy microscope image of a ground truth",
        description=DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("gt", metavar="GT", help="ground-truth image (TIFF/OME-TIFF, PNG, Zarr)")
    p.add_argument("--psf", required=True, help="PSF image file (2D, or 3D: in-focus plane used)")
    p.add_argument("-o", "--output", required=True, help="output OME-TIFF path (float32, ADU)")
    p.add_argument(
        "--photons",
        type=float,
        default=100.0,
        help="expected photons (photo-electrons) at the brightest pixel of the blurred image",
    )
    p.add_argument("--background", type=float, default=0.0, help="background, photons per pixel")
    p.add_argument("--read-noise", type=float, default=0.0, help="camera read noise, electrons rms")
    p.add_argument("--gain", type=float, default=1.0, help="camera gain, ADU per electron")
    p.add_argument("--offset", type=float, default=0.0, help="camera offset, ADU")
    p.add_argument(
        "--bit-depth",
        type=int,
        default=None,
        help="quantise: round and clip to [0, 2^N - 1] ADU (no quantisation when not given)",
    )
    p.add_argument(
        "--binning",
        type=int,
        default=1,
        help="sum N x N ground-truth pixels into one camera pixel (pixels, integer)",
    )
    p.add_argument(
        "--boundary",
        choices=["zero", "periodic"],
        default="zero",
        help="blur boundary: zero-padded (linear) or periodic (circular) convolution",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (integer) of the noise")
    p.add_argument(
        "--axes", default=None, help="axes of GT if its file does not say, e.g. ZYX (letters)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the output file if it exists (flag)"
    )
    return p


def _psf_2d(psf_img, gt_is_2d: bool, warn):
    """Reduce the PSF file to a 2D kernel (in-focus plane of a 3D PSF for a 2D GT)."""
    import numpy as np

    from piddpm import PiddpmError

    data = np.asarray(psf_img.data, dtype=np.float64)
    axes = psf_img.axes
    if "S" in axes:
        raise PiddpmError(f"{psf_img.path}: the PSF is a colour (RGB) image; expected greyscale")
    squeeze = tuple(i for i, n in enumerate(data.shape[:-2]) if n == 1)
    data = data.squeeze(axis=squeeze) if squeeze else data
    if data.ndim == 2:
        return data
    if data.ndim != 3:
        raise PiddpmError(
            f"{psf_img.path}: PSF of shape {psf_img.data.shape} (axes {axes}); expected 2D (YX) "
            "or 3D (ZYX)"
        )
    if not gt_is_2d:
        raise PiddpmError(
            f"{psf_img.path}: a 3D PSF (shape {data.shape}) with a ground-truth stack would need "
            "3D convolution, which is not supported; pass a 2D PSF to blur plane by plane"
        )
    focus = int(np.argmax(data.reshape(data.shape[0], -1).max(axis=1)))
    warn(
        f"{psf_img.path}: 3D PSF with a 2D ground truth; using its in-focus plane "
        f"{focus} of {data.shape[0]} (the plane with the brightest pixel)"
    )
    return data[focus]


def _check_pixel_sizes(gt_img, psf_img, warn) -> None:
    from piddpm import PiddpmError

    for name, i in (("y", 1), ("x", 2)):
        a, b = gt_img.pixel_size_um[i], psf_img.pixel_size_um[i]
        if a is None or b is None:
            continue
        if abs(a - b) > 0.01 * a:
            raise PiddpmError(
                f"pixel size ({name}) of the PSF {psf_img.path} is {b:.6g} um but that of the "
                f"ground truth {gt_img.path} is {a:.6g} um (more than 1% apart); resample the "
                "PSF to the ground truth's pixel size"
            )
    if (gt_img.pixel_size_um[2] is None) != (psf_img.pixel_size_um[2] is None):
        warn(
            "the pixel size of the ground truth or of the PSF is unknown; assuming the PSF "
            "is sampled like the ground truth"
        )


def run(args) -> int:
    import sys
    import warnings
    from pathlib import Path

    import numpy as np
    import torch

    from piddpm import PiddpmError
    from piddpm.acquisition import acquire
    from piddpm.io import read_image, write_tiff

    def warn(msg: str) -> None:
        warnings.warn(msg, stacklevel=2)

    out = Path(args.output)
    for src in (args.gt, args.psf):
        if out.resolve() == Path(src).resolve():
            raise PiddpmError(f"{out}: the output would replace the input {src}; choose another -o")

    gt_img = read_image(args.gt, axes=args.axes)
    psf_img = read_image(args.psf)
    if "S" in gt_img.axes:
        raise PiddpmError(
            f"{gt_img.path}: the ground truth is a colour image (axes {gt_img.axes}); "
            "expected a greyscale intensity image"
        )
    _check_pixel_sizes(gt_img, psf_img, warn)
    gt = np.asarray(gt_img.data, dtype=np.float32)
    if not np.isfinite(gt).all():
        raise PiddpmError(f"{gt_img.path}: the ground truth contains NaN or infinite values")
    if gt.min() < 0:
        raise PiddpmError(
            f"{gt_img.path}: the ground truth has negative values (min {gt.min():.3g}); "
            "expected a non-negative fluorophore density"
        )
    gt_is_2d = gt.ndim == 2 or int(np.prod(gt.shape[:-2])) == 1
    psf = _psf_2d(psf_img, gt_is_2d, warn)
    total = psf.sum()
    if not np.isfinite(psf).all() or psf.min() < 0 or total <= 0:
        raise PiddpmError(
            f"{psf_img.path}: the PSF must be finite, >= 0 and not all zero "
            f"(min {np.nanmin(psf):.3g}, sum {total:.3g})"
        )
    psf = psf / total

    lead = gt.shape[:-2]
    planes = torch.from_numpy(gt.reshape((-1, 1) + gt.shape[-2:]))
    kernel = torch.from_numpy(psf.astype(np.float32))
    # --photons refers to the brightest pixel of the whole stack: planes keep their
    # relative brightness
    shot = acquire(
        planes,
        kernel,
        photons=args.photons,
        background=args.background,
        read_noise=args.read_noise,
        gain=args.gain,
        offset=args.offset,
        bit_depth=args.bit_depth,
        boundary=args.boundary,
        binning=args.binning,
        generator=torch.Generator().manual_seed(args.seed),
        photons_per="batch",
    )
    if float(shot["blurred"].max()) <= 0:
        raise PiddpmError(f"{gt_img.path}: the ground truth is all zero; nothing to image")
    observed = shot["observed"]
    observed = observed.numpy()
    observed = observed.reshape(lead + observed.shape[-2:])
    ps = list(gt_img.pixel_size_um)
    for i in (1, 2):
        if ps[i] is not None:
            ps[i] = ps[i] * args.binning
    meta = {
        "piddpm": "acquire",
        "ground_truth": str(gt_img.path),
        "psf": str(psf_img.path),
        "units": "ADU",
        "photons": args.photons,
        "background_photons": args.background,
        "read_noise_e": args.read_noise,
        "gain_adu_per_e": args.gain,
        "offset_adu": args.offset,
        "bit_depth": args.bit_depth,
        "binning": args.binning,
        "boundary": args.boundary,
        "seed": args.seed,
    }
    write_tiff(
        out,
        observed,
        axes=gt_img.axes,
        pixel_size_um=tuple(ps),
        metadata=meta,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {out}: shape {observed.shape} ({gt_img.axes}), mean {observed.mean():.4g} ADU, "
        f"max {observed.max():.4g} ADU",
        file=sys.stdout,
    )
    return 0
