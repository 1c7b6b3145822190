"""Training data: the deterministic dataset, its per-rank batch stream, and batch reuse
with dihedral transforms."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from piddpm import PiddpmError
from piddpm.config import TrainConfig, make_ranges
from piddpm.training.components import mix_seed
from piddpm.training.distributed import DistInfo


def make_dataset(
    cfg: TrainConfig, *, size: int, length: int, seed: int, n_kernels: int | None = None
):
    """A :class:`piddpm.data.PairedDataset` for the configuration's data section.

    Item ``i`` is a function of ``(seed, i)`` only; the PSF bank (``n_kernels`` random
    microscopes, default ``cfg.data.n_kernels``) is drawn from ``seed`` and cached on disk.
    """
    from piddpm.data import PairedDataset

    kwargs: dict[str, Any] = dict(cfg.data.dataset_kwargs)
    if cfg.data.images_dir is not None:
        kwargs["images_dir"] = cfg.data.images_dir
    if cfg.data.psf_file is not None:
        from piddpm.data.measured_bank import MeasuredPSFBank

        kwargs["bank"] = MeasuredPSFBank(
            cfg.data.psf_file, make_ranges(cfg.data), n_kernels or cfg.data.n_kernels,
            kernel_size=cfg.data.psf_size, seed=seed,
        )  # fmt: skip
    try:
        return PairedDataset(
            size=size,
            length=length,
            specimens=cfg.data.specimens,
            ranges=make_ranges(cfg.data),
            seed=seed,
            n_kernels=n_kernels or cfg.data.n_kernels,
            kernel_size=cfg.data.psf_size,
            normalisation=cfg.data.normalisation,
            field_factor=cfg.data.field_factor,
            **kwargs,
        )
    except TypeError as err:  # an unknown dataset_kwargs key
        raise PiddpmError(f"data.dataset_kwargs: {err}") from None


class StreamBatches(torch.utils.data.Sampler):
    """Batches of dataset indices for steps ``start .. stop - 1`` of one rank.

    Step ``s``, rank ``r`` of ``W``, batch size ``B`` -> indices ``(s W + r) B + [0, B)``:
    the stream is sharded by rank and continues where a resumed run left off.
    """

    def __init__(self, start: int, stop: int, batch_size: int, dist: DistInfo):
        self.start, self.stop, self.batch_size, self.dist = start, stop, batch_size, dist

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        b, w, r = self.batch_size, self.dist.world_size, self.dist.rank
        for s in range(self.start, self.stop):
            first = (s * w + r) * b
            yield list(range(first, first + b))


def step_batches(loader, start: int, total: int, cfg: TrainConfig, dev, rank: int):
    """The batch of each optimiser step ``start .. total - 1``.

    With ``cfg.batch_reuse = K`` each loaded batch serves K consecutive steps (a resumed run
    starting mid-batch uses it for the remaining ones); reuse ``r > 0`` applies the dihedral
    transform chosen by ``(seed, step, rank)``.
    """
    reuse, step = cfg.batch_reuse, start
    for loaded in loader:
        loaded = to_device(loaded, dev, cfg.channels_last)
        for _ in range(reuse - step % reuse):
            if step >= total:
                return
            if step % reuse == 0:
                yield loaded
            else:
                yield dihedral(loaded, mix_seed(cfg.seed, step, rank, 2) % 8)
            step += 1


def dihedral(batch: dict, op: int) -> dict:
    """Apply one of the 8 rotations/flips (``op`` in 0..7) to every image and PSF of a batch
    (its 4-D ``(B, C, H, W)`` tensors; other entries are passed on unchanged).

    The same transform of image and kernel commutes with (periodic) convolution for a kernel
    centred on its middle pixel, so ``observed_clean = A(gt)`` stays exact.
    """
    if not 0 <= op < 8:
        raise ValueError(f"dihedral op {op} must be in 0..7")
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v) and v.ndim == 4:
            t = torch.rot90(v, op % 4, dims=(-2, -1))
            if op >= 4:
                t = torch.flip(t, dims=(-1,))
            if v.is_contiguous(memory_format=torch.channels_last):
                t = t.contiguous(memory_format=torch.channels_last)
            out[k] = t
        else:
            out[k] = v
    return out


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    """A batch's tensors as float32 on ``device`` (images channels_last if asked)."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True).float()
            if channels_last and v.ndim == 4 and k != "psf":
                v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        else:
            out[k] = v
    return out


def stack_samples(ds, n: int) -> dict[str, torch.Tensor]:
    """The first ``n`` items of a dataset stacked into one batch (gt, observed, psf...)."""
    items = [ds[i] for i in range(n)]
    return {
        k: torch.stack([it[k] for it in items]) for k in ("gt", "observed", "observed_clean", "psf")
    }
