"""Image-quality, resolution, consistency and faithfulness metrics.

Every metric accepts NumPy arrays or torch tensors of shape ``(..., H, W)``: the last two
axes are the image, any leading axes are a batch (``(B, C, H, W)`` gives one value per
image and channel). A single ``(H, W)`` image gives a Python ``float``; a batch gives an
array of the same kind as the input (a ``numpy.ndarray``, or a ``torch.Tensor`` on the
input's device) with the leading shape. All arithmetic is done in float64 (SSIM variances
``E[x^2] - E[x]^2`` lose all precision in float32 for images with large offsets, such as
photon counts).

Definitions, conventions and references are in ``docs/metrics.md``. In short:

- ``psnr``, ``ssim``, ``ms_ssim``: the data range defaults to ``ref.max() - ref.min()`` of
  each reference image (the paper uses the maximum pixel value of the image; on images
  normalised to start at 0 the two agree). Pass ``data_range`` explicitly to compare
  numbers across images.
- ``nrmse``: RMSE divided by ``ref.max() - ref.min()`` (the paper's definition).
- ``frc_curve`` / ``frc_resolution``: Fourier ring correlation from two images, or from one
  image by a diagonal checkerboard split with an exact half-pixel phase correction.
- ``decorrelation_resolution``: Descloux et al. (2019) decorrelation analysis.
- ``data_consistency``: ``||A y_hat - x|| / ||x||`` with ``piddpm.acquisition.blur``.
- ``hallucination_score``, ``uncertainty_calibration``: faithfulness on synthetic data.
- ``normalise_percentile``, ``fit_affine``: helpers for real pairs with different scales.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from piddpm import PiddpmError

__all__ = [
    "MS_SSIM_WEIGHTS",
    "psnr",
    "ssim",
    "ms_ssim",
    "nrmse",
    "frc_curve",
    "frc_resolution",
    "half_bit_threshold",
    "decorrelation_resolution",
    "DecorrelationResult",
    "data_consistency",
    "hallucination_score",
    "uncertainty_calibration",
    "normalise_percentile",
    "fit_affine",
    "fit_std_scale",
    "background_mask",
    "seam_score",
    "background_invention",
    "flat_field_invention",
]

#: Wang, Simoncelli & Bovik (2003) weights of the 5 MS-SSIM scales, finest first.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

_K1 = 0.01
_K2 = 0.03
_SSIM_SIGMA = 1.5

Threshold = Literal["1/7", "half-bit"]
Window = Literal["tukey", "hann", "none"]


# ----------------------------------------------------------------------------- helpers
def _to_tensor(x, name: str) -> tuple[torch.Tensor, str]:
    """Return ``(float64 tensor, kind)`` with kind ``"numpy"`` or ``"torch"``."""
    if isinstance(x, torch.Tensor):
        kind = "torch"
        t = x
    elif isinstance(x, np.ndarray | list | tuple | float | int | np.generic):
        kind = "numpy"
        arr = np.asarray(x)
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        ):
            raise PiddpmError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(arr if arr.flags.c_contiguous else arr.copy(order="C"))
    else:
        raise PiddpmError(
            f"{name}: expected a numpy.ndarray or torch.Tensor, got {type(x).__name__}"
        )
    if t.is_complex():
        raise PiddpmError(f"{name}: expected a real-valued image, got dtype {t.dtype}")
    t = t.to(torch.float64)
    return t, kind


def _check_image(t: torch.Tensor, name: str, min_side: int = 1) -> None:
    if t.ndim < 2:
        raise PiddpmError(
            f"{name}: expected an image of shape (..., H, W), got shape {tuple(t.shape)}"
        )
    if min(t.shape[-2:]) < min_side:
        raise PiddpmError(
            f"{name}: image sides must be at least {min_side} px, got {tuple(t.shape[-2:])}"
        )
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise PiddpmError(f"{name}: contains NaN or infinite values")


def _pair(pred, ref, min_side: int = 1) -> tuple[torch.Tensor, torch.Tensor, str]:
    p, kind = _to_tensor(pred, "pred")
    r, _ = _to_tensor(ref, "ref")
    _check_image(p, "pred", min_side)
    _check_image(r, "ref", min_side)
    if p.shape != r.shape:
        raise PiddpmError(
            f"pred and ref must have the same shape, got {tuple(p.shape)} and {tuple(r.shape)}"
        )
    if p.device != r.device:
        r = r.to(p.device)
    return p, r, kind


def _wrap(values: torch.Tensor, kind: str):
    """Per-image values of shape ``batch_shape`` -> float, ndarray or tensor."""
    if values.ndim == 0:
        return float(values)
    if kind == "numpy":
        return values.detach().cpu().numpy()
    return values


def _wrap_image(img: torch.Tensor, kind: str):
    if kind == "numpy":
        return img.detach().cpu().numpy()
    return img


def _data_range(
    ref: torch.Tensor, data_range, batch_shape: torch.Size, name: str = "data_range"
) -> torch.Tensor:
    """Per-image data range, shape ``batch_shape``; default ``ref.max() - ref.min()``."""
    if data_range is None:
        flat = ref.reshape(*batch_shape, -1)
        dr = flat.amax(-1) - flat.amin(-1)
        if bool((dr <= 0).any()):
            raise PiddpmError(
                "data_range: a reference image is constant (max - min = 0), so the default "
                "data range is zero; pass data_range explicitly"
            )
        return dr
    dr, _ = _to_tensor(data_range, name)
    dr = dr.to(ref.device)
    try:
        dr = torch.broadcast_to(dr, batch_shape)
    except RuntimeError as err:
        raise PiddpmError(
            f"{name}: shape {tuple(dr.shape)} does not broadcast to the batch shape "
            f"{tuple(batch_shape)}"
        ) from err
    if not bool(torch.isfinite(dr).all()) or bool((dr <= 0).any()):
        raise PiddpmError(f"{name}: must be finite and > 0, got {data_range!r}")
    return dr.clone()


# ----------------------------------------------------------------------------- PSNR, NRMSE
def psnr(pred, ref, data_range=None):
    """Peak signal-to-noise ratio in dB.

    ``PSNR = 10 log10(data_range^2 / MSE)`` per image (the paper's
    ``20 log10(MAX_I) - 10 log10(MSE)`` with ``MAX_I = data_range``).

    Parameters
    ----------
    pred, ref : ndarray or Tensor, shape (..., H, W)
        Prediction and reference, same shape.
    data_range : float, array or Tensor broadcastable to (...), optional
        Dynamic range of the reference. Default: ``ref.max() - ref.min()`` of each image.

    Returns
    -------
    float, or ndarray / Tensor of shape (...)
        PSNR in dB; ``inf`` where ``pred == ref`` exactly.
    """
    p, r, kind = _pair(pred, ref)
    batch = p.shape[:-2]
    dr = _data_range(r, data_range, batch)
    mse = ((p - r) ** 2).mean(dim=(-2, -1))
    val = 10.0 * torch.log10(dr**2 / mse)  # inf where mse == 0
    return _wrap(val, kind)


def nrmse(pred, ref):
    """Normalised root-mean-square error, ``sqrt(MSE) / (ref.max() - ref.min())``.

    Parameters
    ----------
    pred, ref : ndarray or Tensor, shape (..., H, W)

    Returns
    -------
    float, or ndarray / Tensor of shape (...)
        Dimensionless; 0 for a perfect prediction.
    """
    p, r, kind = _pair(pred, ref)
    dr = _data_range(r, None, p.shape[:-2])
    val = torch.sqrt(((p - r) ** 2).mean(dim=(-2, -1))) / dr
    return _wrap(val, kind)


# ----------------------------------------------------------------------------- SSIM
def _gauss_1d(win_size: int, sigma: float, t: torch.Tensor) -> torch.Tensor:
    x = torch.arange(win_size, dtype=t.dtype, device=t.device) - (win_size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _check_win(win_size: int) -> None:
    if not isinstance(win_size, int | np.integer) or win_size < 3 or win_size % 2 == 0:
        raise PiddpmError(f"win_size: expected an odd integer >= 3, got {win_size!r}")


def _ssim_maps(
    x: torch.Tensor, y: torch.Tensor, dr: torch.Tensor, win_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and contrast-structure means for ``x, y`` of shape (N, 1, H, W); dr (N,)."""
    g = _gauss_1d(win_size, _SSIM_SIGMA, x)
    n, _, h, w = x.shape
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1).reshape(n * 5, 1, h, w)
    # separable filtering, one image per "batch" entry (10x faster than a grouped conv in
    # float64 on CPU)
    stack = F.conv2d(stack, g.view(1, 1, 1, -1))
    stack = F.conv2d(stack, g.view(1, 1, -1, 1))
    mu1, mu2, e11, e22, e12 = stack.reshape(n, 5, *stack.shape[-2:]).unbind(dim=1)
    c1 = ((_K1 * dr) ** 2).view(-1, 1, 1)
    c2 = ((_K2 * dr) ** 2).view(-1, 1, 1)
    s11 = e11 - mu1 * mu1
    s22 = e22 - mu2 * mu2
    s12 = e12 - mu1 * mu2
    cs_map = (2 * s12 + c2) / (s11 + s22 + c2)
    lum = (2 * mu1 * mu2 + c1) / (mu1 * mu1 + mu2 * mu2 + c1)
    return (lum * cs_map).mean(dim=(-2, -1)), cs_map.mean(dim=(-2, -1))


