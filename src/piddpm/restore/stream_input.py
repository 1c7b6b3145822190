"""The input of :mod:`piddpm.restore.stream`: an image opened lazily (nothing read until a
chunk needs it), viewed in the OME-Zarr axis order ``TCZYX``, and each plane's intensity
range over the whole plane, read in bands."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from piddpm import PiddpmError

__all__ = ["TCZYXView", "open_lazy", "plane_ranges", "read_float", "source_axes"]


class TCZYXView:
    """An array whose leading (T, C, Z) axes are read in ``TCZYX`` order, lazily.

    ``view[index]`` reorders ``index`` to the source's axes, reads that part of the source
    (only it: a Zarr or dask source reads just the chunks it touches) and transposes the
    part, so memory is that of the slice. Picklable when the source is (dask.distributed).

    Parameters
    ----------
    data : array-like
        The source (``shape``, ``dtype`` and NumPy-style slicing).
    axes : str
        Its axes: letters from ``TCZ`` in any order, then ``YX``.
    """

    def __init__(self, data, axes: str):
        self.data, self.source_axes = data, axes
        self.axes = "".join(a for a in "TCZYX" if a in axes)
        self.perm = tuple(axes.index(a) for a in self.axes)  # view axis i = source axis perm[i]
        self.shape = tuple(int(data.shape[p]) for p in self.perm)
        self.dtype = data.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis or i is None for i in index):
            raise TypeError("TCZYXView takes integers and slices only")
        index = index + (slice(None),) * (self.ndim - len(index))
        src = [slice(None)] * self.ndim
        for i, p in enumerate(self.perm):
            src[p] = index[i]
        part = self.data[tuple(src)]
        if hasattr(part, "compute"):
            part = part.compute()
        kept = [p for i, p in enumerate(self.perm) if not isinstance(index[i], int | np.integer)]
        # the part's axes are the kept source axes in source order; put them in view order
        return np.transpose(np.asarray(part), [sorted(kept).index(p) for p in kept])


def source_axes(data, axes: str) -> str:
    """The input's own axes: ``axes`` unless ``data`` is a :class:`TCZYXView` of it."""
    return data.source_axes if isinstance(data, TCZYXView) else axes


def open_lazy(source, axes: str | None = None):
    """The image to stream, without reading its pixels.

    Parameters
    ----------
    source : path, zarr.Array, dask array, NumPy array or torch tensor
        An OME-Zarr group (level 0 is used), a Zarr array, an array; another image file
        (TIFF, PNG) is read whole with :func:`piddpm.io.read_image`.
    axes : str, optional
        Axes letters; default the file's, else as :func:`piddpm.restore` guesses them.

    Returns
    -------
    (array, axes, pixel_size_um, where)
        ``array`` supports ``shape``, ``dtype`` and slicing; its axes are ``axes``, in the
        OME-Zarr order ``TCZYX``: an input with its T, C, Z axes in another order (``ZCYX``)
        is returned as a :class:`TCZYXView`, which transposes each slice it reads (nothing
        is read here). ``pixel_size_um`` is ``(z, y, x)`` in micrometres (None where unknown).
    """
    from piddpm.restore.inputs import check_dtype, resolve_axes

    ps: tuple = (None, None, None)
    where = "image"
    data = source
    if isinstance(source, str | os.PathLike):
        where = str(source)
        path = Path(source)
        if not path.exists():
            raise PiddpmError(f"{path}: no such file or folder")
        if path.is_dir() or str(path).endswith(".zarr"):
            data, file_axes, ps = _open_zarr(path)
            axes = axes or file_axes
        else:
            from piddpm.io import read_image

            img = read_image(path, axes=axes)
            data, axes, ps = img.data, axes or img.axes, tuple(img.pixel_size_um)
    elif hasattr(source, "detach"):
        data = source.detach().cpu().numpy()
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    check_dtype(data.dtype, where)
    axes = resolve_axes(tuple(int(s) for s in data.shape), axes, where)
    if axes[-2:] != "YX" or any(a not in "TCZYX" for a in axes):
        raise PiddpmError(
            f"{where}: axes {axes!r} cannot be written as OME-Zarr; expected letters from TCZYX "
            "ending in YX (restore it in memory instead)"
        )
    order = "".join(a for a in "TCZYX" if a in axes)
    if axes != order:  # NGFF wants TCZYX: a lazy view in that order
        data = TCZYXView(data, axes)
    return data, order, ps, where


