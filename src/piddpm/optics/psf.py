"""Widefield and confocal intensity PSFs, 2-D kernels from 3-D PSFs, and optics helpers.

Conventions
-----------
- Lengths in micrometres (``*_um``), wavelengths in nanometres (``*_nm``), pinholes in Airy
  units (``*_au``) back-projected to the sample, aberrations in waves rms (``*_waves``).
- Lateral pixel ``n`` of a ``size``-pixel grid sits at ``(n - size // 2) * pixel_size_um``: the
  PSF centre is pixel ``size // 2`` (odd sizes are symmetric).
- PSFs are intensity point samples (no pixel integration) of the unpolarised vectorial model
  of :mod:`piddpm.optics.pupil`, each normalised to unit total sum.
- Widefield fluorescence = the emission PSF. Confocal = excitation PSF x (emission PSF
  convolved laterally, plane by plane, with the pinhole disc back-projected to the sample).
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from piddpm import PiddpmError
from piddpm.optics.pupil import focal_intensity

__all__ = [
    "widefield_psf",
    "confocal_psf",
    "project_psf",
    "airy_unit_um",
    "nyquist_pixel_um",
    "z_positions_um",
    "check_psf",
]

Number = float | int
Param = Number | torch.Tensor | Sequence[float]


# --------------------------------------------------------------------------- helpers


def airy_unit_um(na: Param, em_wavelength_nm: Param) -> float | torch.Tensor:
    """Airy unit (diameter of the first dark ring) in micrometres: ``1.22 lambda_em / NA``.

    Back-projected to the sample plane (i.e. independent of the magnification). Floats give a
    float; tensors broadcast.
    """
    if isinstance(na, torch.Tensor) or isinstance(em_wavelength_nm, torch.Tensor):
        return 1.22 * torch.as_tensor(em_wavelength_nm) * 1e-3 / torch.as_tensor(na)
    return 1.22 * float(em_wavelength_nm) * 1e-3 / float(na)


def nyquist_pixel_um(na: Param, wavelength_nm: Param) -> float | torch.Tensor:
    """Largest lateral pixel (micrometres) that samples a widefield intensity PSF without
    aliasing: ``lambda / (4 NA)`` (the incoherent OTF ends at ``2 NA / lambda``)."""
    if isinstance(na, torch.Tensor) or isinstance(wavelength_nm, torch.Tensor):
        return torch.as_tensor(wavelength_nm) * 1e-3 / (4.0 * torch.as_tensor(na))
    return float(wavelength_nm) * 1e-3 / (4.0 * float(na))


def z_positions_um(num: int, step_um: float) -> torch.Tensor:
    """``num`` axial positions (float64, micrometres) centred on focus: ``(k - num // 2) * step``.

    The in-focus plane is index ``num // 2``, the same convention as :func:`project_psf`.
    """
    if isinstance(num, bool) or int(num) != num or num < 1:
        raise PiddpmError(f"number of z planes {num!r} is invalid: expected an integer >= 1")
    if not (math.isfinite(step_um) and step_um > 0):
        raise PiddpmError(f"z step {step_um!r} um is invalid: expected a positive number")
    return (torch.arange(int(num), dtype=torch.float64) - int(num) // 2) * float(step_um)


def _batch_params(
    named: dict[str, Param], dtype: torch.dtype, device
) -> tuple[dict[str, torch.Tensor], int | None]:
    """Turn floats / 1-D tensors into 1-D tensors of a common batch length ``B``.

    Returns the tensors and ``B`` (None when every input was a plain number, in which case the
    tensors have length 1 and the caller drops the batch axis).
    """
    batch = None
    for name, value in named.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 or isinstance(value, list | tuple):
            t = torch.as_tensor(value)
            if t.dim() != 1 or t.numel() < 1:
                raise PiddpmError(
                    f"{name} has shape {tuple(t.shape)}: expected a number or a 1-D tensor of "
                    "length B (one value per microscope)"
                )
            if batch is not None and t.numel() != batch:
                raise PiddpmError(
                    f"{name} has {t.numel()} values but another parameter has {batch}: all "
                    "batched parameters must have the same length B"
                )
            batch = t.numel()
    n = batch or 1
    out = {}
    for name, value in named.items():
        t = torch.as_tensor(value, device=device)
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
            raise PiddpmError(f"{name} = {value!r} is not a real number")
        t = t.to(dtype=dtype, device=device)
        out[name] = t.reshape(-1).expand(n) if t.dim() == 0 else t
    return out, batch


def _require(condition: torch.Tensor, message: str, values: torch.Tensor) -> None:
    if not bool(torch.all(condition)):
        bad = values.detach().flatten()[~condition.detach().flatten()]
        shown = ", ".join(f"{v:g}" for v in bad[:4].tolist())
        raise PiddpmError(message.format(shown))


def _validate_optics(p: dict[str, torch.Tensor], size) -> None:
    try:
        ok = not isinstance(size, bool) and operator.index(size) >= 1
    except TypeError:
        ok = False
    if not ok:
        raise PiddpmError(f"size {size!r} is invalid: expected a positive integer (pixels)")
    for key, val in p.items():
        _require(torch.isfinite(val), f"{key} = {{}} is not finite", val)
    _require(p["na"] > 0, "na = {} is invalid: the numerical aperture must be positive", p["na"])
    _require(p["ri"] >= 1.0, "ri = {} is invalid: the refractive index must be >= 1", p["ri"])
    bad = p["na"] >= p["ri"]
    if bool(torch.any(bad)):
        i = int(torch.nonzero(bad)[0])
        raise PiddpmError(
            f"na = {p['na'][i].item():g} >= ri = {p['ri'][i].item():g}: the numerical aperture "
            "must be smaller than the immersion refractive index"
        )
    for key in ("em_wavelength_nm", "ex_wavelength_nm"):
        if key in p:
            _require(
                p[key] > 0, key + " = {} nm is invalid: expected a positive wavelength", p[key]
            )
    _require(
        p["pixel_size_um"] > 0,
        "pixel_size_um = {} is invalid: expected a positive pixel size",
        p["pixel_size_um"],
    )
    if "pinhole_au" in p:
        _require(
            p["pinhole_au"] >= 0,
            "pinhole_au = {} is invalid: expected a pinhole diameter >= 0 Airy units",
            p["pinhole_au"],
        )


def _warn_nyquist(na: torch.Tensor, wavelength_nm: torch.Tensor, pixel_um: torch.Tensor) -> None:
    nyq = wavelength_nm.detach() * 1e-3 / (4.0 * na.detach())
    coarse = pixel_um.detach() > nyq * (1 + 1e-9)
    if bool(torch.any(coarse)):
        i = int(torch.nonzero(coarse)[0])
        warnings.warn(
            f"pixel size {pixel_um[i].item():g} um is coarser than the Nyquist pixel "
            f"{nyq[i].item():.4g} um (lambda / 4 NA for NA {na[i].item():g}, "
            f"{wavelength_nm[i].item():g} nm): the sampled PSF is aliased",
            UserWarning,
            stacklevel=3,
        )


def _z_tensor(z_um, dtype: torch.dtype, device) -> torch.Tensor:
    if z_um is None:
        return torch.zeros(1, dtype=dtype, device=device)
    if isinstance(z_um, torch.Tensor):
        z = z_um.to(device=device, dtype=dtype).reshape(-1)
    else:
        z = torch.as_tensor(np.asarray(z_um, dtype=np.float64), device=device).to(dtype).reshape(-1)
    if z.numel() < 1:
        raise PiddpmError("z_um is empty: expected None or at least one z position (um)")
    _require(torch.isfinite(z), "z_um = {} is not finite", z)
    return z


def _zernike_tensor(zernike_waves, batch: int, dtype, device) -> tuple[torch.Tensor | None, int]:
    """Normalise the aberration spec to ``(B, J)`` (or None); also returns the batch it implies."""
    if zernike_waves is None:
        return None, batch
    if isinstance(zernike_waves, Mapping):
        if not zernike_waves:
            return None, batch
        for j in zernike_waves:
            if isinstance(j, bool) or int(j) != j or j < 1:
                raise PiddpmError(f"zernike_waves key {j!r} is not a Noll index (integer >= 1)")
        n_terms = max(int(j) for j in zernike_waves)
        coef = torch.zeros(n_terms, dtype=dtype, device=device)
        for j, val in zernike_waves.items():
            coef[int(j) - 1] = float(val)
        coef = coef[None]
    else:
        coef = torch.as_tensor(zernike_waves, device=device).to(dtype)
        if coef.dim() == 1:
            coef = coef[None]
        if coef.dim() != 2 or coef.shape[1] < 1:
            raise PiddpmError(
                f"zernike_waves has shape {tuple(coef.shape)}: expected a dict {{noll: waves}}, "
                "a (J,) or a (B, J) tensor of waves rms for Noll indices 1..J"
            )
    _require(torch.isfinite(coef), "zernike_waves = {} is not finite", coef)
    if coef.shape[0] not in (1, batch):
        if batch == 1:
            return coef, coef.shape[0]
        raise PiddpmError(
            f"zernike_waves has {coef.shape[0]} rows but the batch has B = {batch} microscopes"
        )
    return coef, batch


def _normalise(psf: torch.Tensor, dims) -> torch.Tensor:
    psf = torch.clamp(psf, min=0.0)
    return psf / psf.sum(dim=dims, keepdim=True)


def _prepare(named, size, z_um, zernike_waves, dtype, device):
    if dtype not in (torch.float32, torch.float64):
        raise PiddpmError(f"dtype {dtype} is not supported: expected torch.float32 or float64")
    device = torch.device(device) if device is not None else None
    if device is None:
        for v in list(named.values()) + [zernike_waves]:
            if isinstance(v, torch.Tensor):
                device = v.device
                break
    device = device or torch.device("cpu")
    params, batch = _batch_params(named, dtype, device)
    _validate_optics(params, size)
    b = next(iter(params.values())).shape[0]
    coef, b2 = _zernike_tensor(zernike_waves, b, dtype, device)
    if b2 != b:  # the aberrations alone define the batch
        params = {k: v.expand(b2) for k, v in params.items()}
        batch, b = b2, b2
    if coef is not None and coef.shape[0] == 1 and b > 1:
        coef = coef.expand(b, -1)
    z = _z_tensor(z_um, dtype, device)
    return params, batch, coef, z


# --------------------------------------------------------------------------- PSFs


def widefield_psf(
    na: Param,
    em_wavelength_nm: Param,
    pixel_size_um: Param,
    size: int,
    *,
    ri: Param = 1.33,
    z_um=None,
    zernike_waves=None,
    vectorial: bool = True,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """Widefield fluorescence intensity PSF (the emission PSF), vectorial and unpolarised.

    Parameters
    ----------
    na : float or Tensor ``(B,)``
        Numerical aperture (``0 < na < ri``).
    em_wavelength_nm : float or Tensor ``(B,)``
        Emission wavelength in nanometres.
    pixel_size_um : float or Tensor ``(B,)``
        Lateral pixel size in the sample, micrometres. Coarser than ``lambda / (4 NA)`` gives a
        ``UserWarning`` (the sampled PSF is aliased).
    size : int
        Lateral grid size in pixels (odd recommended); the centre is pixel ``size // 2``.
    ri : float or Tensor ``(B,)``
        Refractive index of the immersion medium (= sample; no index mismatch). Default 1.33.
    z_um : None or sequence of float
        Axial positions relative to focus in micrometres (``None``: the focal plane only).
        Positive ``z`` moves the observation plane away from the lens along the optical axis.
    zernike_waves : dict ``{noll: waves_rms}``, Tensor ``(J,)`` or ``(B, J)``, optional
        Pupil phase aberrations, Noll-normalised Zernike coefficients in waves rms
        (index ``j`` of a tensor is Noll ``j + 1``).
    vectorial : bool
        Vectorial (Richards-Wolf) model, default; False gives the scalar model with the same
        aperture and apodisation.
    dtype : torch.float32 or torch.float64
    device : torch device, optional (default: that of a tensor argument, else CPU)

    Returns
    -------
    Tensor ``(B, Z, size, size)`` if any parameter is a 1-D tensor (a batch of ``B``
    microscopes), else ``(Z, size, size)``; indexed ``[.., z, y, x]``, each 3-D PSF normalised to
    unit sum over ``(Z, H, W)``.

    Raises
    ------
    PiddpmError
        On ``na >= ri``, non-positive wavelengths, pixel sizes or size, mismatched batch sizes.
    """
    named = {"na": na, "em_wavelength_nm": em_wavelength_nm, "pixel_size_um": pixel_size_um}
    named["ri"] = ri
    p, batch, coef, z = _prepare(named, size, z_um, zernike_waves, dtype, device)
    _warn_nyquist(p["na"], p["em_wavelength_nm"], p["pixel_size_um"])
    inten = focal_intensity(
        p["na"],
        p["ri"],
        p["em_wavelength_nm"] * 1e-3,
        p["pixel_size_um"],
        operator.index(size),
        z,
        zernike_waves=coef,
        vectorial=vectorial,
    )
    psf = _normalise(inten, (-3, -2, -1))
    return psf if batch is not None else psf[0]


def _pinhole_kernels(radius_px: torch.Tensor) -> torch.Tensor:
    """Unit-sum discs of radius ``radius_px`` (pixels), shape ``(B, K, K)`` with
    ``K = 2 ceil(max r + 0.5) + 1``. Each pixel is weighted by its approximate area fraction
    inside the disc, ``clip(r_disc - r_pixel + 0.5, 0, 1)``; a disc smaller than the centre
    pixel (radius < 0.5 px) is a delta."""
    half = int(math.ceil(float(radius_px.detach().max()) + 0.5))
    grid = torch.arange(-half, half + 1, dtype=radius_px.dtype, device=radius_px.device)
    r = torch.sqrt(grid[:, None] ** 2 + grid[None, :] ** 2)
    ker = torch.clamp(radius_px[:, None, None] - r + 0.5, 0.0, 1.0)
    delta = torch.zeros_like(ker)
    delta[:, half, half] = 1.0
    ker = torch.where((radius_px < 0.5)[:, None, None], delta, ker)
    return ker / ker.sum(dim=(-2, -1), keepdim=True)


def confocal_psf(
    na: Param,
    ex_wavelength_nm: Param,
    em_wavelength_nm: Param,
    pinhole_au: Param,
    pixel_size_um: Param,
    size: int,
    *,
    ri: Param = 1.33,
    z_um=None,
    zernike_waves=None,
    vectorial: bool = True,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """Confocal intensity PSF: ``h_ex(x, y, z) * (h_em(., ., z) conv2d D)(x, y)``.

    ``D`` is the uniform pinhole disc of diameter ``pinhole_au`` Airy units, with
    ``1 AU = 1.22 em_wavelength / NA`` back-projected to the sample (``0`` AU: an ideal point
    detector, i.e. ``h_ex * h_em``). The same aberrations act on excitation and emission (in
    waves, one objective). Pinholes wider than the field of view plus the defocus spread plus
    10 AU are treated as that wide (they already collect all the emission light).

    Parameters
    ----------
    na, ex_wavelength_nm, em_wavelength_nm, pinhole_au, pixel_size_um : float or Tensor ``(B,)``
        Numerical aperture, excitation and emission wavelengths (nm), pinhole diameter (AU),
        lateral pixel size (um).
    size, ri, z_um, zernike_waves, vectorial, dtype, device
        As :func:`widefield_psf`.

    Returns
    -------
    Tensor ``(B, Z, size, size)`` or ``(Z, size, size)``, each 3-D PSF of unit sum.
    """
    named = {
        "na": na,
        "ex_wavelength_nm": ex_wavelength_nm,
        "em_wavelength_nm": em_wavelength_nm,
        "pinhole_au": pinhole_au,
        "pixel_size_um": pixel_size_um,
        "ri": ri,
    }
    p, batch, coef, z = _prepare(named, size, z_um, zernike_waves, dtype, device)
    _warn_nyquist(
        p["na"], torch.minimum(p["ex_wavelength_nm"], p["em_wavelength_nm"]), p["pixel_size_um"]
    )
    size = operator.index(size)
    excitation = focal_intensity(
        p["na"], p["ri"], p["ex_wavelength_nm"] * 1e-3, p["pixel_size_um"], size, z,
        zernike_waves=coef, vectorial=vectorial,
    )  # fmt: skip
    au_um = 1.22 * p["em_wavelength_nm"] * 1e-3 / p["na"]
    radius_px = 0.5 * p["pinhole_au"] * au_um / p["pixel_size_um"]
    # A disc reaching past every output pixel by the defocus spread + 10 AU collects all the
    # emission light of each plane (Airy tail beyond 10 AU < 0.5 %): larger pinholes give the
    # same PSF, so cap the radius (bounds the emission grid for huge pinholes).
    tan_max = p["na"] / torch.sqrt(p["ri"] ** 2 - p["na"] ** 2)
    reach_um = 0.5 * size * p["pixel_size_um"] + float(z.abs().max()) * tan_max + 10.0 * au_um
    radius_px = torch.minimum(radius_px, reach_um / p["pixel_size_um"])
    kernel = _pinhole_kernels(radius_px)  # (B, K, K)
    half = kernel.shape[-1] // 2
    n_em = size + 2 * half
    emission = focal_intensity(
        p["na"], p["ri"], p["em_wavelength_nm"] * 1e-3, p["pixel_size_um"], n_em, z,
        zernike_waves=coef, vectorial=vectorial,
    )  # fmt: skip
    if half > 0:
        # circular convolution on the n_em grid; its last `size` samples per axis are the
        # wrap-free ('valid') linear convolution, centred on the same pixels as `excitation`
        spec = torch.fft.rfft2(emission) * torch.fft.rfft2(kernel, s=(n_em, n_em))[:, None]
        emission = torch.fft.irfft2(spec, s=(n_em, n_em))[..., 2 * half :, 2 * half :]
    psf = _normalise(excitation * emission, (-3, -2, -1))
    return psf if batch is not None else psf[0]


# --------------------------------------------------------------------------- 2-D kernels


def check_psf(psf: torch.Tensor, name: str = "psf", min_dim: int = 2) -> torch.Tensor:
    """Validate a PSF: a real tensor of at least ``min_dim`` dims, finite, non-negative (values
    below ``-1e-6 * max`` are refused; smaller round-off negatives are clipped to 0) and not all
    zero. Returns the clipped tensor."""
    if not isinstance(psf, torch.Tensor):
        psf = torch.as_tensor(psf)
    if psf.is_complex() or not psf.is_floating_point():
        raise PiddpmError(f"{name} has dtype {psf.dtype}: expected a real floating-point tensor")
    if psf.dim() < min_dim:
        raise PiddpmError(
            f"{name} has shape {tuple(psf.shape)}: expected at least {min_dim} dimensions"
        )
    if not bool(torch.isfinite(psf).all()):
        raise PiddpmError(f"{name} contains NaN or infinite values")
    peak = psf.detach().abs().amax()
    low = psf.detach().min()
    if low < -1e-6 * peak:
        raise PiddpmError(
            f"{name} has negative values (min {low.item():.3g}, max {peak.item():.3g}): an "
            "intensity PSF must be non-negative"
        )
    sums = psf.detach().flatten(psf.dim() - min_dim).sum(-1)
    if bool((sums <= 0).any()):
        raise PiddpmError(
            f"{name} is empty (sums to {sums.min().item():g}): expected a PSF with a positive sum"
        )
    return torch.clamp(psf, min=0.0)


def project_psf(psf3d: torch.Tensor, mode: str = "focus", *, z_um=None) -> torch.Tensor:
    """2-D kernel from a 3-D PSF, renormalised to unit sum.

    Parameters
    ----------
    psf3d : Tensor ``(..., Z, H, W)``
        Non-negative 3-D PSF(s).
    mode : {"focus", "mean", "max"}
        ``focus``: the in-focus plane, index ``Z // 2`` (or the plane nearest ``z = 0`` when
        ``z_um`` is given); ``mean``: average over z (a thick, uniformly stained specimen
        seen through its whole depth); ``max``: maximum intensity projection over z.
    z_um : sequence of float, optional
        Axial positions of the planes (micrometres), only used by ``focus``.

    Returns
    -------
    Tensor ``(..., H, W)`` of unit sum per kernel.
    """
    psf3d = check_psf(psf3d, "psf3d", min_dim=3)
    if mode == "focus":
        n_z = psf3d.shape[-3]
        if z_um is not None:
            z = torch.as_tensor(z_um, dtype=torch.float64).reshape(-1)
            if z.numel() != n_z:
                raise PiddpmError(f"z_um has {z.numel()} positions but the PSF has {n_z} planes")
            idx = int(torch.argmin(z.abs()))
        else:
            idx = n_z // 2
        out = psf3d[..., idx, :, :]
    elif mode == "mean":
        out = psf3d.mean(dim=-3)
    elif mode == "max":
        out = psf3d.amax(dim=-3)
    else:
        raise PiddpmError(f"projection mode {mode!r} is unknown: expected 'focus', 'mean' or 'max'")
    total = out.sum(dim=(-2, -1), keepdim=True)
    if bool((total <= 0).any()):
        raise PiddpmError(f"the {mode!r} projection of psf3d is empty (all zero)")
    return out / total
