"""Faithfulness: hallucinated structure on synthetic data, seams and invented background."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from piddpm import PiddpmError
from piddpm.metrics._common import _pair, _wrap


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
    floor: float = 0.0,
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
    floor : float
        Lower bound of the input's energy (rms, input units): on a nearly noiseless (e.g.
        clipped 8-bit) background the input's energy is ~0 and the ratio would explode.

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
    return float(energy[0] / max(energy[1], floor, 1e-12))


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
