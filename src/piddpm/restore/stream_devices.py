"""GPUs for the dask.distributed workers of :mod:`piddpm.restore.stream`: one GPU per worker.

With ``device="auto"`` or ``"cuda"`` and CUDA devices visible, the chunks of a distributed
run are pinned round-robin, worker by worker:

- **Local cluster** (``workers=N``): worker ``i`` (its dask name) runs on
  ``cuda:(i mod G)``, where ``G`` is the number of GPUs it sees. The workers inherit this
  process's environment, so ``CUDA_VISIBLE_DEVICES`` chooses which GPUs take part.
- **Existing cluster** (``cluster=ADDRESS``): what each worker already sees is respected. A
  worker whose ``CUDA_VISIBLE_DEVICES`` is set was given its GPUs by whoever launched it
  (dask-cuda's ``LocalCUDACluster`` / ``dask cuda worker`` list the worker's own GPU first),
  so it runs on the first one it sees, ``cuda:0``. Without the variable, the workers of each
  host are ranked by name and worker ``r`` of the host runs on ``cuda:(r mod G)``.

Any other device (``cpu``, ``mps``, an explicit ``cuda:N``) is passed to every chunk as given.
When more workers than GPUs share a host, the sharing is logged (logger
``piddpm.restore.stream``) and kept in the provenance with the device each chunk ran on.

Nothing here schedules: the assignment is a ``{worker name: device}`` map that travels with
the tasks; a task looks its worker up (:func:`distributed.get_worker`) when it starts.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

__all__ = [
    "GPU_REQUESTS",
    "IN_PROCESS",
    "chunk_device",
    "current_worker",
    "plan_devices",
    "probe_worker",
    "ran_on",
    "sharing_notes",
    "worker_device",
]

log = logging.getLogger("piddpm.restore.stream")

#: Requested devices that are pinned to one GPU per worker (anything else is used as given).
GPU_REQUESTS = ("auto", "cuda")
#: The worker name recorded for chunks restored in the calling process.
IN_PROCESS = "in process"


def worker_device(requested: str | None, index: int | None, n_gpus: int) -> str:
    """The torch device a worker restores on.

    Parameters
    ----------
    requested : str or None
        The restore's ``device`` (None means ``"auto"``).
    index : int or None
        The worker's index among the workers sharing its GPUs (None: not a pinned worker).
    n_gpus : int
        The number of CUDA devices the worker sees.

    Returns
    -------
    str
        ``"cuda:(index mod n_gpus)"`` when ``requested`` is ``"auto"`` or ``"cuda"``, the worker
        has an index and sees at least one GPU; otherwise ``requested`` unchanged (``"auto"``
        then resolves in :func:`piddpm.restore` to MPS or the CPU, and ``"cuda"`` without a
        GPU fails there with its own message).
    """
    req = "auto" if requested is None else str(requested)
    if req not in GPU_REQUESTS or index is None or int(n_gpus) < 1:
        return req
    if int(index) < 0:
        raise ValueError(f"worker index must be >= 0, got {index}")
    return f"cuda:{int(index) % int(n_gpus)}"


def _name_order(name) -> tuple:
    """Sort key of worker names: integers numerically (0, 1, ..., 10), then the others."""
    index = _int_name(name)
    return (0, index, "") if index is not None else (1, 0, str(name))


def _int_name(name) -> int | None:
    try:
        index = int(str(name))
    except ValueError:
        return None
    return index if index >= 0 else None


def plan_devices(requested: str | None, workers: list[dict], local: bool) -> dict[str, str]:
    """The device of every worker of a run.

    Parameters
    ----------
    requested : str or None
        The restore's ``device``.
    workers : list of dict
        One report per worker (:func:`probe_worker`): ``name``, ``host``, ``gpus`` (CUDA
        devices it sees) and ``cuda_visible`` (its ``CUDA_VISIBLE_DEVICES`` or None).
    local : bool
        The workers are a local cluster this run started (worker ``i`` -> ``cuda:(i mod G)``);
        otherwise an existing cluster (a worker with ``CUDA_VISIBLE_DEVICES`` set -> its first
        visible GPU, the others round-robin by their rank on their host).

    Returns
    -------
    dict
        ``{worker name: device}`` (names as strings).
    """
    by_host: dict[str, list[dict]] = {}
    for w in sorted(workers, key=lambda w: _name_order(w["name"])):
        by_host.setdefault(str(w["host"]), []).append(w)
    plan = {}
    for ranked in by_host.values():
        for rank, w in enumerate(ranked):
            if local:
                index = _int_name(w["name"])
                index = rank if index is None else index
            elif w.get("cuda_visible"):
                index = 0  # the launcher chose its GPUs; the first is its own
            else:
                index = rank
            plan[str(w["name"])] = worker_device(requested, index, int(w["gpus"]))
    return plan


def _physical(device: str, cuda_visible: str | None) -> str:
    """The GPU a ``cuda:k`` device is, as the machine numbers it (``CUDA_VISIBLE_DEVICES``)."""
    k = int(device.split(":")[1]) if ":" in device else 0
    visible = [v.strip() for v in (cuda_visible or "").split(",") if v.strip()]
    return visible[k] if k < len(visible) else str(k)


def sharing_notes(plan: dict[str, str], workers: list[dict]) -> list[str]:
    """One line per host where a GPU serves more than one worker (empty when none does)."""
    shared: dict[tuple[str, str], list[str]] = {}
    for w in sorted(workers, key=lambda w: _name_order(w["name"])):
        device = plan.get(str(w["name"]), "")
        if device.startswith("cuda"):
            key = (str(w["host"]), _physical(device, w.get("cuda_visible")))
            shared.setdefault(key, []).append(f"{w['name']} ({device})")
    notes = []
    for host in sorted({h for h, _ in shared}):
        gpus = {g: names for (h, g), names in shared.items() if h == host}
        if any(len(names) > 1 for names in gpus.values()):
            n_workers = sum(len(names) for names in gpus.values())
            each = "; ".join(f"GPU {g}: workers {', '.join(n)}" for g, n in sorted(gpus.items()))
            notes.append(
                f"{host}: {n_workers} workers share {len(gpus)} GPU(s), one model copy per "
                f"worker on its GPU ({each})"
            )
    return notes


def probe_worker(dask_worker=None) -> dict:
    """What a worker sees (run on every worker by :meth:`distributed.Client.run`)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {
        "name": str(dask_worker.name) if dask_worker is not None else IN_PROCESS,
        "host": socket.gethostname(),
        "gpus": int(gpus),
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def current_worker():
    """The dask.distributed worker running this task, or None in the calling process."""
    if "distributed" not in sys.modules:  # never imported here: not a worker process
        return None
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


def chunk_device(plan: dict[str, str] | None, requested: str | None) -> str | None:
    """The device a chunk restores on: its worker's entry of ``plan``, else ``requested``."""
    if not plan:
        return requested
    worker = current_worker()
    if worker is None:
        return requested
    return plan.get(str(worker.name), requested)


def ran_on(device: str) -> dict:
    """Where a chunk ran: its worker (or :data:`IN_PROCESS`), host and device (a bare
    ``cuda`` with the index of the current CUDA device)."""
    if device == "cuda":
        import torch

        device = f"cuda:{torch.cuda.current_device()}"
    worker = current_worker()
    return {
        "worker": IN_PROCESS if worker is None else str(worker.name),
        "host": socket.gethostname(),
        "device": device,
    }
