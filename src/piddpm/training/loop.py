"""The training loop: :func:`train` sets up the process, :func:`_train` runs the steps.

``_train`` is split by phase: :func:`_check_run_folder` (new run or resume),
:func:`_build_state` (network, EMA, AdamW, scaler, schedules, restored checkpoint),
:func:`_make_loader` / :func:`_validation_pairs` (data), :func:`_optimizer_step` (one step),
:class:`_LossLog` (``log.csv`` rows averaged over the steps since the last row) and
:func:`_finish` (final validation and model export). The order of every operation that
touches an RNG is that of the single function it replaces, so runs are bitwise unchanged.
"""

from __future__ import annotations

import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from piddpm import PiddpmError
from piddpm.config import TrainConfig, save_config
from piddpm.devices import bf16_is_fast
from piddpm.training.batches import StreamBatches, make_dataset, stack_samples, step_batches
from piddpm.training.checkpoints import (
    check_resume_compatible,
    list_checkpoints,
    load_checkpoint,
    write_and_prune_checkpoint,
)
from piddpm.training.components import (
    EMA,
    build_network,
    build_schedule,
    learning_rate,
    load_initial_weights,
    mix_seed,
)
from piddpm.training.distributed import (
    DistInfo,
    dist_from_env,
    resolve_device,
    time_is_up,
    weight_spread,
)
from piddpm.training.outputs import CsvLog, hardware_description
from piddpm.training.steps import _autocast, _compute_loss, validate


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    out_dir: Path
    step: int
    net: nn.Module
    ema: nn.Module
    val_metrics: dict[str, float] = field(default_factory=dict)
    images_per_s: float = float("nan")
    model_path: Path | None = None
    ddp_weight_spread: float | None = None
    stopped_by_time_limit: bool = False


@dataclass
class _RunState:
    """The objects one run trains and saves (built identically on every rank)."""

    net: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    model: nn.Module  # ``net``, wrapped in DDP and/or compiled as configured
    schedule: Any
    val_schedule: Any
    start: int


def train(
    cfg: TrainConfig,
    *,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    stop_at_step: int | None = None,
) -> TrainResult:
    """Train a network as the configuration says, under ``torchrun`` or in one process.

    Parameters
    ----------
    cfg : TrainConfig
        The run (``cfg.out_dir`` is used when ``out_dir`` is None).
    out_dir : path-like, optional
        Output folder (see the module docstring for its layout).
    resume : bool
        Continue from the newest checkpoint in ``out_dir`` up to ``cfg.steps``. The saved
        configuration must match ``cfg`` except for :data:`RESUMABLE_CHANGES`.
    device : str
        ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    progress : bool
        Show a tqdm progress bar (rank 0 only).
    stop_at_step : int, optional
        Stop after this step with a checkpoint but without the final export (a time-boxed
        slice of a longer run; continue it with ``resume=True``).

    Returns
    -------
    TrainResult

    Raises
    ------
    PiddpmError
        On an existing run without ``resume``, a missing run with ``resume``, an
        incompatible configuration, or an unsupported precision / device combination.
    """
    out = Path(out_dir if out_dir is not None else cfg.out_dir)
    cfg = cfg.model_copy(update={"out_dir": str(out)})
    dist = dist_from_env()
    dev = resolve_device(device, dist)
    if cfg.precision == "fp16" and dev.type != "cuda":
        raise PiddpmError("precision fp16 needs a CUDA device; use bf16 (or fp32) on the CPU")
    if cfg.precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PiddpmError(f"precision bf16 is not supported on {torch.cuda.get_device_name(dev)}")
    if cfg.precision == "bf16" and dev.type == "cpu" and not bf16_is_fast(dev):
        warnings.warn(
            "precision bf16 on a CPU without bf16 units (no AVX512-BF16 / AMX) is emulated "
            "and several times slower than fp32 (4.8 s against 0.7 s per tiny PI-DDPM step "
            "on an AVX2 CPU); train with --precision fp32 on this machine",
            stacklevel=2,
        )

    started_pg = False
    if dist.enabled and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
        started_pg = True
    try:
        return _train(cfg, out, resume, dev, dist, progress, stop_at_step)
    finally:
        if started_pg:
            torch.distributed.destroy_process_group()


