#!/usr/bin/env python
"""Bundle a finished (or checkpointed) training run as a piddpm model with a model card.

Usage::

    python scripts/bundle_model.py runs/tiny-pi-ddpm-widefield --name pi-ddpm-widefield \\
        --alias widefield-tiny --tune

What it does, in order:

1. **Weights.** Copies the run's EMA weights ``RUN/model.safetensors`` + ``model.json``
   (written by :func:`piddpm.training.export_model` at the end of training), or, with
   ``--from-checkpoint``, loads the newest ``RUN/checkpoints/step_*.json`` with
   :func:`piddpm.training.load_checkpoint` and writes its EMA network with
   :func:`piddpm.training.export_model` (the training module's own format, not a copy of it).
2. **Restore defaults.** ``--tune`` measures them with :func:`tune_defaults` on synthetic
   *dev* pairs (seed :data:`DEV_SEED`); ``--restore-defaults JSON`` sets or overrides them.
3. **Registry keys.** Adds ``aliases``, ``description``, ``modality`` and
   ``restore_defaults`` to the model's configuration (read by :mod:`piddpm.models`).
4. **Held-out evaluation.** :func:`evaluate` restores ``--eval-n`` synthetic pairs (seed
   :data:`EVAL_SEED`, different from the training seed, the validation seed and the dev
   seed) with the model through :func:`piddpm.restore.restore` and its defaults, and with
   Richardson-Lucy (true PSF), and scores them with :mod:`piddpm.metrics`.
5. **Model card.** ``MODEL_CARD.md``, generated from the run's files and the evaluation.

Everything is written to a temporary folder first and moved into
``src/piddpm/models/NAME`` (or ``--dest``) at the end.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: Seed of the held-out evaluation pairs (training uses the run's seed, 0 for the example
#: configs; validation during training uses ``validation.seed``, 12345).
EVAL_SEED = 20261126
#: Seed of the dev pairs on which :func:`tune_defaults` chooses the sampler settings.
DEV_SEED = 777
#: Keys of ``restore_defaults`` and what :func:`piddpm.restore.restore` accepts for them.
DEFAULT_KEYS = (
    "sampler",
    "steps",
    "eta",
    "eta_ddim",
    "regulariser",
    "lam",
    "guidance",
    "percentiles",
    "tile",
    "overlap",
    "tile_margin",
    "guidance_norm",
    "std_scale",
    "std_floor",
)
#: Keys that restore reads from model.json only (no restore() argument).
MODEL_ONLY_KEYS = ("tile_margin", "guidance_norm", "std_scale", "std_floor")
#: Largest bundle (all files of one model) this script accepts without complaint.
MAX_BUNDLE_MB = 8.0


class BundleError(ValueError):
    """Bad input to the bundling script (a :class:`piddpm.PiddpmError` where importable)."""


def _error(msg: str) -> Exception:
    try:
        from piddpm import PiddpmError

        return PiddpmError(msg)
    except ImportError:  # pragma: no cover - piddpm is installed in the project venv
        return BundleError(msg)


# ----------------------------------------------------------------------------- run files


def read_csv(path: Path) -> list[dict[str, float]]:
    """Rows of a numeric CSV (``log.csv`` / ``val.csv``) as floats; [] if absent."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out = {}
            for k, v in row.items():
                try:
                    out[k] = float(v)
                except (TypeError, ValueError):
                    out[k] = math.nan
            rows.append(out)
    return rows


def _read_model_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise _error(f"cannot read model configuration {path}: {err}") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise _error(f"{path} is not a model written by piddpm.networks.save_model")
    return doc


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
    import torch

    from piddpm import training
    from piddpm.config import config_from_dict

    dest.mkdir(parents=True, exist_ok=True)
    if not from_checkpoint:
        weights, cfg_path = run_dir / "model.safetensors", run_dir / "model.json"
        if not (weights.is_file() and cfg_path.is_file()):
            ckpts = training.list_checkpoints(run_dir)
            hint = (
                f"; it has checkpoints up to {ckpts[-1].stem}: pass --from-checkpoint"
                if ckpts
                else ""
            )
            raise _error(
                f"{run_dir} has no final model (model.safetensors + model.json): the run "
                f"has not finished{hint}"
            )
        training.load_trained(weights)  # checks the format and that the weights load
        shutil.copyfile(weights, dest / "model.safetensors")
        shutil.copyfile(cfg_path, dest / "model.json")
        step = _read_model_doc(cfg_path)["config"].get("training", {}).get("steps")
        return {"source": str(weights), "step": int(step or 0)}

    ckpts = training.list_checkpoints(run_dir)
    if not ckpts:
        raise _error(f"{run_dir} has no checkpoints (looked for checkpoints/step_*.json)")
    ckpt = ckpts[-1]
    meta = json.loads(ckpt.read_text(encoding="utf-8"))
    cfg = config_from_dict(meta["config"], source=str(ckpt), check_libraries=False)
    net = training.build_network(cfg)
    ema = training.EMA(net, cfg.ema_decay, cfg.ema_warmup)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optimizer.lr)
    meta = training.load_checkpoint(
        ckpt, net=net, ema=ema, optimizer=opt, scaler=None, restore_rng=False
    )
    step = int(meta["step"])
    val = [r for r in read_csv(run_dir / "val.csv") if r.get("step", math.inf) <= step]
    log = [r for r in read_csv(run_dir / "log.csv") if r.get("step", math.inf) <= step]
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
    training.export_model(dest / "model", ema.module.eval(), cfg, **extra)
    return {"source": str(ckpt), "step": step}


