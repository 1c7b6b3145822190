"""``piddpm models bundle``: make a registry model from a finished (or checkpointed) run.

What :func:`bundle` does, in order:

1. **Weights.** Copies the run's EMA weights ``RUN/model.safetensors`` + ``model.json``
   (written by :func:`piddpm.models.files.export_model` at the end of training), or, with
   ``from_checkpoint``, loads the newest ``RUN/checkpoints/step_*.json`` with
   :func:`piddpm.training.load_checkpoint` and writes its EMA network with
   :func:`piddpm.models.files.export_model` (the same format, not a copy of it).
2. **Restore defaults.** ``tune`` measures them with
   :func:`piddpm.models.tuning.tune_defaults` on synthetic *dev* pairs (seed
   :data:`~piddpm.models.tuning.DEV_SEED`); ``restore_defaults`` sets or overrides them.
3. **Registry keys.** Adds ``aliases``, ``description``, ``modality`` and
   ``restore_defaults`` to the model's configuration (read by :mod:`piddpm.models`).
4. **Held-out evaluation.** :func:`piddpm.models.tuning.evaluate` restores ``eval_n``
   synthetic pairs (seed :data:`~piddpm.models.tuning.EVAL_SEED`, different from the
   training, validation and dev seeds) with the model through :func:`piddpm.restore.restore`
   and its defaults, and with Richardson-Lucy (true PSF), and scores them with
   :mod:`piddpm.metrics`.
5. **Model card.** ``MODEL_CARD.md`` (:func:`piddpm.models.cards.model_card`), generated
   from the run's files and the evaluation.

Everything is written to a temporary folder first and moved into
``src/piddpm/models/NAME`` (or ``dest_root``) at the end.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from piddpm import PiddpmError
from piddpm.models.cards import model_card
from piddpm.models.files import (
    copy_model,
    export_model,
    load_trained,
    read_model_doc,
    write_model_doc,
)
from piddpm.models.tuning import (
    DEFAULT_KEYS,
    DEV_SEED,
    EVAL_SEED,
    MODEL_ONLY_KEYS,
    evaluate,
    restore_kwargs,
    restore_pairs,
    score,
    synthetic_pairs,
    tune_defaults,
    validate_defaults,
)
from piddpm.training.outputs import read_log

__all__ = [
    "DEFAULT_KEYS",
    "DEV_SEED",
    "EVAL_SEED",
    "MAX_BUNDLE_MB",
    "MODEL_ONLY_KEYS",
    "bundle",
    "evaluate",
    "export_weights",
    "model_card",
    "read_log",
    "restore_kwargs",
    "restore_pairs",
    "score",
    "synthetic_pairs",
    "tune_defaults",
    "validate_defaults",
]

#: Largest bundle (all files of one model) accepted without complaint.
MAX_BUNDLE_MB = 8.0


def export_weights(run_dir: Path, dest: Path, *, from_checkpoint: bool) -> dict[str, Any]:
    """Write ``dest/model.safetensors`` + ``dest/model.json`` (EMA weights) from a run.

    Parameters
    ----------
    run_dir : Path
        A ``piddpm train`` output folder.
    dest : Path
        Target folder (created).
    from_checkpoint : bool
        Use the newest checkpoint's EMA weights instead of ``RUN/model.safetensors``.

    Returns
    -------
    dict
        ``{"source": str, "step": int}``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if from_checkpoint:
        return _export_newest_checkpoint(run_dir, dest)
    return _copy_final_model(run_dir, dest)


def _copy_final_model(run_dir: Path, dest: Path) -> dict[str, Any]:
    """Copy the run's final ``model.safetensors`` + ``model.json`` (checked to load)."""
    from piddpm.training import list_checkpoints

    weights, cfg_path = run_dir / "model.safetensors", run_dir / "model.json"
    if not (weights.is_file() and cfg_path.is_file()):
        ckpts = list_checkpoints(run_dir)
        hint = (
            f"; it has checkpoints up to {ckpts[-1].stem}: pass --from-checkpoint" if ckpts else ""
        )
        raise PiddpmError(
            f"{run_dir} has no final model (model.safetensors + model.json): the run "
            f"has not finished{hint}"
        )
    load_trained(weights)  # checks the format and that the weights load
    copy_model(weights, cfg_path, dest)
    step = read_model_doc(cfg_path)["config"].get("training", {}).get("steps")
    return {"source": str(weights), "step": int(step or 0)}


def _export_newest_checkpoint(run_dir: Path, dest: Path) -> dict[str, Any]:
    """Export the EMA network of the run's newest checkpoint with :func:`export_model`."""
    import torch

    from piddpm import training
    from piddpm.training.checkpoints import checkpoint_config

    ckpts = training.list_checkpoints(run_dir)
    if not ckpts:
        raise PiddpmError(f"{run_dir} has no checkpoints (looked for checkpoints/step_*.json)")
    ckpt = ckpts[-1]
    cfg = checkpoint_config(ckpt)
    net = training.build_network(cfg)
    ema = training.EMA(net, cfg.ema_decay, cfg.ema_warmup)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optimizer.lr)
    meta = training.load_checkpoint(
        ckpt, net=net, ema=ema, optimizer=opt, scaler=None, restore_rng=False
    )
    step = int(meta["step"])
    val = [r for r in read_log(run_dir / "val.csv") if r.get("step", math.inf) <= step]
    log = [r for r in read_log(run_dir / "log.csv") if r.get("step", math.inf) <= step]
    extra: dict[str, Any] = {
        "steps": step,
        "exported_from_checkpoint": ckpt.name,
        # the checkpoint does not record the hardware; the run was on this machine's CPU
        "hardware": {
            "device": "cpu",
            "device_name": training.cpu_name(),
            "torch": torch.__version__,
        },
    }
    if val:
        extra["val_metrics"] = {
            "psnr_db": val[-1]["psnr_db"],
            "input_psnr_db": val[-1]["input_psnr_db"],
            "num_samples": int(val[-1]["num_samples"]),
            "step": int(val[-1]["step"]),
        }
    if log:
        extra["images_per_s"] = log[-1].get("images_per_s")
    export_model(dest / "model", ema.module.eval(), cfg, **extra)
    return {"source": str(ckpt), "step": step}


