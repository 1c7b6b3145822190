"""Restore real images: ``piddpm.restore(image, ...)`` with tiling and intensity handling.

The pipeline for one call (see ``docs/restore.md`` for the user-facing description):

1. **Planes.** The image's axes (``TCZQYX`` letters, from the file or ``axes=``) say which
   dimensions are ``Y, X``; every other index (time point, channel, z plane) is one 2-D
   plane, restored independently. Colour (``S``) images are refused with a hint.
2. **Intensity in.** Per plane, the ``p_low`` and ``p_high`` percentiles (default 0.1 and
   99.9, over the whole plane, not per tile) give the affine map
   ``x_n = 2 (x - lo) / (hi - lo) - 1`` onto the models' [-1, 1] range (the models were
   trained on observations min-max normalised to [-1, 1]; the percentiles are the robust
   version of min and max). Values outside [lo, hi] are kept, not clipped.
3. **Tiles.** :func:`piddpm.tiling.restore_tiled` cuts the plane into overlapping tiles
   (``tile``, ``overlap``), restores ``batch_size`` tiles at a time (each tile reflect-padded
   to the network's down-sampling factor and cropped back) and blends them with a
   raised-cosine window, so no seams appear.
4. **Method.** ``pi-ddpm`` / ``ddpm``: the diffusion sampler (DDIM by default, ``samples``
   posterior draws per tile: mean and per-pixel std); ``unet``: one forward pass;
   ``rl``: Richardson-Lucy with a given or computed PSF on ``max(x - lo, 0)``.
5. **Intensity out.** The inverse map ``y = (y_n + 1) / 2 (hi - lo) + lo`` (std: scaled by
   ``(hi - lo) / 2``): outputs are in the input's intensity units.
6. **Data consistency** (when a PSF is known): ``|A y - x| / (hi - lo)``, the absolute
   residual of the re-blurred restoration as a fraction of the plane's robust range.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from piddpm import PiddpmError, __version__
from piddpm.choices import (
    GuidanceChoice,
    Precision,
    RegulariserChoice,
    RestoreMethod,
    Sampler,
    options,
)
from piddpm.normalisation import DEFAULT_PERCENTILES, check_percentiles
from piddpm.restore.inputs import check_choice, check_int, read_input, resolve_device
from piddpm.restore.planes import restore_planes
from piddpm.restore.psf import resolve_psf
from piddpm.restore.result import RestoreResult, as_input_kind
from piddpm.restore.sampling import model_nyquist_range, psf_on_model_grid, sampling_plan_for
from piddpm.restore.settings import DEFAULT_OVERLAP, DEFAULT_TILE, check_tiling, resolve_entry

__all__ = ["restore"]


def restore(
    image,
    model: str | Path | None = "widefield",
    method: str | None = None,
    psf=None,
    sampler: str | None = None,
    steps: int | None = None,
    samples: int = 1,
    eta: float | None = None,
    regulariser: str | None = None,
    lam: float | None = None,
    guidance: str | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    axes: str | None = None,
    seed: int = 0,
    device: str = "auto",
    progress=True,
    *,
    microscope: dict | None = None,
    pixel_size_um: float | None = None,
    percentiles: tuple[float, float] | None = None,
    residual: bool | None = None,
    eta_ddim: float | None = None,
    name: str | None = None,
    resample: bool = True,
    z_step_um: float | None = None,
    intensity_range: tuple[float, float] | list | None = None,
    origin: tuple[int, int, int] | None = None,
    borders: tuple[bool, bool, bool, bool] | None = None,
    precision: str | None = None,
) -> RestoreResult:
    """Restore a fluorescence image (2-D, stack, channels, time series) of any size.

    Parameters
    ----------
    image : numpy.ndarray, torch.Tensor, dask.array.Array, piddpm.io.Image, or path
        Intensities (integer or float, finite), shape matching ``axes``. A path is read with
        :func:`piddpm.io.read_image`; its axes and pixel size (and an ``Image``'s) are used.
    model : str or path
        Bundled model name (``"widefield"``, ``"confocal"``, ``"ddpm-widefield"``, ...; see
        ``piddpm models``) or a model folder / ``.safetensors`` file. Ignored for ``rl``.
    method : {"pi-ddpm", "ddpm", "unet", "rl", "rl-3d"}, optional
        Default: the model's method (another one is refused). ``rl-3d``: 3-D Richardson-Lucy
        of each z-stack with a 3-D PSF (file, or computed from ``microscope`` and
        ``z_step_um``; ``tile``: XY chunk side); see :func:`piddpm.restore.volume.restore_volume`.
    psf : array ``(kh, kw)`` / ``(Z, kh, kw)`` or path, optional
        The PSF (any scale; renormalised to unit sum; 3-D: its brightest plane, except for
        ``rl-3d``). Needed by ``rl``/``rl-3d`` and by ``guidance="known"/"both"``.
    sampler : {"ddim", "ddpm", "dpm-solver++"}, optional
        Diffusion sampler; default the model's (DDIM). ``dpm-solver++`` is DPM-Solver++(2M),
        deterministic given the starting noise.
    steps : int, optional
        DDIM / DPM-Solver++ steps (default: the model's, else 20; DDPM runs all ``T``); for
        ``rl``/``rl-3d`` iterations (default: the rule of :func:`rl_iterations`).
    samples : int
        Posterior samples per tile (diffusion methods); ``> 1`` gives ``std``.
    eta, regulariser, lam, guidance, eta_ddim : optional
        Sampler settings (physics-guidance strength, ``"l1"/"l2"/"none"`` and its weight
        lambda, ``"learned"/"known"/"both"/"none"``, DDIM stochasticity); default: the
        model's ``restore_defaults``, else :class:`piddpm.diffusion.SamplerConfig`'s
        (one rule: :func:`piddpm.diffusion.resolve_sampler_config`).
    precision : {"auto", "float32", "bf16"}, optional
        Diffusion network arithmetic; ``auto``: the model's (bf16 autocast where its defaults
        ask for it and the device has bf16 units, else float32, which tiles most exactly).
    tile, overlap, batch_size : int, optional
        Tile side and overlap in pixels (default: the model's ``restore_defaults``, else 256
        and 32); ``batch_size`` tiles per batch (4).
    axes : str, optional
        Axes letters (``"ZYX"``, ``"TCYX"``); default the file's, else by dimensions.
    seed : int
        Seed of the sampling noise (same seed, settings and batch size: same result).
    device, progress : str, bool or callable
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda:1"``, ...; a tqdm bar over tiles,
        or a callable given ``(tiles_done, tiles_total)`` after each batch (raising in it stops).
    microscope : dict, optional
        Compute the PSF when ``psf`` is not given (else only the sampling, for ``resample``):
        keys ``modality``, ``na``, ``em_nm``, ``ex_nm``, ``pinhole_au``, ``ri``, ``pixel_um``
        (:func:`make_psf`; ``pixel_um`` defaults to ``pixel_size_um`` or the file's).
    pixel_size_um : float, optional
        Lateral pixel size, micrometres (a computed PSF, the resampling). An implausible one
        (``piddpm.resample.PLAUSIBLE_PIXEL_UM``) is refused, or ignored with a warning in a file.
    percentiles : (float, float), optional
        Percentiles mapped to [-1, 1] (default: the model's, else (0.1, 99.9)).
    residual : bool, optional
        Compute the data-consistency map (default: whenever a PSF is known).
    name : str, optional
        How error messages name the image (default: the path, or "image").
    resample : bool
        Learned methods, microscope and pixel size known: a plane whose pixels lie outside
        the model's training range (units of ``lambda_em / (4 NA)``, from its model.json) is
        resampled into it and back (:func:`piddpm.resample.fourier_resample`; metadata
        ``sampling``). ``False``: native sampling. Without the microscope, a one-time
        warning states the sampling assumed.
    z_step_um : float, optional
        ``rl-3d``: distance between planes in micrometres (default: the file's).
    intensity_range, origin, borders : optional
        A part of a larger image (documented in :mod:`piddpm.restore.stream`).

    Returns
    -------
    RestoreResult
        ``mean`` (and ``std``) of the same kind and shape as ``image``, float32, in the
        input's intensity units; ``residual``; ``metadata``.

    Raises
    ------
    PiddpmError
        Bad input (dtype, NaN/inf, size, colour, axes), no usable model, a bad setting.
    """
    if method == "rl-3d":
        from piddpm.restore.volume import restore_volume

        vol = dict(microscope=microscope, z_step_um=z_step_um, steps=steps, axes=axes, name=name)
        vol.update(pixel_size_um=pixel_size_um, percentiles=percentiles, device=device)
        return restore_volume(image, psf, chunk_px=tile, overlap=overlap, **vol)
    inp = read_input(image, axes, name)
    samples, seed = check_int(samples, "samples", 1), check_int(seed, "seed")
    dflt = zip((tile, overlap), (DEFAULT_TILE, DEFAULT_OVERLAP), strict=True)
    tiling = check_tiling(*(d if v is None else v for v, d in dflt), inp.plane_shape)
    _check_choices(method=method, sampler=sampler, guidance=guidance, regulariser=regulariser)
    check_int(steps, "steps", 1)
    dev = resolve_device(device)
    pixel_um, microscope = _pixel_size(inp, pixel_size_um, microscope)
    entry = None if method == "rl" else resolve_entry(model, method, microscope)
    method = entry.method if entry is not None else "rl"
    psf_np, psf_desc, pixel_um = resolve_psf(psf, microscope, pixel_um, inp.plane_shape, inp.where)
    use_residual = _check_psf_use(method, psf_np, residual)
    psf_t = None if psf_np is None else torch.from_numpy(psf_np)[None, None].to(dev)
    plan = None
    if method != "rl":  # bring the plane into the model's pixel-size range
        plan = sampling_plan_for(entry, microscope, pixel_um, inp.where, resample)
        if plan is not None and plan.resamples and psf_np is not None:
            psf_t = torch.from_numpy(psf_on_model_grid(psf_np, plan))[None, None].to(dev)
    given = dict(sampler=sampler, steps=steps, eta=eta, eta_ddim=eta_ddim, guidance=guidance)
    given.update(regulariser=regulariser, lam=lam, samples=samples, precision=precision)
    common = dict(device=dev, psf_t=psf_t, with_residual=use_residual)
    runner, perc, (tile, overlap) = _make_runner(
        entry, given, seed, tiling, (tile, overlap), percentiles, psf_np, plan, inp, common
    )
    meta = _base_metadata(method, entry, seed, (tile, overlap, batch_size), inp, dev, psf_desc)
    meta.update(_model_metadata(entry, runner))
    fixed = dict(ranges=intensity_range, origin=origin, borders=borders)
    mean, std, res, ranges = restore_planes(
        inp, runner, percentiles=perc, tile=tile, batch_size=batch_size, progress=progress, **fixed
    )
    meta.update(_describe(method, perc, ranges, pixel_um, plan, entry, use_residual, runner))
    mean, std = (as_input_kind(a, image, inp.kind) for a in (mean, std))
    return RestoreResult(mean=mean, std=std, residual=res, metadata=meta)


def _model_metadata(entry, runner) -> dict:
    """The model file, its blending margin and mirrored border, and the runner's own part."""
    if entry is None:
        return dict(runner.metadata)
    own = dict(model_file=str(entry.weights), tile_margin=runner.tile_margin)
    return {**own, "border_pad": runner.border_pad, **runner.metadata}


def _check_choices(**values) -> None:
    """Refuse a method, sampler, guidance, regulariser or precision not among the choices."""
    allowed = {
        "method": RestoreMethod,
        "sampler": Sampler,
        "guidance": GuidanceChoice,
        "regulariser": RegulariserChoice,
        "precision": Precision,
    }
    for label, value in values.items():
        check_choice(label, value, options(allowed[label]))


def _base_metadata(method, entry, seed, tiling, inp, dev, psf_desc) -> dict[str, Any]:
    """What every result's metadata starts with."""
    tile, overlap, batch_size = tiling
    return {
        "software": "piddpm",
        "piddpm_version": __version__,
        "method": method,
        "model": entry.name if entry is not None else None,
        "seed": seed,
        "tile": int(tile),
        "overlap": int(overlap),
        "batch_size": int(batch_size),
        "axes": inp.axes,
        "device": str(dev),
        "psf": psf_desc,
    }


def _pixel_size(inp, pixel_size_um, microscope):
    """The plane's pixel size (given > file; implausible values refused or ignored)."""
    from piddpm.resample import check_pixel_size, file_pixel_size

    if pixel_size_um is not None:
        pixel_size_um = check_pixel_size(pixel_size_um, inp.where)
    if microscope and microscope.get("pixel_um") is not None:
        microscope = {**microscope, "pixel_um": check_pixel_size(microscope["pixel_um"], inp.where)}
    file_pixel_um = file_pixel_size(inp.file_pixel_um, inp.where)
    return (pixel_size_um if pixel_size_um is not None else file_pixel_um), microscope


def _check_psf_use(method: str, psf_np, residual: bool | None) -> bool:
    """Whether the residual map is made; refuses what needs a PSF without one."""
    if method == "rl" and psf_np is None:
        raise PiddpmError(
            "method rl needs a PSF: give --psf FILE or the microscope options "
            "(--modality --na --em-nm --pixel-um, and --ex-nm for confocal)"
        )
    use_residual = psf_np is not None if residual is None else bool(residual)
    if use_residual and psf_np is None:
        raise PiddpmError("the data-consistency residual needs a PSF (--psf or microscope options)")
    return use_residual


def _make_runner(entry, given, seed, tiling, tile_given, percentiles, psf_np, plan, inp, common):
    """The method's runner, its percentiles and its tiling (the model's where not given)."""
    from piddpm.restore import runners

    tile, overlap = tiling
    given = dict(given)
    precision = given.pop("precision")
    _check_choices(precision=precision)
    if entry is None:
        if given["samples"] > 1:
            warnings.warn("Richardson-Lucy is deterministic: samples > 1 ignored", stacklevel=3)
        perc = check_percentiles(percentiles) if percentiles is not None else DEFAULT_PERCENTILES
        runner = runners.RLRunner(
            psf_np=psf_np, steps=given["steps"], tile=tile, overlap=overlap, **common
        )
        return runner, perc, (tile, overlap)
    from piddpm.models import load_entry
    from piddpm.restore.settings import (
        TILE_MARGIN_FRACTION,
        border_pad_for,
        check_net_matches,
        percentiles_from_config,
        schedule_for,
    )

    net = load_entry(entry, str(common["device"]))
    check_net_matches(net, entry)
    perc = (
        check_percentiles(percentiles)
        if percentiles is not None
        else percentiles_from_config(entry.config)
    )
    model_sampler = entry.config.get("sampler")
    model_sampler = dict(model_sampler) if isinstance(model_sampler, dict) else {}
    defaults = {**model_sampler, **entry.restore_defaults}
    if tile_given[0] is None or tile_given[1] is None:  # the model's measured tiling
        tile, overlap = check_tiling(
            int(defaults.get("tile", tile)) if tile_given[0] is None else tile,
            int(defaults.get("overlap", overlap)) if tile_given[1] is None else overlap,
            inp.plane_shape,
            stacklevel=4,
        )
    invariant = bool(getattr(net, "tile_invariant", False))
    learned = dict(net=net, entry=entry, plan=plan, plane_shape=inp.plane_shape, overlap=overlap)
    if entry.method == "unet":
        sampler_keys = ("sampler", "steps", "eta", "regulariser", "lam", "guidance")
        ignored = [k for k in sampler_keys if given[k] is not None]
        if precision == "bf16":  # the U-Net restores in float32
            ignored.append("precision bf16")
        runner = runners.UNetRunner(ignored=ignored, samples=given["samples"], **learned, **common)
    else:
        from piddpm.diffusion.settings import resolve_sampler_config

        schedule = schedule_for(entry)
        config = resolve_sampler_config(given, model_sampler, entry.restore_defaults)
        config = runners.diffusion_config(
            config,
            entry.method,
            entry,
            schedule,
            psf_known=psf_np is not None,
            steps_given=given["steps"],
            tile_invariant=invariant,
        )
        runner = runners.DiffusionRunner(
            config=config,
            schedule=schedule,
            seed=seed,
            precision=precision,
            **learned,
            **common,
        )
    # the outer pixels of a tile, where the network sees its zero padding, get no weight in
    # the blend of a tile-invariant network (tiled == untiled: tests/test_restore.py)
    if invariant:
        runner.tile_margin = int(defaults.get("tile_margin", TILE_MARGIN_FRACTION * overlap))
    runner.border_pad = border_pad_for(entry)
    # the per-model factor that calibrates the posterior spread (fitted on synthetic dev
    # pairs, piddpm.evaluation.calibration); 1 for an uncalibrated model
    runner.std_scale = float(defaults.get("std_scale", 1.0))
    runner.std_floor = float(defaults.get("std_floor", 0.0))
    runner.std_gradient = float(defaults.get("std_gradient", 0.0))
    if entry.method != "unet":
        runner.metadata = runners.diffusion_metadata(
            runner.config,
            runner.std_scale,
            runner.std_floor,
            runner.autocast,
            runner.std_gradient,
        )
    return runner, perc, (tile, overlap)


def _describe(method, perc, ranges, pixel_um, plan, entry, use_residual, runner) -> dict:
    """The metadata that describes the intensity map, the sampling and the extra outputs."""
    meta: dict[str, Any] = {
        "normalisation": {
            "percentiles": list(perc),
            "map": "x_n = 2 (x - lo) / (hi - lo) - 1 per plane; output y = (y_n + 1) / 2 "
            "(hi - lo) + lo"
            if method != "rl"
            else "RL on max(x - lo, 0) / (hi - lo); output y = u (hi - lo) + lo",
            "ranges": ranges if len(ranges) <= 64 else ranges[:64] + ["..."],
        }
    }
    if pixel_um is not None:
        meta["pixel_size_um"] = float(pixel_um)
    if plan is not None:
        meta["sampling"] = {
            "nyquist_factor": plan.nyquist_factor,
            "model_nyquist_range": list(model_nyquist_range(entry.config)),
            "resampled": plan.resamples,
            "zoom": plan.zoom,
            "model_pixel_um": plan.model_pixel_um,
            "note": "band-limited (periodic-sinc) resampling into the model's training range "
            "and back"
            if plan.resamples
            else "inside the model's training range",
        }
    if use_residual:
        meta["residual"] = "|A y - x| / (hi - lo) per plane (fraction of the robust range)"
    if runner.samples > 1:
        meta["uncertainty"] = "per-pixel std of the posterior samples, input intensity units"
    meta.update(runner.final_metadata())
    return meta
