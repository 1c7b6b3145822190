"""What a compute device can do fast (shared by training and restoring)."""

from __future__ import annotations

import torch

__all__ = ["bf16_is_fast"]


def bf16_is_fast(device) -> bool:
    """Whether ``device`` computes bf16 natively.

    CUDA with bf16 support, or a CPU with AVX512-BF16 / AMX as oneDNN reports it. Elsewhere
    bf16 is emulated and slower than float32: on this project's AVX2-only AMD EPYC a ``tiny``
    PI-DDPM training step took 4.8 s in bf16 autocast against 0.7 s in float32 (mean of a
    4,400-step run).

    Parameters
    ----------
    device : str or torch.device

    Returns
    -------
    bool
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False