def ssim(pred, ref, data_range=None, win_size: int = 11):
    """Structural similarity index (Wang et al. 2004), Gaussian window.

    Gaussian window of ``win_size`` taps with sigma 1.5 px, ``K1 = 0.01``, ``K2 = 0.03``,
    population (not sample) covariances, statistics only where the window fits inside the
    image ("valid" region), averaged over that region. Matches
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=...)`` (which always uses 11 taps) and
    ``pytorch_msssim.ssim``.

    Parameters
    ----------
    pred, ref : ndarray or Tensor, shape (..., H, W)
        H and W must be >= ``win_size``. Channels are treated as separate images.
    data_range : float, array or Tensor broadcastable to (...), optional
        Default ``ref.max() - ref.min()`` per image.
    win_size : int
        Odd window size, typically 11 (the standard) or 7 (for small patches).

    Returns
    -------
    float, or ndarray / Tensor of shape (...)
    """
    _check_win(win_size)
    p, r, kind = _pair(pred, ref, min_side=win_size)
    batch = p.shape[:-2]
    dr = _data_range(r, data_range, batch).reshape(-1)
    h, w = p.shape[-2:]
    val, _ = _ssim_maps(p.reshape(-1, 1, h, w), r.reshape(-1, 1, h, w), dr, win_size)
    return _wrap(val.reshape(batch), kind)