def _dir_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def bundle(
    run_dir: str | Path,
    name: str,
    *,
    aliases: tuple[str, ...] = (),
    from_checkpoint: bool = False,
    restore_defaults: dict[str, Any] | None = None,
    tune: bool = False,
    eval_n: int = 16,
    dest_root: str | Path | None = None,
    overwrite: bool = False,
    description: str | None = None,
    notes: tuple[str, ...] = (),
    log=print,
) -> Path:
    """Bundle a training run as a registry model (see the module docstring).

    Parameters
    ----------
    run_dir : path
        A ``piddpm train`` output folder.
    name : str
        Model folder name (e.g. ``pi-ddpm-widefield``).
    aliases : tuple of str
        Extra names the registry resolves to the model.
    from_checkpoint : bool
        Use the newest checkpoint's EMA weights instead of ``RUN/model.safetensors``.
    restore_defaults : dict, optional
        Restore defaults; they override the tuned ones (passed through as given).
    tune : bool
        Measure the restore defaults with :func:`piddpm.models.tuning.tune_defaults`.
    eval_n : int
        Held-out evaluation pairs (0: no evaluation).
    dest_root : path, optional
        Models folder (default: the registry, :data:`piddpm.models.MODELS_DIR`).
    overwrite : bool
        Replace an existing model folder.
    description : str, optional
        One-line summary (default: generated).
    notes : tuple of str
        Lines for the card's training section.
    log : callable
        Progress messages.

    Returns
    -------
    Path
        The model folder.

    Raises
    ------
    PiddpmError
        On a missing run, a bad name or alias, an existing folder without ``overwrite``,
        invalid restore defaults or a bundle over :data:`MAX_BUNDLE_MB`.
    """
    from piddpm.models import ALIASES, MODELS_DIR

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PiddpmError(f"run folder {run_dir} does not exist")
    if not name or "/" in name or name.startswith("."):
        raise PiddpmError(f"model name {name!r} must be a plain folder name")
    root = Path(dest_root) if dest_root is not None else MODELS_DIR
    final = root / name
    if final.exists() and not overwrite:
        raise PiddpmError(f"{final} exists; pass --overwrite to replace it")
    for a in aliases:
        if a in ALIASES and ALIASES[a] != name:
            raise PiddpmError(f"alias {a!r} is built in for {ALIASES[a]!r}, not {name!r}")
    root.mkdir(parents=True, exist_ok=True)
    # build outside the registry folder, so that no half-written model is ever listed
    work = Path(tempfile.mkdtemp(prefix=f"piddpm-bundle-{name}-"))
    try:
        log(f"exporting weights from {run_dir} ...")
        export = export_weights(run_dir, work, from_checkpoint=from_checkpoint)
        doc = read_model_doc(work / "model.json")
        cfg = doc["config"]
        method = cfg["method"]
        defaults: dict[str, Any] = {}
        trials = None
        if tune:
            log("tuning restore defaults on dev pairs ...")
            defaults, trials = tune_defaults(work, log=log)
        defaults.update(restore_defaults or {})
        if method == "unet":
            defaults = {
                k: v for k, v in defaults.items() if k in ("percentiles", "tile", "overlap")
            }
        validate_defaults(defaults, method)
        modality = (cfg.get("data") or {}).get("modality")
        cfg["modality"] = modality
        cfg["aliases"] = sorted(set(aliases))
        cfg["description"] = description or (
            f"{method} {cfg.get('preset')} model for {modality} images, {export['step']} "
            "training steps on synthetic data (demonstration quality)"
        )
        cfg["restore_defaults"] = defaults
        doc["config"] = cfg
        write_model_doc(work / "model.json", doc)
        evaluation = None
        if eval_n > 0:
            log(f"held-out evaluation on {eval_n} pairs (seed {EVAL_SEED}) ...")
            evaluation = evaluate(work, defaults, n=eval_n, log=log)
        card = model_card(
            name, cfg, run_dir, export, defaults, evaluation, trials, notes=tuple(notes)
        )
        (work / "MODEL_CARD.md").write_text(card, encoding="utf-8")
        size_mb = _dir_size_mb(work)
        if size_mb > MAX_BUNDLE_MB:
            raise PiddpmError(f"bundle {name} is {size_mb:.1f} MB, over {MAX_BUNDLE_MB} MB")
        if final.exists():
            shutil.rmtree(final)
        shutil.move(str(work), str(final))
        log(f"wrote {final} ({size_mb:.2f} MB)")
        return final
    finally:
        if work.exists():
            shutil.rmtree(work)