# -------------------------------------------------------------------------- restoring


def _train_config(model_dir: Path):
    from piddpm.config import config_from_dict

    cfg = _read_model_doc(model_dir / "model.json")["config"]
    return config_from_dict(
        cfg["training"]["config"], source=str(model_dir / "model.json"), check_libraries=False
    )


def synthetic_pairs(model_dir: Path, *, n: int, seed: int, size: int) -> list[dict[str, Any]]:
    """``n`` synthetic pairs like the model's training data (same specimens, modality and
    microscope ranges), from :func:`piddpm.training.make_dataset` with ``seed``.

    Each pair: ``observed``, ``gt`` ``(size, size)`` float32 in model units (the observation
    min-max mapped to [-1, 1]), ``psf`` ``(k, k)`` unit sum, ``specimen``.
    """
    from piddpm.training import make_dataset

    ds = make_dataset(_train_config(model_dir), size=size, length=n, seed=seed, n_kernels=n)
    pairs = []
    for i in range(n):
        it = ds[i]
        pairs.append(
            {
                "observed": it["observed"][0].numpy(),
                "gt": it["gt"][0].numpy(),
                "psf": it["psf"][0].numpy(),
                "specimen": it["specimen"],
            }
        )
    return pairs


def restore_kwargs(defaults: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`piddpm.restore.restore` for a ``restore_defaults`` dict
    (explicit, so that tuning trials can override any one setting, ``tile`` included)."""
    kw = {
        k: v
        for k, v in defaults.items()
        if k in DEFAULT_KEYS and k not in MODEL_ONLY_KEYS and v is not None
    }
    if "percentiles" in kw:
        kw["percentiles"] = tuple(kw["percentiles"])
    return kw


def restore_pairs(
    model: str | Path,
    pairs: list[dict[str, Any]],
    settings: dict[str, Any],
    *,
    method=None,
    samples: int = 1,
) -> list[np.ndarray]:
    """Restore each pair's observation with :func:`piddpm.restore.restore` (seed = index;
    ``samples`` posterior samples averaged for diffusion models)."""
    from piddpm.restore import restore

    out = []
    for i, p in enumerate(pairs):
        kw = restore_kwargs(settings)
        if method == "rl":
            kw = {k: v for k, v in kw.items() if k in ("tile", "overlap")}
            res = restore(
                p["observed"], method="rl", psf=p["psf"], progress=False, device="cpu", **kw
            )
        else:
            res = restore(
                p["observed"],
                model=str(model),
                progress=False,
                device="cpu",
                seed=i,
                samples=samples,
                **kw,
            )
        out.append(np.asarray(res.mean, np.float64))
    return out


def score(est: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """PSNR (dB, data range = gt max - min), MS-SSIM (window/scales fitted to the size) and
    NRMSE of one restoration against its ground truth (both in model units)."""
    from piddpm.evaluation.scoring import ms_ssim_settings
    from piddpm.metrics import ms_ssim, nrmse, psnr

    gt = gt.astype(np.float64)
    if not np.isfinite(est).all():
        return {"psnr_db": math.nan, "ms_ssim": math.nan, "nrmse": math.nan}
    win, weights, _ = ms_ssim_settings(min(gt.shape))
    return {
        "psnr_db": float(psnr(est, gt)),
        "ms_ssim": float(ms_ssim(est, gt, win_size=win, weights=weights)),
        "nrmse": float(nrmse(est, gt)),
    }


def _mean_psnr(ests, pairs) -> float:
    vals = [score(e, p["gt"])["psnr_db"] for e, p in zip(ests, pairs, strict=True)]
    return float(np.mean(vals)) if all(np.isfinite(vals)) else -math.inf


def tune_defaults(
    model_dir: str | Path,
    *,
    n_pairs: int = 6,
    seed: int = DEV_SEED,
    size: int = 128,
    tile_size: int = 256,
    n_tile_pairs: int = 3,
    steps_grid: tuple[int, ...] = (5, 10, 20, 50),
    eta_grid: tuple[float, ...] = (2.5, 5.0, 10.0, 20.0, 40.0),
    lam_grid: tuple[float, ...] = (0.0, 0.015, 0.05, 0.1, 0.2, 0.4),
    tiles: tuple[int, ...] = (64, 128, 256),
    tolerance_db: float = 0.1,
    log=print,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Choose ``restore_defaults`` for a model by measurement on synthetic dev pairs.

    A coordinate search (cheap: a few minutes on a 2-core CPU for the tiny preset):

    1. diffusion models only (the U-Net has no sampler), on ``n_pairs`` pairs of ``size``
       px restored as one tile, starting from the settings the run validated with: for
       PI-DDPM ``guidance`` none vs learned with each ``eta`` of ``eta_grid``; then DDIM
       ``steps``; then the l1 regulariser weight ``lam`` (0 = regulariser none);
    2. ``tile`` (overlap = tile / 4) on ``n_tile_pairs`` pairs of ``tile_size`` px with the
       chosen sampler settings (the networks were trained on small patches with GroupNorm,
       whose statistics depend on the tile).

    Each coordinate keeps the cheapest value within ``tolerance_db`` of the best mean PSNR
    (fewest steps, smallest tile, no guidance / regulariser first).

    Parameters
    ----------
    model_dir : path
        Folder with ``model.json`` + ``model.safetensors``.
    n_pairs, seed, size : int
        Dev pairs (seed must differ from the evaluation seed) and their side in pixels.

    Returns
    -------
    defaults : dict
        ``restore_defaults`` (``sampler``, ``steps``, ``eta``, ``eta_ddim``, ``regulariser``,
        ``lam``, ``guidance``, ``percentiles``, ``tile``, ``overlap``; sampler keys only for
        diffusion models).
    trials : list of dict
        Every setting tried: ``stage``, ``value`` (label), ``settings``, ``psnr_db`` (mean over the pairs),
        ``seconds``.
    """
    model_dir = Path(model_dir)
    if seed == EVAL_SEED:
        raise _error(f"the dev seed must differ from the evaluation seed {EVAL_SEED}")
    cfg = _read_model_doc(model_dir / "model.json")["config"]
    method = cfg["method"]
    percentiles = list(cfg.get("percentiles") or [0.0, 100.0])
    current: dict[str, Any] = {"percentiles": percentiles}
    if method != "unet":
        s = cfg.get("sampler") or {}
        guidance = s.get("guidance", "auto")
        if guidance == "auto":
            guidance = "learned" if method == "pi-ddpm" else "none"
        current.update(
            sampler="ddim",
            steps=int(s.get("num_steps", 20)),
            eta=float(s.get("eta", 10.0)),
            eta_ddim=0.0,
            regulariser=s.get("regulariser", "l1"),
            lam=float(s.get("lam", 0.015)),
            guidance=guidance,
        )
    trials: list[dict[str, Any]] = []

    def try_one(stage: str, label: str, change: dict[str, Any], pairs) -> float:
        trial = {**current, **change}
        t0 = time.perf_counter()
        val = _mean_psnr(restore_pairs(model_dir, pairs, trial), pairs)
        dt = time.perf_counter() - t0
        trials.append(
            {"stage": stage, "value": label, "settings": trial, "psnr_db": val, "seconds": dt}
        )
        log(f"  {stage:9s} {label:22s} PSNR {val:7.3f} dB  ({dt:5.1f} s)")
        return val

    def sweep(stage: str, options: list[tuple[str, dict[str, Any]]], pairs) -> float:
        """Try each option (cheapest first) on top of ``current``; keep the cheapest one
        within ``tolerance_db`` of the best mean PSNR; return its PSNR."""
        scores = [try_one(stage, label, change, pairs) for label, change in options]
        best = max(scores)
        for (_label, change), sc in zip(options, scores, strict=True):
            if sc >= best - tolerance_db:
                current.update(change)
                return sc
        return best  # pragma: no cover - the best option always qualifies

    if method != "unet":
        pairs = synthetic_pairs(model_dir, n=n_pairs, seed=seed, size=size)
        base = _mean_psnr([p["observed"].astype(np.float64) for p in pairs], pairs)
        trials.append(
            {
                "stage": "input",
                "value": f"raw input, {size} px",
                "settings": {},
                "psnr_db": base,
                "seconds": 0.0,
            }
        )
        log(f"  {'input':9s} {f'raw input, {size} px':22s} PSNR {base:7.3f} dB")
        current.update(tile=size, overlap=size // 4)  # one tile: no tiling effects yet
        if method == "pi-ddpm":
            opts = [("none", {"guidance": "none"})] + [
                (f"learned, eta {e:g}", {"guidance": "learned", "eta": float(e)})
                for e in sorted(eta_grid)
                if e > 0
            ]
            sweep("guidance", opts, pairs)
        sweep("steps", [(str(n), {"steps": int(n)}) for n in sorted(steps_grid)], pairs)
        lam_opts = [
            (f"{lam:g}", {"lam": float(lam), "regulariser": "none" if lam == 0 else "l1"})
            for lam in sorted(lam_grid)
        ]
        # no larger weights: with the residual target, l1 on r0 shrinks the output towards
        # the input, so a large lam turns any model into the identity
        sweep("lam", lam_opts, pairs)
    big = synthetic_pairs(model_dir, n=n_tile_pairs, seed=seed, size=tile_size)
    base = _mean_psnr([p["observed"].astype(np.float64) for p in big], big)
    trials.append(
        {"stage": "input", "value": f"raw input, {tile_size} px", "settings": {},
         "psnr_db": base, "seconds": 0.0}
    )  # fmt: skip
    log(f"  {'input':9s} {f'raw input, {tile_size} px':22s} PSNR {base:7.3f} dB")
    sweep(
        "tile",
        [
            (f"{t} (overlap {t // 4})", {"tile": int(t), "overlap": int(t // 4)})
            for t in sorted(tiles)
            if t <= tile_size
        ],
        big,
    )
    return current, trials


def evaluate(
    model_dir: str | Path,
    defaults: dict[str, Any],
    *,
    n: int = 16,
    seed: int = EVAL_SEED,
    size: int = 128,
    mean_of: int = 4,
    log=print,
) -> dict[str, Any]:
    """Held-out evaluation: the model (with ``defaults``) vs the raw input vs RL (true PSF).

    Diffusion models are also scored as the mean of ``mean_of`` posterior samples (row
    ``model_mean``; 0 = not), the estimate ``--samples N`` gives.

    Returns
    -------
    dict
        ``rows``: per method (``input``, ``rl``, ``model``) the mean and std over the pairs
        of ``psnr_db``, ``ms_ssim``, ``nrmse``, and ``seconds`` (restoration wall time per
        image); ``wins_vs_input``: pairs where the model's PSNR beats the input's; ``n``,
        ``seed``, ``size``, ``ms_ssim_window``, ``ms_ssim_scales``, ``specimens``.
    """
    from piddpm.evaluation.scoring import ms_ssim_settings

    model_dir = Path(model_dir)
    pairs = synthetic_pairs(model_dir, n=n, seed=seed, size=size)
    results: dict[str, list[dict[str, float]]] = {}
    timing: dict[str, float] = {}
    results["input"] = [score(p["observed"].astype(np.float64), p["gt"]) for p in pairs]
    timing["input"] = 0.0
    runs = [("rl", "rl", 1), ("model", None, 1)]
    if mean_of > 1 and "sampler" in defaults:  # diffusion models only
        runs.append(("model_mean", None, mean_of))
    for key, method, samples in runs:
        t0 = time.perf_counter()
        ests = restore_pairs(model_dir, pairs, defaults, method=method, samples=samples)
        timing[key] = (time.perf_counter() - t0) / n
        results[key] = [score(e, p["gt"]) for e, p in zip(ests, pairs, strict=True)]
        log(f"  eval {key}: {timing[key]:.2f} s per image")
    rows = {}
    for key, vals in results.items():
        row = {}
        for m in ("psnr_db", "ms_ssim", "nrmse"):
            arr = np.array([v[m] for v in vals])
            row[m] = float(np.mean(arr))
            row[m + "_std"] = float(np.std(arr))
        row["seconds"] = timing[key]
        rows[key] = row
    wins = sum(
        m["psnr_db"] > i["psnr_db"] for m, i in zip(results["model"], results["input"], strict=True)
    )
    wins_rl = sum(
        m["psnr_db"] > r["psnr_db"] for m, r in zip(results["model"], results["rl"], strict=True)
    )
    win, weights, _ = ms_ssim_settings(size)
    specimens: dict[str, int] = {}
    for p in pairs:
        specimens[p["specimen"]] = specimens.get(p["specimen"], 0) + 1
    wins_rl_mean = (
        sum(
            m["psnr_db"] > r["psnr_db"]
            for m, r in zip(results["model_mean"], results["rl"], strict=True)
        )
        if "model_mean" in results
        else None
    )
    return {
        "rows": rows,
        "mean_of": mean_of if "model_mean" in results else None,
        "wins_mean_vs_rl": wins_rl_mean,
        "wins_vs_input": int(wins),
        "wins_vs_rl": int(wins_rl),
        "n": n,
        "seed": seed,
        "size": size,
        "ms_ssim_window": win,
        "ms_ssim_scales": len(weights),
        "specimens": specimens,
    }


# -------------------------------------------------------------------------- model card


def _fmt_range(v) -> str:
    if isinstance(v, list | tuple) and len(v) == 2:
        return f"{v[0]:g} to {v[1]:g}" if v[0] != v[1] else f"{v[0]:g}"
    return str(v)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


METHOD_TEXT = {
    "pi-ddpm": "PI-DDPM (physics-informed DDPM: the network predicts the noise and the "
    "gradient of the physics (re-blur) loss, used as learned guidance while sampling)",
    "ddpm": "DDPM (conditional denoising diffusion, no physics term)",
    "unet": "U-Net (direct supervised regression, one forward pass, no sampling)",
}


def model_card(
    name: str,
    cfg: dict[str, Any],
    run_dir: Path,
    export: dict[str, Any],
    defaults: dict[str, Any],
    evaluation: dict[str, Any] | None,
    tuning: list[dict[str, Any]] | None,
    notes: tuple[str, ...] = (),
) -> str:
    """The ``MODEL_CARD.md`` text, generated from the model configuration, the run's
    ``log.csv`` / ``val.csv`` and the held-out evaluation."""
    from piddpm.training import cpu_name

    method = cfg["method"]
    data = cfg.get("data", {})
    tr = cfg.get("training", {})
    tcfg = tr.get("config", {})
    modality = data.get("modality", "unknown")
    step = int(export.get("step") or tr.get("steps") or 0)
    log_rows = [r for r in read_csv(run_dir / "log.csv") if r.get("step", math.inf) <= step]
    val_rows = [r for r in read_csv(run_dir / "val.csv") if r.get("step", math.inf) <= step]
    last = log_rows[-1] if log_rows else {}
    hw = cfg.get("hardware") or {}
    wall = last.get("time_s", math.nan)
    lines: list[str] = []
    add = lines.append
    add(f"# {name}")
    add("")
    add(
        f"{METHOD_TEXT.get(method, method)}, `{cfg.get('preset')}` preset, trained for {step} "
        f"steps on synthetic {modality} images. A demonstration-quality model, not a "
        "production model."
    )
    add("")
    from piddpm.models import ALIASES

    aliases = sorted({a for a, t in ALIASES.items() if t == name} | set(cfg.get("aliases") or []))
    add(f"- Aliases: {', '.join(aliases) or 'none'}")
    add(f"- Method: `{method}`; modality: **{modality}**")
    add(f"- Source: `{run_dir.name}` ({Path(export['source']).name}), piddpm "
        f"{cfg.get('piddpm_version', '?')}")  # fmt: skip
    add(f"- Bundled: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    add("")
    add("## Training")
    add("")
    weights = data.get("specimen_weights") or {}
    mix = ", ".join(f"{k} {v:.2f}" for k, v in weights.items()) or str(data.get("specimens"))
    add(f"- Training steps: {step} (batch {tr.get('batch_size')}, "
        f"{step * int(tr.get('batch_size') or 0)} images), patch size "
        f"{data.get('patch_size')} x {data.get('patch_size')} px, PSF kernel "
        f"{data.get('psf_size')} px")  # fmt: skip
    add(f"- Specimen mixture (weights): {mix}")
    add(f"- Normalisation: {cfg.get('normalisation')} (observation min/max -> -1/1); "
        f"restore maps percentiles {cfg.get('percentiles')} of each plane to -1/1")  # fmt: skip
    opt = tcfg.get("optimizer", {})
    add(f"- Optimiser: AdamW, lr {opt.get('lr')}, warm-up {opt.get('warmup_steps')} steps, "
        f"{opt.get('lr_decay')} decay; EMA decay {tr.get('ema_decay')}; precision "
        f"{tr.get('precision')}; seed {tr.get('seed')}")  # fmt: skip
    if method != "unet":
        ts = cfg.get("training_schedule") or {}
        add(f"- Noise schedule (training): {ts.get('kind')} T={ts.get('T')}; target "
            f"`{cfg.get('target')}`" + (f"; physics weight {cfg.get('physics_weight')} "
            f"({cfg.get('physics_norm')})" if method == "pi-ddpm" else ""))  # fmt: skip
    sw = ", ".join(
        x
        for x in (
            f"torch {hw['torch']}" if hw.get("torch") else "",
            f"{hw['cpu_threads']} torch thread(s)" if hw.get("cpu_threads") else "",
        )
        if x
    )
    on_gpu = hw.get("device") == "cuda"
    if on_gpu:
        add(f"- Hardware: GPU, {hw.get('device_name')}" + (f"; {sw}" if sw else ""))
    else:
        add(
            f"- Hardware: CPU, 2 cores ({hw.get('device_name') or cpu_name()}), trained "
            "while other jobs shared the machine" + (f"; {sw}" if sw else "")
        )
    if tr.get("stopped_by_time_limit") or tcfg.get("max_time_s"):
        add(f"- Time-boxed: `max_time_s` {tcfg.get('max_time_s')} s per invocation; the run "
            f"ended on its time limit at step {step}")  # fmt: skip
    if tcfg.get("batch_reuse", 1) > 1:
        add(f"- Each simulated batch served {tcfg['batch_reuse']} steps (rotated/flipped "
            "copies; `batch_reuse`)")  # fmt: skip
    for note in notes:
        add(f"- {note}")
    add(f"- Wall time: {_hms(wall)} ({last.get('images_per_s', math.nan):.1f} images/s at the "
        "end)")  # fmt: skip
    if log_rows:
        tail = log_rows[-5:]
        add(f"- Final training loss: {last['loss']:.4f} (mean of the last {len(tail)} "
            f"log rows: {np.mean([r['loss'] for r in tail]):.4f}; first row "
            f"{log_rows[0]['loss']:.4f} at step {int(log_rows[0]['step'])})")  # fmt: skip
    add("")
    add("### Microscope and camera ranges of the training data")
    add("")
    add("| parameter | range |")
    add("|---|---|")
    for k, v in (data.get("ranges") or {}).items():
        add(f"| {k} | {_fmt_range(v)} |")
    add("")
    add("### Validation during training")
    add("")
    if val_rows:
        vs = cfg.get("sampler") or {}
        how = (
            "one forward pass"
            if method == "unet"
            else f"DDIM {vs.get('num_steps')} steps, guidance {vs.get('guidance')}"
        )
        add(f"PSNR (dB) on {int(val_rows[-1]['num_samples'])} fixed validation pairs "
            f"({data.get('patch_size')} px, {how}):")  # fmt: skip
        add("")
        add("| step | restored | input | gain |")
        add("|---:|---:|---:|---:|")
        for r in val_rows:
            add(f"| {int(r['step'])} | {r['psnr_db']:.2f} | {r['input_psnr_db']:.2f} | "
                f"{r['psnr_db'] - r['input_psnr_db']:+.2f} |")  # fmt: skip
        best = max(val_rows, key=lambda r: r["psnr_db"])
        add("")
        add(f"Best {best['psnr_db']:.2f} dB at step {int(best['step'])}; final "
            f"{val_rows[-1]['psnr_db']:.2f} dB.")  # fmt: skip
    else:
        add("No validation rows were recorded up to this step.")
    add("")
    add("## Restore defaults")
    add("")
    add("Used by `piddpm.restore` / `piddpm restore` when the caller leaves them unset:")
    add("")
    add("```json")
    add(json.dumps(defaults, indent=2, sort_keys=True))
    add("```")
    add("")
    norm = (tcfg.get("model") or {}).get("overrides", {}).get("norm", "group")
    if "tile" in defaults and norm in ("layer", "none"):
        add(f"`tile`/`overlap` set speed, not quality: the network normalises each pixel "
            f"({norm} norm), so its output does not depend on the rest of the tile, and the "
            f"outer `tile_margin` pixels of each inner tile edge get no blending weight; "
            f"tiled and untiled restores agree (tested).")  # fmt: skip
        add("")
    elif "tile" in defaults:
        add(f"`tile`/`overlap` are recommendations: pass `tile={defaults['tile']}, "
            f"overlap={defaults.get('overlap')}` (CLI `--tile`/`--overlap`); the network was "
            f"trained on {data.get('patch_size')} px patches with GroupNorm, whose statistics "
            "depend on the tile size.")  # fmt: skip
        add("")
    if tuning:
        add(f"Chosen by `scripts/bundle_model.py` `tune_defaults` on synthetic dev pairs "
            f"(seed {DEV_SEED}), coordinate search, mean PSNR (dB):")  # fmt: skip
        add("")
        add("| stage | value | PSNR | seconds |")
        add("|---|---|---:|---:|")
        for t in tuning:
            add(f"| {t['stage']} | {t['value']} | {t['psnr_db']:.2f} | "
                f"{t['seconds']:.1f} |")  # fmt: skip
        add("")
    add("## Held-out evaluation")
    add("")
    if evaluation:
        ev = evaluation
        spec = ", ".join(f"{k} {v}" for k, v in sorted(ev["specimens"].items()))
        add(f"{ev['n']} synthetic {modality} pairs of {ev['size']} x {ev['size']} px from "
            f"`piddpm.data.PairedDataset` (seed {ev['seed']}, not seen in training or "
            f"validation; specimens: {spec}), same microscope ranges as training. Metrics "
            f"from `piddpm.metrics` against the ground truth in model units: PSNR (data "
            f"range = ground-truth max - min), MS-SSIM ({ev['ms_ssim_window']}-px window, "
            f"{ev['ms_ssim_scales']} scales), NRMSE. Mean +- std over the pairs.")  # fmt: skip
        add("")
        add("| method | PSNR (dB) | MS-SSIM | NRMSE | s / image |")
        add("|---|---:|---:|---:|---:|")
        labels = {
            "input": "raw input",
            "rl": "Richardson-Lucy (true PSF, automatic stop)",
            "model": f"{name} (restore defaults)",
            "model_mean": f"{name}, mean of {ev.get('mean_of')} samples (`--samples "
            f"{ev.get('mean_of')}`)",
        }
        for key in ("input", "rl", "model", "model_mean"):
            if key not in ev["rows"]:
                continue
            r = ev["rows"][key]
            add(f"| {labels[key]} | {r['psnr_db']:.2f} +- {r['psnr_db_std']:.2f} | "
                f"{r['ms_ssim']:.3f} +- {r['ms_ssim_std']:.3f} | {r['nrmse']:.3f} +- "
                f"{r['nrmse_std']:.3f} | {r['seconds']:.2f} |")  # fmt: skip
        add("")
        add(f"The model beats the raw input in PSNR on {ev['wins_vs_input']} of {ev['n']} "
            f"pairs and Richardson-Lucy on {ev['wins_vs_rl']} of {ev['n']}"
            + (f"; the mean of {ev['mean_of']} samples beats Richardson-Lucy on "
               f"{ev['wins_mean_vs_rl']} of {ev['n']}" if ev.get("mean_of") else "")
            + ". Timings: this 2-core CPU, one thread.")  # fmt: skip
        rows = ev["rows"]
        if rows["model"]["psnr_db"] <= rows["input"]["psnr_db"]:
            add("")
            add(
                "**Warning: on average this model does not improve on the raw input** "
                "(too few training steps); use it only to try the pipeline."
            )
        elif rows["model"]["psnr_db"] <= rows["rl"]["psnr_db"]:
            add("")
            better = rows.get("model_mean", {}).get("psnr_db", -math.inf) > rows["rl"]["psnr_db"]
            add(
                "On average Richardson-Lucy with the true PSF does better than one sample of "
                "this model"
                + (
                    f"; the mean of {ev['mean_of']} samples does better than Richardson-Lucy."
                    if better
                    else "."
                )
            )
    else:
        add("Not evaluated (`--eval-n 0`).")
    add("")
    add("## Intended use and limits")
    add("")
    ranges = data.get("ranges") or {}
    where = "for a few minutes on one GPU" if on_gpu else "on a 2-core CPU"
    add(f"- **Demonstration quality.** A `{cfg.get('preset')}` network trained for only "
        f"{step} steps {where}: good enough to try the pipeline, the demo and the "
        "benchmarks, not for scientific conclusions or production use.")  # fmt: skip
    add(f"- **Modality: {modality} only.** Trained on {modality} PSFs only; on other "
        "modalities expect poor results.")  # fmt: skip
    add(f"- **Sampling near Nyquist.** Pixel sizes were {_fmt_range(ranges.get('pixel_nyquist_factor'))} "
        f"x the Nyquist pixel lambda_em / (4 NA), NA {_fmt_range(ranges.get('na'))}, emission "
        f"{_fmt_range(ranges.get('em_wavelength_nm'))} nm; give the microscope (`--na`, "
        "`--em-nm`, pixel size) and restore resamples planes sampled outside this range into "
        "it and back; without it, such images are outside the training distribution.")  # fmt: skip
    add("- **2D only.** Each plane is restored independently; a z-stack gets no 3-D "
        "deconvolution.")  # fmt: skip
    add("- **Synthetic data only.** Trained on simulated specimens with Poisson + Gaussian "
        f"camera noise (photons {_fmt_range(ranges.get('photons'))} at the peak); real "
        "images with other noise, backgrounds, or structures unlike the specimen mixture may "
        "give artefacts (hallucinated or missing structure).")  # fmt: skip
    if method != "unet":
        add("- Diffusion output is a sample from a learned posterior: use `samples > 1` "
            "to see the per-pixel spread; a single sample can show plausible but wrong "
            "detail.")  # fmt: skip
    add("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def _dir_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def validate_defaults(defaults: dict[str, Any], method: str) -> None:
    """Raise :class:`piddpm.PiddpmError` if a ``restore_defaults`` entry is unknown or has a
    value :func:`piddpm.restore.restore` would refuse."""
    from piddpm.restore import GUIDANCES, REGULARISERS, SAMPLERS

    unknown = sorted(set(defaults) - set(DEFAULT_KEYS))
    if unknown:
        raise _error(f"restore_defaults: unknown key(s) {unknown}; expected some of "
                     f"{list(DEFAULT_KEYS)}")  # fmt: skip
    checks = {
        "sampler": lambda v: v in SAMPLERS,
        "guidance": lambda v: v in GUIDANCES and not (method != "pi-ddpm" and v in ("learned", "both")),
        "regulariser": lambda v: v in REGULARISERS,
        "steps": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "tile": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 16,
        "overlap": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < defaults.get("tile", 256),
        "tile_margin": lambda v: isinstance(v, int) and not isinstance(v, bool) and 2 * v < defaults.get("overlap", 32),
        "guidance_norm": lambda v: v in ("per-image", "none"),
        "std_scale": lambda v: isinstance(v, int | float) and math.isfinite(v) and v > 0,
        "std_floor": lambda v: isinstance(v, int | float) and math.isfinite(v) and v >= 0,
        "eta": lambda v: isinstance(v, int | float) and math.isfinite(v) and v >= 0,
        "eta_ddim": lambda v: isinstance(v, int | float) and math.isfinite(v) and v >= 0,
        "lam": lambda v: isinstance(v, int | float) and math.isfinite(v) and v >= 0,
        "percentiles": lambda v: isinstance(v, list | tuple) and len(v) == 2
        and 0 <= v[0] < v[1] <= 100,
    }  # fmt: skip
    for k, v in defaults.items():
        if not checks[k](v):
            raise _error(f"restore_defaults: {k} = {v!r} is not valid for a {method} model")


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
    """Bundle ``run_dir`` as model ``name`` (see the module docstring); returns its folder."""
    from piddpm.models import ALIASES, MODELS_DIR

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise _error(f"run folder {run_dir} does not exist")
    if not name or "/" in name or name.startswith("."):
        raise _error(f"model name {name!r} must be a plain folder name")
    root = Path(dest_root) if dest_root is not None else MODELS_DIR
    final = root / name
    if final.exists() and not overwrite:
        raise _error(f"{final} exists; pass --overwrite to replace it")
    for a in aliases:
        if a in ALIASES and ALIASES[a] != name:
            raise _error(f"alias {a!r} is built in for {ALIASES[a]!r}, not {name!r}")
    root.mkdir(parents=True, exist_ok=True)
    # build outside the registry folder, so that no half-written model is ever listed
    work = Path(tempfile.mkdtemp(prefix=f"piddpm-bundle-{name}-"))
    try:
        log(f"exporting weights from {run_dir} ...")
        export = export_weights(run_dir, work, from_checkpoint=from_checkpoint)
        doc = _read_model_doc(work / "model.json")
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
        (work / "model.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
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
            raise _error(f"bundle {name} is {size_mb:.1f} MB, over {MAX_BUNDLE_MB} MB")
        if final.exists():
            shutil.rmtree(final)
        shutil.move(str(work), str(final))
        log(f"wrote {final} ({size_mb:.2f} MB)")
        return final
    finally:
        if work.exists():
            shutil.rmtree(work)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Bundle a piddpm training run as a model in src/piddpm/models/NAME.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, help="piddpm train output folder")
    p.add_argument("--name", required=True, help="model folder name (e.g. pi-ddpm-widefield)")
    p.add_argument("--alias", action="append", default=[], help="extra name (repeatable)")
    p.add_argument("--description", default=None, help="one-line summary (default: generated)")
    p.add_argument(
        "--note", action="append", default=[], help="a line for the card's training section"
    )
    p.add_argument(
        "--from-checkpoint",
        action="store_true",
        help="use the newest checkpoint's EMA weights instead of RUN/model.safetensors",
    )
    p.add_argument(
        "--restore-defaults",
        default=None,
        help="JSON object of restore defaults (sampler, steps, eta, eta_ddim, regulariser, "
        "lam, guidance, percentiles, tile, overlap); overrides --tune's",
    )
    p.add_argument("--tune", action="store_true", help="measure restore defaults (tune_defaults)")
    p.add_argument("--eval-n", type=int, default=16, help="held-out evaluation pairs (0: none)")
    p.add_argument("--dest", type=Path, default=None, help="models folder (default: the registry)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    import torch

    from piddpm import PiddpmError

    torch.set_num_threads(args.threads)
    try:
        defaults = json.loads(args.restore_defaults) if args.restore_defaults else None
        if defaults is not None and not isinstance(defaults, dict):
            raise PiddpmError("--restore-defaults must be a JSON object")
        bundle(
            args.run_dir,
            args.name,
            aliases=tuple(args.alias),
            from_checkpoint=args.from_checkpoint,
            restore_defaults=defaults,
            tune=args.tune,
            eval_n=args.eval_n,
            dest_root=args.dest,
            overwrite=args.overwrite,
            description=args.description,
            notes=tuple(args.note),
        )
    except json.JSONDecodeError as err:
        print(f"error: --restore-defaults is not valid JSON: {err}", file=sys.stderr)
        return 2
    except PiddpmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
