"""``restore(..., method="rl-3d")``: 3-D Richardson-Lucy of z-stacks with a 3-D PSF.

Every index of the axes other than ``Z``, ``Y``, ``X`` (time points, channels) is one stack,
restored on its own: percentile normalisation over the whole stack (the 2-D ``rl`` rule:
RL on ``max(x - lo, 0) / (hi - lo)``, output ``u (hi - lo) + lo``), the 3-D PSF from a file
or array or computed from the microscope settings and the z step
(:func:`piddpm.optics.kernels.make_psf_3d`), and :func:`piddpm.baselines.richardson_lucy_3d`
with the automatic iteration rule of 2-D RL unless ``steps`` is given.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from piddpm import PiddpmError, __version__
from piddpm.normalisation import DEFAULT_PERCENTILES, check_percentiles
from piddpm.restore.inputs import check_int, read_input, resolve_device
from piddpm.restore.result import RestoreResult, as_input_kind
from piddpm.restore.settings import plane_range

__all__ = ["load_psf_3d", "restore_volume"]


def load_psf_3d(psf, stack_shape: tuple[int, int, int]) -> tuple[np.ndarray, str]:
    """A 3-D PSF from an array or an image file, checked against the stack.

    Returns
    -------
    (numpy.ndarray ``(kz, ky, kx)`` unit sum, description str)
    """
    from piddpm.baselines.rl3d import check_psf_3d

    where, desc = "psf", "array"
    if isinstance(psf, str | Path):
        from piddpm.io import read_image

        img = read_image(psf)
        where, desc = f"PSF file {psf}", f"file {psf}"
        arr = np.asarray(img.data)
        # singleton axes dropped; a plain 3-D TIFF ("QYX") is read as (Z, Y, X)
        keep = [a for a, n in zip(img.axes, arr.shape, strict=True) if n > 1 or a in "YX"]
        arr = arr.reshape([arr.shape[img.axes.index(a)] for a in keep])
        if len(keep) > 3 or (len(keep) == 3 and keep[0] not in "ZQ"):
            raise PiddpmError(
                f"{where} has axes {img.axes!r} with more than one {keep[0]} entry; "
                "expected a 3-D PSF (Z, Y, X)"
            )
    else:
        if hasattr(psf, "detach"):
            psf = psf.detach().cpu().numpy()
        arr = np.asarray(psf)
    if arr.dtype.kind not in "uif":
        raise PiddpmError(f"{where}: PSF has dtype {arr.dtype}; expected integers or floats")
    return check_psf_3d(arr, stack_shape, where).astype(np.float32), desc


def _z_step(image, z_step_um, where: str) -> float | None:
    """The z step: given, else the file's (``piddpm.io.Image`` or a path), else None."""
    if z_step_um is not None:
        if not (math.isfinite(float(z_step_um)) and float(z_step_um) > 0):
            raise PiddpmError(f"{where}: z step {z_step_um!r} um is invalid; expected > 0")
        return float(z_step_um)
    from piddpm.io import Image, read_image

    if isinstance(image, str | Path):
        image = read_image(image)
    if isinstance(image, Image) and image.pixel_size_um and image.pixel_size_um[0]:
        return float(image.pixel_size_um[0])
    return None


