"""Data consistency: how well a restoration, blurred again, explains the observation."""

from __future__ import annotations

from typing import Literal

import torch

from piddpm import PiddpmError
from piddpm.metrics._common import _pair, _to_tensor, _wrap


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
