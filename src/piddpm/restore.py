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

import contextlib
import math
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from piddpm import PiddpmError, __version__
from piddpm.normalisation import DEFAULT_PERCENTILES  # per-plane percentiles -> -1, +1
from piddpm.normalisation import check_percentiles as _check_percentiles
from piddpm.resample import fourier_resample

__all__ = [
    "RestoreResult",
    "restore",
    "resolve_device",
    "make_psf",
    "load_psf",
    "rl_iterations",
    "noise_sigma",
    "METHODS",
    "SAMPLERS",
    "GUIDANCES",
    "REGULARISERS",
    "DEFAULT_PERCENTILES",
    "MIN_PLANE_SIZE",
]

#: Restoration methods. ``rl`` needs a PSF and no model.
METHODS = ("pi-ddpm", "ddpm", "unet", "rl")
#: Diffusion samplers: ancestral DDPM (all T steps) or DDIM (``steps`` jumps).
SAMPLERS = ("ddpm", "ddim")
#: Physics guidance during diffusion sampling.
GUIDANCES = ("learned", "known", "both", "none")
#: Regulariser applied during diffusion sampling.
REGULARISERS = ("l1", "l2", "none")
#: For tile-invariant networks, the fraction of the overlap at each inner tile edge that gets
#: no blending weight (unless the model's restore_defaults give ``tile_margin``).
TILE_MARGIN_FRACTION = 0.25
#: Smallest plane (pixels per side) that restore accepts.
MIN_PLANE_SIZE = 8
#: DDIM steps when neither the caller nor the model says.
DEFAULT_DDIM_STEPS = 20
#: Richardson-Lucy automatic rule: stop when the rms residual reaches RL_TAU x noise ...
RL_TAU = 1.1
#: ... or after this many iterations.
RL_MAX_ITER = 200


@dataclass
class RestoreResult:
    """What :func:`restore` returns.

    Attributes
    ----------
    mean : array-like, same shape and kind (NumPy / torch / Dask) as the input, float32
        The restored image (the mean of the posterior samples), in the input's intensity
        units.
    std : same kind as ``mean``, or None
        Per-pixel standard deviation of the posterior samples (input intensity units);
        ``None`` unless ``samples > 1`` with a diffusion method.
    residual : numpy.ndarray or None
        Data-consistency map ``|A y - x| / (hi - lo)`` (dimensionless, a fraction of each
        plane's robust intensity range), same shape as the input; ``None`` without a PSF.
    metadata : dict
        How it was made: method, model, sampler, steps, eta, lambda, seed, normalisation,
        PSF, piddpm version, ... (JSON-serialisable).
    """

    mean: Any
    std: Any = None
    residual: Any = None
    metadata: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------
def resolve_device(device: str | None = "auto"):
    """``"auto"`` -> CUDA if available, else Apple MPS, else CPU; other strings are checked.

    Returns
    -------
    torch.device
    """
    import torch

    name = "auto" if device is None else str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise PiddpmError(f"device {name!r} is not valid; expected auto, cpu, cuda or mps") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PiddpmError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise PiddpmError(f"device {name!r} requested but Apple MPS is not available")
    return dev


def _input_kind(image) -> str:
    mod = type(image).__module__
    if isinstance(image, np.ndarray):
        return "numpy"
    if mod.startswith("torch"):
        return "torch"
    if mod.startswith("dask"):
        return "dask"
    if isinstance(image, str | Path):
        return "path"
    return "array"


def _check_dtype(dtype, where: str) -> None:
    kind = np.dtype(dtype).kind if not hasattr(dtype, "is_complex") else None
    if kind is None:  # torch dtype
        import torch

        if dtype.is_complex:
            kind = "c"
        elif dtype == torch.bool:
            kind = "b"
        elif dtype.is_floating_point:
            kind = "f"
        else:
            kind = "i"
    if kind == "c":
        raise PiddpmError(
            f"{where} has complex dtype {dtype}; expected real intensities (take the "
            "magnitude or the real part first)"
        )
    if kind == "b":
        raise PiddpmError(
            f"{where} has boolean dtype (a mask?); expected intensities (integer or float)"
        )
    if kind not in "iuf":
        raise PiddpmError(f"{where} has unsupported dtype {dtype}; expected integer or float")


def _resolve_axes(shape: tuple[int, ...], axes: str | None, where: str) -> str:
    from piddpm.io import check_axes

    if axes is None:
        ndim = len(shape)
        if ndim < 2:
            raise PiddpmError(f"{where} has shape {shape}; expected at least 2 dimensions (Y, X)")
        if ndim == 3 and shape[-1] in (3, 4) and min(shape[:2]) >= MIN_PLANE_SIZE:
            raise PiddpmError(
                f"{where} has shape {shape}, which looks like an RGB(A) colour image; piddpm "
                "restores grey images: convert it to grey, or pass axes='YXC' to restore each "
                "colour as a separate channel"
            )
        lead = "TCZ"[3 - (ndim - 2) :] if ndim <= 5 else None
        if lead is None:
            raise PiddpmError(
                f"{where} has {ndim} dimensions; pass axes= (letters from T, C, Z, Q, Y, X)"
            )
        axes = lead + "YX"
    axes = check_axes(axes, len(shape), where)
    if "S" in axes:
        raise PiddpmError(
            f"{where} is a colour (RGB) image (axes {axes!r}); piddpm restores grey images: "
            "convert it to grey (e.g. Fiji: Image > Type > 8-bit), or pass --axes with C in "
            f"place of S (e.g. {axes.replace('S', 'C')!r}) to restore each colour separately"
        )
    return axes


