"""Input checks of :func:`piddpm.restore`: the image, its axes and dtype, the device, and
the scalar options; each check names the image, the value and what is expected."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from piddpm import PiddpmError

__all__ = [
    "MIN_PLANE_SIZE",
    "ImageInput",
    "check_choice",
    "check_dtype",
    "check_int",
    "read_input",
    "resolve_axes",
    "resolve_device",
]

#: Smallest plane (pixels per side) that restore accepts.
MIN_PLANE_SIZE = 8


def resolve_device(device: str | None = "auto"):
    """``"auto"`` -> CUDA if available, else Apple MPS, else CPU; other strings are checked.

    Returns
    -------
    torch.device
    """
    import torch

    name = "auto" if device is None else str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise PiddpmError(f"device {name!r} is not valid; expected auto, cpu, cuda or mps") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PiddpmError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise PiddpmError(f"device {name!r} requested but Apple MPS is not available")
    return dev


def input_kind(image) -> str:
    mod = type(image).__module__
    if isinstance(image, np.ndarray):
        return "numpy"
    if mod.startswith("torch"):
        return "torch"
    if mod.startswith("dask"):
        return "dask"
    if isinstance(image, str | Path):
        return "path"
    return "array"


def check_dtype(dtype, where: str) -> None:
    kind = np.dtype(dtype).kind if not hasattr(dtype, "is_complex") else None
    if kind is None:  # torch dtype
        import torch

        if dtype.is_complex:
            kind = "c"
        elif dtype == torch.bool:
            kind = "b"
        elif dtype.is_floating_point:
            kind = "f"
        else:
            kind = "i"
    if kind == "c":
        raise PiddpmError(
            f"{where} has complex dtype {dtype}; expected real intensities (take the "
            "magnitude or the real part first)"
        )
    if kind == "b":
        raise PiddpmError(
            f"{where} has boolean dtype (a mask?); expected intensities (integer or float)"
        )
    if kind not in "iuf":
        raise PiddpmError(f"{where} has unsupported dtype {dtype}; expected integer or float")


def resolve_axes(shape: tuple[int, ...], axes: str | None, where: str) -> str:
    from piddpm.io import check_axes

    if axes is None:
        ndim = len(shape)
        if ndim < 2:
            raise PiddpmError(f"{where} has shape {shape}; expected at least 2 dimensions (Y, X)")
        if ndim == 3 and shape[-1] in (3, 4) and min(shape[:2]) >= MIN_PLANE_SIZE:
            raise PiddpmError(
                f"{where} has shape {shape}, which looks like an RGB(A) colour image; piddpm "
                "restores grey images: convert it to grey, or pass axes='YXC' to restore each "
                "colour as a separate channel"
            )
        lead = "TCZ"[3 - (ndim - 2) :] if ndim <= 5 else None
        if lead is None:
            raise PiddpmError(
                f"{where} has {ndim} dimensions; pass axes= (letters from T, C, Z, Q, Y, X)"
            )
        axes = lead + "YX"
    axes = check_axes(axes, len(shape), where)
    if "S" in axes:
        raise PiddpmError(
            f"{where} is a colour (RGB) image (axes {axes!r}); piddpm restores grey images: "
            "convert it to grey (e.g. Fiji: Image > Type > 8-bit), or pass --axes with C in "
            f"place of S (e.g. {axes.replace('S', 'C')!r}) to restore each colour separately"
        )
    return axes


def check_int(value, name: str, minimum: int | None = None):
    """``value`` as an int (``None`` passes), or a one-line error naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or (minimum is not None and value < minimum):
        kind = "a positive integer" if minimum == 1 else "an integer"
        raise PiddpmError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def check_choice(label: str, value, allowed: tuple[str, ...]) -> None:
    """Refuse a ``value`` (unless None) that is not among ``allowed``."""
    if value is not None and value not in allowed:
        raise PiddpmError(f"{label} {value!r} is not known; expected one of {', '.join(allowed)}")


@dataclass
class ImageInput:
    """The image to restore, checked: data (any array kind), axes ending in ``YX``."""

    data: object
    kind: str
    axes: str
    where: str
    file_pixel_um: float | None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def plane_shape(self) -> tuple[int, int]:
        return self.shape[-2], self.shape[-1]

    def plane(self, idx: tuple[int, ...]) -> np.ndarray:
        """The 2-D plane at leading index ``idx`` as float32 NumPy; non-finite values refused."""
        sub = self.data[idx] if idx else self.data
        if self.kind == "torch":
            sub = sub.detach().cpu().numpy()
        plane = np.asarray(sub).astype(np.float32, copy=False)
        finite = np.isfinite(plane)
        if not finite.all():
            bad = int(plane.size - finite.sum())
            names = self.axes[:-2]
            at = (
                " (plane " + ", ".join(f"{a}={i}" for a, i in zip(names, idx, strict=True)) + ")"
                if idx
                else ""
            )
            raise PiddpmError(
                f"{self.where} contains {bad} NaN or infinite value(s){at}; replace them "
                "(e.g. by 0 or the background level) before restoring"
            )
        return plane


def read_input(image, axes: str | None, name: str | None) -> ImageInput:
    """Read (a path) or wrap (an array) the image and check its dtype, axes and plane size."""
    from piddpm.io import Image, read_image

    kind = input_kind(image)
    where = name or (str(image) if kind == "path" else "image")
    file_pixel_um = None
    if kind == "path" or isinstance(image, Image):
        if isinstance(image, Image):
            where = name or (str(image.path) if image.path is not None else "image")
            img = image
        else:
            img = read_image(image, axes=axes)
        data, axes = img.data, axes or img.axes
        file_pixel_um = img.pixel_size_um[2] if img.pixel_size_um else None
        kind = "numpy"
    else:
        data = image
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    shape = tuple(int(s) for s in data.shape)
    check_dtype(data.dtype, where)
    axes = resolve_axes(shape, axes, where)
    height, width = shape[-2], shape[-1]
    if height < MIN_PLANE_SIZE or width < MIN_PLANE_SIZE:
        raise PiddpmError(
            f"{where} is {height} x {width} pixels per plane (shape {shape}, axes {axes!r}); "
            f"restore needs at least {MIN_PLANE_SIZE} x {MIN_PLANE_SIZE} pixels (check the axes)"
        )
    return ImageInput(data, kind, axes, where, file_pixel_um)