def _resolve_psf(psf, microscope, stack_shape, z_step, pixel_um, where):
    """The 3-D PSF (given wins over the microscope) and its description."""
    if psf is not None:
        return load_psf_3d(psf, stack_shape)
    if not microscope or all(microscope.get(k) is None for k in ("na", "em_nm", "ex_nm")):
        raise PiddpmError(
            f"{where}: method rl-3d needs a 3-D PSF: give --psf PSF3D.tif or the microscope "
            "options (--modality --na --em-nm --pixel-um --z-step-um)"
        )
    if z_step is None:
        raise PiddpmError(
            f"{where}: the z step is unknown; a computed 3-D PSF needs --z-step-um "
            "(micrometres between planes) or a file that records it"
        )
    from piddpm.optics.kernels import make_psf_3d
    from piddpm.restore.psf import microscope_options

    opts = microscope_options(microscope, pixel_um, where)
    z, h, w = stack_shape
    psf3 = make_psf_3d(**opts, z_step_um=z_step, max_planes=z)
    if psf3.shape[1] > min(h, w):  # a small field: the central part of the kernel
        side = min(h, w) - (1 - min(h, w) % 2)
        c, r = psf3.shape[1] // 2, side // 2
        psf3 = psf3[:, c - r : c + r + 1, c - r : c + r + 1]
        psf3 = psf3 / psf3.sum()
    desc = "computed 3-D: " + ", ".join(f"{k}={v}" for k, v in sorted(opts.items()))
    return psf3.astype(np.float32), desc + f", z_step_um={z_step}, planes={psf3.shape[0]}"


def restore_volume(
    image,
    psf=None,
    microscope: dict | None = None,
    z_step_um: float | None = None,
    steps: int | None = None,
    axes: str | None = None,
    *,
    pixel_size_um: float | None = None,
    percentiles: tuple[float, float] | None = None,
    device: str = "auto",
    max_voxels: int | None = None,
    overlap: int | None = None,
    name: str | None = None,
    chunk_px: int | None = None,
) -> RestoreResult:
    """Restore z-stacks with 3-D Richardson-Lucy (``restore(..., method="rl-3d")``).

    Parameters
    ----------
    image : numpy.ndarray, torch.Tensor, dask.array.Array, piddpm.io.Image, or path
        Intensities with a ``Z`` axis (``ZYX``, ``CZYX``, ``TCZYX``, ...).
    psf : array ``(kz, ky, kx)`` or path, optional
        3-D PSF on the stack's voxel grid (any scale; at most ``Z`` planes).
    microscope : dict, optional
        Compute the PSF when ``psf`` is not given (keys as for :func:`restore`).
    z_step_um : float, optional
        Distance between planes, micrometres (default: the file's).
    steps : int, optional
        RL iterations (default: the automatic rule of 2-D RL, per stack).
    axes : str, optional
        Axes letters (default: the file's, else by number of dimensions).
    pixel_size_um : float, optional
        Lateral pixel size, micrometres (default: the file's).
    percentiles : (float, float), optional
        The intensity percentiles of the normalisation (default (0.1, 99.9)).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    max_voxels, overlap : int, optional
        XY chunking of large stacks (see :func:`piddpm.baselines.richardson_lucy_3d`):
        the largest extended volume deconvolved at once, and the halo of each chunk in
        pixels (default: the PSF's lateral size).
    chunk_px : int, optional
        XY chunks of at most this side (pixels, core without halo) instead of ``max_voxels``
        (``piddpm restore --method rl-3d --tile N``). Each chunk carries its halo, so the
        chunks join without seams (tests/test_rl3d.py compares with the unchunked result).
    name : str, optional
        How error messages name the image.

    Returns
    -------
    RestoreResult
        ``mean`` of the input's kind and shape (float32, input intensity units),
        ``residual=None``, ``metadata``.

    Raises
    ------
    PiddpmError
        A stack without Z axis, a 2-D PSF, a PSF deeper than the stack, a missing z step or
        PSF, bad settings (one line each, naming the file and the value expected).
    """
    from piddpm.baselines.rl3d import richardson_lucy_3d

    inp = read_input(image, axes, name)
    if "Z" not in inp.axes or inp.shape[inp.axes.index("Z")] < 2:
        raise PiddpmError(
            f"{inp.where}: method rl-3d needs a z-stack; got shape {inp.shape} with axes "
            f"{inp.axes!r} (give --axes with a Z, e.g. ZYX, and at least 2 planes)"
        )
    check_int(steps, "steps", 1)
    perc = check_percentiles(percentiles) if percentiles is not None else DEFAULT_PERCENTILES
    dev = resolve_device(device)
    data = inp.data.detach().cpu().numpy() if hasattr(inp.data, "detach") else inp.data
    data = np.asarray(data)
    zi = inp.axes.index("Z")
    data = np.moveaxis(data, zi, -3)
    lead_axes = inp.axes[:zi] + inp.axes[zi + 1 : -2]
    stack_shape = tuple(int(s) for s in data.shape[-3:])
    z_step = _z_step(image, z_step_um, inp.where)
    pixel_um = pixel_size_um if pixel_size_um is not None else inp.file_pixel_um
    psf3, psf_desc = _resolve_psf(psf, microscope, stack_shape, z_step, pixel_um, inp.where)
    if chunk_px is not None:
        max_voxels = _chunk_voxels(chunk_px, overlap, stack_shape, psf3.shape, inp.where)
    out = np.empty(data.shape, np.float32)
    ranges, counts = [], []
    for idx in np.ndindex(*data.shape[:-3]):
        stack = np.asarray(data[idx], dtype=np.float64)
        lo, hi = plane_range(stack, perc)
        span = hi - lo
        ranges.append([lo, hi])
        x = np.clip((stack - lo) / span, 0, None).astype(np.float32)
        u, info = richardson_lucy_3d(
            x, psf3, int(steps) if steps else "auto", max_voxels=max_voxels,
            overlap_px=overlap, device=dev, return_info=True,
        )  # fmt: skip
        counts.append(info["num_iter"])
        out[idx] = u * span + lo
    out = np.moveaxis(out, -3, zi)
    meta = _metadata(inp, lead_axes, psf_desc, psf3, steps, counts, perc, ranges, dev, z_step)
    meta["xy_chunks"] = int(info["chunks"])
    if pixel_um is not None:
        meta["pixel_size_um"] = float(pixel_um)
    return RestoreResult(mean=as_input_kind(out, image, inp.kind), metadata=meta)


