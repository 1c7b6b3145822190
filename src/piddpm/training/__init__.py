"""The training loop: AdamW, EMA, mixed precision, exact resume, DDP, validation, export.

One function runs a whole training job from a :class:`piddpm.config.TrainConfig`::

    from piddpm.config import load_config
    from piddpm.training import train, load_trained

    result = train(load_config("configs/tiny-pi-ddpm-widefield.yaml"), out_dir="runs/a")
    net, model_config = load_trained("runs/a/model.safetensors")

Output folder layout (only rank 0 writes)::

    OUT/config.json                        resolved configuration (JSON)
    OUT/log.csv                            step, loss, loss terms, lr, images_per_s, time_s
    OUT/val.csv                            step, psnr_db, input_psnr_db, num_samples, seconds
    OUT/previews/step_0000500.png          rows: observed | restored | ground truth
    OUT/checkpoints/step_0000500.safetensors + .json   resumable state (no pickle)
    OUT/model.safetensors + OUT/model.json final EMA weights + everything to rebuild them

Determinism and exact resume
----------------------------
Nothing in the loop depends on hidden state that a checkpoint could miss:

- sample ``i`` of step ``s`` on rank ``r`` of ``W`` is dataset item ``(s * W + r) * B + i``
  of a :class:`piddpm.data.PairedDataset` that is deterministic in ``(seed, index)``;
- the diffusion noise of step ``s`` on rank ``r`` comes from a generator seeded by
  ``(seed, s, r)``, and the global torch RNG (dropout, if any) is reseeded the same way;
- the learning rate is a pure function of the step (:func:`learning_rate`);
- a checkpoint holds the weights, the EMA weights, the full AdamW state, the gradient
  scaler, the step, and the torch / NumPy / Python RNG states.

So 6 steps in one go and 3 steps + ``resume`` to 6 give the same weights bitwise (fp32, CPU).

Modules
-------
- :mod:`~piddpm.training.loop`: :func:`train` and the loop (steps, logging, export);
- :mod:`~piddpm.training.steps`: the loss of a step, validation (:func:`restore_batch`);
- :mod:`~piddpm.training.components`: network, schedule, EMA, learning rate, seeds;
- :mod:`~piddpm.training.batches`: dataset, per-rank batch stream, batch reuse;
- :mod:`~piddpm.training.checkpoints`: resumable checkpoints, resume compatibility;
- :mod:`~piddpm.training.distributed`: ``torchrun`` environment, device, collectives;
- :mod:`~piddpm.training.outputs`: CSV logs, previews, hardware description;
- :mod:`~piddpm.training.run_config`: the CLI's configuration (warm-up cap);
- the model files (:func:`export_model`, :func:`load_trained`, :func:`model_config`) are
  :mod:`piddpm.models.files`, re-exported here.
"""

from __future__ import annotations

from piddpm.models.files import MODEL_FORMAT, export_model, load_trained, model_config
from piddpm.training.batches import StreamBatches, dihedral, make_dataset
from piddpm.training.checkpoints import (
    CHECKPOINT_FORMAT,
    FORMAT_VERSION,
    RESUMABLE_CHANGES,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from piddpm.training.components import (
    EMA,
    build_network,
    build_schedule,
    learning_rate,
    mix_seed,
    network_channels,
)
from piddpm.training.distributed import DistInfo, dist_from_env, resolve_device
from piddpm.training.loop import TrainResult, train
from piddpm.training.outputs import (
    CsvLog,
    cpu_name,
    hardware_description,
    psnr_db,
    read_log,
    write_preview,
)
from piddpm.training.run_config import load_run_config
from piddpm.training.steps import (  # noqa: F401 (the private two: benchmarks/bench_training.py)
    _autocast,
    _compute_loss,
    restore_batch,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "EMA",
    "FORMAT_VERSION",
    "MODEL_FORMAT",
    "RESUMABLE_CHANGES",
    "CsvLog",
    "DistInfo",
    "StreamBatches",
    "TrainResult",
    "build_network",
    "build_schedule",
    "cpu_name",
    "dihedral",
    "dist_from_env",
    "export_model",
    "hardware_description",
    "learning_rate",
    "list_checkpoints",
    "load_checkpoint",
    "load_run_config",
    "load_trained",
    "make_dataset",
    "mix_seed",
    "model_config",
    "network_channels",
    "psnr_db",
    "read_log",
    "resolve_device",
    "restore_batch",
    "save_checkpoint",
    "train",
    "write_preview",
]
