"""What :func:`piddpm.restore` returns, in the kind of array it was given."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["RestoreResult", "as_input_kind"]


@dataclass
class RestoreResult:
    """What :func:`restore` returns.

    Attributes
    ----------
    mean : array-like, same shape and kind (NumPy / torch / Dask) as the input, float32
        The restored image (the mean of the posterior samples), in the input's intensity
        units.
    std : same kind as ``mean``, or None
        Per-pixel standard deviation of the posterior samples (input intensity units);
        ``None`` unless ``samples > 1`` with a diffusion method.
    residual : numpy.ndarray or None
        Data-consistency map ``|A y - x| / (hi - lo)`` (dimensionless, a fraction of each
        plane's robust intensity range), same shape as the input; ``None`` without a PSF.
    metadata : dict
        How it was made: method, model, sampler, steps, eta, lambda, seed, normalisation,
        PSF, piddpm version, ... (JSON-serialisable).
    """

    mean: Any
    std: Any = None
    residual: Any = None
    metadata: dict = field(default_factory=dict)


def as_input_kind(arr: np.ndarray | None, like, kind: str):
    """``arr`` as the kind of array the input was: NumPy, torch (same device) or Dask."""
    if arr is None:
        return None
    if kind == "torch":
        import torch

        return torch.from_numpy(arr).to(like.device)
    if kind == "dask":
        import dask.array as da

        chunks = getattr(like, "chunksize", None)
        return da.from_array(arr, chunks=chunks if chunks is not None else "auto")
    return arr
