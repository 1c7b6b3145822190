"""Physics and regulariser terms of PI-DDPM sampling and training (see ``docs/diffusion.md``).

Everything here acts on ``(B, C, H, W)`` tensors in model units (the data convention of
``docs/architecture.md``: one affine map per sample, periodic blur). The blur operator ``A`` is
always the shared one, :mod:`piddpm.acquisition`, with ``boundary="periodic"``.

Per-image normalisation: the paper scales the learned gradient by ``1 / ||g_hat||_2``, which
makes the per-pixel step shrink with the image size. Here a direction is divided by its
per-image root-mean-square and, where the paper's formula is reproduced, by
``sqrt(PAPER_REFERENCE_PIXELS) = 128`` as well: identical to the paper at 128 x 128 (its test
size), and independent of the image size elsewhere.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from piddpm import PiddpmError
from piddpm.choices import Guidance, Regulariser

Likelihood = Literal["gaussian", "poisson"]

#: The paper's ``||g_hat||_2`` is taken over a 128 x 128 image; ``paper_norm`` reproduces it.
PAPER_REFERENCE_PIXELS = 128 * 128

_TINY = 1e-12

__all__ = [
    "PAPER_REFERENCE_PIXELS",
    "Guidance",
    "Likelihood",
    "Regulariser",
    "blur_periodic",
    "blur_adjoint_periodic",
    "known_direction",
    "known_step",
    "paper_norm",
    "physics_target",
    "regulariser_gradient",
    "rms",
]


def blur_periodic(images: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """``A y``: :func:`piddpm.acquisition.blur` with the periodic boundary (the data convention)."""
    from piddpm.acquisition import blur

    return blur(images, psf, boundary="periodic")


def blur_adjoint_periodic(images: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """``A^T v``: :func:`piddpm.acquisition.blur_adjoint` with the periodic boundary."""
    from piddpm.acquisition import blur_adjoint

    return blur_adjoint(images, psf, boundary="periodic")


def physics_target(y_t: torch.Tensor, x_clean: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """The PI-DDPM physics target ``g = grad_{y_t} ||A y_t - x_clean||^2 = 2 A^T (A y_t - x_clean)``.

    Parameters
    ----------
    y_t : Tensor (B, C, H, W)
        The noisy image ``sqrt(gamma) y0 + sqrt(1 - gamma) eps`` (model units).
    x_clean : Tensor (B, C, H, W)
        The noiseless observation ``A y0`` (model units).
    psf : Tensor (B, 1, kh, kw) or (1, 1, kh, kw)
        The sample's PSF (unit sum), centre at ``(kh // 2, kw // 2)``.

    Returns
    -------
    Tensor (B, C, H, W)
        Not normalised (see :func:`rms`); no autograd graph is needed by callers that wrap
        it in ``torch.no_grad()``.
    """
    return 2.0 * blur_adjoint_periodic(blur_periodic(y_t, psf) - x_clean, psf)


def rms(v: torch.Tensor) -> torch.Tensor:
    """Per-image root-mean-square over (C, H, W): ``(B, C, H, W) -> (B, 1, 1, 1)``."""
    return v.square().mean(dim=tuple(range(1, v.ndim)), keepdim=True).sqrt()


def paper_norm(v: torch.Tensor) -> torch.Tensor:
    """``rms(v) * 128``: the L2 norm ``v`` would have on a 128 x 128 image, ``(B, 1, 1, 1)``."""
    return rms(v) * math.sqrt(PAPER_REFERENCE_PIXELS)


def unit_rms(v: torch.Tensor) -> torch.Tensor:
    """``v / rms(v)`` per image (zero images stay zero)."""
    return v / rms(v).clamp_min(_TINY)


#: Smoothing width of the L1 regulariser (model units, where a plane spans about 2).
L1_SMOOTHING = 0.01


def regulariser_gradient(r: torch.Tensor, kind: Regulariser) -> torch.Tensor:
    """Gradient of the sampling regulariser: L1 (``||r||_1``) or ``2 r`` (L2, ``||r||^2``).

    The L1 gradient is the pseudo-Huber ``r / sqrt(r^2 + s^2)`` with ``s`` =
    :data:`L1_SMOOTHING` (``sign(r)`` for ``|r| >> s``): ``sign`` itself jumps at 0, so float
    rounding that differs between two runs (e.g. tile sizes, which change the order of
    summation in the convolutions) flipped it and was amplified over the sampling steps
    (measured: 1.3 % of the pixels of a 512^2 confocal restore off by > 0.5 % of the range
    between tile 128 and 512; 0 with the smooth gradient).
    """
    if kind == "l1":
        return r / torch.sqrt(r * r + L1_SMOOTHING**2)
    if kind == "l2":
        return 2.0 * r
    raise PiddpmError(f"regulariser must be 'l1', 'l2' or None, got {kind!r}")


def known_direction(
    y0_hat: torch.Tensor,
    observed: torch.Tensor,
    operator,
    *,
    likelihood: Likelihood = "gaussian",
    background: float = 0.0,
    intensity_affine: tuple[float, float] = (2.0, -1.0),
) -> torch.Tensor:
    """Data-consistency descent direction for a known PSF, normalised by the residual.

    Gaussian likelihood: ``A^T (A y0_hat - x) / rms(A y0_hat - x)``, the gradient of
    ``sqrt(N) ||A y0_hat - x||_2`` (DPS's step ``zeta / ||A y0_hat - x||`` on the squared
    norm). Poisson likelihood (the Richardson-Lucy direction) works on intensities
    ``I = (v - b) / a`` with ``(a, b) = intensity_affine`` (default: model units in [-1, 1]
    are ``I`` in [0, 1]): ``A^T (1 - x_I / (A y_I + background)) / rms(1 - x_I / (...))``.
    The ratio is insensitive to a common scale of ``x_I`` and ``A y_I``, so the lost photon
    scale of the min-max normalisation does not matter when ``background = 0``.

    Parameters
    ----------
    y0_hat, observed : Tensor (B, C, H, W)
        Current clean estimate and the observation, model units.
    operator : callable with ``.T``
        :class:`piddpm.acquisition.BlurOperator` (periodic) for the batch's PSF.
    likelihood : {"gaussian", "poisson"}
    background : float
        Background of the Poisson model, in the intensity units ``I``.
    intensity_affine : (a, b)
        Model units ``v = a I + b``; ``a > 0``.

    Returns
    -------
    Tensor (B, C, H, W)
        The direction to *subtract* from ``y0_hat``; its per-pixel size is O(1) far from
        consistency and shrinks as ``A y0_hat`` approaches ``x`` up to noise (``A^T`` damps the
        high-frequency noise residual).
    """
    if likelihood == "gaussian":
        res = operator(y0_hat) - observed
        return operator.T(res) / rms(res).clamp_min(_TINY)
    if likelihood == "poisson":
        a, b = intensity_affine
        if a <= 0:
            raise PiddpmError(f"intensity_affine scale must be > 0, got {a}")
        y_int = (y0_hat - b) / a
        x_int = ((observed - b) / a).clamp_min(0.0)
        denom = (operator(y_int) + background).clamp_min(1e-3)
        res = 1.0 - x_int / denom
        return operator.T(res) / rms(res).clamp_min(_TINY)
    raise PiddpmError(f"likelihood must be 'gaussian' or 'poisson', got {likelihood!r}")


def known_step(
    y0_hat: torch.Tensor,
    observed: torch.Tensor,
    operator,
    step: float | torch.Tensor,
    *,
    likelihood: Likelihood = "gaussian",
    background: float = 0.0,
) -> torch.Tensor:
    """The known-PSF correction to subtract from ``y0_hat``: ``min(step, alpha*) * d``.

    ``d`` is :func:`known_direction`; ``alpha*`` (per image) is the exact minimiser of the
    Gaussian misfit ``||A (y0_hat - alpha d) - x||^2`` along ``d``,
    ``alpha* = <A d, A y0_hat - x> / ||A d||^2`` (clamped at 0), so a large step can never
    overshoot the best data consistency along ``d`` (it also caps the Poisson direction).

    Returns
    -------
    Tensor (B, C, H, W)
    """
    d = known_direction(y0_hat, observed, operator, likelihood=likelihood, background=background)
    ad = operator(d)
    res = operator(y0_hat) - observed
    dims = tuple(range(1, d.ndim))
    alpha_star = (ad * res).sum(dims, keepdim=True) / ad.square().sum(dims, keepdim=True).clamp_min(
        _TINY
    )
    step_t = torch.as_tensor(step, dtype=d.dtype, device=d.device)
    return torch.minimum(step_t, alpha_star.clamp_min(0.0)) * d
