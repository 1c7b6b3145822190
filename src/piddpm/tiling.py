"""Overlapping tiles with smooth blending, so any image size can be restored in bounded memory.

A plane of shape ``(H, W)`` is covered by tiles of ``tile x tile`` pixels (smaller where the
plane is smaller) whose starts are ``tile - overlap`` apart; the last tile of a row/column is
shifted back so that it ends exactly at the border (every tile lies inside the image, so a
network always sees real pixels, and tiles of one plane share a size and can be batched).

Each restored tile is multiplied by a separable blending window and added into two
full-size accumulators, ``sum_k w_k * f(tile_k)`` and ``sum_k w_k``; the result is their
ratio. The window is 1 in the tile's interior and falls off across the ``overlap`` pixels
next to every tile edge that lies *inside* the image with a raised-cosine (Hann) ramp
``w(i) = sin^2(pi/2 * (i + 1/2) / overlap)``, ``i = 0 .. overlap - 1``. Two such ramps facing
each other over exactly ``overlap`` pixels sum to 1 (``sin^2 + cos^2``), the weights never
reach 0 (the first is ``sin^2(pi / (4 overlap))``), and edges on the image border are not
tapered, so border pixels keep full weight from the one tile that covers them. The result is
a convex combination of tile outputs whose weights change smoothly, so no step appears at
tile boundaries, and the pixels nearest a tile edge (where a convolutional network sees
zero padding) count least.

The accumulators are the only full-size buffers: tiles are read from the input one batch at
a time (``np.asarray`` of a slice, which also works for memory maps and Dask arrays) and
released after they are added.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from piddpm import PiddpmError
from piddpm.padding import crop_to
from piddpm.padding import pad_end_to_multiple as pad_to_multiple  # tiles pad at the end

__all__ = [
    "axis_starts",
    "tile_positions",
    "hann_ramp",
    "margin_ramp",
    "blend_window",
    "restore_tiled",
    "pad_to_multiple",
    "crop_to",
]


def _check_tile_overlap(tile: int, overlap: int) -> tuple[int, int]:
    if isinstance(tile, bool) or int(tile) != tile or tile < 1:
        raise PiddpmError(f"tile size must be a positive integer number of pixels, got {tile!r}")
    if isinstance(overlap, bool) or int(overlap) != overlap or overlap < 0:
        raise PiddpmError(f"tile overlap must be a non-negative integer, got {overlap!r}")
    if overlap >= tile:
        raise PiddpmError(
            f"tile overlap ({overlap} px) must be smaller than the tile size ({tile} px)"
        )
    return int(tile), int(overlap)


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start indices of tiles along one axis.

    Parameters
    ----------
    length : int
        Axis length in pixels (>= 1).
    tile : int
        Tile length in pixels; a shorter axis gets one tile of the axis length.
    overlap : int
        Minimum overlap in pixels between neighbouring tiles (``0 <= overlap < tile``).

    Returns
    -------
    list of int
        Increasing starts ``s`` with ``0 <= s <= length - min(tile, length)``; the first is 0
        and the last is ``length - min(tile, length)``, so the tiles cover the axis.
    """
    tile, overlap = _check_tile_overlap(tile, overlap)
    if length < 1:
        raise PiddpmError(f"cannot tile an axis of length {length}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = math.ceil((length - tile) / stride) + 1
    starts = [min(i * stride, length - tile) for i in range(n)]
    return starts


def tile_positions(shape: Sequence[int], tile: int, overlap: int) -> list[tuple[slice, slice]]:
    """Tiles covering a plane, in row-major order.

    Parameters
    ----------
    shape : (int, int)
        Plane shape ``(H, W)`` in pixels (leading dimensions, if given, are ignored).
    tile : int
        Tile edge in pixels (tiles are ``min(tile, H) x min(tile, W)``).
    overlap : int
        Minimum overlap between neighbouring tiles in pixels (``0 <= overlap < tile``).

    Returns
    -------
    list of (slice, slice)
        ``(rows, cols)`` slices, one per tile; all tiles of one plane have the same shape.
    """
    if len(shape) < 2:
        raise PiddpmError(f"need a 2-D plane shape (H, W) to tile, got {tuple(shape)}")
    height, width = int(shape[-2]), int(shape[-1])
    th, tw = min(tile, height), min(tile, width)
    return [
        (slice(y, y + th), slice(x, x + tw))
        for y in axis_starts(height, tile, overlap)
        for x in axis_starts(width, tile, overlap)
    ]


def hann_ramp(overlap: int) -> np.ndarray:
    """Rising raised-cosine ramp ``sin^2(pi/2 (i + 1/2) / overlap)``, shape ``(overlap,)``.

    Its values lie strictly inside (0, 1), and ``ramp + ramp[::-1] == 1``.
    """
    i = np.arange(overlap, dtype=np.float64)
    return np.sin(0.5 * np.pi * (i + 0.5) / max(overlap, 1)) ** 2


def margin_ramp(overlap: int, margin: int = 0) -> np.ndarray:
    """Rising ramp over ``overlap`` pixels: ``margin`` zeros, a Hann ramp over the
    ``overlap - 2 margin`` middle pixels, ``margin`` ones. ``ramp + ramp[::-1] == 1`` still
    holds, so facing tiles keep a partition of unity, and the outer ``margin`` pixels of a tile
    (where a network sees its zero padding) get no weight at all."""
    margin = int(margin)
    if overlap and not 0 <= 2 * margin < overlap:
        raise PiddpmError(
            f"tile margin ({margin} px) must satisfy 0 <= 2 x margin < overlap ({overlap} px)"
        )
    return np.concatenate(
        [np.zeros(margin), hann_ramp(overlap - 2 * margin) if overlap else [], np.ones(margin)]
    )


def _axis_window(length: int, ramp: np.ndarray, taper_start: bool, taper_end: bool) -> np.ndarray:
    w = np.ones(length, dtype=np.float64)
    n = min(len(ramp), length)
    if n == 0:
        return w
    if taper_start:
        w[:n] = np.minimum(w[:n], ramp[:n])
    if taper_end:
        w[length - n :] = np.minimum(w[length - n :], ramp[:n][::-1])
    return w


def blend_window(
    tile_shape: Sequence[int],
    overlap: int,
    *,
    taper: tuple[bool, bool, bool, bool] = (True, True, True, True),
    margin: int = 0,
) -> np.ndarray:
    """Separable blending window for one tile, float32 ``(h, w)``.

    Parameters
    ----------
    tile_shape : (int, int)
        Tile shape ``(h, w)`` in pixels.
    overlap : int
        Ramp length in pixels; 0 gives a window of ones.
    taper : (top, bottom, left, right)
        Which edges fall off; edges on the image border are not tapered.
    margin : int
        Pixels at each tapered edge that get weight 0 (:func:`margin_ramp`); with 0 (default)
        the weights never reach 0.

    Returns
    -------
    numpy.ndarray
        Weights in [0, 1], 1 in the interior, a ramp over ``overlap`` pixels at tapered
        edges.
    """
    h, w = int(tile_shape[0]), int(tile_shape[1])
    ramp = margin_ramp(overlap, margin)
    wy = _axis_window(h, ramp, taper[0], taper[1])
    wx = _axis_window(w, ramp, taper[2], taper[3])
    return np.outer(wy, wx).astype(np.float32)


def _to_numpy(out) -> np.ndarray:
    if isinstance(out, np.ndarray):
        return out
    if hasattr(out, "detach"):  # torch tensor
        return out.detach().to("cpu").float().numpy()
    return np.asarray(out)


def _run_batch(fn, image, chunk, squeeze: bool, with_origins: bool) -> np.ndarray:
    """Read the tiles at ``chunk`` (a list of (rows, cols) slices), call ``fn`` on them as one
    batch and check the shape of what it returns: ``(len(chunk), K, h, w)``."""
    tiles = []
    for rows, cols in chunk:
        t = np.asarray(image[..., rows, cols], dtype=np.float32)
        tiles.append(t[None] if squeeze else t)
    batch = np.stack(tiles)
    del tiles
    if with_origins:
        out = _to_numpy(fn(batch, [(rows.start, cols.start) for rows, cols in chunk]))
    else:
        out = _to_numpy(fn(batch))
    del batch
    th, tw = chunk[0][0].stop - chunk[0][0].start, chunk[0][1].stop - chunk[0][1].start
    if out.ndim != 4 or out.shape[0] != len(chunk) or out.shape[-2:] != (th, tw):
        raise PiddpmError(
            f"tile function returned shape {tuple(out.shape)}; expected "
            f"({len(chunk)}, K, {th}, {tw})"
        )
    return out


def restore_tiled(
    fn: Callable[[np.ndarray], np.ndarray],
    image,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 4,
    *,
    out_channels: int | None = None,
    progress=None,
    with_origins: bool = False,
    margin: int = 0,
) -> np.ndarray:
    """Apply ``fn`` to overlapping tiles of ``image`` and blend the results seamlessly.

    Parameters
    ----------
    fn : callable
        Maps a batch of tiles, float32 array ``(B, C, h, w)``, to an array or torch tensor
        ``(B, K, h, w)`` (same tile size; ``K`` output channels, e.g. mean and std).
        ``B <= batch_size``; the last batch may be smaller.
    image : array-like ``(H, W)`` or ``(C, H, W)``
        The plane to restore: NumPy array, memory map, Dask array or torch tensor. Tiles are
        read with ``np.asarray(image[..., rows, cols])``, one batch at a time.
    tile : int
        Tile edge in pixels (default 256).
    overlap : int
        Overlap between neighbouring tiles in pixels (default 32), ``0 <= overlap < tile``.
    batch_size : int
        Tiles per call of ``fn`` (default 4).
    out_channels : int, optional
        ``K``; by default taken from the first output.
    progress : None, bool or tqdm-like
        ``True`` shows a tqdm bar over tiles; an object with ``update(n)`` is advanced by the
        number of tiles done.
    margin : int
        Outer pixels of each tile edge inside the image that get no weight
        (``0 <= 2 margin < overlap``; default 0). A network whose output depends only on a
        receptive field (:attr:`piddpm.networks.UNet.tile_invariant`) gives, beyond the
        margin, nearly the values of an untiled pass; ``margin >= receptive radius`` makes
        them equal.
    with_origins : bool
        Call ``fn(batch, origins)`` with the top-left ``(y0, x0)`` of each tile in the plane,
        for tile functions whose randomness is addressed by position
        (:class:`piddpm.diffusion.noise.TileNoise`).

    Returns
    -------
    numpy.ndarray
        float32 ``(K, H, W)``: the window-weighted mean of the tile outputs at each pixel.

    Notes
    -----
    Peak memory is the accumulator ``(K + 1) * H * W`` float32 values plus one batch of tiles
    and ``fn``'s working memory; the input is never copied whole.
    """
    tile, overlap = _check_tile_overlap(tile, overlap)
    margin_ramp(overlap, margin)  # validates the margin
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise PiddpmError(f"batch size must be a positive integer, got {batch_size!r}")
    shape = tuple(int(s) for s in image.shape)
    squeeze = len(shape) == 2
    if len(shape) not in (2, 3):
        raise PiddpmError(f"restore_tiled expects an (H, W) or (C, H, W) plane, got {shape}")
    height, width = shape[-2:]
    if height < 1 or width < 1:
        raise PiddpmError(f"cannot tile an empty plane of shape {shape}")
    positions = tile_positions((height, width), tile, overlap)

    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(positions), unit="tile", leave=False)
        progress = bar

    acc: np.ndarray | None = None
    if out_channels is not None:
        acc = np.zeros((int(out_channels), height, width), dtype=np.float32)
    weight = np.zeros((height, width), dtype=np.float32)
    windows: dict[tuple, np.ndarray] = {}
    try:
        for b0 in range(0, len(positions), int(batch_size)):
            chunk = positions[b0 : b0 + int(batch_size)]
            out = _run_batch(fn, image, chunk, squeeze, with_origins)
            if acc is None:
                acc = np.zeros((out.shape[1], height, width), dtype=np.float32)
            elif out.shape[1] != acc.shape[0]:
                raise PiddpmError(
                    f"tile function returned {out.shape[1]} channels; expected {acc.shape[0]}"
                )
            for k, (rows, cols) in enumerate(chunk):
                taper = (rows.start > 0, rows.stop < height, cols.start > 0, cols.stop < width)
                key = (rows.stop - rows.start, cols.stop - cols.start, taper)
                win = windows.get(key)
                if win is None:
                    win = windows[key] = blend_window(key[:2], overlap, taper=taper, margin=margin)
                acc[:, rows, cols] += out[k].astype(np.float32, copy=False) * win
                weight[rows, cols] += win
            del out
            if progress is not None and progress is not False:
                progress.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    assert acc is not None
    np.divide(acc, weight, out=acc)
    return acc
