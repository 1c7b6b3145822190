"""The plane loop of :func:`piddpm.restore`: every index of the leading axes is one 2-D plane,
normalised over the whole plane, restored tile by tile, and mapped back."""

from __future__ import annotations

import numpy as np
import torch

from piddpm.restore.settings import plane_range
from piddpm.tiling import restore_tiled, tile_positions

__all__ = ["restore_planes"]


def restore_planes(inp, runner, *, percentiles, tile: int, batch_size: int, progress: bool):
    """Restore every plane of ``inp`` with ``runner``.

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
    if progress:
        from tqdm.auto import tqdm

        n_tiles = len(tile_positions(inp.plane_shape, tile, runner.overlap))
        desc = f"restore ({runner.method})"
        bar = tqdm(total=n_planes * n_tiles, unit="tile", desc=desc, leave=False)
    ranges: list[list[float]] = []
    try:
        for p_index, idx in enumerate(np.ndindex(*lead_shape)):
            plane = inp.plane(idx)
            lo, hi = plane_range(plane, percentiles)
            ranges.append([lo, hi])
            span = hi - lo
            plane_in, fn, overlap = runner.prepare(p_index, plane, lo, span)
            overlap = min(overlap, tile - 1)
            with torch.no_grad():  # the samplers run without autograd too
                out = restore_tiled(
                    fn,
                    plane_in.astype(np.float32, copy=False),
                    tile,
                    overlap,
                    batch_size,
                    out_channels=runner.out_channels,
                    progress=bar,
                    with_origins=isinstance(fn, DiffusionTiles),
                    margin=min(runner.tile_margin, max((overlap - 1) // 2, 0)),
                )
            del plane_in
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