def _train(cfg, out: Path, resume: bool, dev, dist: DistInfo, progress: bool, stop_at_step):
    """Run the steps of :func:`train` once the process group and device are set up."""
    ckpts = _check_run_folder(cfg, out, resume)
    if dev.type == "cuda":  # fixed patch sizes: let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark = True
    state = _build_state(cfg, dev, dist, ckpts if resume else [])
    start = state.start
    main = dist.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.json")

    total = cfg.steps if stop_at_step is None else min(cfg.steps, stop_at_step)
    world_batch = cfg.batch_size * dist.world_size
    loader = _make_loader(cfg, dev, dist, start, total)
    val = _validation_pairs(cfg) if main else None

    log = _LossLog(out / "log.csv" if main else None, start, world_batch, dist, dev)
    val_log = CsvLog(out / "val.csv", after_step=start) if main else None
    bar = None
    if main and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc=f"train {cfg.method}", unit="step")

    log.start_clock()
    val_metrics: dict[str, float] = {}
    step = start
    timed_out = False
    state.net.train()
    for batch in step_batches(loader, start, total, cfg, dev, dist.rank):
        loss, logs, lr = _optimizer_step(state, cfg, batch, step, dev, dist.rank)
        step += 1
        # under DDP the ranks agree by a collective: only at log rows, not on every step
        if cfg.max_time_s is not None and (not dist.enabled or step % cfg.log_every == 0):
            timed_out = time_is_up(log.elapsed_s() >= cfg.max_time_s, dist, dev)
        log.add(loss, logs)
        if step % cfg.log_every == 0 or step == total or timed_out:
            row = log.write(step, lr)
            if bar is not None and row is not None:
                left = {}
                if cfg.max_time_s is not None:  # a time-boxed run ends by the clock
                    secs = max(0, int(cfg.max_time_s - log.elapsed_s()))
                    left = {"time_left": f"{secs // 60}:{secs % 60:02d}"}
                bar.set_postfix(loss=f"{row['loss']:.4g}", img_s=f"{log.images_per_s:.1f}",
                                **left)  # fmt: skip
        if bar is not None:
            bar.update(1)

        final = step == cfg.steps or timed_out
        if main and (final or (cfg.validation.every and step % cfg.validation.every == 0)):
            val_metrics = validate(
                state.ema.module, cfg, val, state.val_schedule, dev, step, out, val_log
            )
            state.net.train()
        if main and (final or step == total or step % cfg.checkpoint_every == 0):
            write_and_prune_checkpoint(
                out, cfg, state.net, state.ema, state.optimizer, state.scaler, step
            )
        if dist.enabled and (final or step == total or step % cfg.checkpoint_every == 0):
            torch.distributed.barrier()
        if timed_out:
            break

    if bar is not None:
        bar.close()
    return _finish(cfg, out, state, dev, dist, step, timed_out, val, val_metrics, log)


def _check_run_folder(cfg: TrainConfig, out: Path, resume: bool) -> list[Path]:
    """The run's checkpoints; refuse a resume without one, or a new run over an old one."""
    from piddpm.config import load_config

    ckpts = list_checkpoints(out)
    if resume:
        if not ckpts:
            raise PiddpmError(
                f"{out}: no checkpoint to resume from (looked in {out / 'checkpoints'})"
            )
        saved_path = out / "config.json"
        if saved_path.is_file():
            saved = load_config(saved_path, check_libraries=False)
            check_resume_compatible(saved, cfg, saved_path)
    elif ckpts or (out / "model.json").exists():
        raise PiddpmError(
            f"{out}: already holds a training run; pass --resume to continue it or choose "
            "another --out"
        )
    return ckpts


