"""Band-limited resampling of planes onto the pixel size a learned model was trained for.

A learned model knows the pixel sizes of its training data, in units of the Nyquist pixel
``lambda_em / (4 NA)`` (``data.ranges.pixel_nyquist_factor`` in its model.json). A plane whose
sampling lies outside that range is resampled into it, restored, and resampled back:
:func:`sampling_plan` picks the target, :func:`fourier_resample` does the band-limited
interpolation (the periodic sinc of a mirror-extended plane, so the image is treated as
band-limited, as an optical image is, and its borders do not wrap).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from piddpm import PiddpmError

__all__ = [
    "PLAUSIBLE_PIXEL_UM",
    "SamplingPlan",
    "check_pixel_size",
    "file_pixel_size",
    "fourier_resample",
    "sampling_plan",
]

#: Pixel sizes (in the sample, micrometres) that a light microscope can produce: from
#: super-resolution reconstructions (~5 nm) to low-magnification overviews (~20 um).
PLAUSIBLE_PIXEL_UM = (0.005, 20.0)


def check_pixel_size(pixel_um: float, where: str, source: str = "--pixel-um") -> float:
    """``pixel_um`` as a float if a microscope can produce it, else a one-line error."""
    try:
        value = float(pixel_um)
    except (TypeError, ValueError):
        raise PiddpmError(f"{where}: pixel size {pixel_um!r} is not a number") from None
    lo, hi = PLAUSIBLE_PIXEL_UM
    if not (np.isfinite(value) and lo <= value <= hi):
        raise PiddpmError(
            f"{where}: pixel size {value:g} um ({source}) is not a microscope's (expected "
            f"{lo:g}-{hi:g} um in the sample); give the right one with --pixel-um"
        )
    return value


def file_pixel_size(value: float | None, where: str) -> float | None:
    """A pixel size read from a file, or None (with a warning) if no microscope gives it
    (e.g. a TIFF stating 10 pixels per inch reads as 2,540 um)."""
    if value is None:
        return None
    lo, hi = PLAUSIBLE_PIXEL_UM
    if lo <= float(value) <= hi:
        return float(value)
    import warnings

    warnings.warn(
        f"{where}: the file states {float(value):g} um pixels, which no microscope gives; "
        "ignored (give --pixel-um)",
        UserWarning,
        stacklevel=3,
    )
    return None


@dataclass(frozen=True)
class SamplingPlan:
    """How a plane is resampled for a model.

    Attributes
    ----------
    nyquist_factor : float
        The plane's pixel size over the Nyquist pixel ``lambda_em / (4 NA)``.
    target_factor : float
        The factor after resampling (inside the model's range).
    zoom : float
        ``nyquist_factor / target_factor``: > 1 up-samples (coarse pixels), < 1 down-samples.
    model_pixel_um : float
        The pixel size the model sees.
    """

    nyquist_factor: float
    target_factor: float
    zoom: float
    model_pixel_um: float

    @property
    def resamples(self) -> bool:
        return abs(self.zoom - 1.0) > 1e-6


def sampling_plan(
    pixel_um: float, na: float, em_nm: float, model_range: tuple[float, float]
) -> SamplingPlan:
    """The resampling that brings ``pixel_um`` into ``model_range`` (in Nyquist units).

    A pixel size inside the range is kept (zoom 1); outside, the nearest end of the range is
    the target.
    """
    if not (na > 0 and em_nm > 0 and pixel_um > 0):
        raise PiddpmError(
            f"sampling plan needs positive NA, emission and pixel size, got "
            f"{na}, {em_nm}, {pixel_um}"
        )
    lo, hi = (float(v) for v in model_range)
    nyq_um = em_nm * 1e-3 / (4.0 * na)
    factor = pixel_um / nyq_um
    target = min(max(factor, lo), hi)
    return SamplingPlan(factor, target, factor / target, target * nyq_um)


def _axis_matrix(n: int, n_out: int, pad: int) -> tuple[np.ndarray, int, int]:
    """Interpolation matrix ``(n_out, m)`` on a mirror-extended axis of odd length ``m``.

    Row ``k`` is the periodic sinc (Dirichlet kernel) of the extended axis, band-limited to
    the coarser of the two grids, evaluated at the output pixel centre
    ``(k + 1/2) n / n_out - 1/2`` (pixel centres of both grids align on the axis' ends).
    """
    pad = min(pad, n - 1)
    before, after = pad, pad + (1 if (n + 2 * pad) % 2 == 0 else 0)
    if after > n - 1:  # a tiny axis: give up one mirrored pixel instead
        after -= 1 if (n + before + after - 1) % 2 else 0
    m = n + before + after
    zoom = n_out / n
    bands = m if zoom >= 1 else max(int(round(m * zoom)), 1)
    bands -= 1 - bands % 2  # odd: symmetric around the zero frequency
    x = before + (np.arange(n_out) + 0.5) / zoom - 0.5
    t = x[:, None] - np.arange(m)[None, :]
    den = m * np.sin(np.pi * t / m)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(np.abs(den) < 1e-12, bands / m, np.sin(np.pi * bands * t / m) / den)
    return k, before, after


def fourier_resample(plane: np.ndarray, shape: tuple[int, int], pad: int = 16) -> np.ndarray:
    """Resample a 2-D plane to ``shape`` by band-limited (Fourier / periodic-sinc) interpolation.

    Parameters
    ----------
    plane : ndarray (H, W)
    shape : (int, int)
        Output shape; the zoom per axis is ``shape / (H, W)``.
    pad : int
        Mirror extension (pixels) of the plane, so opposite borders do not bleed into each
        other through the periodic kernel.

    Returns
    -------
    ndarray (shape), float32
        Band-limited interpolation; a constant stays constant. Up-sampling then down-sampling
        back returns the plane (to about 1e-3 of its range away from the borders); down-sampling
        removes what the coarser grid cannot carry (ideal low-pass). Cost: two dense matrix
        products, ``O(H' H W + H' W W')``.
    """
    a = np.asarray(plane, dtype=np.float64)
    if a.ndim != 2:
        raise PiddpmError(f"fourier_resample needs a 2-D plane, got shape {a.shape}")
    out_h, out_w = (int(v) for v in shape)
    if out_h < 1 or out_w < 1:
        raise PiddpmError(f"resample target shape must be positive, got {shape}")
    if (out_h, out_w) == a.shape:
        return a.astype(np.float32)
    ky, by, ay = _axis_matrix(a.shape[0], out_h, pad)
    kx, bx, ax = _axis_matrix(a.shape[1], out_w, pad)
    ext = np.pad(a, ((by, ay), (bx, ax)), mode="reflect" if min(a.shape) > 1 else "edge")
    return (ky @ ext @ kx.T).astype(np.float32)
