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
"""

from __future__ import annotations

import base64
import copy
import csv
import json
import math
import os
import platform
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from piddpm import PiddpmError, __version__
from piddpm.config import (
    ScheduleConfig,
    TrainConfig,
    config_to_dict,
    make_ranges,
    mixture_weights,
    save_config,
    write_text_atomic,
)

CHECKPOINT_FORMAT = "piddpm-checkpoint"
MODEL_FORMAT = "piddpm-trained-model"
FORMAT_VERSION = 1

#: Config fields that may change between a run and its resumption.
RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "out_dir",
        "num_workers",
        "compile",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "validation.every",
        "max_time_s",
    }
)


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class DistInfo:
    """The process's place in a ``torchrun`` job (``world_size == 1`` without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
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


def mix_seed(*values: int) -> int:
    """A 63-bit seed derived from integers (independent streams for distinct tuples)."""
    words = np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(2)
    return int((int(words[0]) << 31) ^ int(words[1])) & 0x7FFFFFFFFFFFFFFF


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of the run.

    Linear warm-up from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps`` steps, then
    ``constant``, ``cosine`` (to ``min_lr_ratio * lr`` at the last step) or ``halve``
    (``lr / 2`` from ``halve_at * steps`` on).
    """
    opt = cfg.optimizer
    if opt.warmup_steps and step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps
    if opt.lr_decay == "constant":
        return opt.lr
    if opt.lr_decay == "halve":
        return opt.lr * (0.5 if step >= opt.halve_at * cfg.steps else 1.0)
    span = max(cfg.steps - opt.warmup_steps - 1, 1)
    progress = min(max(step - opt.warmup_steps, 0) / span, 1.0)
    ratio = opt.min_lr_ratio + (1 - opt.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return opt.lr * ratio


def network_channels(method: str) -> dict[str, Any]:
    """``in_channels``, ``out_channels`` and ``conditioned`` of the network for a method.

    pi-ddpm: input ``concat(r_t, x)``, output ``(eps_hat, g_hat)``; ddpm: output ``eps_hat``;
    unet: observation in, restored image out, no noise-level conditioning.
    """
    if method == "pi-ddpm":
        return {"in_channels": 2, "out_channels": 2, "conditioned": True}
    if method == "ddpm":
        return {"in_channels": 2, "out_channels": 1, "conditioned": True}
    if method == "unet":
        return {"in_channels": 1, "out_channels": 1, "conditioned": False}
    raise PiddpmError(f"method must be pi-ddpm, ddpm or unet (got {method!r})")


def build_network(cfg: TrainConfig) -> nn.Module:
    """The network a configuration describes (freshly initialised from the global RNG)."""
    from piddpm.networks import build_unet

    ch = network_channels(cfg.method)
    return build_unet(cfg.model.preset, **ch, **cfg.model.overrides)


def build_schedule(cfg: TrainConfig | ScheduleConfig):
    """The noise schedule (:class:`piddpm.diffusion.Schedule`) of a schedule section, or the
    training schedule of a configuration."""
    from piddpm.diffusion import cosine_schedule, linear_schedule

    s = cfg.schedule if isinstance(cfg, TrainConfig) else cfg
    if s.kind == "cosine":
        return cosine_schedule(s.T, s=s.cosine_s)
    return linear_schedule(s.T, s.beta_start, s.beta_end)


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


class EMA:
    """Exponential moving average of a network's parameters (buffers are copied).

    ``ema = d * ema + (1 - d) * param`` after each optimiser step, with
    ``d = min(decay, (1 + n) / (10 + n))`` at update ``n`` when ``warmup`` is on.
    """

    def __init__(self, net: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup, self.num_updates = float(decay), bool(warmup), 0
        self.module = copy.deepcopy(net).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        d = self.current_decay()
        ema_p = [p for p in self.module.parameters()]
        net_p = [p.detach() for p in net.parameters()]
        torch._foreach_lerp_(ema_p, net_p, 1.0 - d)
        for eb, nb in zip(self.module.buffers(), net.buffers(), strict=True):
            eb.copy_(nb)
        self.num_updates += 1


# ----------------------------------------------------------------- checkpoints (no pickle)


def _tensor_state(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _strip(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """Split an optimiser state dict into JSON (structure, scalars) and tensors."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_json: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        state_json[str(idx)] = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                name = f"optim/{idx}/{key}"
                tensors[name] = value.detach().to("cpu").contiguous().clone()
                state_json[str(idx)][key] = {"tensor": name}
            else:
                state_json[str(idx)][key] = {"value": _jsonable(value)}
    return {"state": state_json, "param_groups": _jsonable(sd["param_groups"])}, tensors


