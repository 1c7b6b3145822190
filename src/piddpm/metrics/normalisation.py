"""Intensity normalisation of real pairs with different scales before comparing them."""

from __future__ import annotations

import torch

from piddpm import PiddpmError
from piddpm.metrics._common import _check_image, _pair, _to_tensor, _wrap, _wrap_image


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