def _percentiles_from_config(cfg: dict | None) -> tuple[float, float]:
    if not cfg:
        return DEFAULT_PERCENTILES
    norm = (cfg.get("restore_defaults") or {}).get("percentiles") or cfg.get("percentiles")
    if norm is None and isinstance(cfg.get("normalisation"), dict):
        norm = cfg["normalisation"].get("percentiles")
    if norm is None:
        return DEFAULT_PERCENTILES
    return _check_percentiles(norm)


def _plane_range(plane: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The plane's ``(lo, hi)``: the rule training uses on its simulated fields."""
    from piddpm import normalisation

    return normalisation.intensity_range(plane, percentiles)


# --------------------------------------------------------------------------------------
# PSF
# --------------------------------------------------------------------------------------
def _psf_size_for(airy_um: float, pixel_um: float) -> int:
    """Kernel side covering +-2 Airy units (to the 3rd dark ring), odd, 9..129 px."""
    n = 2 * math.ceil(2.0 * airy_um / pixel_um) + 1
    return int(min(max(n, 9), 129))


def make_psf(
    *,
    modality: str = "widefield",
    na: float,
    em_nm: float,
    pixel_um: float,
    ri: float = 1.33,
    ex_nm: float | None = None,
    pinhole_au: float = 1.0,
    size: int | None = None,
) -> np.ndarray:
    """In-focus 2-D PSF from microscope settings (via :mod:`piddpm.optics`).

    Parameters
    ----------
    modality : {"widefield", "confocal"}
    na : float
        Numerical aperture.
    em_nm : float
        Emission wavelength in nanometres.
    pixel_um : float
        Pixel size in the sample plane, micrometres.
    ri : float
        Immersion refractive index (default 1.33, water).
    ex_nm : float, optional
        Excitation wavelength in nanometres (confocal only; required there).
    pinhole_au : float
        Pinhole diameter in Airy units (confocal only; default 1).
    size : int, optional
        Kernel side in pixels (odd). Default: covering +-2 Airy units, 9 to 129 pixels.

    Returns
    -------
    numpy.ndarray ``(size, size)`` float32, unit sum.
    """
    from piddpm.optics import airy_unit_um, confocal_psf, project_psf, widefield_psf

    for name, value in (("na", na), ("em_nm", em_nm), ("pixel_um", pixel_um)):
        if value is None:
            raise PiddpmError(
                f"microscope option {name} is missing; a computed PSF needs --na, --em-nm "
                "and --pixel-um (and --ex-nm for confocal), or give --psf FILE"
            )
    if size is None:
        size = _psf_size_for(airy_unit_um(float(na), float(em_nm)), float(pixel_um))
    if modality == "widefield":
        psf3 = widefield_psf(float(na), float(em_nm), float(pixel_um), int(size), ri=float(ri))
    elif modality == "confocal":
        if ex_nm is None:
            raise PiddpmError("a confocal PSF needs the excitation wavelength (--ex-nm)")
        psf3 = confocal_psf(
            float(na),
            float(ex_nm),
            float(em_nm),
            float(pinhole_au),
            float(pixel_um),
            int(size),
            ri=float(ri),
        )
    else:
        raise PiddpmError(f"modality {modality!r} is not known; expected widefield or confocal")
    return project_psf(psf3, "focus").detach().cpu().numpy().astype(np.float32)


def load_psf(psf, where: str = "psf") -> tuple[np.ndarray, str]:
    """A 2-D unit-sum PSF from an array (2-D, or 3-D ``(Z, kh, kw)``) or an image file.

    A 3-D PSF is reduced to its in-focus plane, taken as the plane with the brightest pixel
    (measured bead stacks are rarely centred). Negative values beyond round-off are refused;
    the result is renormalised to unit sum.

    Returns
    -------
    (numpy.ndarray ``(kh, kw)`` float32, description str)
    """
    desc = "array"
    if isinstance(psf, str | Path):
        from piddpm.io import read_image

        img = read_image(psf)
        where, desc = str(psf), f"file {psf}"
        if "S" in img.axes:
            raise PiddpmError(f"PSF file {psf} is a colour image; expected a grey PSF")
        arr = np.asarray(img.data)
        lead = tuple(i for i, a in enumerate(img.axes[:-2]) if arr.shape[i] > 1 and a != "Z")
        if lead:
            raise PiddpmError(
                f"PSF file {psf} has axes {img.axes!r} with more than one "
                f"{''.join(img.axes[i] for i in lead)} entry; expected a 2-D PSF or a Z stack"
            )
        arr = arr.reshape(-1, *arr.shape[-2:])
    else:
        if hasattr(psf, "detach"):
            psf = psf.detach().cpu().numpy()
        arr = np.asarray(psf)
        arr = arr.reshape(-1, *arr.shape[-2:]) if arr.ndim >= 2 else arr
    _check_dtype(arr.dtype, where)
    if arr.ndim < 2 or arr.size == 0:
        raise PiddpmError(f"{where}: PSF has shape {arr.shape}; expected (kh, kw) or (Z, kh, kw)")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise PiddpmError(f"{where}: PSF contains NaN or infinite values")
    if arr.shape[0] > 1:
        k = int(np.argmax(arr.reshape(arr.shape[0], -1).max(axis=1)))
        arr = arr[k]
        desc += f" (plane {k} of a 3-D stack, the brightest)"
    else:
        arr = arr[0]
    peak = np.abs(arr).max()
    if arr.min() < -1e-6 * peak:
        raise PiddpmError(
            f"{where}: PSF has negative values (min {arr.min():.3g}); subtract the background "
            "and clip at 0 first"
        )
    arr = np.clip(arr, 0, None)
    total = arr.sum()
    if not total > 0:
        raise PiddpmError(f"{where}: PSF sums to zero; expected a positive kernel")
    return (arr / total).astype(np.float32), desc


# --------------------------------------------------------------------------------------
# Richardson-Lucy: the automatic iteration rule
# --------------------------------------------------------------------------------------
def noise_sigma(plane: np.ndarray) -> float:
    """Standard deviation of additive noise in a plane (Immerkaer 1996).

    ``sigma = sqrt(pi / 2) / (6 (W - 2) (H - 2)) * sum |x conv M|`` with the Laplacian-difference
    mask ``M = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]``, which cancels smooth structure. For
    Poisson (signal-dependent) noise it estimates the root of the mean variance closely.

    Reference: J. Immerkaer, "Fast noise variance estimation", CVIU 64, 300 (1996).
    """
    from scipy import ndimage

    x = np.asarray(plane, dtype=np.float64)
    h, w = x.shape
    if h < 3 or w < 3:
        return 0.0
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    c = ndimage.correlate(x, mask, mode="nearest")[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2.0) * np.abs(c).sum() / (6.0 * (w - 2) * (h - 2)))


