"""An output store of :mod:`piddpm.restore.stream`: an OME-Zarr (NGFF 0.4, Zarr format 2)
group with one image (the restored mean, or the std or residual map) and its pyramid, the
provenance, and (in the mean's store) the record of finished chunks."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

__all__ = ["DONE_ARRAY", "create_store", "done_marks", "set_attrs", "stream_state", "write_pyramid"]

#: Marker array of finished chunks inside the output store.
DONE_ARRAY = "piddpm_done"


def _multiscales(name: str, axes: str, pixel_um, levels: int) -> dict:
    kinds = {"T": "time", "C": "channel"}
    ax_meta, base = [], []
    for a in axes:
        entry = {"name": a.lower(), "type": kinds.get(a, "space")}
        if a in "ZYX":
            entry["unit"] = "micrometer"
            v = pixel_um["ZYX".index(a)]
            base.append(float(v) if v is not None else 1.0)
        else:
            base.append(1.0)
        ax_meta.append(entry)
    datasets = []
    for level in range(levels):
        f = [2.0**level if a in "YX" else 1.0 for a in axes]
        scale = [b * s for b, s in zip(base, f, strict=True)]
        datasets.append(
            {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        )
    return {
        "version": "0.4",
        "name": name,
        "axes": ax_meta,
        "datasets": datasets,
        "type": "mean",
        "metadata": {"method": "2 x 2 mean in Y, X per level"},
    }


def _level_shapes(shape, levels: int) -> list[tuple[int, ...]]:
    out = [tuple(shape)]
    for _ in range(1, levels):
        prev = out[-1]
        out.append(prev[:-2] + (max(prev[-2] // 2, 1), max(prev[-1] // 2, 1)))
    return out


def create_store(out: Path, spec: dict, record: bool = True) -> None:
    """One output's group and its (empty) pyramid arrays, written in place; with ``record``
    also the marker array of finished chunks."""
    import zarr

    root = zarr.open_group(str(out), mode="w", zarr_format=2)
    chunks = (1,) * (len(spec["shape"]) - 2) + (spec["chunk"], spec["chunk"])
    for level, shape in enumerate(_level_shapes(spec["shape"], spec["levels"])):
        ch = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
        root.create_array(str(level), shape=shape, dtype="float32", chunks=ch, fill_value=np.nan)
    root.attrs["multiscales"] = [
        _multiscales(out.stem, spec["axes"], spec["pixel_um"], spec["levels"])
    ]
    if record:
        n = spec["grid"]
        root.create_array(DONE_ARRAY, shape=n, dtype="uint8", chunks=(1, *n[1:]), fill_value=0)


def stream_state(out: Path) -> dict:
    import zarr

    try:
        return dict(zarr.open_group(str(out), mode="r").attrs).get("piddpm_stream") or {}
    except Exception:  # not a group
        return {}


def write_pyramid(out: Path, levels: int) -> None:
    """Levels 1.. of the mean: 2 x 2 means of the level above, one output chunk at a time
    (a block of the level above is read per chunk, so memory stays bounded)."""
    import zarr

    root = zarr.open_group(str(out), mode="r+")
    for level in range(1, levels):
        src, dst = root[str(level - 1)], root[str(level)]
        h, w = dst.shape[-2:]
        if min(src.shape[-2:]) < 2:
            continue
        ch, cw = dst.chunks[-2:]
        for lead in np.ndindex(*dst.shape[:-2]):
            for y0 in range(0, h, ch):
                for x0 in range(0, w, cw):
                    y1, x1 = min(y0 + ch, h), min(x0 + cw, w)
                    block = np.asarray(src[lead + (slice(2 * y0, 2 * y1), slice(2 * x0, 2 * x1))])
                    block = block.reshape(y1 - y0, 2, x1 - x0, 2).mean(axis=(1, 3))
                    dst[lead + (slice(y0, y1), slice(x0, x1))] = block.astype(np.float32)


def set_attrs(out: Path, **attrs) -> None:
    import zarr

    zarr.open_group(str(out), mode="r+").attrs.update(json.loads(json.dumps(attrs, default=str)))


def done_marks(out: Path, grid) -> np.ndarray:
    import zarr

    try:
        return np.asarray(zarr.open_array(str(out), path=DONE_ARRAY, mode="r")[...]) > 0
    except Exception:  # an unreadable marker (killed while writing it): redo every chunk
        warnings.warn(
            f"{out}: the record of finished chunks is unreadable; redoing all", stacklevel=3
        )
        return np.zeros(grid, bool)
