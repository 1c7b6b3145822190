"""``piddpm restore``: restore a real image (TIFF/OME-TIFF, PNG, Zarr) of any size."""

from __future__ import annotations

import argparse

from piddpm.choices import (
    GuidanceChoice,
    Modality,
    Precision,
    RegulariserChoice,
    RestoreMethod,
    Sampler,
    options,
)

DESCRIPTION = """\
Restore a fluorescence image with a bundled or trained model, or with Richardson-Lucy.

Stacks (Z), channels (C) and time series (T) are restored plane by plane; any image size
is cut into overlapping tiles that are blended without seams. Each plane is mapped from the
intensity percentiles the model names (0.1 and 99.9 unless its model.json says otherwise) to
[-1, 1] for the model and back afterwards, so the output is in the input's intensity units
(see docs/restore.md for what that means for comparisons).
The output is a float32 OME-TIFF (or OME-Zarr for Zarr input or a .zarr output path) with
the input's axes, shape and pixel size, and metadata stating how it was made.

Default: the bundled widefield PI-DDPM (--model widefield) with its fast DDIM sampler.
--method rl needs a PSF (--psf FILE, or the microscope options --modality --na --em-nm
[--ex-nm --pinhole-au] --ri --pixel-um) and picks its iteration count automatically
(discrepancy principle) unless --steps is given. --method rl-3d deconvolves each z-stack
(--axes with a Z) in 3-D: --psf PSF3D.tif, or the microscope options and --z-step-um
(default: the file's z step).
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "restore",
        help="restore (deconvolve and denoise) a real image",
        description=DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("input", metavar="IN", help="input image: TIFF/OME-TIFF, PNG or Zarr/OME-Zarr")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output path: .tif/.ome.tif (float32 OME-TIFF) or .zarr (OME-Zarr)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="bundled model name (see `piddpm models`), a model folder / .safetensors file, or "
        "a BioImage Model Zoo .zip made by `piddpm export bmz`; default: widefield (ignored by "
        "--method rl and rl-3d)",
    )
    p.add_argument(
        "--method",
        choices=options(RestoreMethod),
        default=None,
        help="restoration method; default: the model's method (must match the model)",
    )
    _add_psf_arguments(p)
    _add_sampling_arguments(p)
    _add_tiling_arguments(p)
    _add_scale_arguments(p)
    return p


def _add_psf_arguments(p: argparse.ArgumentParser) -> None:
    """The PSF options: a PSF file, or a microscope to compute it for."""
    psf = p.add_argument_group("PSF (needed by --method rl and --guidance known/both)")
    psf.add_argument("--psf", default=None, help="PSF image file (2D, or 3D: brightest plane used)")
    psf.add_argument(
        "--modality",
        choices=options(Modality),
        default=None,
        help="compute the PSF for this microscope type (with --na, --em-nm, ...)",
    )
    psf.add_argument("--na", type=float, default=None, help="numerical aperture (unitless)")
    psf.add_argument("--ri", type=float, default=1.33, help="immersion refractive index")
    psf.add_argument("--em-nm", type=float, default=None, help="emission wavelength, nm")
    psf.add_argument(
        "--ex-nm", type=float, default=None, help="excitation wavelength, nm (confocal)"
    )
    psf.add_argument(
        "--pinhole-au", type=float, default=1.0, help="pinhole diameter, Airy units (confocal)"
    )
    psf.add_argument(
        "--pixel-um",
        type=float,
        default=None,
        help="pixel size in the sample, micrometres (default: from the file's metadata)",
    )
    psf.add_argument(
        "--z-step-um",
        type=float,
        default=None,
        help="rl-3d: distance between z planes, micrometres (default: from the file's metadata)",
    )


def _add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """The sampling options of the diffusion methods (and their extra outputs)."""
    s = p.add_argument_group("sampling (diffusion methods)")
    s.add_argument(
        "--sampler",
        choices=options(Sampler),
        default=None,
        help="ddim (fast, few steps), dpm-solver++ (DPM-Solver++(2M), few steps, "
        "deterministic) or ddpm (ancestral, all steps); default: the model's (ddim)",
    )
    s.add_argument(
        "--steps",
        type=int,
        default=None,
        help="DDIM / DPM-Solver++ steps (default: the model card's, else 20); for rl: iterations "
        "(default: automatic)",
    )
    s.add_argument(
        "--samples",
        type=int,
        default=1,
        help="posterior samples per tile; the output is their mean (count)",
    )
    s.add_argument(
        "--uncertainty",
        default=None,
        metavar="STD.tif",
        help="also write the per-pixel std of the samples (input intensity units; needs "
        "--samples >= 2)",
    )
    s.add_argument(
        "--residual",
        default=None,
        metavar="RES.tif",
        help="also write the data-consistency map |A y - x| / (p99.9 - p0.1) per plane "
        "(dimensionless; needs a PSF)",
    )
    s.add_argument(
        "--eta",
        type=float,
        default=None,
        help="physics-guidance strength (unitless); default: the model's, else the sampler's",
    )
    s.add_argument(
        "--regulariser",
        choices=options(RegulariserChoice),
        default=None,
        help="sampling regulariser; default: the model's, else l1",
    )
    s.add_argument(
        "--lambda",
        dest="lam",
        type=float,
        default=None,
        help="regulariser weight lambda (unitless); default: the model's, else 0.015",
    )
    s.add_argument(
        "--guidance",
        choices=options(GuidanceChoice),
        default=None,
        help="physics guidance: learned (pi-ddpm), known (needs a PSF), both, none; default: "
        "the model's",
    )
    s.add_argument(
        "--precision",
        choices=options(Precision),
        default=None,
        help="arithmetic of the diffusion network: auto (default: the model's, bf16 autocast "
        "where it asks for it and the CPU/GPU has bf16 units), float32 (slower, tiles most "
        "exactly), bf16",
    )


def _add_tiling_arguments(p: argparse.ArgumentParser) -> None:
    """Tiling, device, seed and output-handling options."""
    t = p.add_argument_group("tiling and execution")
    t.add_argument(
        "--tile",
        type=int,
        default=None,
        help="tile side, pixels (default: the model's measured setting, else 256); rl-3d: "
        "side of the XY chunks a large stack is cut into (default: the whole stack)",
    )
    t.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="overlap between tiles, pixels (default: the model's setting, else 32); rl-3d: "
        "halo of each XY chunk (default: the PSF's lateral size)",
    )
    t.add_argument("--batch", type=int, default=4, help="tiles per batch (count)")
    t.add_argument(
        "--axes",
        default=None,
        help="axes of IN if its metadata is missing or wrong, e.g. ZYX, TCYX (letters T C Z Q Y X)",
    )
    t.add_argument("--seed", type=int, default=0, help="random seed (integer) of the sampler")
    t.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda or cuda:N; with --workers or "
        "--cluster, auto and cuda give each worker one GPU, round-robin (docs/scale.md), and "
        "cuda:N puts every worker on GPU N",
    )
    t.add_argument(
        "--no-resample",
        action="store_true",
        help="learned methods: restore at the native sampling even when the microscope options "
        "show pixels outside the model's training range (default: resample into it and back)",
    )
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar (flag)")
    t.add_argument("--overwrite", action="store_true", help="replace existing output files (flag)")


def _add_scale_arguments(p: argparse.ArgumentParser) -> None:
    """Out-of-core restore (piddpm.restore.stream): chunks, resume, dask.distributed."""
    s = p.add_argument_group(
        "out-of-core (Zarr in and .zarr out, or --chunk): chunk by chunk into OME-Zarr, "
        "bounded memory; docs/scale.md"
    )
    s.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="stream in output chunks of this side, pixels (default 1024 when streaming)",
    )
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted streaming run into the existing OUT (flag)",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="run the chunks on a local dask.distributed cluster of N worker processes (N >= 1); "
        "with --device auto/cuda worker i uses GPU i mod (GPUs seen), more workers than GPUs "
        "share them (logged)",
    )
    s.add_argument(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="run the chunks on an existing dask.distributed scheduler (tcp://host:8786), not "
        "with --workers; a worker with CUDA_VISIBLE_DEVICES set (dask-cuda) uses the first GPU "
        "it sees, others one GPU each, round-robin per host",
    )


def _streams(args) -> bool:
    """Whether this restore streams: Zarr in and .zarr out, --chunk, or a cluster option."""
    from pathlib import Path

    from piddpm.io import is_zarr_path

    zarr_in = is_zarr_path(args.input) or Path(args.input).is_dir()
    return bool(
        (zarr_in and is_zarr_path(args.output))
        or args.chunk
        or args.workers is not None
        or args.cluster
    )


def _run_stream(args, microscope) -> int:
    """The streaming branch of :func:`run` (:func:`piddpm.restore.stream.restore_to_zarr`)."""
    import sys

    from piddpm import PiddpmError
    from piddpm.io import is_zarr_path
    from piddpm.restore.stream import DEFAULT_CHUNK, restore_to_zarr

    named = [
        ("", args.output),
        ("--uncertainty ", args.uncertainty),
        ("--residual ", args.residual),
    ]
    for label, path in named:  # each output is an OME-Zarr store of its own
        if path and not is_zarr_path(path):
            raise PiddpmError(f"{label}{path}: a streaming restore writes OME-Zarr; name it .zarr")
    out = restore_to_zarr(
        args.input,
        args.output,
        chunk=args.chunk or DEFAULT_CHUNK,
        overlap=args.overlap,
        std_path=args.uncertainty,
        residual_path=args.residual,
        resume=args.resume,
        overwrite=args.overwrite,
        workers=args.workers,
        cluster=args.cluster,
        axes=args.axes,
        progress=not args.no_progress and sys.stderr.isatty(),
        **_restore_options(args, microscope),
    )
    import zarr

    meta = dict(zarr.open_group(str(out), mode="r").attrs).get("piddpm", {})
    extra = ", ".join(str(p) for p in (args.uncertainty, args.residual) if p)
    print(
        _summary(meta, args.output)
        + f" in {meta.get('stream', {}).get('chunks')} chunks"
        + (f"; also {extra}" if extra else "")
    )
    return 0


def _check_outputs(args) -> None:
    """Fail before the (long) computation: output paths that exist, repeat the input or
    lie in a missing folder, and extra outputs the settings cannot give."""
    import os
    from pathlib import Path

    from piddpm import PiddpmError

    outputs = [("output", args.output)]
    if args.uncertainty:
        outputs.append(("--uncertainty", args.uncertainty))
    if args.residual:
        outputs.append(("--residual", args.residual))
    seen = {os.path.abspath(args.input)}
    for label, path in outputs:
        if os.path.abspath(path) in seen:
            raise PiddpmError(f"{label} path {path} is the same as another input/output path")
        seen.add(os.path.abspath(path))
        if Path(path).exists() and not args.overwrite and not args.resume:  # resume: stream's check
            raise PiddpmError(f"{path}: already exists; pass --overwrite to replace it")
        parent = Path(path).parent
        if not parent.is_dir():
            raise PiddpmError(f"{path}: the folder {parent} does not exist; create it first")
    if args.uncertainty and args.samples < 2:
        raise PiddpmError(
            f"--uncertainty {args.uncertainty} needs --samples 2 or more (got {args.samples}): "
            "the std of one sample is undefined"
        )
    if args.method in ("unet", "rl", "rl-3d") and args.uncertainty:
        raise PiddpmError(f"--uncertainty needs a diffusion method; {args.method} is deterministic")


def _microscope(args) -> dict | None:
    """The microscope options as ``restore(microscope=...)`` takes them, or None."""
    from piddpm import PiddpmError

    if all(v is None for v in (args.modality, args.na, args.em_nm, args.ex_nm)):
        return None
    if args.psf:
        raise PiddpmError("give either --psf or the microscope options (--modality, --na, ...)")
    return {
        "modality": args.modality or "widefield",
        "na": args.na,
        "em_nm": args.em_nm,
        "ex_nm": args.ex_nm,
        "ri": args.ri,
        "pinhole_au": args.pinhole_au,
        "pixel_um": args.pixel_um,
    }


def _restore_options(args, microscope: dict | None) -> dict:
    """The ``restore()`` keywords that the in-memory and the streaming paths share."""
    return dict(
        model=args.model or "widefield",
        method=args.method,
        psf=args.psf,
        sampler=args.sampler,
        steps=args.steps,
        samples=args.samples,
        eta=args.eta,
        regulariser=args.regulariser,
        lam=args.lam,
        guidance=args.guidance,
        precision=args.precision,
        tile=args.tile,
        batch_size=args.batch,
        seed=args.seed,
        device=args.device,
        microscope=microscope,
        pixel_size_um=args.pixel_um,
        resample=not args.no_resample,
    )


def _summary(meta: dict, output: str) -> str:
    return (
        f"wrote {output} ({meta['method']}"
        + (f", model {meta['model']}" if meta.get("model") else "")
        + (f", {meta['sampler']} {meta['steps']} steps" if meta.get("sampler") else "")
        + (f", {meta['steps']} iterations" if meta["method"] in ("rl", "rl-3d") else "")
        + ")"
    )


def run(args) -> int:
    import sys
    import warnings

    from piddpm import PiddpmError
    from piddpm.io import read_image, write_image
    from piddpm.restore import restore

    _check_outputs(args)
    if args.workers is not None and args.workers < 1:
        raise PiddpmError(f"--workers must be a positive integer, got {args.workers}")
    if args.method in ("rl", "rl-3d") and args.model:
        warnings.warn(f"--method {args.method} uses no model: --model ignored", stacklevel=1)
    microscope = _microscope(args)
    if _streams(args):
        return _run_stream(args, microscope)
    if args.resume:
        raise PiddpmError(
            "--resume continues a streaming restore: Zarr in and .zarr out, or --chunk"
        )
    img = read_image(args.input, axes=args.axes)
    result = restore(
        img,
        overlap=args.overlap,
        progress=not args.no_progress and sys.stderr.isatty(),
        residual=bool(args.residual) if args.residual else None,
        name=str(args.input),
        z_step_um=args.z_step_um,
        **_restore_options(args, microscope),
    )
    if args.residual and result.residual is None:
        raise PiddpmError(f"--residual {args.residual} needs a PSF (--psf or microscope options)")
    meta = dict(result.metadata, input=str(args.input))
    # the main output of a Zarr input is Zarr too unless its name says TIFF
    in_zarr = img.metadata.get("format", "").endswith("zarr")
    written = [(args.output, result.mean, "restored image (mean of the samples), input units")]
    if args.uncertainty:
        std_note = "per-pixel std of the posterior samples, input units"
        written.append((args.uncertainty, result.std, std_note))
    if args.residual:
        res_note = "data consistency |A y - x| / (p_high - p_low) per plane, dimensionless"
        written.append((args.residual, result.residual, res_note))
    for path, data, what in written:
        write_image(
            path,
            data,
            axes=img.axes,
            pixel_size_um=img.pixel_size_um,
            metadata=dict(meta, content=what),
            overwrite=args.overwrite,
            default_format="zarr" if in_zarr and path == args.output else "tiff",
        )
    print(_summary(meta, args.output))
    return 0
