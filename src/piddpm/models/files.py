"""The model file format: ``STEM.safetensors`` (weights) + ``STEM.json`` (configuration).

This module is the one place that writes and reads trained models:

- :func:`model_config` is the training's ``config`` part of ``model.json`` (method, preset,
  channels, target, schedules, sampler, normalisation, training data and run);
- :func:`export_model` writes a network with it (through :func:`piddpm.networks.save_model`,
  which wraps it as ``{"format": "piddpm-model", "network", "num_parameters", "config"}``);
- :func:`load_trained` / :func:`load_network` read the weights back;
- :func:`read_model_config` is the registry's view of a ``model.json`` (the ``config`` part,
  with the registry keys ``aliases``, ``description``, ``modality``, ``restore_defaults``);
- :func:`read_model_doc`, :func:`write_model_doc` and :func:`copy_model` read, rewrite and
  copy a model's files as a whole (used by ``piddpm models bundle``).

The JSON keys are unchanged from the files written by earlier versions.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piddpm import PiddpmError, __version__
from piddpm.choices import Method, options
from piddpm.config import config_to_dict

if TYPE_CHECKING:
    import torch
    from torch import nn

    from piddpm.config import TrainConfig

__all__ = [
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "MODEL_METHODS",
    "copy_model",
    "export_model",
    "load_network",
    "load_trained",
    "model_config",
    "read_model_config",
    "read_model_doc",
    "write_model_doc",
]

#: ``format`` of the training's model configuration (the ``config`` part of model.json).
MODEL_FORMAT = "piddpm-trained-model"
#: ``version`` of that configuration.
MODEL_FORMAT_VERSION = 1
#: Methods a model can implement (``rl`` needs no model).
MODEL_METHODS = options(Method)
#: Keys the registry adds to a model's configuration (``piddpm models bundle`` writes them).
REGISTRY_KEYS = ("aliases", "description", "modality", "restore_defaults")


# ------------------------------------------------------------------------- writing


def model_config(cfg: TrainConfig, **extra: Any) -> dict[str, Any]:
    """The ``model.json`` content: what is needed to rebuild and use the network."""
    from piddpm.config import make_ranges, mixture_weights
    from piddpm.training.checkpoints import _jsonable
    from piddpm.training.components import build_schedule, network_channels

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
        "version": MODEL_FORMAT_VERSION,
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


# ------------------------------------------------------------------------- reading


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
    net, info = load_network(path, device=device)
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        raise PiddpmError(
            f"{path}: not a model exported by piddpm train (its JSON 'config' lacks "
            f"format {MODEL_FORMAT!r})"
        )
    return net.eval(), info


def load_network(path: str | os.PathLike, *, device: str | torch.device = "cpu"):
    """Build the network a model file describes and load its weights.

    Parameters
    ----------
    path : path-like
        The stem, the ``.json`` or the ``.safetensors`` file of the model.
    device : str or torch.device

    Returns
    -------
    net : torch.nn.Module
        In eval mode.
    config : dict
        The ``config`` part of the JSON (what :func:`model_config` wrote, plus registry keys).

    Raises
    ------
    PiddpmError
        A file is missing or unreadable, or the weights do not match the architecture.
    """
    from piddpm.networks import load_model

    return load_model(path, device=device)


def read_model_doc(path: str | os.PathLike) -> dict[str, Any]:
    """The whole ``model.json`` (``format``, ``network``, ``config``, ...) as written.

    Raises
    ------
    PiddpmError
        If the file is unreadable or holds no ``config`` object.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise PiddpmError(f"cannot read model configuration {path}: {err}") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise PiddpmError(f"{path} is not a model written by piddpm.networks.save_model")
    return doc


def write_model_doc(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Write a whole ``model.json`` as :func:`piddpm.networks.save_model` lays it out
    (indent 2, sorted keys, trailing newline), atomically (a temporary file replaces it);
    returns the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def copy_model(weights: str | os.PathLike, config: str | os.PathLike, dest: str | os.PathLike):
    """Copy a model's two files byte for byte to ``dest/model.safetensors`` +
    ``dest/model.json`` (``dest`` must exist)."""
    dest = Path(dest)
    shutil.copyfile(weights, dest / "model.safetensors")
    shutil.copyfile(config, dest / "model.json")


# ---------------------------------------------------------------------- the registry


def read_model_config(path: Path) -> dict[str, Any]:
    """The registry's view of a ``model.json``: its ``config`` part, with the registry keys
    (``aliases``, ``description``, ``modality``, ``restore_defaults``) of the outer document
    where the inner one lacks them; a plain JSON configuration is taken as it is.

    Raises
    ------
    PiddpmError
        If the file is unreadable, not a JSON object, or names no known method.
    """
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise PiddpmError(f"cannot read model configuration {path}: {err}") from err
    except json.JSONDecodeError as err:
        raise PiddpmError(f"model configuration {path} is not valid JSON: {err}") from err
    if not isinstance(cfg, dict):
        raise PiddpmError(f"model configuration {path} must hold a JSON object")
    # networks.save_model wraps the training's model config: {"format", "network", "config"}
    inner = cfg.get("config")
    if cfg.get("format") == "piddpm-model" and isinstance(inner, dict):
        merged = dict(inner)
        for key in REGISTRY_KEYS:
            if key in cfg and key not in merged:
                merged[key] = cfg[key]
        cfg = merged
    method = cfg.get("method")
    if method not in MODEL_METHODS:
        raise PiddpmError(
            f"model configuration {path} has method {method!r}; expected one of "
            f"{', '.join(MODEL_METHODS)}"
        )
    return cfg
