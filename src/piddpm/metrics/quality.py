"""Pixel-wise and structural image quality: PSNR, NRMSE, SSIM and MS-SSIM."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from piddpm import PiddpmError
from piddpm.metrics._common import _data_range, _pair, _wrap

#: Wang, Simoncelli & Bovik (2003) weights of the 5 MS-SSIM scales, finest first.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

_K1 = 0.01
_K2 = 0.03
_SSIM_SIGMA = 1.5


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
