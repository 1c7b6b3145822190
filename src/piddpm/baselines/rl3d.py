"""3-D Richardson-Lucy deconvolution of a z-stack with a 3-D PSF.

Same engine as 2-D RL (:mod:`piddpm.baselines.rl_core`: real FFTs at fast lengths, the OTF
and its conjugate cached, float32, in-place updates; CPU or CUDA), with the boundary method
of Bertero and Boccacci (2005) on all three axes: the object is estimated on a volume
larger than the stack by ``k // 2`` voxels on each side (``k``: the PSF's side on that
axis), the data are the central part of its blur, and the update is divided by the EM
sensitivity ``A^T 1``. Light from planes above and below the stack is modelled instead of
being forced into the first and last planes, so the top and bottom planes do not ring or
brighten (a zero- or periodic-boundary RL does both).

Stacks larger than ``max_voxels`` are restored in XY chunks with an overlap (a halo of
``overlap_px`` pixels, default the PSF's lateral size), each chunk with the same boundary
method, the same iteration count, and its core kept.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from piddpm import PiddpmError
from piddpm.baselines.rl_core import FFTBlur, rl_fixed_iterations

__all__ = ["check_psf_3d", "chunk_plan", "richardson_lucy_3d"]

#: Voxels below this fraction of the sensitivity's maximum are set to 0 (they see no data).
SENSITIVITY_FLOOR = 1e-6


def check_psf_3d(psf, stack_shape: tuple[int, int, int], where: str = "psf") -> np.ndarray:
    """A 3-D PSF checked against the stack: odd sides (zeros appended), unit sum, float.

    Parameters
    ----------
    psf : array-like ``(kz, ky, kx)``
        Intensity PSF, centre voxel ``k // 2`` on each axis, finite and ``>= 0``.
    stack_shape : (int, int, int)
        ``(Z, Y, X)`` of the stack.
    where : str
        How error messages name the PSF (a file name, ``"psf"``).

    Returns
    -------
    numpy.ndarray ``(kz, ky, kx)``, odd sides, unit sum (float64)

    Raises
    ------
    PiddpmError
        A PSF that is not 3-D, deeper or wider than the stack, negative, empty or not finite.
    """
    if hasattr(psf, "detach"):
        psf = psf.detach().cpu().numpy()
    arr = np.asarray(psf, dtype=np.float64)
    if arr.ndim != 3:
        raise PiddpmError(
            f"{where}: rl-3d needs a 3-D PSF (kz, ky, kx), got shape {arr.shape}; give a "
            "PSF z-stack or the microscope options and the z step"
        )
    kz, ky, kx = arr.shape
    z, y, x = stack_shape
    if kz > z:
        raise PiddpmError(
            f"{where}: PSF has {kz} planes, deeper than the stack's {z}; expected at most {z} "
            "(crop the PSF around its focus)"
        )
    if ky > y or kx > x:
        raise PiddpmError(
            f"{where}: PSF is {ky} x {kx} pixels, larger than the stack's {y} x {x} planes"
        )
    if not np.isfinite(arr).all():
        raise PiddpmError(f"{where}: PSF contains NaN or infinite values")
    if arr.min() < -1e-6 * np.abs(arr).max():
        raise PiddpmError(f"{where}: PSF has negative values (min {arr.min():.3g}); expected >= 0")
    arr = np.clip(arr, 0, None)
    if not arr.sum() > 0:
        raise PiddpmError(f"{where}: PSF sums to zero; expected a positive kernel")
    # an even side gets a zero row at its end: the centre k // 2 stays where it was
    arr = np.pad(arr, [(0, 1 - s % 2) for s in arr.shape])
    return arr / arr.sum()


def chunk_plan(
    shape: tuple[int, int, int],
    psf_shape: tuple[int, int, int],
    max_voxels: int | None,
    overlap_px: int,
) -> list[tuple[slice, slice, slice, slice]]:
    """XY chunks of a stack: ``(ys, xs, core_ys, core_xs)`` per chunk.

    ``ys, xs`` select the chunk (core plus halo) in the stack, ``core_ys, core_xs`` its core
    inside the chunk. One chunk (the whole stack) when the extended volume of
    ``(Z + kz - 1) (Y + ky - 1) (X + kx - 1)`` voxels fits in ``max_voxels`` (or it is None).
    """
    z, y, x = shape
    kz, ky, kx = psf_shape
    depth = z + kz - 1
    if max_voxels is None or depth * (y + ky - 1) * (x + kx - 1) <= max_voxels:
        return [(slice(0, y), slice(0, x), slice(0, y), slice(0, x))]
    side = int(math.isqrt(max(int(max_voxels) // depth, 1))) - max(ky, kx) + 1 - 2 * overlap_px
    if side < 16:
        raise PiddpmError(
            f"max_voxels={max_voxels} is too small for a {z}-plane stack with a "
            f"{kz} x {ky} x {kx} PSF and an overlap of {overlap_px} px; expected at least "
            f"{depth * (16 + 2 * overlap_px + max(ky, kx) - 1) ** 2}"
        )
    ny, nx = math.ceil(y / side), math.ceil(x / side)
    ty, tx = math.ceil(y / ny), math.ceil(x / nx)
    plan = []
    for iy in range(ny):
        for ix in range(nx):
            y0, y1 = iy * ty, min((iy + 1) * ty, y)
            x0, x1 = ix * tx, min((ix + 1) * tx, x)
            a0, a1 = max(y0 - overlap_px, 0), min(y1 + overlap_px, y)
            b0, b1 = max(x0 - overlap_px, 0), min(x1 + overlap_px, x)
            plan.append(
                (slice(a0, a1), slice(b0, b1), slice(y0 - a0, y1 - a0), slice(x0 - b0, x1 - b0))
            )
    return plan


def _rl_block(y, psf_t, num_iter, background, eps, monitor=None):
    """RL with the extended-object boundary on one block ``(Z, Y, X)``: the estimate on the
    data's voxels, and the number of iterations done."""
    op = FFTBlur(psf_t, tuple(y.shape), "valid")
    sens = op.sensitivity((), y.dtype, y.device)
    inv_sens = torch.where(
        sens > SENSITIVITY_FLOOR * sens.max(), 1.0 / sens.clamp_min(eps), torch.zeros_like(sens)
    )
    flux = float((y - background).clamp_min(0).mean()) if background else float(y.mean())
    u = torch.full(op.object_shape, max(flux, eps), dtype=y.dtype, device=y.device)
    bg = None if not background else torch.as_tensor(background, dtype=y.dtype, device=y.device)
    u, done = rl_fixed_iterations(
        y, u, op, num_iter, background=bg, inv_sens=inv_sens, eps=eps, monitor=monitor
    )
    cz, cy, cx = (k // 2 for k in psf_t.shape)
    z, h, w = y.shape
    return u[cz : cz + z, cy : cy + h, cx : cx + w], done


def richardson_lucy_3d(
    stack,
    psf,
    num_iter: int | Literal["auto"] = "auto",
    *,
    background: float = 0.0,
    max_voxels: int | None = None,
    overlap_px: int | None = None,
    device: str | torch.device | None = None,
    eps: float = 1e-12,
    tile: int = 256,
    return_info: bool = False,
):
    """3-D Richardson-Lucy deconvolution of a ``(Z, Y, X)`` stack with a 3-D PSF.

    Parameters
    ----------
    stack : numpy.ndarray or Tensor ``(Z, Y, X)``
        Intensities (linear, ``>= 0``; negative values are clipped to 0).
    psf : array-like ``(kz, ky, kx)``
        3-D PSF on the stack's voxel grid, centre voxel ``k // 2``; renormalised to unit sum.
        At most ``Z`` planes (see :func:`check_psf_3d`).
    num_iter : int or "auto"
        Iterations, or ``"auto"``: the discrepancy rule of 2-D RL on the stack
        (:func:`piddpm.baselines.stopping.rl_iterations` with a 3-D PSF: central
        ``tile x tile`` XY crop, all planes, Immerkaer noise level, ``tau = 1.1``).
    background : float
        Known constant background ``b`` in the model ``A u + b`` (stack units).
    max_voxels : int, optional
        Largest extended volume restored at once; a larger stack is cut into XY chunks
        (:func:`chunk_plan`). Default: all at once.
    overlap_px : int, optional
        Halo of each chunk in pixels (default: the PSF's lateral size ``max(ky, kx)``).
    device : str or torch.device, optional
        Where to compute (default: the tensor's device, CPU for NumPy).
    eps : float
        Floor of the model in the division.
    tile : int
        Crop side of the automatic rule.
    return_info : bool
        Also return ``{"num_iter": int, "chunks": int}``.

    Returns
    -------
    numpy.ndarray or Tensor ``(Z, Y, X)``
        The estimate (float32, float64 for float64 input), same kind as ``stack``, on the
        host for NumPy input; ``(u, info)`` with ``return_info``.

    References
    ----------
    M. Bertero, P. Boccacci, "A simple method for the reduction of boundary effects in the
    Richardson-Lucy approach to image deconvolution", Astron. Astrophys. 437, 369 (2005).
    """
    is_numpy = not isinstance(stack, torch.Tensor)
    arr = stack.detach() if not is_numpy else torch.as_tensor(np.asarray(stack))
    dtype = torch.float64 if arr.dtype == torch.float64 else torch.float32
    dev = torch.device(device) if device is not None else arr.device
    if arr.ndim != 3:
        raise PiddpmError(f"stack must have shape (Z, Y, X), got {tuple(arr.shape)}")
    if not bool(torch.isfinite(arr.to(dtype)).all()):
        raise PiddpmError("stack contains NaN or infinite values")
    k = check_psf_3d(psf, tuple(arr.shape))
    psf_t = torch.as_tensor(k, dtype=dtype, device=dev)
    if num_iter == "auto":
        from piddpm.baselines.stopping import rl_iterations

        num_iter = rl_iterations(arr.to(dtype).cpu().numpy(), k.astype(np.float32), tile)
    elif isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 0:
        raise PiddpmError(f"num_iter must be an integer >= 0 or 'auto', got {num_iter!r}")
    if not (math.isfinite(background) and background >= 0):
        raise PiddpmError(f"background must be finite and >= 0, got {background!r}")
    halo = max(k.shape[1:]) if overlap_px is None else int(overlap_px)
    plan = chunk_plan(tuple(arr.shape), k.shape, max_voxels, halo)
    out = torch.empty(arr.shape, dtype=dtype, device=dev if not is_numpy else "cpu")
    for ys, xs, cys, cxs in plan:
        block = arr[:, ys, xs].to(device=dev, dtype=dtype).clamp_min(0).contiguous()
        with torch.no_grad():
            u, _ = _rl_block(block, psf_t, num_iter, float(background), eps)
        out[:, ys, xs][:, cys, cxs] = u[:, cys, cxs].to(out.device)
        del u, block
    result = out.numpy() if is_numpy else out
    if return_info:
        return result, {"num_iter": int(num_iter), "chunks": len(plan)}
    return result
