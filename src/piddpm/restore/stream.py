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

The input's T, C, Z axes may come in any order: it is read through a lazy ``TCZYX`` view
(:mod:`piddpm.restore.stream_input`) and written in that order, as NGFF requires; each plane
keeps the noise address of its index in the input, so the result is the in-memory restore of
the input, transposed. The std and residual maps go to OME-Zarr stores of their own
(:mod:`piddpm.restore.stream_outputs`), as the in-memory CLI writes them to their own files.

Peak memory is one region (the chunk and at most one tile on each side) and what the
restore of it needs, independent of the image size. Finished chunks are recorded in a marker
array ``piddpm_done`` of the mean's store (written after the chunk's data in every output);
``resume=True`` skips them. ``workers=N`` runs the chunks on a local dask.distributed cluster of N processes,
``cluster=ADDRESS`` on an existing scheduler; each worker process loads the model once
(:func:`piddpm.models.load_entry` caches it). With ``device`` ``"auto"`` or ``"cuda"`` the
workers use one GPU each, round-robin (:mod:`piddpm.restore.stream_devices`), and the
provenance records the device every worker's chunks ran on.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from piddpm import PiddpmError
from piddpm.restore.stream_devices import (
    GPU_REQUESTS,
    chunk_device,
    log,
    plan_devices,
    probe_worker,
    ran_on,
    sharing_notes,
)
from piddpm.restore.stream_input import open_lazy, plane_ranges, read_float, source_axes
from piddpm.restore.stream_outputs import (
    check_outputs,
    check_resumable,
    create_stores,
    finish_stores,
    provenance,
    run_settings,
)
from piddpm.restore.stream_store import DONE_ARRAY, done_marks, set_attrs, stream_state

__all__ = ["DEFAULT_CHUNK", "DEFAULT_LEVELS", "open_lazy", "plane_ranges", "restore_to_zarr"]

#: Output chunk side in pixels (also the Zarr chunk of the output arrays).
DEFAULT_CHUNK = 1024
#: Pyramid levels written (level 0 plus 2x, 4x, ... down-sampled means).
DEFAULT_LEVELS = 3


# ---------------------------------------------------------------------------------------------
# geometry


def chunk_regions(
    length: int, chunk: int, tile: int, overlap: int, pad: int = 0
) -> list[tuple[int, ...]]:
    """Output chunks along one axis and the regions restored for them.

    Parameters
    ----------
    pad : int
        Pixels the restore mirrors beyond each image border (the runner's ``border_pad``;
        0 for RL): the plane's tiles are those of the axis grown by ``pad`` on both sides.

    Returns
    -------
    list of (c0, c1, r0, r1)
        Chunk ``[c0, c1)`` and region ``[r0, r1)``: the union of the grown axis' tiles
        (:func:`piddpm.tiling.axis_starts`) that overlap the chunk, clipped to the image. A
        region that reaches into the mirrored margin takes the whole margin (it then starts at
        0 or ends at ``length``, and only such regions are mirrored), so the region's own
        tiles, after its mirroring, equal those tiles (it starts on the tile grid).
    """
    from piddpm.tiling import axis_starts

    grown = length + 2 * pad
    starts = axis_starts(grown, tile, overlap)
    t = min(tile, grown)
    out = []
    for c0 in range(0, length, chunk):
        c1 = min(c0 + chunk, length)
        sel = [s for s in starts if s < c1 + pad and s + t > c0 + pad]
        if pad and sel[0] <= pad:  # reaches into the top margin: take all of it, and the
            # image rows it mirrors (rows 1 .. pad)
            sel = [s for s in starts if s <= sel[-1] or s < 2 * pad + 1]
        if pad and sel[-1] + t >= length + pad:  # ... the bottom margin
            sel = [s for s in starts if s >= sel[0] or s + t > length - 1]
        g0, g1 = sel[0], sel[-1] + t
        if [g0 + s for s in axis_starts(g1 - g0, tile, overlap)] != sel:  # pragma: no cover
            raise PiddpmError(f"internal: region {g0}-{g1} does not keep the tile grid")
        out.append((c0, c1, max(g0 - pad, 0), min(g1 - pad, length)))
    return out