def _build_state(cfg: TrainConfig, dev, dist: DistInfo, ckpts: list[Path]) -> _RunState:
    """Network, EMA, AdamW, scaler and schedules from the seed; the newest of ``ckpts``
    (resume) loaded into them; the network wrapped for DDP / ``torch.compile``."""
    # Build everything from the seed, identically on every rank.
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)  # noqa: NPY002 (global state for third-party code)
    random.seed(cfg.seed)
    net = build_network(cfg).to(dev)
    if cfg.init_from is not None and not ckpts:
        load_initial_weights(net, cfg)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    ema = EMA(net, cfg.ema_decay, cfg.ema_warmup)
    optimizer = torch.optim.AdamW(
        net.parameters(),
        lr=cfg.optimizer.lr,
        betas=cfg.optimizer.betas,
        eps=cfg.optimizer.eps,
        weight_decay=cfg.optimizer.weight_decay,
    )
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    schedule = None if cfg.method == "unet" else build_schedule(cfg)
    val_schedule = None if cfg.method == "unet" else build_schedule(cfg.validation.schedule)

    start = 0
    if ckpts:
        meta = load_checkpoint(ckpts[-1], net=net, ema=ema, optimizer=optimizer, scaler=scaler)
        start = int(meta["step"])
        if start > cfg.steps:
            raise PiddpmError(
                f"{ckpts[-1]}: the run is already at step {start}, beyond steps = {cfg.steps}; "
                "pass a larger --steps"
            )

    model: nn.Module = net
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    if cfg.compile:
        model = torch.compile(model)
    return _RunState(net, ema, optimizer, scaler, model, schedule, val_schedule, start)