def ms_ssim(pred, ref, data_range=None, win_size: int = 11, weights=MS_SSIM_WEIGHTS):
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003).

    ``MS-SSIM = l_M^{w_M} * prod_{j=1}^{M} cs_j^{w_j}`` with ``M = len(weights)`` scales,
    ``cs_j`` the mean contrast-structure term at scale ``j`` (``j < M``) and the full SSIM
    (luminance times contrast-structure) at the coarsest scale ``M``. Between scales both
    images are 2x2 average-pooled; an odd side is zero-padded by one pixel on each side first
    (as ``pytorch_msssim`` does, so numbers are comparable with it). Negative ``cs_j`` or
    final SSIM values (strongly anti-correlated structure) are clamped to 0 (``relu``, as in
    ``pytorch_msssim``) so that the fractional powers stay real. The data range is the same
    at every scale. Weights are normalised to sum to 1 (Wang's five sum to 1.0001).

    Parameters
    ----------
    pred, ref : ndarray or Tensor, shape (..., H, W)
        ``min(H, W)`` must exceed ``(win_size - 1) * 2**(M - 1)`` (160 px for the standard
        5 scales and 11 taps; 96 px with ``win_size=7``).
    data_range : float, array or Tensor broadcastable to (...), optional
        Default ``ref.max() - ref.min()`` per image.
    win_size : int
        Odd Gaussian window size (sigma 1.5).
    weights : sequence of float
        Exponents per scale, finest first. Default :data:`MS_SSIM_WEIGHTS`. Pass fewer
        (e.g. ``MS_SSIM_WEIGHTS[:3]``) for small images.

    Returns
    -------
    float, or ndarray / Tensor of shape (...)
    """
    _check_win(win_size)
    wts = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    if wts.ndim != 1 or len(wts) < 1 or bool((wts < 0).any()) or float(wts.sum()) <= 0:
        raise PiddpmError(f"weights: expected a 1-D sequence of >= 0 floats, got {weights!r}")
    scales = len(wts)
    p, r, kind = _pair(pred, ref)
    h, w = p.shape[-2:]
    need = (win_size - 1) * 2 ** (scales - 1)
    if min(h, w) <= need:
        fit_scales = 1
        while min(h, w) > (win_size - 1) * 2**fit_scales and fit_scales < 5:
            fit_scales += 1
        fit_scales = fit_scales if min(h, w) > win_size - 1 else 0
        fit_win = (min(h, w) - 1) // 2 ** (scales - 1)
        fit_win = fit_win if fit_win % 2 == 1 else fit_win - 1
        hint_win = (
            f"win_size={fit_win} (needs > {(fit_win - 1) * 2 ** (scales - 1)} px)"
            if fit_win >= 3
            else "no window fits with this many scales"
        )
        raise PiddpmError(
            f"ms_ssim: image of {h}x{w} px is too small for {scales} scales with "
            f"win_size={win_size}: the smaller side must be > (win_size - 1) * 2**(scales - 1)"
            f" = {need} px. Use a smaller window, e.g. {hint_win}, or fewer scales, e.g. "
            f"weights=MS_SSIM_WEIGHTS[:{max(fit_scales, 1)}]"
        )
    wts = (wts / wts.sum()).to(p.device)
    batch = p.shape[:-2]
    dr = _data_range(r, data_range, batch).reshape(-1)
    x = p.reshape(-1, 1, h, w)
    y = r.reshape(-1, 1, h, w)
    terms = []
    for j in range(scales):
        s, cs = _ssim_maps(x, y, dr, win_size)
        if j < scales - 1:
            terms.append(torch.relu(cs))
            pad = [x.shape[-2] % 2, x.shape[-1] % 2]
            x = F.avg_pool2d(x, kernel_size=2, padding=pad)
            y = F.avg_pool2d(y, kernel_size=2, padding=pad)
        else:
            terms.append(torch.relu(s))
    stack = torch.stack(terms, dim=0)  # (scales, N)
    val = torch.prod(stack ** wts.view(-1, 1), dim=0)
    return _wrap(val.reshape(batch), kind)


# ----------------------------------------------------------------------------- FRC
def _edge_window(h: int, w: int, window: str, alpha: float, t: torch.Tensor) -> torch.Tensor:
    """Separable apodisation window of shape (h, w)."""
    if window == "none":
        return torch.ones(h, w, dtype=t.dtype, device=t.device)
    if window not in ("tukey", "hann"):
        raise PiddpmError(f"window: expected 'tukey', 'hann' or 'none', got {window!r}")
    if window == "tukey" and not 0.0 <= alpha <= 1.0:
        raise PiddpmError(f"tukey_alpha: expected a fraction in [0, 1], got {alpha!r}")

    def one(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=t.dtype, device=t.device)
        if window == "hann" or alpha >= 1.0:
            return 0.5 - 0.5 * torch.cos(2 * math.pi * (x + 0.5) / n)
        if alpha <= 0.0:
            return torch.ones(n, dtype=t.dtype, device=t.device)
        # Tukey: cosine tapers over alpha/2 of the length at each end, flat in between.
        u = (x + 0.5) / n
        v = torch.ones_like(u)
        lo = u < alpha / 2
        hi = u > 1 - alpha / 2
        v[lo] = 0.5 * (1 - torch.cos(2 * math.pi * u[lo] / alpha))
        v[hi] = 0.5 * (1 - torch.cos(2 * math.pi * (1 - u[hi]) / alpha))
        return v

    return one(h)[:, None] * one(w)[None, :]


def _rings(h: int, w: int, num_bins: int | None, t: torch.Tensor):
    """Ring index per FFT pixel (``-1`` outside), mean frequency and count per ring 1..nb."""
    n = min(h, w)
    nb = n // 2 if num_bins is None else int(num_bins)
    if nb < 2:
        raise PiddpmError(f"num_bins: expected >= 2 rings, got {num_bins!r} for {h}x{w} px")
    fy = torch.fft.fftfreq(h, dtype=t.dtype, device=t.device)
    fx = torch.fft.fftfreq(w, dtype=t.dtype, device=t.device)
    f = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).reshape(-1)  # cycles/px
    idx = torch.round(f / 0.5 * nb).long()  # ring 0 = DC, ring nb = Nyquist
    idx[idx > nb] = -1
    keep = (idx >= 1).nonzero().squeeze(1)
    ring = idx[keep] - 1  # 0 .. nb-1
    counts = torch.zeros(nb, dtype=t.dtype, device=t.device).index_add_(
        0, ring, torch.ones_like(f[keep])
    )
    fsum = torch.zeros(nb, dtype=t.dtype, device=t.device).index_add_(0, ring, f[keep])
    return keep, ring, fsum / counts.clamp(min=1), counts


def _frc_raw(a, b, num_bins, window, tukey_alpha, shift=None):
    """FRC of tensors (N, h, w); optional known shift (dy, dx) of b relative to a, in px."""
    h, w = a.shape[-2:]
    win = _edge_window(h, w, window, tukey_alpha, a)
    a = (a - a.mean(dim=(-2, -1), keepdim=True)) * win
    b = (b - b.mean(dim=(-2, -1), keepdim=True)) * win
    fa = torch.fft.fft2(a)
    fb = torch.fft.fft2(b)
    if shift is not None:
        fy = torch.fft.fftfreq(h, dtype=a.dtype, device=a.device)
        fx = torch.fft.fftfreq(w, dtype=a.dtype, device=a.device)
        phase = 2 * math.pi * (shift[0] * fy[:, None] + shift[1] * fx[None, :])
        # b(x) = a(x + s)  =>  FT(b) = FT(a) exp(+2 pi i k s); undo it.
        fb = fb * torch.polar(torch.ones_like(phase), -phase)
    keep, ring, freqs, counts = _rings(h, w, num_bins, a)
    nb = len(counts)
    n = a.shape[0]
    fa = fa.reshape(n, -1)[:, keep]
    fb = fb.reshape(n, -1)[:, keep]
    z = torch.zeros(n, nb, dtype=a.dtype, device=a.device)
    num = z.clone().index_add_(1, ring, (fa * fb.conj()).real)
    pa = z.clone().index_add_(1, ring, fa.abs() ** 2)
    pb = z.clone().index_add_(1, ring, fb.abs() ** 2)
    frc = num / torch.sqrt(pa * pb).clamp(min=torch.finfo(a.dtype).tiny)
    return freqs, frc, counts


def frc_curve(
    img1,
    img2,
    pixel_size_um: float | None = None,
    num_bins: int | None = None,
    *,
    window: Window = "tukey",
    tukey_alpha: float = 0.25,
):
    """Fourier ring correlation of two images of the same object.

    ``FRC(r) = Re sum_{ring r} F1 F2* / sqrt(sum_{ring r} |F1|^2 sum_{ring r} |F2|^2)``
    after subtracting each image's mean and applying an edge (apodisation) window.

    Parameters
    ----------
    img1, img2 : ndarray or Tensor, shape (..., H, W)
        Two independent acquisitions (or independent halves) of the same field.
    pixel_size_um : float, optional
        If given, frequencies are returned in 1/um, else in cycles/px.
    num_bins : int, optional
        Number of rings between 0 (excluded) and Nyquist (0.5 cycles/px). Default
        ``min(H, W) // 2`` (rings 1 px wide in the Fourier grid of the smaller side).
    window : {"tukey", "hann", "none"}
        Edge window applied to both images (avoids the bright cross of the edge jumps).
    tukey_alpha : float
        Fraction of each side that the Tukey window tapers (0.25: 12.5 % at each end).

    Returns
    -------
    freqs : ndarray / Tensor, shape (num_bins,)
        Mean radial spatial frequency of each ring (cycles/px, or 1/um).
    frc : ndarray / Tensor, shape (..., num_bins)
    counts : ndarray / Tensor, shape (num_bins,)
        Number of Fourier pixels in each ring (full plane).
    """
    a, kind = _to_tensor(img1, "img1")
    b, _ = _to_tensor(img2, "img2")
    _check_image(a, "img1", 8)
    _check_image(b, "img2", 8)
    if a.shape != b.shape:
        raise PiddpmError(
            f"img1 and img2 must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    b = b.to(a.device)
    _check_pixel_size(pixel_size_um)
    batch = a.shape[:-2]
    h, w = a.shape[-2:]
    freqs, frc, counts = _frc_raw(
        a.reshape(-1, h, w), b.reshape(-1, h, w), num_bins, window, tukey_alpha
    )
    if pixel_size_um is not None:
        freqs = freqs / pixel_size_um
    frc = frc.reshape(*batch, -1)
    return _wrap_image(freqs, kind), _wrap_image(frc, kind), _wrap_image(counts, kind)


def _check_pixel_size(pixel_size_um) -> None:
    if pixel_size_um is not None and not (
        isinstance(pixel_size_um, int | float | np.floating | np.integer)
        and math.isfinite(pixel_size_um)
        and pixel_size_um > 0
    ):
        raise PiddpmError(
            f"pixel_size_um: expected a positive number of micrometres, got {pixel_size_um!r}"
        )


def half_bit_threshold(counts):
    """Half-bit information threshold of van Heel & Schatz (2005).

    ``T(n) = (0.2071 + 1.9102 / sqrt(n)) / (1.2071 + 0.9102 / sqrt(n))`` for a ring of
    ``n`` Fourier pixels (the threshold for two half data sets).
    """
    n = np.asarray(counts, dtype=np.float64) if not isinstance(counts, torch.Tensor) else counts
    s = np.sqrt(n) if isinstance(n, np.ndarray) else torch.sqrt(n)
    return (0.2071 + 1.9102 / s) / (1.2071 + 0.9102 / s)


def _smooth(curve: np.ndarray, sigma_bins: float) -> np.ndarray:
    if sigma_bins <= 0:
        return curve
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(curve, sigma_bins, axis=-1, mode="nearest")


def _crossing(freqs: np.ndarray, curve: np.ndarray, thr: np.ndarray, persist: int) -> float:
    """First frequency where ``curve`` drops below ``thr`` and stays below for ``persist``
    rings (linear interpolation); 0 if below from the first ring, NaN if never."""
    below = curve < thr
    n = len(below)
    sustained = np.array([below[i : min(i + persist, n)].all() for i in range(n)])
    if sustained[0]:
        return 0.0
    if not sustained.any():
        return math.nan
    i = int(np.argmax(sustained))
    d0 = curve[i - 1] - thr[i - 1]
    d1 = curve[i] - thr[i]
    frac = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(freqs[i - 1] + frac * (freqs[i] - freqs[i - 1]))


def frc_resolution(
    img1,
    img2=None,
    threshold: Threshold | float = "1/7",
    pixel_size_um: float | None = None,
    *,
    num_bins: int | None = None,
    window: Window = "tukey",
    tukey_alpha: float = 0.25,
    smooth_bins: float = 0.5,
    persist_bins: int = 3,
):
    """FRC resolution from two images, or from one image by checkerboard splitting.

    The FRC curve (:func:`frc_curve`) is smoothed with a Gaussian of ``smooth_bins`` rings
    and the resolution is ``1 / f`` at the first frequency ``f`` where it drops below the
    threshold and stays below for ``persist_bins`` rings (so a chance dip in the sparsely
    populated low-frequency rings is not taken for the cut-off); ``f`` is interpolated
    linearly between the rings either side of the crossing.

    **One image** (``img2=None``): the image (cropped to even sides) is split into the
    diagonal sub-images ``(even rows, even cols)`` / ``(odd rows, odd cols)`` and
    ``(even, odd)`` / ``(odd, even)`` (Koho et al. 2019); their noise is independent. The
    sub-images sample the object on 2-px grids offset by one pixel along a diagonal, i.e.
    ``sqrt(2)`` px apart, which would attenuate the ring correlation of the signal by
    ``J0(2 pi sqrt(2) f)``-like factors and bias the resolution. Instead of an empirical
    ``sqrt(2)`` rescaling we remove the known offset exactly (a half-sub-pixel phase ramp
    on one sub-image), average the two pairs' curves, and convert sub-image frequencies to
    the original grid (divide by 2). The single-image estimate is only valid for
    resolutions coarser than 4 px (the sub-image Nyquist limit, 0.25 cycles/px).

    Parameters
    ----------
    img1 : ndarray or Tensor, shape (..., H, W)
    img2 : ndarray or Tensor, shape (..., H, W), optional
        Second independent image; ``None`` for the single-image estimate.
    threshold : {"1/7", "half-bit"} or float
        Fixed 1/7 threshold, van Heel & Schatz (2005) half-bit curve, or a fixed value.
    pixel_size_um : float, optional
        If given, the resolution is returned in nm, else in pixels.
    num_bins, window, tukey_alpha :
        As in :func:`frc_curve`.
    smooth_bins : float
        Gaussian smoothing of the curve, in rings (0 disables).
    persist_bins : int
        Number of consecutive rings that must lie below the threshold (1: first crossing).

    Returns
    -------
    float, or ndarray / Tensor of shape (...)
        Resolution in px (or nm). ``inf`` when the curve is below the threshold from the
        first ring (no correlated signal); the Nyquist value (2 px; 4 px for the
        single-image estimate) with a ``RuntimeWarning`` when it never drops below.
    """
    a, kind = _to_tensor(img1, "img1")
    _check_image(a, "img1", 16)
    _check_pixel_size(pixel_size_um)
    batch = a.shape[:-2]
    h, w = a.shape[-2:]
    a = a.reshape(-1, h, w)
    if img2 is None:
        h2, w2 = h - h % 2, w - w % 2
        a = a[:, :h2, :w2]
        pairs = [
            (a[:, 0::2, 0::2], a[:, 1::2, 1::2], (0.5, 0.5)),
            (a[:, 0::2, 1::2], a[:, 1::2, 0::2], (0.5, -0.5)),
        ]
        curves = []
        for s1, s2, shift in pairs:
            freqs, c, counts = _frc_raw(s1, s2, num_bins, window, tukey_alpha, shift)
            curves.append(c)
        frc = 0.5 * (curves[0] + curves[1])
        freqs = freqs / 2.0  # cycles per sub-image px -> cycles per original px
        nyquist_px = 4.0
    else:
        b, _ = _to_tensor(img2, "img2")
        _check_image(b, "img2", 16)
        if b.shape[-2:] != (h, w) or b.numel() != a.numel():
            raise PiddpmError(
                f"img1 and img2 must have the same shape, got {tuple(img1.shape)} and "
                f"{tuple(b.shape)}"
            )
        freqs, frc, counts = _frc_raw(
            a, b.to(a.device).reshape(-1, h, w), num_bins, window, tukey_alpha
        )
        nyquist_px = 2.0
    if isinstance(threshold, str):
        if threshold == "1/7":
            thr = np.full(len(counts), 1.0 / 7.0)
        elif threshold == "half-bit":
            thr = half_bit_threshold(counts.cpu().numpy())
        else:
            raise PiddpmError(
                f"threshold: expected '1/7', 'half-bit' or a float, got {threshold!r}"
            )
    else:
        if not 0 < float(threshold) < 1:
            raise PiddpmError(f"threshold: a fixed threshold must lie in (0, 1), got {threshold!r}")
        thr = np.full(len(counts), float(threshold))
    f_np = freqs.cpu().numpy()
    curves = _smooth(frc.cpu().numpy(), smooth_bins)
    out = np.empty(curves.shape[0])
    for i, cur in enumerate(curves):
        fc = _crossing(f_np, cur, thr, max(int(persist_bins), 1))
        if math.isnan(fc):
            warnings.warn(
                "frc_resolution: the FRC stays above the threshold up to the Nyquist "
                f"frequency; returning the sampling limit ({nyquist_px:g} px)",
                RuntimeWarning,
                stacklevel=2,
            )
            out[i] = nyquist_px
        else:
            out[i] = math.inf if fc == 0.0 else 1.0 / fc
    if pixel_size_um is not None:
        out = out * pixel_size_um * 1000.0
    val = torch.from_numpy(out).reshape(batch)
    if kind == "torch":
        val = val.to(frc.device)
    return _wrap(val, kind)


# ----------------------------------------------------------------------------- decorrelation
class DecorrelationResult(NamedTuple):
    """Result of :func:`decorrelation_resolution`.

    resolution : resolution ``2 / kc`` in px (or nm when ``pixel_size_um`` is given).
    kc : cut-off as a fraction of the Nyquist frequency (1 = 0.5 cycles/px).
    amplitude : decorrelation amplitude ``A`` at ``kc`` (the peak height).
    """

    resolution: object
    kc: object
    amplitude: object


def _dcorr_curve(
    mag_sorted_cum: torch.Tensor, r_sorted: torch.Tensor, energy: torch.Tensor, radii
) -> torch.Tensor:
    """d(r) = sum_{|k|<=r} |I_hp| / sqrt(sum |I_hp|^2 * N(r)) for each radius."""
    n = torch.searchsorted(r_sorted, radii, right=True)  # pixels with |k| <= r
    num = torch.where(n > 0, mag_sorted_cum[(n - 1).clamp(min=0)], torch.zeros_like(radii))
    return num / torch.sqrt(energy * n.clamp(min=1).to(radii.dtype))


def _peak(d: np.ndarray, min_drop: float) -> int | None:
    """Index of the highest local maximum of d after which d drops by >= min_drop."""
    d = d.copy()
    while len(d) > 1:
        i = int(np.argmax(d))
        if i == len(d) - 1:
            d = d[:-1]
            continue
        if d[i] - d[i:].min() >= min_drop:
            return i
        d = d[:i]
    return None


def decorrelation_resolution(
    image,
    pixel_size_um: float | None = None,
    num_radii: int = 50,
    num_highpass: int = 10,
    *,
    window: Window = "tukey",
    tukey_alpha: float = 0.25,
    min_drop: float = 1e-3,
):
    """Image resolution by decorrelation analysis (Descloux, Grussmayer & Radenovic 2019).

    With ``I(k)`` the Fourier transform of the mean-subtracted, edge-apodised image and
    ``I_n = I / |I|`` its phase-only (normalised) version, the decorrelation function is the
    Pearson correlation between ``I`` and ``I_n`` masked by a disc of radius ``r``
    (``r`` in units of the Nyquist frequency):

        d(r) = sum_{|k| <= r} Re[I(k) I_n*(k)] / sqrt(sum_k |I(k)|^2 * sum_{|k| <= r} |I_n|^2)

    Noise-free content makes ``d`` grow with ``r``; past the highest frequency with signal
    above the noise, only noise is added and ``d`` falls, so ``d`` peaks at that frequency.
    The analysis is repeated on ``num_highpass`` high-pass filtered copies
    ``I(k) (1 - exp(-2 sigma^2 k^2))`` (sigma geometrically spaced from ``2 / r0`` down to
    0.15, ``r0`` the unfiltered peak), which expose peaks hidden by strong low frequencies.
    A peak counts if ``d`` drops by at least ``min_drop`` after it (a monotonic curve, as for
    pure noise, has none). ``kc`` is the highest peak position, refined on a finer radius
    grid around it; the resolution is ``2 / kc`` px.

    Parameters
    ----------
    image : ndarray or Tensor, shape (..., H, W)
    pixel_size_um : float, optional
        If given, the resolution is in nm, else in px.
    num_radii : int
        Number of mask radii in (0, 1] (and of refinement radii).
    num_highpass : int
        Number of high-pass filtered copies analysed.
    window, tukey_alpha :
        Edge apodisation, as in :func:`frc_curve`.
    min_drop : float
        Minimum fall of ``d`` after a maximum for it to count as a peak.

    Returns
    -------
    DecorrelationResult
        ``(resolution, kc, amplitude)``; floats for one image, arrays / tensors of shape
        (...) for a batch. ``resolution`` is ``inf`` and ``kc`` 0 when no peak is found
        (no resolvable structure).
    """
    img, kind = _to_tensor(image, "image")
    _check_image(img, "image", 16)
    _check_pixel_size(pixel_size_um)
    if int(num_radii) < 5 or int(num_highpass) < 0:
        raise PiddpmError(
            f"num_radii must be >= 5 and num_highpass >= 0, got {num_radii!r}, {num_highpass!r}"
        )
    batch = img.shape[:-2]
    h, w = img.shape[-2:]
    x = img.reshape(-1, h, w)
    win = _edge_window(h, w, window, tukey_alpha, x)
    x = (x - x.mean(dim=(-2, -1), keepdim=True)) * win
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    spec = torch.fft.fft2(x).abs().reshape(x.shape[0], -1).cpu()  # |I(k)|; Re(I I_n*) = |I|
    ky = torch.fft.fftfreq(h, dtype=x.dtype) / 0.5
    kx = torch.fft.fftfreq(w, dtype=x.dtype) / 0.5
    k = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).reshape(-1)  # 1 = Nyquist
    order = torch.argsort(k)
    k_sorted = k[order]
    inside = int(torch.searchsorted(k_sorted, torch.tensor(1.0, dtype=x.dtype), right=True))
    radii = torch.linspace(0, 1, int(num_radii) + 1, dtype=x.dtype)[1:]
    res, kcs, amps = [], [], []
    for mag in spec:
        mag_s = mag[order]
        nonzero = mag_s > 0  # I_n = 0 where I = 0
        r_valid = k_sorted[:inside][nonzero[:inside]]

        def curve(filt_mag, rr, r_valid=r_valid, nonzero=nonzero):
            energy = (filt_mag**2).sum()
            cum = torch.cumsum(filt_mag[:inside][nonzero[:inside]], 0)
            return _dcorr_curve(cum, r_valid, energy, rr)

        peaks = []
        d0 = curve(mag_s, radii).numpy()
        i0 = _peak(d0, min_drop)
        r0 = float(radii[i0]) if i0 is not None else None
        if i0 is not None:
            peaks.append((r0, float(d0[i0]), None))
        r_ref = r0 if r0 is not None else 0.5
        sigmas = np.geomspace(2.0 / max(r_ref, 0.05), 0.15, int(num_highpass))
        for s in sigmas:
            filt = mag_s * (1 - torch.exp(-2 * s**2 * k_sorted**2))
            d = curve(filt, radii).numpy()
            i = _peak(d, min_drop)
            if i is not None:
                peaks.append((float(radii[i]), float(d[i]), float(s)))
        if not peaks:
            res.append(math.inf)
            kcs.append(0.0)
            amps.append(0.0)
            continue
        kc, amp, s_best = max(peaks, key=lambda p: p[0])
        # refine on a finer grid around kc with the filter that gave it
        step = 1.0 / int(num_radii)
        fine = torch.linspace(
            max(kc - step, step / 10), min(kc + step, 1.0), int(num_radii), dtype=x.dtype
        )
        filt = mag_s if s_best is None else mag_s * (1 - torch.exp(-2 * s_best**2 * k_sorted**2))
        d = curve(filt, fine).numpy()
        i = int(np.argmax(d))
        if 0 < i < len(d) - 1:
            kc, amp = float(fine[i]), float(d[i])
        res.append(2.0 / kc)
        kcs.append(kc)
        amps.append(amp)
    scale = 1.0 if pixel_size_um is None else pixel_size_um * 1000.0
    out = []
    for vals in (np.asarray(res) * scale, kcs, amps):
        v = torch.tensor(vals, dtype=torch.float64).reshape(batch)
        out.append(_wrap(v.to(img.device) if kind == "torch" else v, kind))
    return DecorrelationResult(*out)


# ----------------------------------------------------------------------------- consistency
def data_consistency(restored, observed, psf, boundary: Literal["zero", "periodic"] = "zero"):
    """Relative data residual ``||A y_hat - x||_2 / ||x||_2`` per image.

    ``A`` is the blur of :func:`piddpm.acquisition.blur` with ``psf``; ``y_hat`` the
    restoration, ``x`` the observation, in the same intensity units (model units for
    normalised data: then ``observed_clean`` gives 0 for the ground truth). A restoration
    consistent with a noisy observation has a value near ``||noise|| / ||x||``; a much
    larger value means the restoration explains the data worse than the noise level allows.

    Parameters
    ----------
    restored, observed : ndarray or Tensor, shape (H, W), (B, H, W) or (B, C, H, W)
    psf : ndarray or Tensor, shape (kh, kw), (1|B, 1, kh, kw)
        Unit-sum PSF (the blur normalises nothing).
    boundary : {"zero", "periodic"}
        Boundary handling of the blur.

    Returns
    -------
    float, or ndarray / Tensor of shape (B,) or (B, C)
    """
    from piddpm.acquisition import blur  # lazy: metrics must not import the physics eagerly

    y, x, kind = _pair(restored, observed)
    k, _ = _to_tensor(psf, "psf")
    if y.ndim > 4:
        raise PiddpmError(
            f"restored: expected (H, W), (B, H, W) or (B, C, H, W), got {tuple(y.shape)}"
        )
    if k.ndim == 2:
        k = k[None, None]
    elif k.ndim == 3:
        k = k[:, None]
    if k.ndim != 4 or k.shape[1] != 1:
        raise PiddpmError(f"psf: expected (kh, kw) or (B|1, 1, kh, kw), got {tuple(k.shape)}")
    batch = y.shape[:-2]
    h, w = y.shape[-2:]
    if y.ndim == 2:
        y4, x4 = y[None, None], x[None, None]
    elif y.ndim == 3:
        y4, x4 = y[:, None], x[:, None]
    else:
        y4, x4 = y, x
    if k.shape[0] not in (1, y4.shape[0]):
        raise PiddpmError(f"psf: batch of {k.shape[0]} PSFs for {y4.shape[0]} images")
    ay = blur(y4, k.to(y4.device), boundary=boundary).to(torch.float64)
    num = torch.sqrt(((ay - x4) ** 2).sum(dim=(-2, -1)))
    den = torch.sqrt((x4**2).sum(dim=(-2, -1)))
    if bool((den == 0).any()):
        raise PiddpmError("observed: an observation is all zeros, so ||x|| = 0")
    return _wrap((num / den).reshape(batch), kind)


# ----------------------------------------------------------------------------- faithfulness
def _max_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return x
    k = 2 * radius + 1
    return F.max_pool2d(x[:, None], k, stride=1, padding=radius)[:, 0]


def hallucination_score(restored, gt, threshold: float = 0.05, margin_px: int = 2):
    """Energy of restored signal that the ground truth does not explain (synthetic data).

    With ``r+ = max(restored, 0)`` and the energy ``E(v) = sum v^2``, per image:

    - foreground ``fg``: pixels where ``gt > threshold * max(gt)``, dilated by ``margin_px``
      (a square neighbourhood); background ``bg``: the rest;
    - ``background``: ``E(r+ on bg) / E(r+)``, signal restored where the ground truth is
      empty (far from any structure);
    - ``structure``: ``E(max(restored - maxfilter(gt), 0) on fg) / E(r+)``, where
      ``maxfilter`` is the maximum of ``gt`` over a ``(2 margin_px + 1)^2`` neighbourhood:
      brightness inside the structured region that no ground-truth pixel within
      ``margin_px`` reaches, i.e. new structure rather than blur or a small shift.
    - ``total``: their sum (the two regions are disjoint, so ``total <= 1``).

    ``restored`` and ``gt`` must be in the same units with the background at 0 (as for
    ``PairedDataset`` ground truth before the [-1, 1] map; use ``fit_affine`` first if not).

    Parameters
    ----------
    restored, gt : ndarray or Tensor, shape (..., H, W)
    threshold : float
        Fraction of the ground-truth maximum below which a pixel counts as empty.
    margin_px : int
        Dilation of the foreground and tolerance of the max filter, in px.

    Returns
    -------
    dict
        ``{"background": ..., "structure": ..., "total": ...}``, each a float or an array /
        tensor of shape (...). 0 for a perfect restoration.
    """
    if not 0 <= float(threshold) < 1:
        raise PiddpmError(f"threshold: expected a fraction of max(gt) in [0, 1), got {threshold!r}")
    if int(margin_px) != margin_px or margin_px < 0:
        raise PiddpmError(f"margin_px: expected an integer >= 0, got {margin_px!r}")
    margin_px = int(margin_px)
    r, g, kind = _pair(restored, gt)
    batch = r.shape[:-2]
    h, w = r.shape[-2:]
    r = r.reshape(-1, h, w)
    g = g.reshape(-1, h, w)
    gmax = g.amax(dim=(-2, -1), keepdim=True)
    if bool((gmax <= 0).any()):
        raise PiddpmError("gt: a ground-truth image has no positive pixel (max <= 0)")
    fg = _max_filter((g > threshold * gmax).to(r.dtype), margin_px) > 0
    rp = r.clamp(min=0)
    total = (rp**2).sum(dim=(-2, -1)).clamp(min=torch.finfo(r.dtype).tiny)
    bg_e = ((rp * (~fg)) ** 2).sum(dim=(-2, -1))
    excess = (r - _max_filter(g, margin_px)).clamp(min=0) * fg
    st_e = (excess**2).sum(dim=(-2, -1))
    bgv, stv = bg_e / total, st_e / total
    return {
        "background": _wrap(bgv.reshape(batch), kind),
        "structure": _wrap(stv.reshape(batch), kind),
        "total": _wrap((bgv + stv).reshape(batch), kind),
    }


def uncertainty_calibration(mean, std, gt, ks=(1, 2, 3)):
    """Calibration of a predicted per-pixel standard deviation (e.g. over DDPM samples).

    For each ``k`` the observed fraction of pixels with ``|gt - mean| <= k std`` is
    compared with the Gaussian expectation ``erf(k / sqrt(2))`` (0.6827, 0.9545, 0.9973 for
    k = 1, 2, 3). All pixels of all images are pooled.

    Parameters
    ----------
    mean, std, gt : ndarray or Tensor, same shape (..., H, W)
        Predicted mean, predicted standard deviation (>= 0), ground truth.
    ks : sequence of float
        Multiples of the standard deviation.

    Returns
    -------
    dict
        ``ks`` (ndarray), ``observed`` (ndarray), ``expected`` (ndarray), ``abs_error``
        (ndarray, ``|observed - expected|``) and ``mean_abs_error`` (float).
    """
    m, kind = _to_tensor(mean, "mean")
    s, _ = _to_tensor(std, "std")
    g, _ = _to_tensor(gt, "gt")
    for t, name in ((m, "mean"), (s, "std"), (g, "gt")):
        _check_image(t, name)
    if not (m.shape == s.shape == g.shape):
        raise PiddpmError(
            f"mean, std and gt must have the same shape, got {tuple(m.shape)}, "
            f"{tuple(s.shape)}, {tuple(g.shape)}"
        )
    if bool((s < 0).any()):
        raise PiddpmError("std: contains negative values; a standard deviation is >= 0")
    ks_arr = np.asarray(ks, dtype=np.float64).reshape(-1)
    if len(ks_arr) == 0 or bool((ks_arr <= 0).any()):
        raise PiddpmError(f"ks: expected positive multiples of std, got {ks!r}")
    err = (g.to(m.device) - m).abs()
    s = s.to(m.device)
    observed = np.array([float((err <= k * s).to(torch.float64).mean()) for k in ks_arr])
    expected = np.array([math.erf(k / math.sqrt(2.0)) for k in ks_arr])
    abs_error = np.abs(observed - expected)
    return {
        "ks": ks_arr,
        "observed": observed,
        "expected": expected,
        "abs_error": abs_error,
        "mean_abs_error": float(abs_error.mean()),
    }


def fit_std_scale(mean, std, gt, ks=(1, 2, 3), *, floor: bool = False) -> tuple:
    """The factor ``c`` (and optionally a floor ``f``) that best calibrate a predicted std.

    The calibrated spread is ``c * std + f``. Minimises the mean ``|observed - expected|``
    coverage error of :func:`uncertainty_calibration` (a log grid of ``c`` from 0.05 to 50,
    then a finer grid around the best value; ``f`` from quantiles of the absolute error,
    ``f = 0`` included). One scale corrects a spread that is too narrow or too wide overall;
    the floor, in the units of ``mean``, covers error the samples do not spread over (heavy
    tails), which a scale alone trades between the 1- and 3-sigma coverages.

    Returns
    -------
    scale : float
    floor : float
        Only with ``floor=True``.
    calibration : dict
        :func:`uncertainty_calibration` of the calibrated spread.
    """
    m = np.asarray(mean, dtype=np.float64)
    s = np.asarray(std, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if not (m.shape == s.shape == g.shape):
        raise PiddpmError(f"mean, std and gt shapes differ: {m.shape}, {s.shape}, {g.shape}")
    err = np.abs(g - m).reshape(-1)
    sd = s.reshape(-1)
    if err.size > 400_000:  # a regular subsample keeps the search fast
        step = int(np.ceil(err.size / 400_000))
        err, sd = err[::step], sd[::step]
    expected = np.array([math.erf(k / math.sqrt(2.0)) for k in ks])

    def best_scale(f: float) -> tuple[float, float]:
        def error(c: float) -> float:
            spread = c * sd + f
            observed = np.array([(err <= k * spread).mean() for k in ks])
            return float(np.abs(observed - expected).mean())

        grid = np.exp(np.linspace(np.log(0.05), np.log(50.0), 121))
        c = grid[int(np.argmin([error(c) for c in grid]))]
        fine = c * np.exp(np.linspace(-0.06, 0.06, 31))
        errs = [error(c) for c in fine]
        i = int(np.argmin(errs))
        return float(fine[i]), errs[i]

    floors = [0.0]
    if floor:
        floors += [float(v) for v in np.quantile(err, [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]) if v > 0]
    fits = [(f, *best_scale(f)) for f in floors]
    f_best, c_best, _ = min(fits, key=lambda t: t[2])
    cal = uncertainty_calibration(m, c_best * s + f_best, g, ks)
    return (c_best, f_best, cal) if floor else (c_best, cal)


# ----------------------------------------------------------------------------- normalisation
def normalise_percentile(img, low: float = 0.1, high: float = 99.9):
    """Map each image's ``low`` / ``high`` percentiles to 0 / 1 (no clipping).

    ``(img - p_low) / (p_high - p_low)`` over the last two axes, as CARE / CSBDeep
    ``normalize``. Used for real pairs (e.g. 8-bit W2S, BioSR) before comparing with
    metrics; see ``docs/metrics.md``.

    Parameters
    ----------
    img : ndarray or Tensor, shape (..., H, W)
    low, high : float
        Percentiles in [0, 100], ``low < high``.

    Returns
    -------
    ndarray or Tensor, shape (..., H, W), float64
    """
    if not 0 <= low < high <= 100:
        raise PiddpmError(f"low, high: expected 0 <= low < high <= 100, got {low!r}, {high!r}")
    t, kind = _to_tensor(img, "img")
    _check_image(t, "img")
    flat = t.reshape(*t.shape[:-2], -1)
    q = torch.quantile(
        flat, torch.tensor([low / 100, high / 100], dtype=t.dtype, device=t.device), dim=-1
    )
    lo, hi = q[0][..., None, None], q[1][..., None, None]
    if bool((hi <= lo).any()):
        raise PiddpmError(f"img: the {low} and {high} percentiles coincide (a near-constant image)")
    return _wrap_image((t - lo) / (hi - lo), kind)


def fit_affine(pred, ref, *, return_params: bool = False):
    """Least-squares affine match ``a * pred + b`` of a prediction to a reference.

    ``a = cov(pred, ref) / var(pred)``, ``b = mean(ref) - a mean(pred)`` per image. Removes
    the arbitrary intensity scale and offset of a prediction before comparing it with a
    reference acquired differently (as for the scale-invariant metrics of CARE, Weigert et
    al. 2018, and the W2S benchmark). It can only improve PSNR / NRMSE, so report whether
    it was used.

    Parameters
    ----------
    pred, ref : ndarray or Tensor, shape (..., H, W)
    return_params : bool
        Also return ``a`` and ``b`` (shape (...)).

    Returns
    -------
    ndarray or Tensor, shape (..., H, W)
        ``a * pred + b``; with ``return_params``, ``(fitted, a, b)``.
    """
    p, r, kind = _pair(pred, ref)
    pm = p.mean(dim=(-2, -1), keepdim=True)
    rm = r.mean(dim=(-2, -1), keepdim=True)
    var = ((p - pm) ** 2).mean(dim=(-2, -1), keepdim=True)
    if bool((var == 0).any()):
        raise PiddpmError("pred: a prediction is constant, so no affine fit is defined")
    a = ((p - pm) * (r - rm)).mean(dim=(-2, -1), keepdim=True) / var
    b = rm - a * pm
    fitted = _wrap_image(a * p + b, kind)
    if return_params:
        return fitted, _wrap(a[..., 0, 0], kind), _wrap(b[..., 0, 0], kind)
    return fitted


# ---------------------------------------------------------------------------------------------
# whole-image faithfulness: seams and invented background structure


def _plane(x, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    a = np.squeeze(a).astype(np.float64, copy=False)
    if a.ndim != 2 or min(a.shape) < 8:
        raise PiddpmError(f"{name}: expected one 2-D plane of at least 8 x 8, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise PiddpmError(f"{name}: contains NaN or infinite values")
    return a


def background_mask(image, fraction: float = 0.3, sigma_px: float = 4.0) -> np.ndarray:
    """Background pixels of an (input) plane: the darkest ``fraction`` after Gaussian smoothing.

    Parameters
    ----------
    image : array-like (H, W)
        The raw observation (the mask is taken from the input, never from a restoration).
    fraction : float
        Share of the pixels called background (default 0.3: the darkest 30 %).
    sigma_px : float
        Smoothing before ranking (default 4 px), so noise does not decide the mask.

    Returns
    -------
    numpy.ndarray of bool (H, W)
    """
    from scipy import ndimage

    if not 0 < fraction < 1:
        raise PiddpmError(f"background fraction must lie in (0, 1), got {fraction}")
    a = _plane(image, "image")
    smooth = ndimage.gaussian_filter(a, sigma_px, mode="reflect")
    return smooth <= np.quantile(smooth, fraction)


def _block_means(a: np.ndarray, mask: np.ndarray, starts_y, starts_x, tile: int, min_fill: float):
    """Background means of the blocks with enough background, and the blocks' centres."""
    means, centres = [], []
    for y in starts_y:
        for x in starts_x:
            m = mask[y : y + tile, x : x + tile]
            if m.mean() >= min_fill:
                means.append(a[y : y + tile, x : x + tile][m].mean())
                centres.append((y + tile / 2, x + tile / 2))
    return np.asarray(means), np.asarray(centres, dtype=np.float64).reshape(-1, 2)


def _detrended_spread(means: np.ndarray, centres: np.ndarray) -> float:
    """Std of the block means after removing a least-squares plane over the block centres
    (a slow illumination gradient is not a seam)."""
    design = np.column_stack([np.ones(len(means)), centres])
    if len(means) <= design.shape[1]:
        return float(means.std())
    coef, *_ = np.linalg.lstsq(design, means, rcond=None)
    return float((means - design @ coef).std())


def seam_score(
    output,
    reference,
    tile: int,
    *,
    overlap: int = 0,
    mask=None,
    min_fill: float = 0.25,
) -> float:
    """Spread of background block means on the tile grid, relative to the input's.

    The plane is cut into ``tile x tile`` blocks at the tile starts
    (:func:`piddpm.tiling.axis_starts`); for each block with at least ``min_fill`` background
    pixels the mean of the background is taken, and a least-squares plane over the block
    centres is removed (a slow illumination gradient is no seam). The score is the standard
    deviation of the remaining means for ``output`` over the same for ``reference`` (the raw input), both in the input's
    intensity units (as :func:`piddpm.restore` returns its results; map other outputs there
    first, e.g. with :func:`fit_affine`): a restoration whose tiles sit at different levels
    scores well above 1; one that follows the input's slow background scores about 1.

    Parameters
    ----------
    output : array-like (H, W)
        A restoration.
    reference : array-like (H, W)
        The raw input (defines the background mask unless ``mask`` is given).
    tile, overlap : int
        The tiling that made ``output`` (the grid of blocks).
    mask : bool array (H, W), optional
        Background pixels; default :func:`background_mask` of ``reference``.
    min_fill : float
        Blocks with less background than this share are skipped.

    Returns
    -------
    float
        ``nan`` when fewer than 2 blocks hold enough background.
    """
    from piddpm.tiling import axis_starts

    out, ref = _plane(output, "output"), _plane(reference, "reference")
    if out.shape != ref.shape:
        raise PiddpmError(f"output {out.shape} and reference {ref.shape} differ in shape")
    mask = background_mask(ref) if mask is None else np.asarray(mask, bool)
    sy = axis_starts(out.shape[0], tile, overlap)
    sx = axis_starts(out.shape[1], tile, overlap)
    spread = []
    for a in (out, ref):
        means, centres = _block_means(a, mask, sy, sx, min(tile, *a.shape), min_fill)
        if means.size < 2:
            return float("nan")
        spread.append(_detrended_spread(means, centres))
    return float(spread[0] / max(spread[1], 1e-12))


def _band_pass(a: np.ndarray, band_px: tuple[float, float]) -> np.ndarray:
    from scipy import ndimage

    lo, hi = band_px
    if not 0 < lo < hi:
        raise PiddpmError(f"band_px must be (low, high) with 0 < low < high, got {band_px}")
    # difference of Gaussians passing structure of about lo .. hi pixels (sigma = size / 2)
    return ndimage.gaussian_filter(a, lo / 2, mode="reflect") - ndimage.gaussian_filter(
        a, hi / 2, mode="reflect"
    )


def background_invention(
    output,
    reference,
    *,
    band_px: tuple[float, float] = (2.0, 8.0),
    mask=None,
) -> float:
    """Band-pass energy in the background of ``output``, relative to that of the input.

    Structure of ``band_px`` pixels (about the PSF scale at Nyquist sampling) is extracted by a
    difference of Gaussians; its rms over the background mask is compared with the same for the
    raw input, both in the input's intensity units (as :func:`piddpm.restore` returns them). Noise in the input contributes to the
    denominator, so a restoration that only removes noise scores below 1; one that turns
    background noise into blobs scores above 1 (the invented-structure failure).

    Parameters
    ----------
    output, reference : array-like (H, W)
        A restoration and the raw input.
    band_px : (float, float)
        Structure sizes in pixels (default 2-8).
    mask : bool array, optional
        Background pixels; default :func:`background_mask` of ``reference``.

    Returns
    -------
    float
    """
    out, ref = _plane(output, "output"), _plane(reference, "reference")
    if out.shape != ref.shape:
        raise PiddpmError(f"output {out.shape} and reference {ref.shape} differ in shape")
    mask = background_mask(ref) if mask is None else np.asarray(mask, bool)
    if mask.sum() < 16:
        raise PiddpmError("background mask holds fewer than 16 pixels")
    energy = [np.sqrt(np.mean(_band_pass(a, band_px)[mask] ** 2)) for a in (out, ref)]
    return float(energy[0] / max(energy[1], 1e-12))


def flat_field_invention(
    restore_fn,
    *,
    size: int = 256,
    photons: float = 50.0,
    background: float = 0.0,
    band_px: tuple[float, float] = (2.0, 8.0),
    seed: int = 0,
) -> dict[str, float]:
    """Flat-field test: restore a flat specimen seen with Poisson noise; all structure is invented.

    Parameters
    ----------
    restore_fn : callable
        ``restore_fn(image (size, size) float32) -> restored (size, size)``.
    size : int
        Side of the test image.
    photons, background : float
        Expected counts per pixel of the flat specimen and the added background.
    band_px : (float, float)
        Band of structure sizes in pixels.
    seed : int

    Returns
    -------
    dict
        ``input_contrast`` and ``output_contrast``: band-pass rms over the mean level (for a
        Poisson input about ``c / sqrt(photons)``, ``c`` the band's noise gain);
        ``ratio``: output over input (below 1: the method smooths noise; above 1: it
        amplifies or invents structure); ``mean_ratio``: output mean over input mean.
    """
    rng = np.random.default_rng(seed)
    img = rng.poisson(photons + background, (size, size)).astype(np.float32)
    out = _plane(restore_fn(img), "restore_fn output")
    if out.shape != img.shape:
        raise PiddpmError(f"restore_fn returned shape {out.shape} for a {img.shape} input")
    inner = (slice(8, -8), slice(8, -8))  # away from the border treatment
    contrast = []
    for a in (img.astype(np.float64), out):
        bp = _band_pass(a, band_px)[inner]
        contrast.append(float(np.sqrt(np.mean(bp**2)) / max(abs(a[inner].mean()), 1e-12)))
    return {
        "input_contrast": contrast[0],
        "output_contrast": contrast[1],
        "ratio": contrast[1] / max(contrast[0], 1e-12),
        "mean_ratio": float(out[inner].mean() / img[inner].mean()),
    }
