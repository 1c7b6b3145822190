"""Shared input handling of the metrics: tensors in float64, shape checks, output types."""

from __future__ import annotations

import numpy as np
import torch

from piddpm import PiddpmError


def _to_tensor(x, name: str) -> tuple[torch.Tensor, str]:
    """Return ``(float64 tensor, kind)`` with kind ``"numpy"`` or ``"torch"``."""
    if isinstance(x, torch.Tensor):
        kind = "torch"
        t = x
    elif isinstance(x, np.ndarray | list | tuple | float | int | np.generic):
        kind = "numpy"
        arr = np.asarray(x)
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        ):
            raise PiddpmError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(arr if arr.flags.c_contiguous else arr.copy(order="C"))
    else:
        raise PiddpmError(
            f"{name}: expected a numpy.ndarray or torch.Tensor, got {type(x).__name__}"
        )
    if t.is_complex():
        raise PiddpmError(f"{name}: expected a real-valued image, got dtype {t.dtype}")
    t = t.to(torch.float64)
    return t, kind


def _check_image(t: torch.Tensor, name: str, min_side: int = 1) -> None:
    if t.ndim < 2:
        raise PiddpmError(
            f"{name}: expected an image of shape (..., H, W), got shape {tuple(t.shape)}"
        )
    if min(t.shape[-2:]) < min_side:
        raise PiddpmError(
            f"{name}: image sides must be at least {min_side} px, got {tuple(t.shape[-2:])}"
        )
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise PiddpmError(f"{name}: contains NaN or infinite values")


def _pair(pred, ref, min_side: int = 1) -> tuple[torch.Tensor, torch.Tensor, str]:
    p, kind = _to_tensor(pred, "pred")
    r, _ = _to_tensor(ref, "ref")
    _check_image(p, "pred", min_side)
    _check_image(r, "ref", min_side)
    if p.shape != r.shape:
        raise PiddpmError(
            f"pred and ref must have the same shape, got {tuple(p.shape)} and {tuple(r.shape)}"
        )
    if p.device != r.device:
        r = r.to(p.device)
    return p, r, kind


def _wrap(values: torch.Tensor, kind: str):
    """Per-image values of shape ``batch_shape`` -> float, ndarray or tensor."""
    if values.ndim == 0:
        return float(values)
    if kind == "numpy":
        return values.detach().cpu().numpy()
    return values


def _wrap_image(img: torch.Tensor, kind: str):
    if kind == "numpy":
        return img.detach().cpu().numpy()
    return img


def _data_range(
    ref: torch.Tensor, data_range, batch_shape: torch.Size, name: str = "data_range"
) -> torch.Tensor:
    """Per-image data range, shape ``batch_shape``; default ``ref.max() - ref.min()``."""
    if data_range is None:
        flat = ref.reshape(*batch_shape, -1)
        dr = flat.amax(-1) - flat.amin(-1)
        if bool((dr <= 0).any()):
            raise PiddpmError(
                "data_range: a reference image is constant (max - min = 0), so the default "
                "data range is zero; pass data_range explicitly"
            )
        return dr
    dr, _ = _to_tensor(data_range, name)
    dr = dr.to(ref.device)
    try:
        dr = torch.broadcast_to(dr, batch_shape)
    except RuntimeError as err:
        raise PiddpmError(
            f"{name}: shape {tuple(dr.shape)} does not broadcast to the batch shape "
            f"{tuple(batch_shape)}"
        ) from err
    if not bool(torch.isfinite(dr).all()) or bool((dr <= 0).any()):
        raise PiddpmError(f"{name}: must be finite and > 0, got {data_range!r}")
    return dr.clone()
