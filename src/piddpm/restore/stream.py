"""Out-of-core restore: an image larger than memory, chunk by chunk, into an OME-Zarr store.

:func:`restore_to_zarr` reads its input lazily (OME-Zarr / Zarr, a dask, Zarr or NumPy
array), cuts every 2-D plane into ``chunk x chunk`` output chunks and restores each chunk
with :func:`piddpm.restore.restore` on the chunk **plus the tiles that reach into it**, then
keeps the chunk's centre. Results stream into an OME-Zarr (NGFF 0.4, Zarr format 2) store
whose chunks are the output chunks, so every task writes whole Zarr chunks of its own.

Chunked equals in-memory (to float round-off) because nothing a pixel depends on changes:

- **Tiles.** The region of a chunk is the union of the plane's own tiles
  (:func:`piddpm.tiling.tile_positions` with the restore's tile and overlap) that overlap the
  chunk; the region starts on the plane's tile grid, so the region's tiles *are* the plane's
  tiles, and the blending windows of every tile covering the chunk are the plane's too (the
  untapered region border lies at least ``overlap`` pixels outside the chunk).
- **Intensities.** The percentile range of each plane is computed once over the **whole
  plane** (exactly the in-memory rule, :func:`piddpm.normalisation.intensity_range`: every
  pixel up to 4 M pixels, above that the same regular subsample, gathered band by band) and
  passed as ``intensity_range``, so no chunk has its own normalisation and no seam appears.
- **RL iterations.** With ``method="rl"`` and no ``steps``, the automatic iteration count of
  each plane is computed once from the plane's central tile
  (:func:`piddpm.baselines.rl_iterations`) and passed as ``steps``.
- **Diffusion noise** is addressed by position (:class:`piddpm.diffusion.noise.PlaneNoise`):
  each chunk passes ``origin=(plane, y0, x0)`` so its tiles draw the whole plane's noise.

Peak memory is one region (the chunk and at most one tile on each side) and what the
restore of it needs, independent of the image size. Finished chunks are recorded in a marker
array ``piddpm_done`` of the store (written after the chunk's data); ``resume=True`` skips
them. ``workers=N`` runs the chunks on a local dask.distributed cluster of N processes,
``cluster=ADDRESS`` on an existing scheduler; each worker process loads the model once
(:func:`piddpm.models.load_entry` caches it).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from piddpm import PiddpmError
from piddpm.restore.stream_store import (
    DONE_ARRAY,
    create_store,
    done_marks,
    set_attrs,
    stream_state,
    write_pyramid,
)

__all__ = ["DEFAULT_CHUNK", "DEFAULT_LEVELS", "open_lazy", "plane_ranges", "restore_to_zarr"]

#: Output chunk side in pixels (also the Zarr chunk of the output arrays).
DEFAULT_CHUNK = 1024
#: Pyramid levels written (level 0 plus 2x, 4x, ... down-sampled means).
DEFAULT_LEVELS = 3
OUTPUT_NOTES = {
    "mean": "restored image (mean of the samples), input units",
    "std": "per-pixel std of the posterior samples, input units",
    "residual": "data consistency |A y - x| / (p_high - p_low) per plane, dimensionless",
}


# ---------------------------------------------------------------------------------------------
# input


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
        ``array`` supports ``shape``, ``dtype`` and slicing; ``pixel_size_um`` is
        ``(z, y, x)`` in micrometres (None where unknown).
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
    order = [a for a in "TCZYX" if a in axes]
    if list(axes) != order:
        raise PiddpmError(
            f"{where}: axes {axes!r} are not in the OME-Zarr order {''.join(order)!r}; "
            "transpose the input first (e.g. dask.array.transpose)"
        )
    return data, axes, ps, where


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


def _read(data, index) -> np.ndarray:
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
            band = _read(data, idx + (slice(r0, min(r0 + rows, height)), slice(None)))
            if not np.isfinite(band).all():
                raise PiddpmError(
                    f"{where} contains NaN or infinite values (plane {idx}, rows {r0}-"
                    f"{r0 + band.shape[0]}); replace them before restoring"
                )
            parts.append(band.reshape(-1)[(-(r0 * width)) % k :: k].copy())
            del band
        out.append(list(intensity_range(np.concatenate(parts), percentiles)))
    return out


# ---------------------------------------------------------------------------------------------
# geometry


def chunk_regions(length: int, chunk: int, tile: int, overlap: int) -> list[tuple[int, ...]]:
    """Output chunks along one axis and the regions restored for them.

    Returns
    -------
    list of (c0, c1, r0, r1)
        Chunk ``[c0, c1)`` and region ``[r0, r1)``: the union of the axis' tiles
        (:func:`piddpm.tiling.axis_starts`) that overlap the chunk. The region's own tiles
        equal those tiles (it starts on the tile grid).
    """
    from piddpm.tiling import axis_starts

    starts = axis_starts(length, tile, overlap)
    t = min(tile, length)
    out = []
    for c0 in range(0, length, chunk):
        c1 = min(c0 + chunk, length)
        sel = [s for s in starts if s < c1 and s + t > c0]
        r0, r1 = sel[0], sel[-1] + t
        if [r0 + s for s in axis_starts(r1 - r0, tile, overlap)] != sel:  # pragma: no cover
            raise PiddpmError(f"internal: region {r0}-{r1} does not keep the tile grid")
        out.append((c0, c1, r0, r1))
    return out


def _tiling(kw: dict, entry, psf_np) -> tuple[int, int, int]:
    """``(tile, overlap, effective overlap)`` as :func:`piddpm.restore` resolves them."""
    from piddpm.restore.settings import DEFAULT_OVERLAP, DEFAULT_TILE

    tile, overlap = kw.get("tile"), kw.get("overlap")
    defaults: dict = {}
    if entry is not None:
        sampler = entry.config.get("sampler")
        defaults = {
            **(dict(sampler) if isinstance(sampler, dict) else {}),
            **entry.restore_defaults,
        }
    tile = int(defaults.get("tile", DEFAULT_TILE)) if tile is None else int(tile)
    overlap = int(defaults.get("overlap", DEFAULT_OVERLAP)) if overlap is None else int(overlap)
    if overlap >= tile:
        overlap = tile // 4
    eff = overlap
    if entry is None:  # RLRunner widens the overlap to the PSF
        eff = max(overlap, min(max(psf_np.shape), tile // 2))
    return tile, overlap, min(eff, tile - 1)


# ---------------------------------------------------------------------------------------------
# one chunk (runs in the calling process or on a dask.distributed worker)

_OPENED: dict = {}


def _source(src):
    """The input array of a task: a path opened once per process, or the array itself."""
    if isinstance(src, tuple) and src and src[0] == "path":
        key = src[1:]
        if key not in _OPENED:
            _OPENED.clear()
            _OPENED[key] = open_lazy(src[1], src[2])[0]
        return _OPENED[key]
    return src


def _run_chunk(task: dict) -> dict:
    """Restore one chunk (its region, then the centre) and write it into the store."""
    from piddpm.restore import restore

    data = _source(task["src"])
    (c0y, c1y, r0y, r1y), (c0x, c1x, r0x, r1x) = task["y"], task["x"]
    idx = tuple(task["idx"])
    region = _read(data, idx + (slice(r0y, r1y), slice(r0x, r1x)))
    kw = dict(task["kwargs"])
    if task["steps"] is not None:
        kw["steps"] = task["steps"]
    at = f"{task['where']} (plane {idx}, rows {r0y}-{r1y}, columns {r0x}-{r1x})"
    with warnings.catch_warnings():
        if task.get("quiet"):  # the first chunk has said it (e.g. the sampling assumed)
            warnings.simplefilter("ignore", UserWarning)
        res = restore(
            region,
            axes="YX",
            intensity_range=tuple(task["range"]),
            origin=(task["p"], r0y, r0x),
            name=at,
            **kw,
        )
    del region
    if task.get("out") is not None:
        import zarr

        keep = (slice(c0y - r0y, c1y - r0y), slice(c0x - r0x, c1x - r0x))
        dest = idx + (slice(c0y, c1y), slice(c0x, c1x))
        for name in task["outputs"]:
            arr = {"mean": res.mean, "std": res.std, "residual": res.residual}[name]
            path = "0" if name == "mean" else f"{name}/0"
            zarr.open_array(str(task["out"]), path=path, mode="r+")[dest] = arr[keep]
    outputs = ["mean"] + [n for n in ("std", "residual") if getattr(res, n) is not None]
    return {"metadata": res.metadata, "outputs": outputs}


# ---------------------------------------------------------------------------------------------
# the whole run


def restore_to_zarr(
    input,  # noqa: A002 - the documented name
    output_path: str | os.PathLike,
    *,
    chunk: int = DEFAULT_CHUNK,
    overlap: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    cluster: str | None = None,
    levels: int = DEFAULT_LEVELS,
    axes: str | None = None,
    progress: bool = True,
    on_chunk: Callable[[int, int], None] | None = None,
    **restore_kwargs,
) -> Path:
    """Restore an image chunk by chunk into an OME-Zarr store, in bounded memory.

    Parameters
    ----------
    input : path, zarr.Array, dask array or NumPy array
        The image (:func:`open_lazy`); an OME-Zarr / Zarr store is read chunk by chunk.
    output_path : str or path
        The output store (``.zarr``): NGFF 0.4, Zarr format 2, axes in ``TCZYX`` order; the
        restored mean at ``0`` with ``levels - 1`` coarser levels (2 x 2 means), ``std/0``
        and ``residual/0`` when made; the restore's metadata (provenance) under ``piddpm``.
    chunk : int
        Output chunk side in pixels (the Zarr chunk; default 1024). Each chunk is restored
        with the tiles that reach into it (less than one tile more on each side).
    overlap : int, optional
        Tile overlap in pixels (as :func:`piddpm.restore`'s; default the model's).
    resume : bool
        Continue an interrupted run into the same store: finished chunks are skipped (the
        settings must be the same); the result equals an uninterrupted run's.
    overwrite : bool
        Replace an existing store (refused otherwise, unless ``resume``).
    workers : int, optional
        Run the chunks on a local dask.distributed cluster of this many worker processes.
    cluster : str, optional
        Address of an existing dask.distributed scheduler (``tcp://host:8786``).
    levels : int
        Pyramid levels (default 3).
    axes : str, optional
        Axes of ``input`` (default: the file's, else guessed).
    progress : bool
        A tqdm bar over chunks (with the estimated time left).
    on_chunk : callable, optional
        ``on_chunk(done, total)`` after each chunk is recorded (raising stops the run; the
        store can then be resumed).
    **restore_kwargs
        Passed to :func:`piddpm.restore` for every chunk (``model``, ``method``, ``psf``,
        ``steps``, ``seed``, ``tile``, ``microscope``, ``device``, ...). ``residual``
        defaults to False; resampling into the model's pixel range is refused (it acts on
        the whole plane).

    Returns
    -------
    pathlib.Path
        The output store.
    """
    data, axes, pixel_um, where = open_lazy(input, axes)
    out = Path(output_path)
    _check_output(out, input, resume, overwrite)
    kw, pixel_um = _restore_settings(restore_kwargs, overlap, pixel_um, where)
    shape = tuple(int(s) for s in data.shape)
    lead = shape[:-2]
    entry, psf_np, perc = _model_and_psf(kw, shape[-2:], pixel_um, where)
    tile, kw["overlap"], eff = _tiling(kw, entry, psf_np)
    kw["tile"] = tile
    chunk = _positive(chunk, "chunk")
    levels = _positive(levels, "levels")
    ys, xs = (chunk_regions(n, chunk, tile, eff) for n in shape[-2:])
    spec = {
        "shape": shape,
        "axes": axes,
        "pixel_um": pixel_um,
        "chunk": chunk,
        "levels": levels,
        "grid": (int(np.prod(lead)) if lead else 1, len(ys), len(xs)),
        "settings": _settings(where, shape, axes, chunk, levels, kw),
    }
    state = stream_state(out) if out.exists() else {}
    if out.exists():  # resume (_check_output refused anything else)
        _check_resumable(out, state, spec["settings"])
        if state.get("complete"):
            return out
    else:
        state = {"ranges": plane_ranges(data, lead, perc, where)}
        state["steps"] = _rl_steps(data, lead, state["ranges"], kw, psf_np, tile)
    src = ("path", str(input), axes) if isinstance(input, str | os.PathLike) else data
    tasks = _tasks(src, out, where, lead, ys, xs, state, kw)
    if "outputs" not in state:  # a new store: the first chunk in this process tells its layout
        first = dict(tasks[0], out=None, quiet=False)
        info = _run_chunk(first)
        meta = _check_probe(info["metadata"], kw, where)
        state.update(outputs=info["outputs"])
        create_store(out, spec, state["outputs"])
        set_attrs(out, piddpm=_provenance(meta, state, spec, where, workers or cluster))
        set_attrs(out, piddpm_stream=dict(state, complete=False, settings=spec["settings"]))
    for t in tasks:
        t["outputs"] = state["outputs"]
    _run_all(out, tasks, spec["grid"], workers, cluster, progress, on_chunk)
    write_pyramid(out, levels)
    set_attrs(out, piddpm_stream=dict(state, complete=True, settings=spec["settings"]))
    return out


def _tasks(src, out, where, lead, ys, xs, state, kw) -> list[dict]:
    """One task per (plane, chunk row, chunk column), in plane-major order."""
    return [
        dict(
            src=src,
            out=str(out),
            where=where,
            idx=idx,
            p=p,
            y=y,
            x=x,
            range=state["ranges"][p],
            steps=state["steps"][p] if state["steps"] else None,
            kwargs=kw,
            key=(p, i, j),
            quiet=True,
        )
        for p, idx in enumerate(np.ndindex(*lead))
        for i, y in enumerate(ys)
        for j, x in enumerate(xs)
    ]


def _positive(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise PiddpmError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_output(out: Path, source, resume: bool, overwrite: bool) -> None:
    """Refuse an output that is the input, lies in a missing folder, or exists (unless
    ``resume`` continues it or ``overwrite`` replaces it)."""
    if isinstance(source, str | os.PathLike) and os.path.abspath(source) == os.path.abspath(out):
        raise PiddpmError(f"{out}: the output store is the input; choose another path")
    if not out.parent.is_dir():
        raise PiddpmError(f"{out}: the folder {out.parent} does not exist; create it first")
    if not out.exists() or resume:
        return
    if not overwrite:
        raise PiddpmError(
            f"{out}: already exists; pass --resume to continue it or --overwrite to replace it"
        )
    if out.is_dir() and (out / ".zgroup").exists():
        shutil.rmtree(out)
    else:
        raise PiddpmError(f"{out}: exists and is not a Zarr store; remove it yourself")


def _restore_settings(kwargs: dict, overlap, pixel_um, where: str) -> tuple[dict, tuple]:
    """The keyword arguments every chunk's restore gets, and the pixel size ``(z, y, x)``."""
    from piddpm.resample import check_pixel_size, file_pixel_size

    bad = {"axes", "intensity_range", "origin", "name", "image", "percentiles_override"}
    bad &= set(kwargs)
    if bad:
        raise PiddpmError(f"restore_to_zarr sets {', '.join(sorted(bad))} itself; do not pass it")
    if kwargs.get("method") == "rl-3d":
        raise PiddpmError("method rl-3d deconvolves whole stacks in 3-D; it cannot be streamed")
    kw = dict(kwargs, progress=False)
    kw.setdefault("residual", False)
    if overlap is not None:
        kw["overlap"] = overlap
    given = kw.get("pixel_size_um")
    y_um = (
        check_pixel_size(given, where) if given is not None else file_pixel_size(pixel_um[1], where)
    )
    kw["pixel_size_um"] = y_um
    return kw, (pixel_um[0], y_um, y_um)


def _model_and_psf(kw: dict, plane_shape, pixel_um, where: str):
    """The model entry (None for RL), the PSF restore will use, and the percentiles."""
    from piddpm.normalisation import DEFAULT_PERCENTILES, check_percentiles
    from piddpm.restore.psf import resolve_psf
    from piddpm.restore.settings import percentiles_from_config, resolve_entry

    entry = None
    if kw.get("method") != "rl":
        entry = resolve_entry(kw.get("model", "widefield"), kw.get("method"), kw.get("microscope"))
    psf_np = None
    if entry is None:
        psf_np = resolve_psf(kw.get("psf"), kw.get("microscope"), pixel_um[1], plane_shape, where)[
            0
        ]
        if psf_np is None:
            raise PiddpmError("method rl needs a PSF: give psf= or microscope=")
    if kw.get("percentiles") is not None:
        perc = check_percentiles(kw["percentiles"])
    else:
        perc = percentiles_from_config(entry.config) if entry is not None else DEFAULT_PERCENTILES
    return entry, psf_np, perc


def _rl_steps(data, lead, ranges, kw, psf_np, tile) -> list[int] | None:
    """RL without ``steps``: each plane's automatic iteration count from its central tile."""
    if kw.get("method") != "rl" or kw.get("steps"):
        return None
    from piddpm.baselines import rl_iterations

    h, w = (int(s) for s in data.shape[-2:])
    th, tw = min(tile, h), min(tile, w)
    y0, x0 = (h - th) // 2, (w - tw) // 2
    steps = []
    for p, idx in enumerate(np.ndindex(*lead)):
        lo, hi = ranges[p]
        crop = _read(data, idx + (slice(y0, y0 + th), slice(x0, x0 + tw)))
        steps.append(int(rl_iterations(np.clip((crop - lo) / (hi - lo), 0, None), psf_np, tile)))
    return steps


def _jsonable(value):
    if isinstance(value, str | int | float | bool | type(None)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return str(value)
    if hasattr(value, "shape"):  # an array (a PSF): its digest
        import hashlib

        arr = np.ascontiguousarray(np.asarray(value, dtype=np.float64))
        return f"array {arr.shape} sha1 {hashlib.sha1(arr.tobytes()).hexdigest()[:16]}"
    return str(value)


def _settings(where, shape, axes, chunk, levels, kw) -> dict:
    skip = {"progress", "device", "batch_size"}  # do not change the result
    restore = {k: _jsonable(v) for k, v in sorted(kw.items()) if k not in skip}
    return json.loads(
        json.dumps(
            {"input": where, "shape": list(shape), "axes": axes, "chunk": chunk, "levels": levels}
            | {"restore": restore}
        )
    )


def _check_resumable(out: Path, state: dict, settings: dict) -> None:
    old = state.get("settings")
    if old is None or "outputs" not in state:
        raise PiddpmError(
            f"{out}: not a started piddpm streaming store, nothing to resume; choose a new "
            "output path or pass --overwrite"
        )
    if old != settings:
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if "restore" in diff:
            r0, r1 = old.get("restore", {}), settings["restore"]
            diff += [f"restore.{k}" for k in sorted(set(r0) | set(r1)) if r0.get(k) != r1.get(k)]
        raise PiddpmError(
            f"{out}: was started with other settings ({', '.join(diff)}); resume with the same "
            "ones or write a new store"
        )


def _check_probe(meta: dict, kw: dict, where: str) -> dict:
    if (meta.get("sampling") or {}).get("resampled"):
        raise PiddpmError(
            f"{where}: this plane would be resampled into the model's pixel-size range, which "
            "acts on the whole plane; restore it in memory, or pass resample=False (--no-resample)"
        )
    if (meta.get("tile"), meta.get("overlap")) != (kw["tile"], kw["overlap"]):  # pragma: no cover
        raise PiddpmError(
            f"internal: the chunks were restored with tile/overlap {meta.get('tile')}/"
            f"{meta.get('overlap')}, planned {kw['tile']}/{kw['overlap']}"
        )
    return meta


def _provenance(meta: dict, state: dict, spec: dict, where: str, executor) -> dict:
    """The restore's metadata, with the whole-plane ranges, RL counts and the chunking."""
    from piddpm.baselines import RL_MAX_ITER, RL_TAU

    meta = json.loads(json.dumps(meta, default=str))
    ranges = state["ranges"]
    norm = meta.setdefault("normalisation", {})
    norm["ranges"] = ranges if len(ranges) <= 64 else ranges[:64] + ["..."]
    norm["scope"] = "whole plane (exact percentiles, the in-memory rule), not per chunk"
    steps = state.get("steps")
    if steps:
        meta["steps"] = steps[0] if len(set(steps)) == 1 else steps[:64]
        meta["rl_iterations"] = steps[:64]
        meta["rl_iteration_rule"] = (
            "per plane: discrepancy principle on the central tile of the whole plane (stop when "
            f"the rms residual |A u - x| reaches {RL_TAU} x the Immerkaer noise estimate; at "
            f"most {RL_MAX_ITER})"
        )
    meta.update(input=where, content=OUTPUT_NOTES["mean"])
    meta["stream"] = {
        "chunk": spec["chunk"],
        "chunks": int(np.prod(spec["grid"])),
        "pyramid_levels": spec["levels"],
        "region": "each chunk restored with the plane's tiles that reach into it",
        "executor": str(executor) if executor else "in process",
        "outputs": {n: OUTPUT_NOTES[n] for n in state["outputs"]},
    }
    return meta


def _run_all(out: Path, tasks, grid, workers, cluster, progress, on_chunk) -> None:
    """Run the chunks not yet recorded, in this process or on dask.distributed, recording
    each after its data is written."""
    import zarr

    done = done_marks(out, grid)
    pending = [t for t in tasks if not done[t["key"]]]
    marks = zarr.open_array(str(out), path=DONE_ARRAY, mode="r+")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(tasks), initial=len(tasks) - len(pending), unit="chunk", desc="restore"
        )
    n_done = len(tasks) - len(pending)

    def record(task):
        nonlocal n_done
        marks[task["key"]] = 1
        n_done += 1
        if bar is not None:
            bar.update(1)
        if on_chunk is not None:
            on_chunk(n_done, len(tasks))

    try:
        if workers is None and cluster is None:
            for task in pending:
                _run_chunk(task)
                record(task)
        else:
            _run_distributed(pending, workers, cluster, record)
    finally:
        if bar is not None:
            bar.close()


def _run_distributed(pending, workers, cluster, record) -> None:
    """The chunks as dask.distributed tasks (a local cluster of ``workers`` processes, or the
    scheduler at ``cluster``); results are recorded as they complete."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise PiddpmError(
            "workers/cluster need dask.distributed: pip install 'piddpm[scale]'"
        ) from None
    local = None
    if cluster is not None:
        client = Client(cluster, timeout="30s")
    else:
        n = _positive(workers, "workers")
        local = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(local)
    try:
        if pending and not isinstance(pending[0]["src"], tuple):
            src = client.scatter(pending[0]["src"], broadcast=False)
            pending = [dict(t, src=src) for t in pending]
        futures = {client.submit(_run_chunk, t, pure=False): t for t in pending}
        for fut in as_completed(futures):
            fut.result()
            record(futures[fut])
    finally:
        client.close()
        if local is not None:
            local.close()
