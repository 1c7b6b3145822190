"""The plane loop of :func:`piddpm.restore`: every index of the leading axes is one 2-D plane,
normalised over the whole plane, restored tile by tile, and mapped back."""

from __future__ import annotations

import numpy as np
import torch

from piddpm import PiddpmError
from piddpm.restore.settings import plane_range
from piddpm.tiling import restore_tiled, tile_positions

__all__ = ["border_pads", "mirror_pad", "restore_planes"]


def restore_planes(
    inp,
    runner,
    *,
    percentiles,
    tile: int,
    batch_size: int,
    progress,
    ranges=None,
    origin=None,
    borders=None,
):
    """Restore every plane of ``inp`` with ``runner``.

    Parameters
    ----------
    ranges : (lo, hi) or list of (lo, hi), optional
        Fixed intensity ranges, one pair for all planes or one per plane, used instead of the
        plane's percentiles (a chunk of a larger plane gets the whole plane's range).
    origin : (int, int, int), optional
        ``(plane, y0, x0)`` of ``inp`` in a larger image: plane indices and tile origins are
        offset by it, so position-addressed diffusion noise matches the whole image's.
    borders : (bool, bool, bool, bool), optional
        Which sides (top, bottom, left, right) of ``inp``'s planes are borders of the image
        (default: all four). A runner with ``border_pad > 0`` (the learned methods) restores
        each plane mirrored by that many pixels beyond every image border and crops the
        result: the network then sees image-like context at the border instead of its own
        zero padding, which otherwise leaves a dark or bright rim a few pixels wide (measured
        on a flat field: -2 of a background of 20 photons without the mirror, +-0.1 with it).
        Sides that are not image borders (a chunk's inner edges) are not mirrored: the
        stream's regions carry real neighbours there.

    Returns
    -------
    mean, std (or None), residual (or None) : numpy.ndarray, the input's shape, float32
    ranges : list of [lo, hi], one per plane (the percentile range that was mapped)
    """
    from piddpm.restore.runners import DiffusionTiles

    shape = inp.shape
    lead_shape = shape[:-2]
    n_planes = int(np.prod(lead_shape)) if lead_shape else 1
    mean_out = np.empty(shape, np.float32)
    std_out = np.empty_like(mean_out) if runner.samples > 1 else None
    res_out = np.empty_like(mean_out) if runner.with_residual else None
    bar = None
    pads = border_pads(int(getattr(runner, "border_pad", 0)), borders)
    if progress:
        grown = (inp.plane_shape[0] + pads[0] + pads[1], inp.plane_shape[1] + pads[2] + pads[3])
        n_tiles = len(tile_positions(grown, tile, min(runner.overlap, tile - 1)))
        if callable(progress):  # e.g. a GUI's progress bar; raising in it stops the restore
            bar = _CallbackProgress(progress, n_planes * n_tiles)
        else:
            from tqdm.auto import tqdm

            desc = f"restore ({runner.method})"
            bar = tqdm(total=n_planes * n_tiles, unit="tile", desc=desc, leave=False)
    fixed = _fixed_ranges(ranges, n_planes, inp.where)
    p0, oy, ox = (0, 0, 0) if origin is None else (int(v) for v in origin)
    ranges: list[list[float]] = []
    try:
        for p_index, idx in enumerate(np.ndindex(*lead_shape)):
            plane = inp.plane(idx)
            lo, hi = plane_range(plane, percentiles) if fixed is None else fixed[p_index]
            ranges.append([lo, hi])
            span = hi - lo
            plane_in, fn, overlap = runner.prepare(p0 + p_index, plane, lo, span)
            overlap = min(overlap, tile - 1)
            inner = plane_in.shape[-2:]
            plane_in = mirror_pad(plane_in, pads)
            with_origins = isinstance(fn, DiffusionTiles)
            if with_origins and (oy - pads[0], ox - pads[2]) != (0, 0):
                fn = _shifted(fn, oy - pads[0], ox - pads[2])
            with torch.no_grad():  # the samplers run without autograd too
                out = restore_tiled(
                    fn,
                    plane_in.astype(np.float32, copy=False),
                    tile,
                    overlap,
                    batch_size,
                    out_channels=runner.out_channels,
                    progress=bar,
                    with_origins=with_origins,
                    margin=min(runner.tile_margin, max((overlap - 1) // 2, 0)),
                )
            del plane_in
            out = out[:, pads[0] : pads[0] + inner[0], pads[2] : pads[2] + inner[1]]
            mean, std, res = runner.finish(out, lo, span)
            mean_out[idx] = mean
            if std_out is not None:
                std_out[idx] = std
            if res_out is not None:
                res_out[idx] = res
            del out
    finally:
        if bar is not None:
            bar.close()
    return mean_out, std_out, res_out, ranges


def border_pads(pad: int, borders=None) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` pixels mirrored beyond a plane: ``pad`` on each side
    that is an image border (``borders``: four booleans, default all), 0 elsewhere."""
    if borders is None:
        borders = (True, True, True, True)
    if len(borders) != 4:
        raise PiddpmError(
            f"borders must be four booleans (top, bottom, left, right), got {borders!r}"
        )
    return tuple(int(pad) if b else 0 for b in borders)


def mirror_pad(plane: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
    """``plane`` (``(..., H, W)``) extended by mirror reflection about its edge pixels
    (:func:`piddpm.padding.mirror_pad_tensor`, which the Zoo package's modules use too)."""
    from piddpm.padding import mirror_pad_tensor

    if not any(pads):
        return plane
    return mirror_pad_tensor(torch.from_numpy(np.ascontiguousarray(plane)), pads).numpy()


class _CallbackProgress:
    """A tqdm-like counter that calls ``fn(tiles_done, tiles_total)`` at the start and after
    each batch of tiles; an exception raised by ``fn`` propagates and ends the restore."""

    def __init__(self, fn, total: int):
        self.fn, self.total, self.done = fn, int(total), 0
        fn(0, self.total)

    def update(self, n: int) -> None:
        self.done += int(n)
        self.fn(self.done, self.total)

    def close(self) -> None:
        pass


def _shifted(fn, oy: int, ox: int):
    """``fn`` called with tile origins offset by ``(oy, ox)`` (positions in the whole plane)."""

    def call(batch, origins):
        return fn(batch, [(y + oy, x + ox) for y, x in origins])

    return call


def _fixed_ranges(ranges, n_planes: int, where: str):
    """``ranges`` as a list of ``n_planes`` checked ``(lo, hi)`` float pairs, or None."""
    if ranges is None:
        return None
    arr = np.asarray(ranges, dtype=np.float64)
    if arr.shape == (2,):
        arr = np.broadcast_to(arr, (n_planes, 2))
    if (
        arr.shape != (n_planes, 2)
        or not np.isfinite(arr).all()
        or not (arr[:, 1] > arr[:, 0]).all()
    ):
        raise PiddpmError(
            f"{where}: intensity_range must be finite (lo, hi) with hi > lo, one pair or one per "
            f"plane ({n_planes}); got {ranges!r}"
        )
    return [(float(lo), float(hi)) for lo, hi in arr]