def _chunk_voxels(chunk_px, overlap, stack_shape, psf_shape, where) -> int:
    """The ``max_voxels`` whose XY chunks have a core of at most ``chunk_px`` pixels."""
    chunk_px = check_int(chunk_px, "tile (rl-3d XY chunk side)", 16)
    halo = max(psf_shape[1:]) if overlap is None else check_int(overlap, "overlap", 0)
    depth = stack_shape[0] + psf_shape[0] - 1
    return depth * (chunk_px + max(psf_shape[1:]) - 1 + 2 * halo) ** 2


def _metadata(inp, lead_axes, psf_desc, psf3, steps, counts, perc, ranges, dev, z_step):
    """How the rl-3d result was made (JSON-serialisable)."""
    from piddpm.baselines.stopping import RL_MAX_ITER, RL_TAU

    rule = (
        None
        if steps
        else "per stack: discrepancy principle on the central 256 x 256 XY crop of all planes "
        f"(stop when the rms residual |A u - x| reaches {RL_TAU} x the Immerkaer noise "
        f"estimate; at most {RL_MAX_ITER})"
    )
    meta: dict[str, Any] = {
        "software": "piddpm",
        "piddpm_version": __version__,
        "method": "rl-3d",
        "model": None,
        "axes": inp.axes,
        "stacks_over": lead_axes or None,
        "device": str(dev),
        "psf": psf_desc,
        "psf_shape": list(psf3.shape),
        "z_step_um": z_step,
        "steps": counts[0] if len(set(counts)) == 1 else counts,
        "rl_iteration_rule": rule,
        "boundary": "extended object (Bertero-Boccacci 2005): estimated k // 2 voxels beyond "
        "each border, data = central part of its blur, EM sensitivity A^T 1",
        "normalisation": {
            "percentiles": list(perc),
            "map": "RL on max(x - lo, 0) / (hi - lo) per stack; output y = u (hi - lo) + lo",
            "ranges": ranges if len(ranges) <= 64 else ranges[:64] + ["..."],
        },
    }
    return meta
