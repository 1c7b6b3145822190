"""Specimens from image files: scikit-image's photographs (``natural``) or a user's folder
(``images``), read, normalised and placed in the field as a raster layer."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from piddpm import PiddpmError
from piddpm.data.specimens._random import _loguniform, _uniform
from piddpm.data.specimens.scene import RasterLayer, Scene

#: File suffixes read from image folders (case-insensitive).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

#: scikit-image's bundled photographs used by ``natural`` (those shipped in the wheel, so
#: available offline; motion-blurred, binary and text images are left out).
_SKIMAGE_NATURAL = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)


def natural_image_files() -> list[Path]:
    """The scikit-image photographs that ship with the installed package (offline)."""
    import skimage.data

    root = Path(skimage.data.__file__).parent
    return [root / name for name in _SKIMAGE_NATURAL if (root / name).is_file()]


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files (tif/tiff/png/jpg/jpeg, any case) directly in ``folder``, sorted.

    Raises
    ------
    PiddpmError
        If the folder does not exist or holds no image file.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise PiddpmError(f"image folder {str(path)!r} does not exist or is not a folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PiddpmError(
            f"image folder {str(path)!r} holds no image file (expected {', '.join(IMAGE_SUFFIXES)})"
        )
    return files


@functools.lru_cache(maxsize=256)
def _read_grey(path: str, mtime: float) -> np.ndarray:
    """Decode an image file to grey float32 planes ``(P, h, w)`` in [0, 1] (cached)."""
    try:
        if path.lower().endswith((".tif", ".tiff")):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode not in ("L", "I", "I;16", "F", "RGB", "RGBA"):
                    im = im.convert("RGB")
                arr = np.asarray(im)
    except Exception as err:  # noqa: BLE001 - any decoder failure is the file's fault
        raise PiddpmError(f"cannot read image file {path!r}: {err}") from err
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float32)
        arr = rgb @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
    arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim < 2 or min(arr.shape[-2:]) < 8:
        raise PiddpmError(
            f"image file {path!r} has shape {arr.shape}; expected a 2-D image of at least 8x8"
        )
    arr = arr.reshape(-1, *arr.shape[-2:])
    lo = np.percentile(arr, 0.1, axis=(1, 2), keepdims=True)
    hi = np.percentile(arr, 99.9, axis=(1, 2), keepdims=True)
    out = np.clip((arr - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0).astype(np.float32)
    if not np.isfinite(out).all() or (hi <= lo).all():
        raise PiddpmError(f"image file {path!r} is constant or not finite; expected a picture")
    return out


def _read_image(path: Path) -> np.ndarray:
    try:
        mtime = path.stat().st_mtime
    except OSError as err:
        raise PiddpmError(f"cannot read image file {str(path)!r}: {err}") from err
    return _read_grey(str(path), mtime)


def _draw_from_files(
    files: Sequence[Path],
    extent_nm: float,
    rng: np.random.Generator,
    crop_fraction: tuple[float, float],
    source_pixel_size_um: float | None,
    zoom_jitter: tuple[float, float],
    name: str,
) -> Scene:
    path = files[int(rng.integers(len(files)))]
    planes = _read_image(path)
    img = planes[int(rng.integers(len(planes)))]
    h, w = img.shape
    if source_pixel_size_um is not None:
        nm_per = source_pixel_size_um * 1000.0 * _uniform(rng, zoom_jitter)
    else:
        # scale-free: the field shows a crop of `crop_fraction` of the image's short side
        nm_per = extent_nm / (_uniform(rng, crop_fraction) * min(h, w))
    angle = 0.5 * np.pi * int(rng.integers(4))
    # place the crop: the source point under the field centre, kept inside the image
    half = 0.5 * extent_nm / nm_per
    ox = _uniform(rng, (-max(w / 2 - half, 0.0), max(w / 2 - half, 0.0)))
    oy = _uniform(rng, (-max(h / 2 - half, 0.0), max(h / 2 - half, 0.0)))
    c, s = math.cos(angle), math.sin(angle)
    # source offset (ox, oy) (relative to its centre) must appear at the field centre
    flip = bool(rng.random() < 0.5)
    ox_eff = -ox if flip else ox
    cx = 0.5 * extent_nm - nm_per * (c * ox_eff - s * oy)
    cy = 0.5 * extent_nm - nm_per * (s * ox_eff + c * oy)
    gamma = _loguniform(rng, (0.7, 1.5))
    return Scene(extent_nm, [RasterLayer(img**gamma, nm_per, (cx, cy), angle, flip)], name)


def draw_natural(
    extent_nm: float,
    rng: np.random.Generator,
    *,
    images_dir: str | os.PathLike | None = None,
    crop_fraction: tuple[float, float] = (0.25, 1.0),
) -> Scene:
    """Grey photographs as a generic texture prior (as the paper's ImageNet pre-training):
    random crop (``crop_fraction`` of the short side), quarter-turn, mirror, gamma 0.7-1.5.
    ``images_dir``: a folder instead of scikit-image's bundled images (e.g. ImageNet)."""
    files = list_image_files(images_dir) if images_dir is not None else natural_image_files()
    if not files:
        raise PiddpmError("no scikit-image sample photographs found; pass images_dir=FOLDER")
    return _draw_from_files(files, extent_nm, rng, crop_fraction, None, (1.0, 1.0), "natural")


def draw_images(
    extent_nm: float,
    rng: np.random.Generator,
    *,
    images_dir: str | os.PathLike | None = None,
    source_pixel_size_um: float | None = None,
    crop_fraction: tuple[float, float] = (0.25, 1.0),
    zoom_jitter: tuple[float, float] = (0.8, 1.25),
) -> Scene:
    """A user's own high-resolution images (SIM, STORM ...) as ground truth.

    With ``source_pixel_size_um`` the images keep their physical scale (times a random zoom
    of ``zoom_jitter``); otherwise the field shows a crop of ``crop_fraction`` of the image.
    """
    if images_dir is None:
        raise PiddpmError("specimen 'images' needs images_dir (a folder of tif/png/jpg files)")
    files = list_image_files(images_dir)
    return _draw_from_files(
        files, extent_nm, rng, crop_fraction, source_pixel_size_um, zoom_jitter, "images"
    )
