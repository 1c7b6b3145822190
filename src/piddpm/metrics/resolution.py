"""Resolution estimates: Fourier ring correlation and decorrelation analysis."""

from __future__ import annotations

import math
import warnings
from typing import Literal, NamedTuple

import numpy as np
import torch

from piddpm import PiddpmError
from piddpm.metrics._common import _check_image, _to_tensor, _wrap, _wrap_image

Threshold = Literal["1/7", "half-bit"]
Window = Literal["tukey", "hann", "none"]


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