def _optimizer_join(meta: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state = {}
    for idx, entry in meta["state"].items():
        state[int(idx)] = {
            k: (tensors[v["tensor"]] if "tensor" in v else v["value"]) for k, v in entry.items()
        }
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    tensors = {"rng/torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    np_state = np.random.get_state()  # noqa: NPY002 (the global state, saved for resume)
    py_state = random.getstate()
    meta = {
        "numpy": [
            np_state[0],
            base64.b64encode(np.asarray(np_state[1], dtype="<u4").tobytes()).decode(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return meta, tensors


def _set_rng_state(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng/torch_cpu"])
    cuda = sorted((k for k in tensors if k.startswith("rng/cuda/")), key=lambda k: int(k[9:]))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    n = meta["numpy"]
    keys = np.frombuffer(base64.b64decode(n[1]), dtype="<u4").astype(np.uint32)
    np.random.set_state((n[0], keys, n[2], n[3], n[4]))  # noqa: NPY002
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={k: str(v) for k, v in meta.items()})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(
    path_stem: str | os.PathLike,
    *,
    net: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    step: int,
    config: TrainConfig,
) -> Path:
    """Write a resumable checkpoint as ``STEM.safetensors`` + ``STEM.json`` (no pickle).

    The tensors (``model/*``, ``ema/*``, ``optim/<param>/<key>``, ``rng/*``) go to the
    safetensors file; the optimiser's structure and scalars, the gradient scaler, the EMA
    counter, the NumPy / Python RNG states and the configuration go to the JSON file. Both
    are written to temporary files and renamed; the JSON is written last, so a checkpoint
    whose JSON exists is complete.

    Returns
    -------
    Path
        The JSON file.
    """
    stem = Path(path_stem)
    tensors = _tensor_state("model/", net.state_dict())
    tensors.update(_tensor_state("ema/", ema.module.state_dict()))
    opt_meta, opt_tensors = _optimizer_split(optimizer)
    tensors.update(opt_tensors)
    rng_meta, rng_tensors = _rng_state()
    tensors.update(rng_tensors)
    weights = stem.with_suffix(".safetensors")
    _save_safetensors_atomic(tensors, weights, {"format": CHECKPOINT_FORMAT, "step": step})
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": FORMAT_VERSION,
        "step": int(step),
        "tensors": weights.name,
        "optimizer": opt_meta,
        "scaler": _jsonable(scaler.state_dict()) if scaler is not None else None,
        "ema": {"num_updates": ema.num_updates, "decay": ema.decay, "warmup": ema.warmup},
        "rng": rng_meta,
        "config": config_to_dict(config),
        "piddpm_version": __version__,
    }
    json_path = stem.with_suffix(".json")
    write_text_atomic(json_path, json.dumps(meta) + "\n")
    return json_path


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (JSON + tensors present) in ``OUT/checkpoints``, oldest first."""
    folder = Path(out_dir) / "checkpoints"
    found = []
    for js in folder.glob("step_*.json"):
        if js.with_suffix(".safetensors").is_file():
            try:
                found.append((int(js.stem.split("_")[1]), js))
            except ValueError:
                continue
    return [p for _, p in sorted(found)]


def load_checkpoint(
    path: str | os.PathLike,
    *,
    net: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    restore_rng: bool = True,
) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint` in place; returns its JSON."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise PiddpmError(f"{path}: not a readable checkpoint ({err})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise PiddpmError(f"{path}: not a piddpm checkpoint (format {meta.get('format')!r})")
    tensors = load_file(str(path.with_name(meta["tensors"])))
    device = next(net.parameters()).device
    net.load_state_dict(_strip("model/", tensors))
    ema.module.load_state_dict(_strip("ema/", tensors))
    ema.num_updates = int(meta["ema"]["num_updates"])
    opt_sd = _optimizer_join(meta["optimizer"], tensors)
    optimizer.load_state_dict(opt_sd)
    for state in optimizer.state.values():  # keep AdamW's step counters on the CPU as saved
        for k, v in state.items():
            if torch.is_tensor(v) and k != "step":
                state[k] = v.to(device)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    if restore_rng:
        _set_rng_state(meta["rng"], tensors)
    return meta


# ------------------------------------------------------------------------- outputs


class CsvLog:
    """Append rows to a CSV file; on resume, rows after the resumed step are dropped.

    ``last_time_s`` is the ``time_s`` of the last kept row (0 without one), so a resumed
    run's clock continues.
    """

    def __init__(self, path: Path, fields: list[str] | None = None, *, after_step: int = 0):
        self.path, self.fields, self.last_time_s = path, fields, 0.0
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                header = reader.fieldnames
                rows = [r for r in reader if r.get("step") and int(r["step"]) <= after_step]
            if header:
                self.fields = list(header)
                text = ",".join(header) + "\n"
                tmp = path.with_suffix(".csv.tmp")
                with tmp.open("w", newline="", encoding="utf-8") as fh:
                    fh.write(text)
                    csv.DictWriter(fh, header).writerows(rows)
                os.replace(tmp, path)
                if rows and rows[-1].get("time_s"):
                    self.last_time_s = float(rows[-1]["time_s"])

    def write(self, row: dict[str, Any]) -> None:
        if self.fields is None:
            self.fields = list(row)
        new = not self.path.is_file()
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, self.fields, extrasaction="ignore", restval="")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def psnr_db(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR per image of ``(B, 1, H, W)`` tensors (:func:`piddpm.metrics.psnr`, data range =
    each reference's max - min)."""
    from piddpm.metrics import psnr

    return torch.as_tensor(psnr(pred[:, 0].double(), ref[:, 0].double())).reshape(-1)


def write_preview(path: Path, rows: list[tuple[torch.Tensor, ...]]) -> None:
    """A PNG grid, one row per sample, each tile ``(H, W)`` scaled to its row's gt range."""
    from PIL import Image

    tiles = []
    for row in rows:
        ref = row[-1].float()
        lo, hi = float(ref.min()), float(ref.max())
        scale = 1.0 / max(hi - lo, 1e-12)
        imgs = [((t.float() - lo) * scale).clamp(0, 1) for t in row]
        sep = torch.ones(ref.shape[0], 2)
        parts = []
        for im in imgs:
            parts += [im, sep]
        tiles.append(torch.cat(parts[:-1], dim=1))
        tiles.append(torch.ones(2, tiles[-1].shape[1]))
    grid = torch.cat(tiles[:-1], dim=0)
    arr = (grid.numpy() * 255 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, path)


def cpu_name() -> str:
    """The CPU's ``model name`` from ``/proc/cpuinfo``, else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_description(device: torch.device, dist: DistInfo) -> dict[str, Any]:
    """What the run ran on (stored in ``model.json``)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "device": device.type,
        "device_name": name,
        "world_size": dist.world_size,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


# ----------------------------------------------------------------------- the loop


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


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _compute_loss(model, cfg: TrainConfig, batch: dict, schedule, generator):
    if cfg.method == "unet":
        from piddpm.diffusion import supervised_loss

        out = supervised_loss(
            model,
            batch["gt"],
            batch["observed"],
            kind=cfg.diffusion.supervised_loss,
            target=cfg.diffusion.target,
        )
    else:
        from piddpm.diffusion import diffusion_loss

        out = diffusion_loss(
            model,
            batch["gt"],
            batch["observed"],
            batch["observed_clean"],
            batch["psf"],
            schedule,
            method=cfg.method,
            physics_weight=cfg.diffusion.physics_weight if cfg.method == "pi-ddpm" else 0.0,
            target=cfg.diffusion.target,
            physics_norm=cfg.diffusion.physics_norm,
            physics_reference=cfg.diffusion.physics_reference,
            generator=generator,
        )
    if isinstance(out, tuple):
        loss, logs = out
    else:
        loss, logs = out, {}
    return loss, dict(logs)


def _to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
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


def _stack_samples(ds, n: int) -> dict[str, torch.Tensor]:
    items = [ds[i] for i in range(n)]
    return {
        k: torch.stack([it[k] for it in items]) for k in ("gt", "observed", "observed_clean", "psf")
    }


@torch.no_grad()
def restore_batch(
    net: nn.Module,
    cfg: TrainConfig,
    observed: torch.Tensor,
    psf: torch.Tensor | None,
    schedule,
    *,
    num_steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Restore ``(B, 1, H, W)`` observations (model units) with a trained network.

    Diffusion methods sample with DDIM (``num_steps`` steps, learned physics guidance for
    pi-ddpm unless ``validation.guidance`` says otherwise); the U-Net predicts directly.
    """
    if cfg.method == "unet":
        from piddpm.diffusion import supervised_predict

        return supervised_predict(net, observed, target=cfg.diffusion.target).float()
    from piddpm.diffusion import ddim_sample

    v = cfg.validation
    guidance = v.guidance
    if guidance == "auto":
        guidance = "learned" if cfg.method == "pi-ddpm" else "none"
    res = ddim_sample(
        net,
        observed,
        schedule,
        num_steps=num_steps,
        guidance=guidance,
        regulariser=None if v.regulariser == "none" else v.regulariser,
        lam=v.lam,
        eta=v.eta,
        psf=psf,
        target=cfg.diffusion.target,
        generator=generator,
    )
    return res.mean.float()


def _check_resume_compatible(saved: TrainConfig, new: TrainConfig, where: Path) -> None:
    a, b = _flatten(config_to_dict(saved)), _flatten(config_to_dict(new))
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
    if diff:
        detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff)
        raise PiddpmError(
            f"{where}: cannot resume with a different configuration ({detail}); only "
            f"{sorted(RESUMABLE_CHANGES)} may change"
        )


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("overrides", "ranges", "dataset_kwargs"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
            _check_resume_compatible(saved, cfg, saved_path)
    elif ckpts or (out / "model.json").exists():
        raise PiddpmError(
            f"{out}: already holds a training run; pass --resume to continue it or choose "
            "another --out"
        )

    if dev.type == "cuda":  # fixed patch sizes: let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark = True
    # Build everything from the seed, identically on every rank.
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)  # noqa: NPY002 (global state for third-party code)
    random.seed(cfg.seed)
    net = build_network(cfg).to(dev)
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
    if resume:
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

    main = dist.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.json")

    total = cfg.steps if stop_at_step is None else min(cfg.steps, stop_at_step)
    world_batch = cfg.batch_size * dist.world_size
    reuse = cfg.batch_reuse
    length = -(-max(cfg.steps, total) // reuse) * world_batch
    if dist.enabled and not main:  # rank 0 builds (and caches) the PSF bank first
        torch.distributed.barrier()
    dataset = make_dataset(cfg, size=cfg.patch_size, length=length, seed=cfg.seed)
    if dist.enabled and main:
        torch.distributed.barrier()
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=StreamBatches(start // reuse, -(-total // reuse), cfg.batch_size, dist),
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=dev.type == "cuda",
    )
    val = None
    if main:
        val_size = cfg.validation.size or cfg.patch_size
        n_val = cfg.validation.num_samples
        val_ds = make_dataset(
            cfg, size=val_size, length=n_val, seed=cfg.validation.seed, n_kernels=n_val
        )
        val = _stack_samples(val_ds, cfg.validation.num_samples)

    log = CsvLog(out / "log.csv", after_step=start) if main else None
    val_log = CsvLog(out / "val.csv", after_step=start) if main else None
    bar = None
    if main and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc=f"train {cfg.method}", unit="step")

    val_metrics: dict[str, float] = {}
    t_run = time.perf_counter()
    t_offset = log.last_time_s if log is not None else 0.0
    t_last, steps_since, img_s = time.perf_counter(), 0, float("nan")
    sums: dict[str, torch.Tensor] = {}
    step = start
    timed_out = False
    net.train()
    for batch in _step_batches(loader, start, total, cfg, dev, dist.rank):
        seed = mix_seed(cfg.seed, step, dist.rank)
        torch.manual_seed(seed)
        gen = torch.Generator(device=dev).manual_seed(mix_seed(cfg.seed, step, dist.rank, 1))
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with _autocast(dev, cfg.precision):
            loss, logs = _compute_loss(model, cfg, batch, schedule, gen)
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
        ema.update(net)
        step += 1
        steps_since += 1
        # under DDP the ranks agree by a collective: only at log rows, not on every step
        if cfg.max_time_s is not None and (not dist.enabled or step % cfg.log_every == 0):
            timed_out = _time_is_up(time.perf_counter() - t_run >= cfg.max_time_s, dist, dev)

        terms = {"loss": loss.detach().float(), **logs}
        for k, v in terms.items():
            v = torch.as_tensor(v, dtype=torch.float32, device=dev).detach()
            if v.numel() == 1:
                sums[k] = sums.get(k, 0) + v.reshape(())

        if step % cfg.log_every == 0 or step == total or timed_out:
            names = sorted(sums)
            vec = torch.stack([sums[k] for k in names]) / steps_since
            if dist.enabled:
                torch.distributed.all_reduce(vec)
                vec /= dist.world_size
            now = time.perf_counter()
            img_s = steps_since * world_batch / (now - t_last)
            if main:
                vals = dict(zip(names, vec.tolist(), strict=True))
                row = {"step": step, "loss": vals.pop("loss")}
                row.update(vals)
                row.update({"lr": lr, "images_per_s": img_s, "time_s": t_offset + now - t_run})
                log.write(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4g}", img_s=f"{img_s:.1f}")
            sums, steps_since, t_last = {}, 0, time.perf_counter()
        if bar is not None:
            bar.update(1)

        final = step == cfg.steps or timed_out
        if main and (final or (cfg.validation.every and step % cfg.validation.every == 0)):
            val_metrics = _validate(ema.module, cfg, val, val_schedule, dev, step, out, val_log)
            net.train()
        if main and (final or step == total or step % cfg.checkpoint_every == 0):
            _write_checkpoint(out, cfg, net, ema, optimizer, scaler, step)
        if dist.enabled and (final or step == total or step % cfg.checkpoint_every == 0):
            torch.distributed.barrier()
        if timed_out:
            break

    if bar is not None:
        bar.close()
    result = TrainResult(out, step, net, ema.module, val_metrics, img_s)
    if dist.enabled:
        result.ddp_weight_spread = _weight_spread(net)
    result.stopped_by_time_limit = timed_out and step < cfg.steps
    if (step >= cfg.steps or timed_out) and main:
        if not val_metrics:  # resumed a finished run: evaluate the final weights again
            val_metrics = _validate(ema.module, cfg, val, val_schedule, dev, step, out, None)
            result.val_metrics = val_metrics
        result.model_path = export_model(
            out / "model",
            ema.module,
            cfg,
            steps=step,
            hardware=hardware_description(dev, dist),
            val_metrics=val_metrics,
            images_per_s=img_s,
            ddp_weight_spread=result.ddp_weight_spread,
            stopped_by_time_limit=result.stopped_by_time_limit,
        )
    if dist.enabled:
        torch.distributed.barrier()
    return result


def _step_batches(loader, start: int, total: int, cfg: TrainConfig, dev, rank: int):
    """The batch of each optimiser step ``start .. total - 1``.

    With ``cfg.batch_reuse = K`` each loaded batch serves K consecutive steps (a resumed run
    starting mid-batch uses it for the remaining ones); reuse ``r > 0`` applies the dihedral
    transform chosen by ``(seed, step, rank)``.
    """
    reuse, step = cfg.batch_reuse, start
    for loaded in loader:
        loaded = _to_device(loaded, dev, cfg.channels_last)
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


def _time_is_up(local: bool, dist: DistInfo, dev) -> bool:
    """Whether the time budget is spent, agreed by all ranks (any rank's clock decides)."""
    if not dist.enabled:
        return local
    flag = torch.tensor([1.0 if local else 0.0], device=dev)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item() > 0)


def _weight_spread(net: nn.Module) -> float:
    """Largest elementwise difference of the parameters between ranks (0 = in sync)."""
    flat = torch.cat([p.detach().float().flatten() for p in net.parameters()])
    hi, lo = flat.clone(), flat.clone()
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    return float((hi - lo).max())


def _write_checkpoint(out, cfg, net, ema, optimizer, scaler, step) -> None:
    stem = out / "checkpoints" / f"step_{step:07d}"
    save_checkpoint(
        stem, net=net, ema=ema, optimizer=optimizer, scaler=scaler, step=step, config=cfg
    )
    for old in list_checkpoints(out)[: -cfg.keep_checkpoints]:
        old.with_suffix(".safetensors").unlink(missing_ok=True)
        old.unlink(missing_ok=True)


@torch.no_grad()
def _validate(net, cfg, val, schedule, dev, step, out, val_log) -> dict[str, float]:
    t0 = time.perf_counter()
    net.eval()
    observed = val["observed"].to(dev)
    gt = val["gt"].to(dev)
    psf = val["psf"].to(dev)
    if cfg.channels_last:
        observed = observed.contiguous(memory_format=torch.channels_last)
    gen = torch.Generator(device=dev).manual_seed(cfg.validation.seed)
    with _autocast(dev, cfg.precision):
        restored = restore_batch(
            net, cfg, observed, psf, schedule, num_steps=cfg.validation.num_steps, generator=gen
        )
    restored = restored.float()
    psnr = psnr_db(restored, gt)
    psnr_in = psnr_db(observed.float(), gt)
    metrics = {
        "psnr_db": float(psnr.mean()),
        "input_psnr_db": float(psnr_in.mean()),
        "num_samples": int(gt.shape[0]),
        "step": int(step),
    }
    write_preview(
        out / "previews" / f"step_{step:07d}.png",
        [(observed[i, 0].cpu(), restored[i, 0].cpu(), gt[i, 0].cpu()) for i in range(gt.shape[0])],
    )
    if val_log is not None:
        val_log.write(
            {
                "step": step,
                "psnr_db": metrics["psnr_db"],
                "input_psnr_db": metrics["input_psnr_db"],
                "num_samples": metrics["num_samples"],
                "seconds": time.perf_counter() - t0,
            }
        )
    return metrics


# ------------------------------------------------------------------- model export


def model_config(cfg: TrainConfig, **extra: Any) -> dict[str, Any]:
    """The ``model.json`` content: what is needed to rebuild and use the network."""
    ch = network_channels(cfg.method)
    try:
        import dataclasses

        ranges = make_ranges(cfg.data)
        ranges = (
            _jsonable(dataclasses.asdict(ranges))
            if dataclasses.is_dataclass(ranges)
            else (
                ranges.model_dump(mode="json")
                if hasattr(ranges, "model_dump")
                else dict(cfg.data.ranges)
            )
        )
    except (ImportError, PiddpmError):
        ranges = dict(cfg.data.ranges)
    info: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "version": FORMAT_VERSION,
        "name": cfg.name,
        "method": cfg.method,
        "preset": cfg.model.preset,
        "overrides": cfg.model.overrides,
        **ch,
        "target": cfg.diffusion.target,
        "physics_weight": cfg.diffusion.physics_weight if cfg.method == "pi-ddpm" else None,
        "physics_reference": (cfg.diffusion.physics_reference if cfg.method == "pi-ddpm" else None),
        "physics_norm": cfg.diffusion.physics_norm if cfg.method == "pi-ddpm" else None,
        # the schedule to sample with (what validation used); the network was trained on
        # continuous noise levels of `training_schedule` and accepts any schedule
        "schedule": (
            build_schedule(cfg.validation.schedule).config if cfg.method != "unet" else None
        ),
        "training_schedule": build_schedule(cfg).config if cfg.method != "unet" else None,
        "sampler": (
            {
                "kind": cfg.validation.sampler,
                "num_steps": cfg.validation.num_steps,
                "guidance": cfg.validation.guidance,
                "regulariser": cfg.validation.regulariser,
                "lam": cfg.validation.lam,
                "eta": cfg.validation.eta,
                "note": "settings used for validation during training",
            }
            if cfg.method != "unet"
            else None
        ),
        "normalisation": cfg.data.normalisation,
        # percentiles of the observation mapped to -1 / 1, as in training
        "percentiles": [0.0, 100.0] if cfg.data.normalisation == "minmax" else [0.1, 99.9],
        "normalisation_note": _normalisation_note(cfg.data.normalisation),
        "data": {
            "specimens": cfg.data.specimens,
            "specimen_weights": mixture_weights(cfg.data.specimens),
            "modality": cfg.data.modality,
            "ranges": ranges,
            "patch_size": cfg.patch_size,
            "field_factor": cfg.data.field_factor,
            "psf_size": cfg.data.psf_size,
        },
        "training": {
            "steps": None,
            "batch_size": cfg.batch_size,
            "lr": cfg.optimizer.lr,
            "precision": cfg.precision,
            "seed": cfg.seed,
            "ema_decay": cfg.ema_decay,
            "config": config_to_dict(cfg),
        },
        "piddpm_version": __version__,
    }
    for key in (
        "steps",
        "images_per_s",
        "world_size",
        "ddp_weight_spread",
        "stopped_by_time_limit",
    ):
        if key in extra:
            info["training"][key] = extra.pop(key)
    info.update(extra)
    return info


def _normalisation_note(method: str) -> str:
    from piddpm.data import normalisation_note

    return normalisation_note(method)


def export_model(
    path_stem: str | os.PathLike,
    net: nn.Module,
    cfg: TrainConfig,
    **extra: Any,
) -> Path:
    """Write ``STEM.safetensors`` + ``STEM.json`` with :func:`piddpm.networks.save_model`.

    ``extra`` (steps, hardware, val_metrics, images_per_s, ...) is added to the JSON.
    Returns the safetensors path.
    """
    from piddpm.networks import save_model

    info = model_config(cfg, **extra)
    save_model(str(path_stem), net, info)
    return Path(str(path_stem) + ".safetensors")


def load_trained(path: str | os.PathLike, *, device: str | torch.device = "cpu"):
    """Load a model exported by :func:`train` (``OUT/model.safetensors`` or its ``.json``).

    Returns
    -------
    net : torch.nn.Module
        The EMA network in eval mode on ``device``.
    model_config : dict
        The ``model.json`` content: method, preset, channels, target, schedule, sampler
        defaults, normalisation convention, training data, steps, hardware, val metrics.
    """
    from piddpm.networks import load_model

    net, info = load_model(path, device=device)
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        raise PiddpmError(
            f"{path}: not a model exported by piddpm train (its JSON 'config' lacks "
            f"format {MODEL_FORMAT!r})"
        )
    return net.eval(), info
