"""The one intensity rule shared by training and restore: a plane's percentiles -> [-1, 1].

Training pairs and real planes go through the same map, computed by the same function
(:func:`intensity_range`), so that a patch seen in training and a tile seen at restore time
sit at the same place of the model's intensity scale:

* **restore** computes ``(lo, hi)`` once per whole plane and cuts tiles afterwards;
* **training** (``data.normalisation: percentile`` with ``data.field_factor > 1``) simulates a
  field several times the patch area, computes ``(lo, hi)`` on the whole noisy field and cuts
  the patch afterwards. Background-only, dim and partly saturated patches (values below -1 or
  above 1) then occur in training exactly as tiles of a real plane do at restore time.

The map is ``x_n = 2 (x - lo) / (hi - lo) - 1`` and its inverse ``x = (x_n + 1) (hi - lo) / 2
+ lo``; values outside ``[lo, hi]`` are kept, not clipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from piddpm import PiddpmError

__all__ = [
    "DEFAULT_PERCENTILES",
    "MAX_PERCENTILE_SAMPLES",
    "check_percentiles",
    "intensity_range",
    "affine_map",
    "to_model_units",
    "from_model_units",
]

#: Percentiles of a plane (or training field) mapped to -1 and +1.
DEFAULT_PERCENTILES: tuple[float, float] = (0.1, 99.9)
#: Above this many pixels the percentiles are computed on a regular subsample (stride grid):
#: 4 M pixels keep the 0.1 % percentile to within a few hundred samples of the exact rank.
MAX_PERCENTILE_SAMPLES = 1 << 22


def check_percentiles(p: Any) -> tuple[float, float]:
    """``(low, high)`` as floats with ``0 <= low < high <= 100``, or a clear error."""
    try:
        lo, hi = (float(v) for v in p)
    except (TypeError, ValueError) as err:
        raise PiddpmError(f"percentiles must be two numbers (low, high), got {p!r}") from err
    if not (0.0 <= lo < hi <= 100.0):
        raise PiddpmError(f"percentiles must satisfy 0 <= low < high <= 100, got {p!r}")
    return lo, hi


def _as_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor
        return values.detach().to("cpu").double().numpy()
    return np.asarray(values)


def intensity_range(
    values: Any,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    *,
    max_samples: int = MAX_PERCENTILE_SAMPLES,
) -> tuple[float, float]:
    """The intensities ``(lo, hi)`` that the model maps to -1 and +1.

    Parameters
    ----------
    values : array-like or torch.Tensor
        A whole plane (restore) or a whole simulated field (training); any shape.
    percentiles : (float, float)
        ``(0, 100)`` is min-max; the default ``(0.1, 99.9)`` is its robust version.
    max_samples : int
        Larger inputs are subsampled on a regular grid (every k-th pixel) before the
        percentiles are taken; the result is deterministic.

    Returns
    -------
    (lo, hi) : (float, float)
        ``hi > lo`` always: a flat input gets a tiny positive span (it stays flat, at -1).
    """
    p = check_percentiles(percentiles)
    flat = _as_numpy(values).reshape(-1)
    if flat.size == 0:
        raise PiddpmError("cannot compute the intensity range of an empty image")
    if flat.size > max_samples:
        flat = flat[:: int(np.ceil(flat.size / max_samples))]
    flat = flat.astype(np.float64, copy=False)
    if not np.isfinite(flat).all():
        raise PiddpmError("image contains NaN or infinite values; the intensity range is undefined")
    if p == (0.0, 100.0):
        lo, hi = float(flat.min()), float(flat.max())
    else:
        lo, hi = (float(v) for v in np.percentile(flat, p))
    if not hi > lo:  # flat (or nearly flat): any positive span keeps it flat
        hi = lo + max(1e-6 * abs(lo), 1e-12)
    return lo, hi


def affine_map(lo: float, hi: float) -> tuple[float, float]:
    """``(a, b)`` with ``a lo + b = -1`` and ``a hi + b = 1``."""
    span = max(float(hi) - float(lo), 1e-12)
    a = 2.0 / span
    return a, -1.0 - a * float(lo)


def to_model_units(x, lo: float, hi: float):
    """``2 (x - lo) / (hi - lo) - 1`` (arrays or tensors; not clipped)."""
    a, b = affine_map(lo, hi)
    return x * a + b


def from_model_units(x_n, lo: float, hi: float):
    """Inverse of :func:`to_model_units`."""
    a, b = affine_map(lo, hi)
    return (x_n - b) / a