def _tiling(kw: dict, entry, psf_np) -> tuple[int, int, int, int]:
    """``(tile, overlap, effective overlap, border pad)`` as :func:`piddpm.restore` resolves
    them."""
    from piddpm.restore.settings import DEFAULT_OVERLAP, DEFAULT_TILE, border_pad_for

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
    return tile, overlap, min(eff, tile - 1), border_pad_for(entry)


# ---------------------------------------------------------------------------------------------
# one chunk (runs in the calling process or on a dask.distributed worker)

_OPENED: dict = {}


def _source(src):
    """The input array of a task: a path opened once per process, or the array itself."""
    if isinstance(src, tuple) and src and src[0] == "path":
        key = src[1:]
        if key not in _OPENED:
            _OPENED.clear()
            _OPENED[key] = open_lazy(src[1], src[2])[0]  # src[2]: the input's own axes
        return _OPENED[key]
    return src


def _run_chunk(task: dict) -> dict:
    """Restore one chunk (its region, then the centre) and write it into the store."""
    from piddpm.restore import restore

    data = _source(task["src"])
    (c0y, c1y, r0y, r1y), (c0x, c1x, r0x, r1x) = task["y"], task["x"]
    height, width = task["plane_shape"]
    idx = tuple(task["idx"])
    region = read_float(data, idx + (slice(r0y, r1y), slice(r0x, r1x)))
    kw = dict(task["kwargs"])
    device = chunk_device(task.get("devices"), kw.get("device"))
    if device is not None:
        kw["device"] = device
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
            origin=(task["noise_plane"], r0y, r0x),
            borders=(r0y == 0, r1y == height, r0x == 0, r1x == width),
            name=at,
            **kw,
        )
    del region
    if task.get("outputs"):  # {name: store}; the probe chunk writes nothing
        import zarr

        keep = (slice(c0y - r0y, c1y - r0y), slice(c0x - r0x, c1x - r0x))
        dest = idx + (slice(c0y, c1y), slice(c0x, c1x))
        for name, store in task["outputs"].items():
            arr = {"mean": res.mean, "std": res.std, "residual": res.residual}[name]
            zarr.open_array(store, path="0", mode="r+")[dest] = arr[keep]
    outputs = ["mean"] + [n for n in ("std", "residual") if getattr(res, n) is not None]
    used = str(res.metadata.get("device", device or "auto"))
    return {"metadata": res.metadata, "outputs": outputs, "ran_on": ran_on(used)}


# ---------------------------------------------------------------------------------------------
# the whole run


