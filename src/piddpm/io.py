"""Read and write microscopy images: TIFF / OME-TIFF, PNG / JPEG, Zarr / OME-Zarr.

Conventions (see ``docs/acquisition.md``):

- An image is an :class:`Image`: a NumPy array, an axes string, the pixel size in
  micrometres ``(z, y, x)`` (``None`` where unknown), a metadata dict and its path.
- Axes letters: ``T`` time, ``C`` channel, ``Z`` depth, ``Y``, ``X``, ``S`` colour samples
  (RGB, always last) and ``Q`` for an axis of unknown meaning (e.g. the pages of a plain
  multi-page TIFF: pass ``axes="ZYX"`` to say what it is). The last two spatial axes are
  always ``YX``.
- Writers are atomic (a temporary file or folder next to the target, then a rename: a
  failure leaves nothing behind) and never replace an existing path unless
  ``overwrite=True``. Readers never modify their input.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from piddpm import PiddpmError

__all__ = [
    "AXES_LETTERS",
    "Image",
    "atomic_path",
    "check_axes",
    "read_image",
    "write_image",
    "write_png",
    "write_tiff",
    "write_zarr",
]

#: Axis letters piddpm understands (``Q``: unknown meaning; ``S``: colour samples, last).
AXES_LETTERS = "TCZQYXS"

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
PNG_SUFFIXES = (".png",)
JPEG_SUFFIXES = (".jpg", ".jpeg")
ZARR_SUFFIXES = (".zarr",)

_UNIT_TO_UM = {
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "\\u00b5m": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "å": 1e-4,
    "angstrom": 1e-4,
}
#: Dots-per-inch values that image programs write by default: not a microscope calibration.
_DEFAULT_DPI = (72.0, 96.0, 150.0, 300.0, 600.0)


@dataclass
class Image:
    """An image read from disk.

    Attributes
    ----------
    data : ndarray
        Pixel values in the file's dtype, shape matching ``axes``.
    axes : str
        One letter per dimension of ``data`` from ``AXES_LETTERS`` (e.g. ``"YX"``, ``"ZYX"``,
        ``"CYX"``, ``"TZCYX"``, ``"YXS"`` for RGB).
    pixel_size_um : tuple of (float or None)
        ``(z, y, x)`` voxel size in micrometres; ``None`` where the file does not say.
    metadata : dict
        Format-specific extras (``"format"``, and e.g. ``"description"``, ``"attrs"``).
    path : Path or None
        The file it came from.
    """

    data: np.ndarray
    axes: str
    pixel_size_um: tuple[float | None, float | None, float | None] = (None, None, None)
    metadata: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape


# --------------------------------------------------------------------------------------
# axes and pixel sizes
# --------------------------------------------------------------------------------------
def check_axes(axes: str, ndim: int, where: str | os.PathLike = "data") -> str:
    """Validate an axes string against an array's number of dimensions.

    Parameters
    ----------
    axes : str
        Letters from ``AXES_LETTERS`` (case-insensitive), each at most once, ending in
        ``"YX"`` (or ``"YXS"`` for colour samples).
    ndim : int
        Number of dimensions of the array it describes.
    where : str or path
        Named in error messages (the file).

    Returns
    -------
    str
        The upper-case axes string.
    """
    if not isinstance(axes, str):
        raise PiddpmError(f"{where}: axes must be a string such as 'ZYX', got {axes!r}")
    up = axes.upper()
    bad = sorted({a for a in up if a not in AXES_LETTERS})
    if bad:
        raise PiddpmError(
            f"{where}: unknown axes letter(s) {''.join(bad)!r} in {axes!r}; expected letters "
            f"from {AXES_LETTERS!r} (T time, C channel, Z depth, Q unknown, Y, X, S samples)"
        )
    if len(set(up)) != len(up):
        raise PiddpmError(f"{where}: axes {axes!r} repeat a letter; each axis appears once")
    if len(up) != ndim:
        raise PiddpmError(
            f"{where}: axes {axes!r} has {len(up)} letters but the data has {ndim} "
            f"dimension(s); expected one letter per dimension"
        )
    core = up[:-1] if up.endswith("S") else up
    if "S" in core or not core.endswith("YX"):
        raise PiddpmError(f"{where}: axes {axes!r} must end in 'YX' (or 'YXS' for colour samples)")
    return up


def _unit_scale(unit, where) -> float | None:
    if unit is None:
        return None
    key = str(unit).strip().lower()
    if key in ("", "pixel", "pixels", "px", "none"):
        return None
    if key in _UNIT_TO_UM:
        return _UNIT_TO_UM[key]
    warnings.warn(f"{where}: unknown length unit {unit!r}; pixel size ignored", stacklevel=3)
    return None


def _check_pixel_size(pixel_size_um, where) -> tuple[float | None, float | None, float | None]:
    if pixel_size_um is None:
        return (None, None, None)
    if np.isscalar(pixel_size_um):
        pixel_size_um = (None, pixel_size_um, pixel_size_um)
    ps = tuple(pixel_size_um)
    if len(ps) == 2:
        ps = (None, *ps)
    if len(ps) != 3:
        raise PiddpmError(
            f"{where}: pixel_size_um must be (z, y, x), (y, x) or a number in micrometres, "
            f"got {pixel_size_um!r}"
        )
    out = []
    for v in ps:
        if v is None:
            out.append(None)
            continue
        v = float(v)
        if not np.isfinite(v) or v <= 0:
            raise PiddpmError(
                f"{where}: pixel sizes must be > 0 micrometres, got {pixel_size_um!r}"
            )
        out.append(v)
    return tuple(out)


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------
def _kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir() or name.endswith(ZARR_SUFFIXES) or name.endswith(".zarr/"):
        return "zarr"
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if name.endswith(PNG_SUFFIXES + JPEG_SUFFIXES):
        return "pil"
    raise PiddpmError(
        f"{path}: unsupported file type {path.suffix!r}; expected .tif/.tiff (OME-TIFF), "
        ".png, .jpg/.jpeg or .zarr (OME-Zarr)"
    )


def read_image(path: str | os.PathLike, axes: str | None = None) -> Image:
    """Read a microscopy image with its axes and pixel size.

    Parameters
    ----------
    path : str or path
        A TIFF / OME-TIFF / ImageJ TIFF (``.tif``, ``.tiff``), PNG, JPEG, or a Zarr array /
        OME-Zarr group (a folder, usually ``.zarr``; OME-Zarr: multiscale level 0).
    axes : str, optional
        Override the axes the file declares (same length as the data's dimensions), e.g.
        ``"ZYX"`` for a plain multi-page TIFF that reads as ``"QYX"``.

    Returns
    -------
    Image
        Data in the file's dtype. PNG: greyscale ``"YX"``; palette PNGs whose palette is a
        ramp (``max(R, G, B) == index``, as the GigaDB data) give the index as the grey
        value, other palettes and colour files give ``"YXS"`` (RGB or RGBA).
    """
    p = Path(path)
    if not p.exists():
        raise PiddpmError(f"{p}: no such file or folder")
    kind = _kind(p)
    try:
        if kind == "tiff":
            img = _read_tiff(p)
        elif kind == "pil":
            img = _read_pil(p)
        else:
            img = _read_zarr(p)
    except PiddpmError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is a user-facing error
        raise PiddpmError(
            f"{p}: cannot read the file as {kind.upper()} ({type(err).__name__}: {err}); "
            "it may be truncated or not a valid image"
        ) from err
    img.path = p
    if axes is not None:
        moved = img.metadata.pop("samples_moved_from", None)
        if moved is not None:  # the override describes the file's own dimension order
            img.data = np.moveaxis(img.data, -1, moved)
        img.data, img.axes = _canonical_axes(img.data, axes, p)
        img.metadata["axes_given"] = axes
    else:
        img.metadata.pop("samples_moved_from", None)
        img.axes = check_axes(img.axes, img.data.ndim, p)
    return img


def _canonical_axes(data: np.ndarray, axes: str, where) -> tuple[np.ndarray, str]:
    """Validate user-given axes and move Y, X (and S) last, e.g. ``"YXC"`` -> ``"CYX"``."""
    if not isinstance(axes, str) or len(axes) != data.ndim:
        return data, check_axes(axes, data.ndim, where)  # raises with the precise message
    up = axes.upper()
    if "Y" in up and "X" in up and len(set(up)) == len(up) and "S" not in up[:-1]:
        tail = "YXS" if up.endswith("S") else "YX"
        lead = [a for a in up if a not in tail]
        order = lead + list(tail)
        if order != list(up):
            data = np.transpose(data, [up.index(a) for a in order])
            up = "".join(order)
    return data, check_axes(up, data.ndim, where)


def _tiff_axes(raw: str, where) -> str:
    """Map tifffile's axes letters to piddpm's: other letters become ``Q`` (unknown)."""
    out = "".join(a if a in AXES_LETTERS else "Q" for a in raw.upper())
    if out.count("Q") > 1:
        raise PiddpmError(
            f"{where}: the file's axes {raw!r} have several axes of unknown meaning; "
            "pass axes=... (e.g. 'TZYX') to say what each dimension is"
        )
    return out


def _read_tiff(p: Path) -> Image:
    import tifffile

    with tifffile.TiffFile(p) as tif:
        if not tif.series:
            raise PiddpmError(f"{p}: the TIFF holds no image series")
        series = tif.series[0]
        data = series.asarray()
        raw_axes = series.axes
        meta: dict = {"format": "tiff", "tiff_axes": raw_axes}
        ps: list[float | None] = [None, None, None]
        if tif.is_ome and tif.ome_metadata:
            meta["format"] = "ome-tiff"
            ps, extra = _ome_tiff_pixel_size(tif.ome_metadata, p)
            meta.update(extra)
        elif tif.is_imagej:
            meta["format"] = "imagej-tiff"
            ij = tif.imagej_metadata or {}
            scale = _unit_scale(ij.get("unit"), p)
            if scale is not None:
                page = tif.pages[0]
                ps[1] = _resolution_um(page, "Y", scale, trust_one=True)
                ps[2] = _resolution_um(page, "X", scale, trust_one=True)
                if "spacing" in ij and "Z" in raw_axes:
                    ps[0] = float(ij["spacing"]) * scale
            meta["imagej"] = {
                k: v for k, v in ij.items() if isinstance(v, str | int | float | bool)
            }
        else:
            page = tif.pages[0]
            unit = page.tags.get("ResolutionUnit")
            unit = int(unit.value) if unit is not None else 2
            if unit == 3:  # centimetre
                ps[1] = _resolution_um(page, "Y", 1e4)
                ps[2] = _resolution_um(page, "X", 1e4)
            elif unit == 2:  # inch: unless a program's default dpi
                xres = page.tags.get("XResolution")
                if xres is not None:
                    num, den = xres.value
                    dpi = num / den if den else 0.0
                    if dpi > 0 and round(dpi, 3) not in _DEFAULT_DPI:
                        ps[1] = _resolution_um(page, "Y", 25400.0)
                        ps[2] = _resolution_um(page, "X", 25400.0)
            desc = page.description
            if desc:
                meta["description"] = desc
    axes = _tiff_axes(raw_axes, p)
    if "S" in axes and not axes.endswith("S"):  # planar colour (e.g. 'SYX'): samples last
        meta["samples_moved_from"] = axes.index("S")
        data = np.moveaxis(data, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    return Image(data=data, axes=axes, pixel_size_um=tuple(ps), metadata=meta)


def _resolution_um(page, which: str, unit_um: float, trust_one: bool = False) -> float | None:
    """Pixel size from a TIFF X/YResolution tag (pixels per unit) in micrometres.

    A resolution of exactly 1 pixel per unit is what writers put when nothing is known;
    it counts only where the unit was set explicitly (``trust_one``, ImageJ).
    """
    tag = page.tags.get(f"{which}Resolution")
    if tag is None:
        return None
    num, den = tag.value
    if not num or not den or (num == den and not trust_one):
        return None
    size = unit_um * den / num
    return float(size) if np.isfinite(size) and size > 0 else None


def _ome_tiff_pixel_size(xml: str, where):
    import tifffile

    d = tifffile.xml2dict(xml)
    images = d.get("OME", {}).get("Image", {})
    if isinstance(images, list):
        images = images[0]
    pixels = images.get("Pixels", {})
    ps: list[float | None] = [None, None, None]
    for i, ax in enumerate("ZYX"):
        v = pixels.get(f"PhysicalSize{ax}")
        if v is None:
            continue
        scale = _unit_scale(pixels.get(f"PhysicalSize{ax}Unit", "µm"), where)
        if scale is not None:
            ps[i] = float(v) * scale
    extra = {}
    desc = images.get("Description")
    if isinstance(desc, str) and desc:
        try:
            extra["metadata"] = json.loads(desc)
        except ValueError:
            extra["description"] = desc
    if images.get("Name"):
        extra["name"] = images["Name"]
    return ps, extra


def _read_pil(p: Path) -> Image:
    from PIL import Image as PILImage

    with PILImage.open(p) as im:
        im.load()
        mode = im.mode
        meta = {"format": (im.format or p.suffix.lstrip(".")).lower(), "mode": mode}
        if mode == "P":
            pal = np.asarray(im.getpalette() or [], dtype=np.int64).reshape(-1, 3)
            idx = np.asarray(im)
            used = np.unique(idx)
            ramp = len(pal) > 0 and used.max() < len(pal) and np.all(pal[used].max(axis=1) == used)
            if ramp:  # palette index == intensity (GigaDB)
                data, axes = idx, "YX"
                meta["palette"] = "ramp: index used as intensity"
            else:
                data, axes = np.asarray(im.convert("RGB")), "YXS"
                meta["palette"] = "converted to RGB"
        elif mode in ("L", "I", "F", "I;16", "I;16B", "I;16L"):
            data, axes = np.asarray(im), "YX"
        elif mode == "1":
            data, axes = np.asarray(im).astype(np.uint8), "YX"
        elif mode in ("RGB", "RGBA"):
            data, axes = np.asarray(im), "YXS"
        elif mode == "LA":
            data, axes = np.asarray(im.getchannel(0)), "YX"
        else:
            data, axes = np.asarray(im.convert("RGB")), "YXS"
    return Image(data=np.array(data), axes=axes, pixel_size_um=(None, None, None), metadata=meta)


def _read_zarr(p: Path) -> Image:
    import zarr

    node = zarr.open(str(p), mode="r")
    meta: dict = {"format": "zarr"}
    ps: list[float | None] = [None, None, None]
    if isinstance(node, zarr.Array):
        data = np.asarray(node[...])
        attrs = dict(node.attrs)
        axes = attrs.get("axes") if isinstance(attrs.get("axes"), str) else None
        if axes is None:
            axes = "YX" if data.ndim == 2 else ("QYX" if data.ndim == 3 else None)
        if axes is None:
            raise PiddpmError(
                f"{p}: a plain Zarr array of {data.ndim} dimensions has no axes; pass axes=..."
            )
        meta["attrs"] = attrs
        return Image(data=data, axes=axes, pixel_size_um=tuple(ps), metadata=meta)
    attrs = dict(node.attrs)
    ome = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales")
    if not multiscales:
        arrays = sorted(k for k, _ in node.arrays())
        raise PiddpmError(
            f"{p}: Zarr group without OME 'multiscales' metadata; expected an OME-Zarr image "
            f"or a Zarr array (arrays inside: {arrays[:5]})"
        )
    ms = multiscales[0]
    ds = ms["datasets"][0]
    data = np.asarray(node[ds["path"]][...])
    names = [a["name"] if isinstance(a, dict) else str(a) for a in ms.get("axes", [])]
    if not names:  # OME-Zarr 0.1-0.3: 5D tczyx
        names = list("tczyx")[-data.ndim :]
    axes = "".join(n.upper() if n.upper() in "TCZYX" else "Q" for n in names)
    units = [a.get("unit") if isinstance(a, dict) else None for a in ms.get("axes", [])]
    scale = np.ones(len(names))
    for transforms in (
        ds.get("coordinateTransformations", []),
        ms.get("coordinateTransformations", []),
    ):
        for t in transforms or []:
            if t.get("type") == "scale":
                scale = scale * np.asarray(t["scale"], dtype=float)
    for i, ax in enumerate("ZYX"):
        if ax in axes:
            j = axes.index(ax)
            unit = units[j] if j < len(units) else None
            s = _unit_scale(unit, p) if unit is not None else None
            if s is not None:
                ps[i] = float(scale[j]) * s
    meta.update(format="ome-zarr", attrs={k: v for k, v in attrs.items() if k != "multiscales"})
    if "piddpm" in attrs:
        meta["metadata"] = attrs["piddpm"]
    return Image(data=data, axes=axes, pixel_size_um=tuple(ps), metadata=meta)


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------
def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Write a file or a folder at the yielded path. When the block ends without an error
    the result replaces ``path`` in one rename (``os.replace``; a folder target is moved
    aside first and deleted afterwards); on an error the temporary path is deleted and
    ``path`` is left untouched.

    Parameters
    ----------
    path : str or path
        The final destination. Its folder must exist.
    overwrite : bool
        Allow replacing an existing ``path``; otherwise it raises :class:`PiddpmError`.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise PiddpmError(
            f"{target}: already exists; pass --overwrite (overwrite=True) to replace it"
        )
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise PiddpmError(f"{target}: the folder {parent} does not exist; create it first")
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp" + "".join(target.suffixes), dir=parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # the writer creates it (a file or a folder)
    try:
        yield tmp
        if not tmp.exists():
            raise PiddpmError(f"{target}: nothing was written")
        if target.exists() and (target.is_dir() or tmp.is_dir()):
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=parent))
            aside = trash / "old"
            os.replace(target, aside)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def _to_float32(data, where) -> np.ndarray:
    arr = np.asarray(data.detach().cpu().numpy() if hasattr(data, "detach") else data)
    if arr.dtype.kind not in "biuf":
        raise PiddpmError(f"{where}: cannot write data of dtype {arr.dtype}; expected real numbers")
    return np.ascontiguousarray(arr, dtype=np.float32)


def write_tiff(
    path: str | os.PathLike,
    data,
    *,
    axes: str,
    pixel_size_um=None,
    metadata: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a float32 OME-TIFF atomically.

    Parameters
    ----------
    path : str or path
        Destination (``.tif`` / ``.ome.tif``); must not exist unless ``overwrite``.
    data : ndarray or Tensor
        Image of any real dtype; stored as float32.
    axes : str
        One letter per dimension (see :func:`check_axes`), e.g. ``"YX"``, ``"TCZYX"``.
    pixel_size_um : (z, y, x), (y, x) or float, optional
        Voxel size in micrometres (``None`` entries are left out).
    metadata : dict, optional
        JSON-serialisable extras, stored as JSON in the OME image description and read
        back as ``Image.metadata["metadata"]``.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
    """
    import tifffile

    target = Path(path)
    arr = _to_float32(data, target)
    axes = check_axes(axes, arr.ndim, target)
    ps = _check_pixel_size(pixel_size_um, target)
    ome: dict = {"axes": axes}
    for v, ax in zip(ps, "ZYX", strict=True):
        if v is not None:
            ome[f"PhysicalSize{ax}"] = v
            ome[f"PhysicalSize{ax}Unit"] = "µm"
    if metadata:
        try:
            ome["Description"] = json.dumps(metadata)
        except TypeError as err:
            raise PiddpmError(f"{target}: metadata must be JSON-serialisable ({err})") from None
    with atomic_path(target, overwrite=overwrite) as tmp:
        tifffile.imwrite(
            tmp, arr, ome=True, metadata=ome, photometric="minisblack" if "S" not in axes else "rgb"
        )
    return target


def is_zarr_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a Zarr store (``.zarr`` suffix)."""
    return str(path).rstrip("/\\").lower().endswith(ZARR_SUFFIXES)


def write_image(
    path: str | os.PathLike,
    data,
    *,
    axes: str,
    pixel_size_um=None,
    metadata: dict | None = None,
    overwrite: bool = False,
    default_format: str = "tiff",
) -> Path:
    """Write a float32 image atomically, as OME-Zarr for a ``.zarr`` path and OME-TIFF for a
    ``.tif`` / ``.tiff`` path (:func:`write_zarr`, :func:`write_tiff`).

    Parameters
    ----------
    path, data, axes, pixel_size_um, overwrite :
        As for :func:`write_tiff`.
    metadata : dict, optional
        JSON-serialisable extras: the OME-TIFF description, or the Zarr group's attributes.
    default_format : {"tiff", "zarr"}
        The format of a path with neither suffix.

    Returns
    -------
    Path
    """
    if default_format not in ("tiff", "zarr"):
        raise PiddpmError(f"default_format must be 'tiff' or 'zarr', got {default_format!r}")
    name = str(path).lower()
    tiff = name.endswith(TIFF_SUFFIXES)
    if is_zarr_path(path) or (not tiff and default_format == "zarr"):
        return write_zarr(
            path, data, axes=axes, pixel_size_um=pixel_size_um, attrs=metadata, overwrite=overwrite
        )
    return write_tiff(
        path, data, axes=axes, pixel_size_um=pixel_size_um, metadata=metadata, overwrite=overwrite
    )


def write_zarr(
    path: str | os.PathLike,
    data,
    *,
    axes: str,
    pixel_size_um=None,
    attrs: dict | None = None,
    overwrite: bool = False,
    chunks: tuple[int, ...] | None = None,
) -> Path:
    """Write an OME-Zarr (0.4, one multiscale level, Zarr format 2) image atomically.

    The axes are reordered to the OME-Zarr order ``T, C, Z, Y, X`` (the reader returns
    them in that order). Values are stored as float32.

    Parameters
    ----------
    path : str or path
        Destination folder (``.zarr``); must not exist unless ``overwrite``.
    data : ndarray or Tensor
        Image of any real dtype.
    axes : str
        Letters from ``"TCZYX"``, one per dimension, ending in ``"YX"``.
    pixel_size_um : (z, y, x), (y, x) or float, optional
        Voxel size in micrometres; written as the level-0 ``scale`` transformation.
    attrs : dict, optional
        JSON-serialisable extras, stored under the group attribute ``"piddpm"``.
    overwrite : bool
        Replace an existing folder.
    chunks : tuple, optional
        Chunk shape in the written (OME) order; default one plane of up to 1024 x 1024.
    """
    import zarr

    target = Path(path)
    arr = _to_float32(data, target)
    axes = check_axes(axes, arr.ndim, target)
    if any(a not in "TCZYX" for a in axes):
        raise PiddpmError(f"{target}: OME-Zarr supports the axes T, C, Z, Y, X only; got {axes!r}")
    order = [axes.index(a) for a in "TCZYX" if a in axes]
    arr = np.ascontiguousarray(np.transpose(arr, order))
    axes = "".join(axes[i] for i in order)
    ps = _check_pixel_size(pixel_size_um, target)
    kinds = {"T": "time", "C": "channel"}
    ax_meta = []
    scale = []
    for a in axes:
        entry = {"name": a.lower(), "type": kinds.get(a, "space")}
        if a in "ZYX":
            entry["unit"] = "micrometer"
            v = ps["ZYX".index(a)]
            scale.append(v if v is not None else 1.0)
        else:
            scale.append(1.0)
        ax_meta.append(entry)
    if chunks is None:
        chunks = tuple([1] * (arr.ndim - 2) + [min(arr.shape[-2], 1024), min(arr.shape[-1], 1024)])
    group_attrs = {
        "multiscales": [
            {
                "version": "0.4",
                "name": target.stem,
                "axes": ax_meta,
                "datasets": [
                    {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
                ],
            }
        ]
    }
    if attrs:
        group_attrs["piddpm"] = attrs
    try:
        json.dumps(group_attrs)
    except TypeError as err:
        raise PiddpmError(f"{target}: attrs must be JSON-serialisable ({err})") from None
    with atomic_path(target, overwrite=overwrite) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        a = root.create_array("0", shape=arr.shape, dtype=arr.dtype, chunks=chunks)
        a[...] = arr
        root.attrs.update(group_attrs)
    return target


def write_png(
    path: str | os.PathLike,
    data,
    *,
    value_range: tuple[float, float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a PNG atomically (for previews and figures).

    Parameters
    ----------
    path : str or path
        Destination; must not exist unless ``overwrite``.
    data : ndarray or Tensor, shape (H, W) or (H, W, 3|4)
        uint8 or uint16 data are written as they are. Floating data are mapped linearly
        from ``value_range`` (default: the data's min and max) to 0..255 and clipped: a
        lossy preview, not a measurement.
    value_range : (float, float), optional
        Intensities mapped to 0 and 255 for floating data.
    overwrite : bool
        Replace an existing file.
    """
    from PIL import Image as PILImage

    target = Path(path)
    arr = np.asarray(data.detach().cpu().numpy() if hasattr(data, "detach") else data)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise PiddpmError(f"{target}: PNG data must be (H, W) or (H, W, 3|4), got {arr.shape}")
    if arr.dtype.kind == "f" or arr.dtype.kind == "b":
        arr = arr.astype(np.float64)
        lo, hi = value_range if value_range is not None else (np.nanmin(arr), np.nanmax(arr))
        span = hi - lo if hi > lo else 1.0
        arr = np.clip(np.nan_to_num((arr - lo) / span * 255.0), 0, 255).round().astype(np.uint8)
    elif arr.dtype == np.uint16 and arr.ndim == 2:
        pass
    elif arr.dtype != np.uint8:
        raise PiddpmError(
            f"{target}: PNG supports uint8 (or 2D uint16) or floating data, got {arr.dtype}"
        )
    with atomic_path(target, overwrite=overwrite) as tmp:
        PILImage.fromarray(arr).save(tmp, format="PNG")
    return target