def rl_iterations(plane01: np.ndarray, psf: np.ndarray, tile: int) -> int:
    """Iteration count for Richardson-Lucy on one plane (the documented automatic rule).

    Morozov's discrepancy principle with an estimated noise level: RL runs on the central
    ``min(tile, H) x min(tile, W)`` crop of the plane and stops at the first iteration ``k``
    where the root-mean-square residual ``||A u_k - x|| / sqrt(N)`` falls to ``tau * sigma``,
    with ``sigma`` the noise level estimated from the data by :func:`noise_sigma` and
    ``tau =`` :data:`RL_TAU` ``= 1.1`` (Morozov's safety factor; the estimate is a little low
    for signal-dependent noise, and a band-limited PSF cannot fit all of the noise), at most
    :data:`RL_MAX_ITER` = 200 iterations. Noisy data stop early (RL would fit the noise), clean data run longer.
    The count found is used for every tile of the plane, so all tiles get the same operator
    (no seams). The rule is invariant to the intensity scale (no camera gain needed).
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    from piddpm.acquisition import blur
    from piddpm.baselines import richardson_lucy

    h, w = plane01.shape
    th, tw = min(tile, h), min(tile, w)
    y0, x0 = (h - th) // 2, (w - tw) // 2
    crop = np.ascontiguousarray(plane01[y0 : y0 + th, x0 : x0 + tw], dtype=np.float32)
    kh, kw = psf.shape
    if kh > th or kw > tw:
        return 30
    sigma = noise_sigma(crop)
    ph, pw = kh // 2, kw // 2
    x = torch.from_numpy(crop)[None, None]
    mode = "reflect" if (ph < th and pw < tw) else "replicate"
    xp = F.pad(x, (pw, pw, ph, ph), mode=mode).clamp_min(0)
    k_t = torch.from_numpy(psf)[None, None]
    u = None
    with torch.no_grad():
        for k in range(1, RL_MAX_ITER + 1):
            u = (
                richardson_lucy(xp, k_t, 1, init=u)
                if u is not None
                else richardson_lucy(xp, k_t, 1)
            )
            fit = blur(u, k_t, boundary="zero")[..., ph : ph + th, pw : pw + tw]
            rms = float(((fit - x) ** 2).mean().sqrt())
            if rms <= RL_TAU * sigma:
                return k
    return RL_MAX_ITER


# --------------------------------------------------------------------------------------
# tile functions
# --------------------------------------------------------------------------------------
def _blur_reflect(y, psf_t):
    """``A y`` for a batch ``(B, 1, h, w)``, image extended by mirror reflection."""
    import torch.nn.functional as F  # noqa: N812

    from piddpm.acquisition import blur

    kh, kw = psf_t.shape[-2:]
    ph, pw = kh // 2, kw // 2
    h, w = y.shape[-2:]
    mode = "reflect" if (ph < h and pw < w) else "replicate"
    yp = F.pad(y, (pw, pw, ph, ph), mode=mode)
    return blur(yp, psf_t, boundary="zero")[..., ph : ph + h, pw : pw + w]


class _DiffusionTiles:
    """Tile function for the diffusion methods: observation (normalised) -> mean[, std][, res]."""

    def __init__(
        self,
        net,
        schedule,
        *,
        sampler,
        sampler_kwargs,
        samples,
        device,
        psf_t,
        noise_field,
        with_residual,
        factor,
    ):
        self.net, self.schedule = net, schedule
        self.sampler, self.kwargs = sampler, sampler_kwargs
        self.samples, self.device, self.psf_t = samples, device, psf_t
        self.noise_field, self.with_residual, self.factor = noise_field, with_residual, factor

    def __call__(self, batch: np.ndarray, origins: list[tuple[int, int]]):
        import torch

        from piddpm.diffusion import ddim_sample, ddpm_sample
        from piddpm.diffusion.noise import TileNoise
        from piddpm.tiling import crop_to, pad_to_multiple

        padded, size = pad_to_multiple(batch, self.factor)
        x = torch.from_numpy(np.ascontiguousarray(padded)).to(self.device)
        fn = ddim_sample if self.sampler == "ddim" else ddpm_sample
        # one noise field per plane, cropped at each tile's position: overlapping tiles draw
        # the same noise where they overlap (padding extends the tile down/right in the plane)
        noise = TileNoise([self.noise_field] * len(origins), origins, self.samples)
        res = fn(
            self.net,
            x,
            self.schedule,
            psf=self.psf_t,
            num_samples=self.samples,
            noise=noise,
            progress=False,
            **self.kwargs,
        )
        mean = crop_to(res.mean.detach().float(), size)
        outs = [mean]
        if self.samples > 1:
            std = res.std if res.std is not None else res.samples.float().std(dim=1)
            outs.append(crop_to(std.detach().float(), size))
        if self.with_residual:
            x0 = crop_to(x, size)
            outs.append((_blur_reflect(mean, self.psf_t) - x0).abs() / 2.0)
        return torch.cat(outs, dim=1).cpu()


class _UNetTiles:
    def __init__(self, net, *, device, psf_t, with_residual, factor):
        self.net, self.device, self.psf_t = net, device, psf_t
        self.with_residual, self.factor = with_residual, factor

    def __call__(self, batch: np.ndarray):
        import torch

        from piddpm.tiling import crop_to, pad_to_multiple

        padded, size = pad_to_multiple(batch, self.factor)
        x = torch.from_numpy(np.ascontiguousarray(padded)).to(self.device)
        with torch.no_grad():
            y = crop_to(self.net(x, None).float(), size)
        outs = [y]
        if self.with_residual:
            outs.append((_blur_reflect(y, self.psf_t) - crop_to(x, size)).abs() / 2.0)
        return torch.cat(outs, dim=1).cpu()


class _RLTiles:
    """Tile function for Richardson-Lucy on ``max(x - lo, 0) / (hi - lo)``."""

    def __init__(self, *, psf_t, num_iter, device, with_residual):
        self.psf_t, self.num_iter = psf_t, num_iter
        self.device, self.with_residual = device, with_residual

    def __call__(self, batch: np.ndarray):
        import torch
        import torch.nn.functional as F  # noqa: N812

        from piddpm.baselines import richardson_lucy

        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        # RL on a mirror-extended tile: no dark rim from a zero boundary at the image border
        kh, kw = self.psf_t.shape[-2:]
        ph, pw = kh // 2, kw // 2
        h, w = x.shape[-2:]
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        xp = F.pad(x, (pw, pw, ph, ph), mode=mode)
        u = richardson_lucy(xp.clamp_min(0), self.psf_t, self.num_iter)
        u = u[..., ph : ph + h, pw : pw + w]
        outs = [u]
        if self.with_residual:
            outs.append((_blur_reflect(u, self.psf_t) - x).abs())
        return torch.cat(outs, dim=1).cpu()


# --------------------------------------------------------------------------------------
# model handling
# --------------------------------------------------------------------------------------
def _expected_channels(method: str) -> tuple[int, int, bool]:
    return {
        "pi-ddpm": (2, 2, True),
        "ddpm": (2, 1, True),
        "unet": (1, 1, False),
    }[method]


def _check_net_matches(net, entry) -> None:
    cin, cout, cond = _expected_channels(entry.method)
    got = (
        getattr(net, "in_channels", cin),
        getattr(net, "out_channels", cout),
        getattr(net, "conditioned", cond),
    )
    if got != (cin, cout, cond):
        raise PiddpmError(
            f"model {entry.weights} does not match its method {entry.method!r}: the network "
            f"has in/out channels {got[0]}/{got[1]} (conditioned={got[2]}); {entry.method} "
            f"needs {cin}/{cout} (conditioned={cond})"
        )


def _schedule_for(entry):
    from piddpm.diffusion.schedules import schedule_from_config

    sched = entry.config.get("schedule")
    if not isinstance(sched, dict):
        raise PiddpmError(
            f"model configuration {entry.config_path} has no 'schedule'; a diffusion model "
            "needs the noise schedule it was trained with"
        )
    return schedule_from_config(sched)


# --------------------------------------------------------------------------------------
# the API
# --------------------------------------------------------------------------------------

#: Tiling used when neither the call nor the model's ``restore_defaults`` give one.
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32


def _check_tiling(tile, overlap, shape: tuple[int, int]) -> tuple[int, int]:
    """Validate ``tile`` / ``overlap`` (pixels) for a plane of ``shape``; returns them as ints."""
    if isinstance(tile, bool) or int(tile) != tile or tile < 2:
        raise PiddpmError(f"tile size must be an integer >= 2 pixels, got {tile!r}")
    tile = int(tile)
    if isinstance(overlap, int) and overlap >= tile:
        warnings.warn(
            f"tile overlap {overlap} px is not smaller than the tile ({tile} px); using "
            f"{tile // 4} px",
            UserWarning,
            stacklevel=3,
        )
        overlap = tile // 4
    from piddpm.tiling import tile_positions

    tile_positions(shape, tile, overlap)  # validates tile / overlap
    return tile, int(overlap)


def _model_nyquist_range(cfg: dict | None) -> tuple[float, float]:
    """Pixel sizes (Nyquist units) a model was trained on; the old default if unrecorded."""
    ranges = ((cfg or {}).get("data") or {}).get("ranges") or {}
    lo, hi = ranges.get("pixel_nyquist_factor") or (0.8, 1.2)
    return float(lo), float(hi)


def _sampling_plan_for(entry, microscope, pixel_um, where, resample):
    """The resampling plan for a learned model, or None (with a one-time note) without optics."""
    from piddpm.resample import sampling_plan

    lo, hi = _model_nyquist_range(entry.config)
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


def _zoomed_shape(shape: tuple[int, int], zoom: float) -> tuple[int, int]:
    return tuple(max(int(round(n * zoom)), MIN_PLANE_SIZE) for n in shape)


def _psf_on_model_grid(psf_np: np.ndarray, plan) -> np.ndarray:
    """The PSF resampled to the model's pixel size (band-limited; non-negative, unit sum)."""
    n = max(int(round(psf_np.shape[0] * plan.zoom)) | 1, 3)
    m = max(int(round(psf_np.shape[1] * plan.zoom)) | 1, 3)
    k = np.clip(fourier_resample(psf_np, (n, m), pad=0), 0.0, None)
    return (k / max(float(k.sum()), 1e-12)).astype(np.float32)


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
    progress: bool = True,
    *,
    microscope: dict | None = None,
    pixel_size_um: float | None = None,
    percentiles: tuple[float, float] | None = None,
    residual: bool | None = None,
    eta_ddim: float | None = None,
    name: str | None = None,
    resample: bool = True,
) -> RestoreResult:
    """Restore a fluorescence image (2-D, stack, channels, time series) of any size.

    Parameters
    ----------
    image : numpy.ndarray, torch.Tensor, dask.array.Array, or path
        Intensities (integer or float, finite), shape matching ``axes``. A path is read with
        :func:`piddpm.io.read_image` (its axes and pixel size are used).
    model : str or path
        Bundled model name (``"widefield"``, ``"confocal"``, ``"ddpm-widefield"``, ...; see
        ``piddpm models``) or a model folder / ``.safetensors`` file. Ignored for ``rl``.
    method : {"pi-ddpm", "ddpm", "unet", "rl"}, optional
        Default: the model's method. A method other than the model's is refused.
    psf : array ``(kh, kw)`` / ``(Z, kh, kw)`` or path, optional
        The PSF (any scale; renormalised to unit sum; 3-D: its brightest plane). Needed by
        ``rl`` and by ``guidance="known"/"both"``; enables the ``residual`` map.
    sampler : {"ddim", "ddpm"}, optional
        Diffusion sampler; default the model's (DDIM).
    steps : int, optional
        DDIM steps (default: the model's, else 20); for ``rl`` the iteration count (default:
        the automatic rule of :func:`rl_iterations`). The DDPM sampler always runs all ``T``.
    samples : int
        Posterior samples per tile (diffusion methods); ``> 1`` gives ``std``.
    eta, regulariser, lam, guidance, eta_ddim : optional
        Sampler settings (physics-guidance strength, ``"l1"/"l2"/"none"`` and its weight
        lambda, ``"learned"/"known"/"both"/"none"``, DDIM stochasticity); default: the
        model's ``restore_defaults``, else the sampler's defaults.
    tile, overlap : int, optional
        Tile side and overlap in pixels; default: the model's ``restore_defaults`` (measured
        for each bundled model: GroupNorm statistics depend on the tile), else 256 and 32.
    batch_size : int
        Tiles per batch (4).
    axes : str, optional
        Axes letters (e.g. ``"ZYX"``, ``"TCYX"``); default from the file, else ``YX``,
        ``ZYX``, ``CZYX``, ``TCZYX`` by number of dimensions.
    seed : int
        Seed of the sampling noise (same seed, settings and batch size: same result).
    device : str
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    progress : bool
        Show a tqdm bar over tiles.
    microscope : dict, optional
        Compute the PSF from settings when ``psf`` is not given (with ``psf``, the settings
        only tell the sampling, for ``resample``): keys ``modality``, ``na``,
        ``em_nm``, ``ex_nm``, ``pinhole_au``, ``ri``, ``pixel_um`` (see :func:`make_psf`;
        ``pixel_um`` defaults to ``pixel_size_um`` or the file's pixel size).
    pixel_size_um : float, optional
        Lateral pixel size in micrometres (recorded; used for a computed PSF and for the
        resampling). Must be one a microscope gives (``piddpm.resample.PLAUSIBLE_PIXEL_UM``);
        an implausible pixel size in a file is ignored with a warning.
    percentiles : (float, float), optional
        Percentiles mapped to [-1, 1] (default: the model's, else (0.1, 99.9)).
    residual : bool, optional
        Compute the data-consistency map (default: whenever a PSF is known).
    name : str, optional
        How error messages name the image (default: the path, or "image").
    resample : bool
        Learned methods only, when the microscope (``na``, ``em_nm``) and the pixel size are
        known: a plane whose pixels lie outside the model's training range (in units of
        ``lambda_em / (4 NA)``, from its model.json) is resampled into that range, restored
        and resampled back (band-limited, :func:`piddpm.resample.fourier_resample`); the
        metadata's ``sampling`` records it. ``False`` restores at the native sampling.
        Without the microscope, a one-time warning states the sampling assumed.

    Returns
    -------
    RestoreResult
        ``mean`` (and ``std``) of the same kind and shape as ``image``, float32, in the
        input's intensity units; ``residual``; ``metadata``.

    Raises
    ------
    PiddpmError
        Bad input (dtype, NaN/inf, too small, colour, unknown axes), no usable model, a
        model for another method, a PSF larger than the image, bad settings.
    """
    import torch

    from piddpm.tiling import restore_tiled, tile_positions

    kind = _input_kind(image)
    where = name or (str(image) if kind == "path" else "image")
    file_pixel_um = None
    if kind == "path":
        from piddpm.io import read_image

        img = read_image(image, axes=axes)
        data, axes = img.data, img.axes
        file_pixel_um = img.pixel_size_um[2] if img.pixel_size_um else None
        kind = "numpy"
    else:
        data = image
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    shape = tuple(int(s) for s in data.shape)
    _check_dtype(data.dtype, where)
    axes = _resolve_axes(shape, axes, where)
    height, width = shape[-2], shape[-1]
    if height < MIN_PLANE_SIZE or width < MIN_PLANE_SIZE:
        raise PiddpmError(
            f"{where} is {height} x {width} pixels per plane (shape {shape}, axes {axes!r}); "
            f"restore needs at least {MIN_PLANE_SIZE} x {MIN_PLANE_SIZE} pixels (check the axes)"
        )
    if isinstance(samples, bool) or int(samples) != samples or samples < 1:
        raise PiddpmError(f"samples must be a positive integer, got {samples!r}")
    samples = int(samples)
    if isinstance(seed, bool) or int(seed) != seed:
        raise PiddpmError(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    tile_given, overlap_given = tile, overlap
    tile, overlap = _check_tiling(
        DEFAULT_TILE if tile is None else tile,
        DEFAULT_OVERLAP if overlap is None else overlap,
        (height, width),
    )
    for label, value, allowed in (
        ("method", method, METHODS),
        ("sampler", sampler, SAMPLERS),
        ("guidance", guidance, GUIDANCES),
        ("regulariser", regulariser, REGULARISERS),
    ):
        if value is not None and value not in allowed:
            raise PiddpmError(
                f"{label} {value!r} is not known; expected one of {', '.join(allowed)}"
            )
    if steps is not None and (isinstance(steps, bool) or int(steps) != steps or steps < 1):
        raise PiddpmError(f"steps must be a positive integer, got {steps!r}")
    dev = resolve_device(device)
    from piddpm.resample import check_pixel_size, file_pixel_size

    if pixel_size_um is not None:
        pixel_size_um = check_pixel_size(pixel_size_um, where)
    if microscope and microscope.get("pixel_um") is not None:
        microscope = {**microscope, "pixel_um": check_pixel_size(microscope["pixel_um"], where)}
    file_pixel_um = file_pixel_size(file_pixel_um, where)
    pixel_um = pixel_size_um if pixel_size_um is not None else file_pixel_um

    # ---- the model
    entry = None
    if method != "rl":
        from piddpm.models import resolve_model

        entry = resolve_model(model if model is not None else "widefield")
        if method is not None and method != entry.method:
            raise PiddpmError(
                f"model {entry.name} ({entry.config_path}) was trained for method "
                f"{entry.method!r}, not {method!r}; choose a {method} model or pass "
                f"--method {entry.method}"
            )
        method = entry.method
        wanted = (microscope or {}).get("modality")
        if wanted and entry.modality and entry.modality not in (wanted, "mixed"):
            warnings.warn(
                f"model {entry.name} was trained on {entry.modality} images but modality "
                f"{wanted!r} was requested; results may be poor",
                UserWarning,
                stacklevel=2,
            )

    # ---- the PSF
    psf_np, psf_desc = None, None
    # a given PSF wins over the microscope settings, which then only set the sampling plan
    if psf is not None:
        psf_np, psf_desc = load_psf(psf)
    elif microscope and any(microscope.get(k) is not None for k in ("na", "em_nm", "ex_nm")):
        opts = {k: v for k, v in dict(microscope).items() if v is not None}
        opts.setdefault("pixel_um", pixel_um)
        if opts.get("pixel_um") is None:
            raise PiddpmError(
                f"{where}: the pixel size is unknown; a computed PSF needs --pixel-um "
                "(micrometres per pixel in the sample)"
            )
        pixel_um = float(opts["pixel_um"])
        opts.setdefault("modality", "widefield")
        size_cap = min(height, width) - (1 - min(height, width) % 2)
        if opts.get("size") is None:
            from piddpm.optics import airy_unit_um

            opts["size"] = min(
                _psf_size_for(airy_unit_um(float(opts["na"]), float(opts["em_nm"])), pixel_um)
                if opts.get("na") and opts.get("em_nm")
                else 9,
                size_cap,
            )
        psf_np = make_psf(**opts)
        psf_desc = "computed: " + ", ".join(f"{k}={v}" for k, v in sorted(opts.items()))
    if psf_np is not None:
        kh, kw = psf_np.shape
        if kh > height or kw > width:
            raise PiddpmError(
                f"the PSF ({kh} x {kw} pixels, {psf_desc}) is larger than the image plane "
                f"({height} x {width}); crop the PSF to its central part"
            )
    if method == "rl" and psf_np is None:
        raise PiddpmError(
            "method rl needs a PSF: give --psf FILE or the microscope options "
            "(--modality --na --em-nm --pixel-um, and --ex-nm for confocal)"
        )
    use_residual = psf_np is not None if residual is None else bool(residual)
    if use_residual and psf_np is None:
        raise PiddpmError("the data-consistency residual needs a PSF (--psf or microscope options)")
    psf_t = None if psf_np is None else torch.from_numpy(psf_np)[None, None].to(dev)

    # ---- sampling: bring the plane into the model's pixel-size range
    plan = None
    if method != "rl":
        plan = _sampling_plan_for(entry, microscope, pixel_um, where, resample)
        if plan is not None and plan.resamples and psf_np is not None:
            psf_model = _psf_on_model_grid(psf_np, plan)
            psf_t = torch.from_numpy(psf_model)[None, None].to(dev)

    # ---- settings
    meta: dict[str, Any] = {
        "software": "piddpm",
        "piddpm_version": __version__,
        "method": method,
        "model": None,
        "seed": seed,
        "tile": int(tile),
        "overlap": int(overlap),
        "batch_size": int(batch_size),
        "axes": axes,
        "device": str(dev),
        "psf": psf_desc,
    }
    tile_fn_factory = None
    out_channels = 1
    net = None
    tile_margin = 0
    std_scale, std_floor = 1.0, 0.0
    if method == "rl":
        if samples > 1:
            warnings.warn("Richardson-Lucy is deterministic: samples > 1 ignored", stacklevel=2)
            samples = 1
        perc = _check_percentiles(percentiles) if percentiles is not None else DEFAULT_PERCENTILES
        meta.update(
            sampler=None,
            steps=steps,
            eta=None,
            **{"lambda": None},
            regulariser=None,
            guidance=None,
            samples=1,
            rl_iteration_rule=None
            if steps
            else (
                "per plane: discrepancy principle on the central tile (stop when the rms "
                f"residual |A u - x| reaches {RL_TAU} x the Immerkaer noise estimate; at most "
                f"{RL_MAX_ITER})"
            ),
        )
    else:
        from piddpm.models import load_entry

        net = load_entry(entry, str(dev))
        _check_net_matches(net, entry)
        factor = int(getattr(net, "downsample_factor", 1))
        meta["model"] = entry.name
        meta["model_file"] = str(entry.weights)
        perc = (
            _check_percentiles(percentiles)
            if percentiles is not None
            else _percentiles_from_config(entry.config)
        )
        defaults = (
            dict(entry.config.get("sampler") or {})
            if isinstance(entry.config.get("sampler"), dict)
            else {}
        )
        defaults.update(entry.restore_defaults)
        if tile_given is None or overlap_given is None:  # the model's measured tiling
            tile, overlap = _check_tiling(
                int(defaults.get("tile", tile)) if tile_given is None else tile,
                int(defaults.get("overlap", overlap)) if overlap_given is None else overlap,
                (height, width),
            )
            meta.update(tile=tile, overlap=overlap)
        if getattr(net, "tile_invariant", False):
            # the outer pixels of a tile, where the network sees its zero padding, get no
            # weight in the blend (tiled == untiled: tests/test_restore.py)
            tile_margin = int(defaults.get("tile_margin", TILE_MARGIN_FRACTION * overlap))
        meta["tile_margin"] = tile_margin
        # the per-model factor that calibrates the posterior spread (fitted on synthetic dev
        # pairs, piddpm.evaluation.calibration); 1 for an uncalibrated model
        std_scale = float(defaults.get("std_scale", 1.0))
        std_floor = float(defaults.get("std_floor", 0.0))
        if method == "unet":
            if samples > 1:
                warnings.warn("the U-Net is deterministic: samples > 1 ignored", stacklevel=2)
                samples = 1
            ignored = [
                k
                for k, v in (
                    ("sampler", sampler),
                    ("steps", steps),
                    ("eta", eta),
                    ("regulariser", regulariser),
                    ("lam", lam),
                    ("guidance", guidance),
                )
                if v is not None
            ]
            if ignored:
                warnings.warn(
                    f"method unet has no sampler: {', '.join(ignored)} ignored", stacklevel=2
                )
            meta.update(
                sampler=None,
                steps=None,
                eta=None,
                **{"lambda": None},
                regulariser=None,
                guidance=None,
                samples=1,
            )

            def tile_fn_factory(plane_index):  # noqa: ARG001
                return _UNetTiles(
                    net, device=dev, psf_t=psf_t, with_residual=use_residual, factor=factor
                )
        else:
            schedule = _schedule_for(entry)
            sampler = sampler or defaults.get("kind") or defaults.get("sampler") or "ddim"
            if sampler not in SAMPLERS:
                sampler = "ddim"
            guidance = guidance or defaults.get("guidance")
            if guidance in (None, "auto"):
                guidance = "learned" if method == "pi-ddpm" else "none"
            if guidance in ("learned", "both") and method != "pi-ddpm":
                raise PiddpmError(
                    f"guidance {guidance!r} needs the learned physics gradient of a pi-ddpm "
                    f"model; model {entry.name} is {method}: use guidance known (with a PSF) "
                    "or none"
                )
            if guidance in ("known", "both") and psf_np is None:
                raise PiddpmError(
                    f"guidance {guidance!r} needs the PSF: give --psf FILE or the microscope "
                    "options"
                )
            kwargs: dict[str, Any] = {"guidance": guidance}
            if entry.config.get("target"):
                kwargs["target"] = entry.config["target"]
            if sampler == "ddim":
                steps = int(
                    steps
                    or defaults.get("steps")
                    or defaults.get("num_steps")
                    or DEFAULT_DDIM_STEPS
                )
                if steps > schedule.T:
                    raise PiddpmError(
                        f"steps {steps} exceeds the model's {schedule.T} diffusion steps"
                    )
                kwargs["num_steps"] = steps
                e_ddim = eta_ddim if eta_ddim is not None else defaults.get("eta_ddim")
                if e_ddim is None and samples > 1:
                    e_ddim = 1.0  # distinct posterior draws need a stochastic DDIM
                if e_ddim is not None:
                    kwargs["eta_ddim"] = float(e_ddim)
            else:
                if steps is not None and int(steps) != schedule.T:
                    raise PiddpmError(
                        f"the ancestral DDPM sampler runs all {schedule.T} steps of the "
                        f"model's schedule; --steps {steps} is for --sampler ddim"
                    )
                steps = schedule.T
            regulariser = regulariser or defaults.get("regulariser")
            lam = lam if lam is not None else defaults.get("lam")
            eta = eta if eta is not None else defaults.get("eta")
            if regulariser is not None:
                kwargs["regulariser"] = None if regulariser == "none" else regulariser
            if lam is not None:
                kwargs["lam"] = float(lam)
            if eta is not None:
                kwargs["eta"] = float(eta)
            # a tile-invariant network gets a tile-invariant guidance step (no per-tile rms)
            kwargs["guidance_norm"] = defaults.get("guidance_norm") or (
                "none" if getattr(net, "tile_invariant", False) else "per-image"
            )
            effective = _effective_sampler_settings(sampler, kwargs)
            meta.update(
                sampler=sampler,
                steps=steps,
                eta=effective.get("eta"),
                **{"lambda": effective.get("lam")},
                regulariser=effective.get("regulariser"),
                guidance=guidance,
                samples=samples,
                eta_ddim=effective.get("eta_ddim"),
                guidance_norm=kwargs["guidance_norm"],
                std_scale=std_scale if samples > 1 else None,
                std_floor=std_floor if samples > 1 else None,
                noise="one field per plane (PlaneNoise), cropped per tile",
            )

            def tile_fn_factory(plane_index):
                from piddpm.diffusion.noise import PlaneNoise

                return _DiffusionTiles(
                    net,
                    schedule,
                    sampler=sampler,
                    sampler_kwargs=kwargs,
                    samples=samples,
                    device=dev,
                    psf_t=psf_t,
                    noise_field=PlaneNoise((seed * 1_000_003 + plane_index) % (2**63)),
                    with_residual=use_residual,
                    factor=factor,
                )

    out_channels = 1 + (samples > 1) + use_residual
    meta["normalisation"] = {
        "percentiles": list(perc),
        "map": "x_n = 2 (x - lo) / (hi - lo) - 1 per plane; output y = (y_n + 1) / 2 (hi - lo) + lo"
        if method != "rl"
        else "RL on max(x - lo, 0) / (hi - lo); output y = u (hi - lo) + lo",
    }
    if pixel_um is not None:
        meta["pixel_size_um"] = float(pixel_um)
    if plan is not None:
        meta["sampling"] = {
            "nyquist_factor": plan.nyquist_factor,
            "model_nyquist_range": list(_model_nyquist_range(entry.config)),
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
    if samples > 1:
        meta["uncertainty"] = "per-pixel std of the posterior samples, input intensity units"

    # ---- planes (axes end in "YX": every index of the leading axes is one plane)
    lead_shape = shape[:-2]
    lead_names = axes[:-2]
    n_planes = int(np.prod(lead_shape)) if lead_shape else 1
    mean_out = np.empty(shape, np.float32)
    std_out = np.empty_like(mean_out) if samples > 1 else None
    res_out = np.empty_like(mean_out) if use_residual else None

    def read_plane(idx: tuple[int, ...]) -> np.ndarray:
        sub = data[idx] if idx else data
        if kind == "torch":
            sub = sub.detach().cpu().numpy()
        return np.asarray(sub).astype(np.float32, copy=False)

    n_tiles = len(tile_positions((height, width), tile, overlap))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_planes * n_tiles, unit="tile", desc=f"restore ({method})", leave=False)
    ranges: list[list[float]] = []
    rl_counts: list[int] = []
    try:
        for p_index, idx in enumerate(np.ndindex(*lead_shape)):
            plane = read_plane(idx)
            finite = np.isfinite(plane)
            if not finite.all():
                bad = int(plane.size - finite.sum())
                at = (
                    " (plane "
                    + ", ".join(f"{a}={i}" for a, i in zip(lead_names, idx, strict=True))
                    + ")"
                    if idx
                    else ""
                )
                raise PiddpmError(
                    f"{where} contains {bad} NaN or infinite value(s){at}; replace them "
                    "(e.g. by 0 or the background level) before restoring"
                )
            lo, hi = _plane_range(plane, perc)
            ranges.append([lo, hi])
            span = hi - lo
            if method == "rl":
                plane_in = (plane - lo) / span
                n_iter = (
                    int(steps) if steps else rl_iterations(np.clip(plane_in, 0, None), psf_np, tile)
                )
                rl_counts.append(n_iter)
                fn = _RLTiles(psf_t=psf_t, num_iter=n_iter, device=dev, with_residual=use_residual)
                eff_overlap = max(int(overlap), min(max(psf_np.shape), tile // 2))
            else:
                plane_in = 2.0 * (plane - lo) / span - 1.0
                if plan is not None and plan.resamples:
                    plane_in = fourier_resample(plane_in, _zoomed_shape((height, width), plan.zoom))
                fn = tile_fn_factory(p_index)
                eff_overlap = int(overlap)
            if eff_overlap >= tile:
                eff_overlap = tile - 1
            with torch.no_grad() if method in ("unet", "rl") else contextlib.nullcontext():
                out = restore_tiled(
                    fn,
                    plane_in.astype(np.float32, copy=False),
                    tile,
                    eff_overlap,
                    batch_size,
                    out_channels=out_channels,
                    progress=bar,
                    with_origins=isinstance(fn, _DiffusionTiles),
                    margin=min(tile_margin, max((eff_overlap - 1) // 2, 0)),
                )
            del plane_in
            if method != "rl" and plan is not None and plan.resamples:
                out = np.stack([fourier_resample(c, (height, width)) for c in out])
                if std_out is not None:
                    out[1] = np.maximum(out[1], 0.0)
            k = 0
            if method == "rl":
                mean_out[idx] = out[0] * span + lo
            else:
                mean_out[idx] = (out[0] + 1.0) * 0.5 * span + lo
            k = 1
            if std_out is not None:
                std_out[idx] = (out[k] * std_scale + std_floor) * 0.5 * span
                k += 1
            if res_out is not None:
                res_out[idx] = out[k]
            del out
    finally:
        if bar is not None:
            bar.close()
    meta["normalisation"]["ranges"] = ranges if len(ranges) <= 64 else ranges[:64] + ["..."]
    if rl_counts:
        meta["steps"] = rl_counts[0] if len(set(rl_counts)) == 1 else rl_counts
        meta["rl_iterations"] = rl_counts if len(rl_counts) <= 64 else rl_counts[:64]

    # ---- back to the input's kind
    return RestoreResult(
        mean=_as_kind(mean_out, image, kind),
        std=_as_kind(std_out, image, kind),
        residual=res_out,
        metadata=meta,
    )


def _effective_sampler_settings(sampler: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The sampler's keyword values after defaults (for the metadata)."""
    import inspect

    try:
        from piddpm.diffusion import ddim_sample, ddpm_sample
    except ImportError:
        return dict(kwargs)
    fn = ddim_sample if sampler == "ddim" else ddpm_sample
    out = {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    out.update(kwargs)
    return {k: v for k, v in out.items() if isinstance(v, str | int | float | type(None))}


def _as_kind(arr: np.ndarray | None, like, kind: str):
    if arr is None:
        return None
    if kind == "torch":
        import torch

        return torch.from_numpy(arr).to(like.device)
    if kind == "dask":
        import dask.array as da

        chunks = getattr(like, "chunksize", None)
        return da.from_array(arr, chunks=chunks if chunks is not None else "auto")
    return arr


class _CallableModule(types.ModuleType):
    """Makes ``piddpm.restore(...)`` work even after ``import piddpm.restore``.

    Importing the sub-module sets the attribute ``piddpm.restore`` to this module, which
    would shadow the lazily exported function; calling the module calls :func:`restore`.
    """

    def __call__(self, *args, **kwargs):
        return restore(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