def restore_to_zarr(
    input,  # noqa: A002 - the documented name
    output_path: str | os.PathLike,
    *,
    chunk: int = DEFAULT_CHUNK,
    overlap: int | None = None,
    std_path: str | os.PathLike | None = None,
    residual_path: str | os.PathLike | None = None,
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
        The image (:func:`open_lazy`); an OME-Zarr / Zarr store is read chunk by chunk. Its
        T, C, Z axes may be in any order (``ZCYX``): the output has them in ``TCZYX`` order.
    output_path : str or path
        The output store (``.zarr``): NGFF 0.4, Zarr format 2, axes in ``TCZYX`` order; the
        restored mean at ``0`` with ``levels - 1`` coarser levels (2 x 2 means); the
        restore's metadata (provenance) under ``piddpm``.
    chunk : int
        Output chunk side in pixels (the Zarr chunk; default 1024). Each chunk is restored
        with the tiles that reach into it (less than one tile more on each side).
    overlap : int, optional
        Tile overlap in pixels (as :func:`piddpm.restore`'s; default the model's).
    std_path : str or path, optional
        Also write the per-pixel std of the posterior samples (input units; needs
        ``samples >= 2`` and a diffusion model) to this OME-Zarr store, laid out as the
        output's (axes, scale, pyramid, provenance).
    residual_path : str or path, optional
        Also write the data-consistency map ``|A y - x| / (hi - lo)`` (needs a PSF) to this
        OME-Zarr store, laid out as the output's.
    resume : bool
        Continue an interrupted run into the same stores: finished chunks are skipped for
        every output (the settings must be the same); the result equals an uninterrupted
        run's.
    overwrite : bool
        Replace existing stores (refused otherwise, unless ``resume``).
    workers : int, optional
        Run the chunks on a local dask.distributed cluster of this many worker processes.
        With ``device`` ``"auto"`` or ``"cuda"`` and CUDA devices present, worker ``i``
        runs on ``cuda:(i mod number of GPUs)`` (more workers than GPUs share them, which is
        logged).
    cluster : str, optional
        Address of an existing dask.distributed scheduler (``tcp://host:8786``); not with
        ``workers``. A worker with ``CUDA_VISIBLE_DEVICES`` set runs on the first GPU it
        sees, the others one GPU each, round-robin on their host.
    levels : int
        Pyramid levels (default 3).
    axes : str, optional
        Axes of ``input`` (default: the file's, else guessed).
    progress : bool
        A tqdm bar over chunks (with the estimated time left).
    on_chunk : callable, optional
        ``on_chunk(done, total)`` after each chunk is recorded (raising stops the run; the
        stores can then be resumed).
    **restore_kwargs
        Passed to :func:`piddpm.restore` for every chunk (``model``, ``method``, ``psf``,
        ``steps``, ``samples``, ``seed``, ``tile``, ``microscope``, ``device``, ...). The
        residual is made when ``residual_path`` is given; resampling into the model's pixel
        range is refused (it acts on the whole plane). The device each worker's chunks ran on
        is recorded in the provenance (``piddpm.stream.devices``).

    Returns
    -------
    pathlib.Path
        The output store.
    """
    if workers is not None and cluster is not None:
        raise PiddpmError(
            "give workers (a local cluster) or cluster (an existing scheduler), not both"
        )
    if workers is not None:
        _positive(workers, "workers")
    data, axes, pixel_um, where = open_lazy(input, axes)
    paths = {"mean": Path(output_path)}
    paths |= {n: Path(p) for n, p in (("std", std_path), ("residual", residual_path)) if p}
    check_outputs(paths, input, resume, overwrite)
    kw, pixel_um = _restore_settings(restore_kwargs, overlap, pixel_um, where, paths)
    shape = tuple(int(s) for s in data.shape)
    entry, psf_np, perc = _model_and_psf(kw, shape[-2:], pixel_um, where)
    _check_std(paths, kw, entry)
    tile, kw["overlap"], eff, pad = _tiling(kw, entry, psf_np)
    kw["tile"] = tile
    chunk = _positive(chunk, "chunk")
    ys, xs = (chunk_regions(n, chunk, tile, eff, pad) for n in shape[-2:])
    spec = {
        "shape": shape,
        "axes": axes,
        "input_axes": source_axes(data, axes),
        "pixel_um": pixel_um,
        "chunk": chunk,
        "levels": _positive(levels, "levels"),
        "grid": (int(np.prod(shape[:-2])), len(ys), len(xs)),
        "border_pad": pad,
    }
    spec["settings"] = run_settings(where, spec, kw, paths)
    plan = (psf_np, perc, where)
    return _stream(
        input, data, paths, spec, kw, (ys, xs), plan, (workers, cluster, progress, on_chunk)
    )


def _stream(input, data, paths, spec, kw, regions, plan, run) -> Path:  # noqa: A002
    """The run of :func:`restore_to_zarr` once its settings are checked: the whole-plane
    ranges (or the state of a resumed run), the probe chunk and the stores, every chunk, the
    pyramids."""
    out, lead = paths["mean"], spec["shape"][:-2]
    psf_np, perc, where = plan
    workers, cluster, progress, on_chunk = run
    if out.exists():  # resume (check_outputs refused anything else)
        state = stream_state(out)
        check_resumable(paths, state, spec["settings"])
        if state.get("complete"):
            return out
    else:
        state = {"ranges": plane_ranges(data, lead, perc, where)}
        state["steps"] = _rl_steps(data, lead, state["ranges"], kw, psf_np, kw["tile"])
    in_axes = spec["input_axes"]
    src = ("path", str(input), in_axes) if isinstance(input, str | os.PathLike) else data
    tasks = _tasks(src, where, spec, *regions, state, kw)
    if "outputs" not in state:  # new stores: the first chunk, in this process, tells the metadata
        info = _run_chunk(dict(tasks[0], outputs=None, quiet=False))
        meta = _check_probe(info, kw, where, paths, spec["border_pad"])
        meta = provenance(meta, state, spec, where, workers or cluster, paths)
        create_stores(paths, spec, meta, state)
    stores = {n: str(p) for n, p in paths.items()}
    for t in tasks:
        t["outputs"] = stores
    _run_all(paths, tasks, spec["grid"], workers, cluster, progress, on_chunk)
    finish_stores(paths, spec, state)
    return out


def _tasks(src, where, spec, ys, xs, state, kw) -> list[dict]:
    """One task per (plane, chunk row, chunk column), in plane-major (``TCZ``) order; each
    plane's noise is addressed by its index in the input's own axis order."""
    axes, in_axes = spec["axes"], spec["input_axes"]
    lead = spec["shape"][:-2]
    in_lead = tuple(lead[axes.index(a)] for a in in_axes[:-2])
    tasks = []
    for p, idx in enumerate(np.ndindex(*lead)):
        in_idx = tuple(idx[axes.index(a)] for a in in_axes[:-2])
        noise_plane = int(np.ravel_multi_index(in_idx, in_lead)) if lead else 0
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                tasks.append(
                    dict(
                        src=src,
                        where=where,
                        idx=idx,
                        noise_plane=noise_plane,
                        y=y,
                        x=x,
                        plane_shape=(ys[-1][1], xs[-1][1]),
                        range=state["ranges"][p],
                        steps=state["steps"][p] if state["steps"] else None,
                        kwargs=kw,
                        key=(p, i, j),
                        quiet=True,
                    )
                )
    return tasks


def _positive(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise PiddpmError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _restore_settings(kwargs: dict, overlap, pixel_um, where: str, paths) -> tuple[dict, tuple]:
    """The keyword arguments every chunk's restore gets, and the pixel size ``(z, y, x)``."""
    from piddpm.resample import check_pixel_size, file_pixel_size

    bad = {"axes", "intensity_range", "origin", "name", "image", "percentiles_override"}
    bad &= set(kwargs)
    if bad:
        raise PiddpmError(f"restore_to_zarr sets {', '.join(sorted(bad))} itself; do not pass it")
    if kwargs.get("method") == "rl-3d":
        raise PiddpmError("method rl-3d deconvolves whole stacks in 3-D; it cannot be streamed")
    if kwargs.get("residual") and "residual" not in paths:
        raise PiddpmError(
            "residual=True needs residual_path= (the OME-Zarr store of the residual map)"
        )
    kw = dict(kwargs, progress=False, residual="residual" in paths)
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
        crop = read_float(data, idx + (slice(y0, y0 + th), slice(x0, x0 + tw)))
        steps.append(int(rl_iterations(np.clip((crop - lo) / (hi - lo), 0, None), psf_np, tile)))
    return steps


def _check_std(paths: dict, kw: dict, entry) -> None:
    """Refuse a std output the settings cannot give, before the whole-plane pass."""
    if "std" not in paths:
        return
    samples = kw.get("samples") or 1
    if samples < 2:
        raise PiddpmError(
            f"std_path (--uncertainty) {paths['std']} needs samples 2 or more (got {samples}): "
            "the std of one sample is undefined"
        )
    method = "rl" if entry is None else entry.method
    if method in ("rl", "unet"):
        raise PiddpmError(
            f"std_path (--uncertainty) needs a diffusion method; {method} is deterministic"
        )


def _check_probe(info: dict, kw: dict, where: str, paths: dict, pad: int) -> dict:
    """The probe chunk's metadata, checked: no resampling, the planned tiles, every output."""
    meta = info["metadata"]
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
    if int(meta.get("border_pad", 0)) != pad:  # pragma: no cover
        raise PiddpmError(
            f"internal: the chunks were restored with border_pad {meta.get('border_pad')}, "
            f"planned {pad}"
        )
    missing = sorted(set(paths) - set(info["outputs"]))
    if missing:  # pragma: no cover - _check_std and restore() refuse these first
        raise PiddpmError(f"{where}: this restore makes no {', '.join(missing)} output")
    return meta


def _run_all(paths: dict, tasks, grid, workers, cluster, progress, on_chunk) -> None:
    """Run the chunks not yet recorded, in this process or on dask.distributed, recording
    each after its data is written, and where it ran (also when the run is interrupted)."""
    import zarr

    out = paths["mean"]
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
    places: dict[tuple[str, str, str], int] = {}  # (worker, host, device) -> chunks
    assignment: dict = {}  # filled by _run_distributed

    def record(task, info):
        nonlocal n_done
        marks[task["key"]] = 1
        place = info["ran_on"]
        key = (place["worker"], place["host"], place["device"])
        places[key] = places.get(key, 0) + 1
        n_done += 1
        if bar is not None:
            bar.update(1)
        if on_chunk is not None:
            on_chunk(n_done, len(tasks))

    try:
        if workers is None and cluster is None:
            for task in pending:
                record(task, _run_chunk(task))
        else:
            _run_distributed(pending, workers, cluster, record, assignment)
    finally:
        if bar is not None:
            bar.close()
        _record_devices(paths, places, assignment)


def _record_devices(paths: dict, places: dict, assignment: dict) -> None:
    """Add this run's chunks per (worker, host, device) to ``piddpm.stream.devices`` of every
    store (a resumed run adds to the counts), with the run's device assignment."""
    if not places and not assignment:
        return
    import zarr

    for path in paths.values():
        meta = dict(zarr.open_group(str(path), mode="r").attrs.get("piddpm") or {})
        stream = dict(meta.get("stream") or {})
        counts = {
            (d["worker"], d["host"], d["device"]): d["chunks"] for d in stream.get("devices", [])
        }
        for key, n in places.items():
            counts[key] = counts.get(key, 0) + n
        stream["devices"] = [
            {"worker": w, "host": h, "device": d, "chunks": n}
            for (w, h, d), n in sorted(counts.items())
        ]
        if assignment:
            stream["device_assignment"] = assignment
        set_attrs(path, piddpm=dict(meta, stream=stream))


def _assign_devices(client, requested, local: bool) -> tuple[dict[str, str], dict]:
    """The device of every worker (:func:`piddpm.restore.stream_devices.plan_devices`) from
    what each one sees, and its record for the provenance; GPU sharing is logged."""
    req = "auto" if requested is None else str(requested)
    if req not in GPU_REQUESTS:
        return {}, {"rule": f"every worker restores on the requested device {req}"}
    seen = list(client.run(probe_worker).values())
    plan = plan_devices(req, seen, local)
    if not any(d.startswith("cuda") for d in plan.values()):
        rule = f"no worker sees a CUDA device; each resolves device {req} itself"
        return {}, {"rule": rule}
    if local:
        rule = (
            "local cluster: worker i on cuda:(i mod G), G the GPUs it sees (the caller's "
            "CUDA_VISIBLE_DEVICES)"
        )
    else:
        rule = (
            "existing cluster: a worker with CUDA_VISIBLE_DEVICES set on the first GPU it "
            "sees (cuda:0), the others round-robin by rank on their host"
        )
    notes = sharing_notes(plan, seen)
    for note in notes:
        log.warning("GPU sharing: %s", note)
    log.info("devices of the workers: %s", ", ".join(f"{n} {d}" for n, d in plan.items()))
    record = {"rule": rule, "workers": plan}
    if notes:
        record["sharing"] = notes
    return plan, record


def _run_distributed(pending, workers, cluster, record, assignment: dict) -> None:
    """The chunks as dask.distributed tasks (a local cluster of ``workers`` processes, or the
    scheduler at ``cluster``), each worker on its own GPU where the device asks for CUDA;
    results are recorded as they complete. ``assignment`` receives the device record."""
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
        if not pending:
            return
        requested = pending[0]["kwargs"].get("device")
        plan, rec = _assign_devices(client, requested, local is not None)
        assignment.update(rec)
        if not isinstance(pending[0]["src"], tuple):
            src = client.scatter(pending[0]["src"], broadcast=False)
            pending = [dict(t, src=src) for t in pending]
        if plan:
            pending = [dict(t, devices=plan) for t in pending]
        futures = {client.submit(_run_chunk, t, pure=False): t for t in pending}
        for fut in as_completed(futures):
            record(futures[fut], fut.result())
    finally:
        client.close()
        if local is not None:
            local.close()
