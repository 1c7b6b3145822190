"""Resumable checkpoints without pickle: weights, EMA, AdamW state, gradient scaler, step and
RNG states as ``STEM.safetensors`` + ``STEM.json``; the resume compatibility check."""

from __future__ import annotations

import base64
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from piddpm import PiddpmError, __version__
from piddpm.config import TrainConfig, config_to_dict, write_text_atomic
from piddpm.training.components import EMA

CHECKPOINT_FORMAT = "piddpm-checkpoint"
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


def write_and_prune_checkpoint(out, cfg, net, ema, optimizer, scaler, step) -> None:
    """Write ``OUT/checkpoints/step_NNNNNNN`` and delete all but the newest
    ``cfg.keep_checkpoints`` checkpoints."""
    stem = out / "checkpoints" / f"step_{step:07d}"
    save_checkpoint(
        stem, net=net, ema=ema, optimizer=optimizer, scaler=scaler, step=step, config=cfg
    )
    for old in list_checkpoints(out)[: -cfg.keep_checkpoints]:
        old.with_suffix(".safetensors").unlink(missing_ok=True)
        old.unlink(missing_ok=True)


#: Precisions a run may switch between on resuming: the weights, EMA and optimiser state
#: are float32 in both (autocast changes only the arithmetic), so a run started on a machine
#: with bf16 units can continue in fp32 on one without (``piddpm train --precision fp32``).
#: fp16 keeps a gradient scaler, so switching to or from it is refused.
SWITCHABLE_PRECISIONS = frozenset({"fp32", "bf16"})


def check_resume_compatible(saved: TrainConfig, new: TrainConfig, where: Path) -> None:
    a, b = _flatten(config_to_dict(saved)), _flatten(config_to_dict(new))
    allowed = set(RESUMABLE_CHANGES)
    if {a.get("precision"), b.get("precision")} <= SWITCHABLE_PRECISIONS:
        allowed |= {"precision", "channels_last"}
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in allowed)
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


def checkpoint_config(path: str | os.PathLike) -> TrainConfig:
    """The training configuration saved in a checkpoint's JSON file.

    Raises
    ------
    PiddpmError
        If the file is unreadable or its configuration is invalid.
    """
    from piddpm.config import config_from_dict

    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise PiddpmError(f"{path}: not a readable checkpoint ({err})") from None
    return config_from_dict(meta["config"], source=str(path), check_libraries=False)