def _make_loader(cfg: TrainConfig, dev, dist: DistInfo, start: int, total: int):
    """The data loader of steps ``start .. total - 1`` of this rank (rank 0 builds and caches
    the PSF bank before the other ranks read it)."""
    main = dist.is_main
    world_batch = cfg.batch_size * dist.world_size
    reuse = cfg.batch_reuse
    length = -(-max(cfg.steps, total) // reuse) * world_batch
    if dist.enabled and not main:  # rank 0 builds (and caches) the PSF bank first
        torch.distributed.barrier()
    dataset = make_dataset(cfg, size=cfg.patch_size, length=length, seed=cfg.seed)
    if dist.enabled and main:
        torch.distributed.barrier()
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=StreamBatches(start // reuse, -(-total // reuse), cfg.batch_size, dist),
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=dev.type == "cuda",
    )


def _validation_pairs(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The fixed validation pairs (``validation.seed``), stacked into batches."""
    val_size = cfg.validation.size or cfg.patch_size
    n_val = cfg.validation.num_samples
    val_ds = make_dataset(
        cfg, size=val_size, length=n_val, seed=cfg.validation.seed, n_kernels=n_val
    )
    return stack_samples(val_ds, cfg.validation.num_samples)


def _optimizer_step(state: _RunState, cfg: TrainConfig, batch: dict, step: int, dev, rank: int):
    """One AdamW step (0-based ``step``) with its seeded noise; returns ``(loss, logs, lr)``."""
    seed = mix_seed(cfg.seed, step, rank)
    torch.manual_seed(seed)
    gen = torch.Generator(device=dev).manual_seed(mix_seed(cfg.seed, step, rank, 1))
    lr = learning_rate(cfg, step)
    optimizer, scaler, net = state.optimizer, state.scaler, state.net
    for group in optimizer.param_groups:
        group["lr"] = lr
    with _autocast(dev, cfg.precision):
        loss, logs = _compute_loss(state.model, cfg, batch, state.schedule, gen)
    if not torch.isfinite(loss):
        raise PiddpmError(
            f"loss is {loss.item()} at step {step + 1}; lower optimizer.lr, enable "
            "grad_clip or use fp32"
        )
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if cfg.grad_clip is not None:
        gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        logs.setdefault("grad_norm", gnorm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    state.ema.update(net)
    return loss, logs, lr


class _LossLog:
    """Loss terms summed over the steps since the last ``log.csv`` row, averaged over the
    ranks when a row is written (on every rank: the average is a collective); only rank 0
    has a file (``path`` None elsewhere)."""

    def __init__(self, path: Path | None, start: int, world_batch: int, dist: DistInfo, dev):
        self.csv = CsvLog(path, after_step=start) if path is not None else None
        self.world_batch, self.dist, self.dev = world_batch, dist, dev
        self.images_per_s = float("nan")
        self.sums: dict[str, torch.Tensor] = {}
        self.start_clock()

    def start_clock(self) -> None:
        """Start timing the loop (``time_s`` continues from the last kept row)."""
        self.t_run = time.perf_counter()
        self.t_offset = self.csv.last_time_s if self.csv is not None else 0.0
        self.t_last, self.steps_since = time.perf_counter(), 0

    def elapsed_s(self) -> float:
        """Seconds since the loop started (this invocation)."""
        return time.perf_counter() - self.t_run

    def add(self, loss: torch.Tensor, logs: dict[str, Any]) -> None:
        """Add one step's loss and scalar loss terms."""
        self.steps_since += 1
        terms = {"loss": loss.detach().float(), **logs}
        for k, v in terms.items():
            v = torch.as_tensor(v, dtype=torch.float32, device=self.dev).detach()
            if v.numel() == 1:
                self.sums[k] = self.sums.get(k, 0) + v.reshape(())

    def write(self, step: int, lr: float) -> dict[str, Any] | None:
        """Average the sums (over steps and ranks), write the row on rank 0 and reset;
        returns the row (None on other ranks)."""
        names = sorted(self.sums)
        vec = torch.stack([self.sums[k] for k in names]) / self.steps_since
        if self.dist.enabled:
            torch.distributed.all_reduce(vec)
            vec /= self.dist.world_size
        now = time.perf_counter()
        self.images_per_s = self.steps_since * self.world_batch / (now - self.t_last)
        row = None
        if self.csv is not None:
            vals = dict(zip(names, vec.tolist(), strict=True))
            row = {"step": step, "loss": vals.pop("loss")}
            row.update(vals)
            row.update(
                {
                    "lr": lr,
                    "images_per_s": self.images_per_s,
                    "time_s": self.t_offset + now - self.t_run,
                }
            )
            self.csv.write(row)
        self.sums, self.steps_since, self.t_last = {}, 0, time.perf_counter()
        return row


def _finish(cfg, out, state: _RunState, dev, dist, step, timed_out, val, val_metrics, log):
    """The :class:`TrainResult`; at the end of the run, rank 0 exports the EMA model."""
    from piddpm.models.files import export_model

    ema = state.ema
    result = TrainResult(out, step, state.net, ema.module, val_metrics, log.images_per_s)
    if dist.enabled:
        result.ddp_weight_spread = weight_spread(state.net)
    result.stopped_by_time_limit = timed_out and step < cfg.steps
    if (step >= cfg.steps or timed_out) and dist.is_main:
        if not val_metrics:  # resumed a finished run: evaluate the final weights again
            val_metrics = validate(ema.module, cfg, val, state.val_schedule, dev, step, out, None)
            result.val_metrics = val_metrics
        result.model_path = export_model(
            out / "model",
            ema.module,
            cfg,
            steps=step,
            hardware=hardware_description(dev, dist),
            val_metrics=val_metrics,
            images_per_s=log.images_per_s,
            ddp_weight_spread=result.ddp_weight_spread,
            stopped_by_time_limit=result.stopped_by_time_limit,
        )
    if dist.enabled:
        torch.distributed.barrier()
    return result
