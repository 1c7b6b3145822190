"""Padding helpers, once: to a network's size multiple, by reflection around an image.

Used by the networks (any input size), the samplers, tiling and restore, and by the blur with
a reflecting boundary. Torch tensors and NumPy arrays as each function says.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from piddpm import PiddpmError

__all__ = [
    "PadInfo",
    "crop_padding",
    "crop_to",
    "mirror_pad_tensor",
    "pad_end_to_multiple",
    "pad_tensor_end_to_multiple",
    "pad_to_multiple",
    "reflect_pad",
]


class PadInfo(NamedTuple):
    """Padding added by :func:`pad_to_multiple`, in pixels: top, bottom, left, right."""

    top: int
    bottom: int
    left: int
    right: int


def pad_to_multiple(
    x: torch.Tensor, multiple: int, mode: str = "reflect"
) -> tuple[torch.Tensor, PadInfo]:
    """Pad the last two axes of ``x`` to multiples of ``multiple``, split evenly on both sides.

    Parameters
    ----------
    x : Tensor (..., H, W)
    multiple : int
        E.g. ``net.downsample_factor``.
    mode : str
        ``"reflect"`` (default; falls back to ``"replicate"`` when a pad would exceed the image
        size minus one, which reflect cannot do) or any mode of ``torch.nn.functional.pad``.

    Returns
    -------
    padded : Tensor (..., H', W')
    info : PadInfo
        Give it to :func:`crop_padding` to recover the original extent.
    """
    if multiple < 1:
        raise PiddpmError(f"pad multiple must be >= 1, got {multiple}")
    if x.ndim < 2:
        raise PiddpmError(f"pad_to_multiple needs a tensor (..., H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    info = PadInfo(ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    if ph == 0 and pw == 0:
        return x, info
    if mode == "reflect" and (max(info.top, info.bottom) >= h or max(info.left, info.right) >= w):
        mode = "replicate"
    lead = x.shape[:-2]
    x4 = x.reshape(-1, 1, h, w)
    out = F.pad(x4, (info.left, info.right, info.top, info.bottom), mode=mode)
    return out.reshape(*lead, h + ph, w + pw), info


def crop_padding(x: torch.Tensor, info: PadInfo) -> torch.Tensor:
    """Remove the padding recorded in ``info`` from the last two axes of ``x``."""
    h, w = x.shape[-2:]
    return x[..., info.top : h - info.bottom, info.left : w - info.right]


def pad_end_to_multiple(batch: np.ndarray, factor: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad the last two axes of a NumPy array up to a multiple of ``factor``, at the
    bottom/right (so a tile keeps its position in the plane).

    Parameters
    ----------
    batch : numpy.ndarray ``(..., H, W)``
    factor : int
        The network's down-sampling factor (e.g. 8 for three 2x poolings).

    Returns
    -------
    padded : numpy.ndarray ``(..., H', W')``
        ``H' = ceil(H / factor) * factor`` (same for W); mirror reflection (repeated if the
        pad exceeds the size; a 1-pixel axis is replicated), so no zero edges appear.
    size : (int, int)
        The original ``(H, W)``, for :func:`crop_to`.
    """
    h, w = batch.shape[-2:]
    factor = max(int(factor), 1)
    ph, pw = (-h) % factor, (-w) % factor
    if ph == 0 and pw == 0:
        return batch, (h, w)
    lead = [(0, 0)] * (batch.ndim - 2)
    out = batch
    for axis_pad, length, last in (((0, ph), h, False), ((0, pw), w, True)):
        if axis_pad[1] == 0:
            continue
        pad = lead + ([(0, 0), axis_pad] if last else [axis_pad, (0, 0)])
        # a 1-pixel axis cannot be mirrored: replicate it instead
        out = np.pad(out, pad, mode="reflect" if length > 1 else "edge")
    return out, (h, w)


def pad_tensor_end_to_multiple(
    x: torch.Tensor, factor: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """:func:`pad_end_to_multiple` for a tensor ``(B, C, H, W)``: reflect padding at the
    bottom/right (edge replication where the image is too small to mirror); returns the
    padded tensor and the original ``(H, W)`` for :func:`crop_to`."""
    h, w = x.shape[-2:]
    factor = max(int(factor), 1)
    ph, pw = (-h) % factor, (-w) % factor
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def crop_to(batch, size: tuple[int, int]):
    """Crop the last two axes of an array or tensor to ``size = (H, W)`` (top-left)."""
    return batch[..., : size[0], : size[1]]


def reflect_pad(x: torch.Tensor, pad_y: int, pad_x: int) -> torch.Tensor:
    """Extend a batch ``(B, C, H, W)`` by ``pad_y`` / ``pad_x`` pixels on each side, by mirror
    reflection (edge replication where the image is too small to mirror)."""
    h, w = x.shape[-2:]
    mode = "reflect" if (pad_y < h and pad_x < w) else "replicate"
    return F.pad(x, (pad_x, pad_x, pad_y, pad_y), mode=mode)


def mirror_pad_tensor(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Extend ``x`` (``(..., H, W)``) by ``pads`` = (top, bottom, left, right) pixels by mirror
    reflection about the edge pixels; a side longer than the image minus one is reflected in
    steps (each step mirrors the array extended so far), a single pixel is repeated."""
    top, bottom, left, right = (int(p) for p in pads)
    lead = x.shape[:-2]
    x = x.reshape((-1, 1) + tuple(x.shape[-2:]))
    for axis, (a, b) in ((-2, (top, bottom)), (-1, (left, right))):
        while a > 0 or b > 0:
            n = x.shape[axis]
            if n < 2:
                step_a, step_b, mode = a, b, "replicate"
            else:
                step_a, step_b, mode = min(a, n - 1), min(b, n - 1), "reflect"
            width = (0, 0, step_a, step_b) if axis == -2 else (step_a, step_b, 0, 0)
            x = F.pad(x, width, mode=mode)
            a, b = a - step_a, b - step_b
    return x.reshape(lead + tuple(x.shape[-2:]))