def _open_zarr(path: Path):
    """Level 0 of an OME-Zarr group (or a plain Zarr array), its axes and pixel size."""
    import zarr

    from piddpm.io import _unit_scale

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:  # zarr raises several kinds
        raise PiddpmError(f"{path}: not a readable Zarr store ({err})") from None
    if isinstance(node, zarr.Array):
        axes = node.attrs.get("axes")
        return node, (axes if isinstance(axes, str) else None), (None, None, None)
    attrs = dict(node.attrs)
    multiscales = attrs.get("ome", attrs).get("multiscales")
    if not multiscales:
        raise PiddpmError(
            f"{path}: Zarr group without OME 'multiscales' metadata; expected an OME-Zarr image"
        )
    ms, ps = multiscales[0], [None, None, None]
    ds = ms["datasets"][0]
    arr = node[ds["path"]]
    names = [a["name"] if isinstance(a, dict) else str(a) for a in ms.get("axes", [])]
    names = names or list("tczyx")[-arr.ndim :]
    axes = "".join(n.upper() if n.upper() in "TCZYX" else "Q" for n in names)
    units = [a.get("unit") if isinstance(a, dict) else None for a in ms.get("axes", [])]
    scale = np.ones(len(names))
    for tr in (ds.get("coordinateTransformations") or []) + (
        ms.get("coordinateTransformations") or []
    ):
        if tr.get("type") == "scale":
            scale = scale * np.asarray(tr["scale"], dtype=float)
    for i, ax in enumerate("ZYX"):
        if ax in axes:
            j = axes.index(ax)
            s = _unit_scale(units[j], path) if j < len(units) and units[j] else None
            ps[i] = float(scale[j]) * s if s is not None else None
    return arr, axes, tuple(ps)


def read_float(data, index) -> np.ndarray:
    """``data[index]`` as float32 NumPy (Zarr, dask, NumPy alike)."""
    part = data[index]
    if hasattr(part, "compute"):
        part = part.compute()
    return np.asarray(part).astype(np.float32, copy=False)


def plane_ranges(data, lead_shape, percentiles, where: str = "image", band_px: int = 1 << 24):
    """Each plane's ``(lo, hi)`` over the whole plane, exactly as the in-memory restore.

    The plane is read in bands of rows (about ``band_px`` pixels); up to
    :data:`piddpm.normalisation.MAX_PERCENTILE_SAMPLES` pixels all values are kept, above it
    the same every-k-th-pixel subsample that :func:`piddpm.normalisation.intensity_range`
    takes of the flattened plane, so the result is identical and memory stays bounded.
    """
    from piddpm.normalisation import MAX_PERCENTILE_SAMPLES, intensity_range

    height, width = (int(s) for s in data.shape[-2:])
    n = height * width
    k = 1 if n <= MAX_PERCENTILE_SAMPLES else int(np.ceil(n / MAX_PERCENTILE_SAMPLES))
    rows = max(1, band_px // max(width, 1))
    out = []
    for idx in np.ndindex(*lead_shape):
        parts = []
        for r0 in range(0, height, rows):
            band = read_float(data, idx + (slice(r0, min(r0 + rows, height)), slice(None)))
            if not np.isfinite(band).all():
                raise PiddpmError(
                    f"{where} contains NaN or infinite values (plane {idx}, rows {r0}-"
                    f"{r0 + band.shape[0]}); replace them before restoring"
                )
            parts.append(band.reshape(-1)[(-(r0 * width)) % k :: k].copy())
            del band
        out.append(list(intensity_range(np.concatenate(parts), percentiles)))
    return out
