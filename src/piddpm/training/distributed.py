"""Where the process runs: its place in a ``torchrun`` job, its device, and the
collectives the loop needs (a time limit all ranks agree on, the weight spread)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from piddpm import PiddpmError

# --------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class DistInfo:
    """The process's place in a ``torchrun`` job (``world_size == 1`` without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that writes files)."""
        return self.rank == 0


def dist_from_env() -> DistInfo:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as set by ``torchrun``."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise PiddpmError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {err}") from None
    if world < 1 or not 0 <= rank < world:
        raise PiddpmError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def resolve_device(device: str = "auto", dist: DistInfo | None = None) -> torch.device:
    """Map ``auto | cpu | cuda | cuda:N`` to a device (``cuda:LOCAL_RANK`` under torchrun)."""
    dist = dist or DistInfo()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PiddpmError(f"device {device!r} requested but CUDA is not available")
        if device == "cuda":
            device = f"cuda:{dist.local_rank % torch.cuda.device_count()}"
        dev = torch.device(device)
        torch.cuda.set_device(dev)
        return dev
    if device != "cpu":
        raise PiddpmError(f"device must be auto, cpu, cuda or cuda:N (got {device!r})")
    return torch.device("cpu")


def time_is_up(local: bool, dist: DistInfo, dev) -> bool:
    """Whether the time budget is spent, agreed by all ranks (any rank's clock decides)."""
    if not dist.enabled:
        return local
    flag = torch.tensor([1.0 if local else 0.0], device=dev)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item() > 0)


def weight_spread(net: nn.Module) -> float:
    """Largest elementwise difference of the parameters between ranks (0 = in sync)."""
    flat = torch.cat([p.detach().float().flatten() for p in net.parameters()])
    hi, lo = flat.clone(), flat.clone()
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    return float((hi - lo).max())
