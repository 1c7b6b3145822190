"""Restore defaults of a bundled model: their keys, their validation, their measurement on
synthetic dev pairs (:func:`tune_defaults`), and the held-out evaluation of a model with them
(:func:`evaluate`). Used by ``piddpm models bundle``.

Restorations go through :func:`piddpm.restore.restore`; scores are :mod:`piddpm.metrics`
with the MS-SSIM window/scales of :func:`piddpm.evaluation.scoring.ms_ssim_settings`; the
synthetic pairs are :func:`piddpm.training.make_dataset` with the model's training data.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from piddpm import PiddpmError
from piddpm.models.files import read_model_doc

#: Seed of the held-out evaluation pairs (training uses the run's seed, 0 for the example
#: configs; validation during training uses ``validation.seed``, 12345).
EVAL_SEED = 20261126
#: Seed of the dev pairs on which :func:`tune_defaults` chooses the sampler settings.
DEV_SEED = 777

#: Keys that restore reads from model.json only (no restore() argument).
MODEL_ONLY_KEYS = (
    "tile_margin",
    "border_pad",
    "guidance_norm",
    "std_scale",
    "std_floor",
    "std_gradient",
    "autocast",
)

#: Keys of ``restore_defaults``: those :func:`piddpm.restore.restore` also accepts as
#: arguments, then the model-only ones.
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
    *MODEL_ONLY_KEYS,
)


def validate_defaults(defaults: dict[str, Any], method: str) -> None:
    """Raise :class:`piddpm.PiddpmError` if a ``restore_defaults`` entry is unknown or has a
    value :func:`piddpm.restore.restore` would refuse."""
    from piddpm.diffusion.settings import SamplerConfig, resolve_sampler_config

    unknown = sorted(set(defaults) - set(DEFAULT_KEYS))
    if unknown:
        raise PiddpmError(f"restore_defaults: unknown key(s) {unknown}; expected some of "
                     f"{list(DEFAULT_KEYS)}")  # fmt: skip
    # the sampler settings are checked by the one sampler contract, SamplerConfig
    sampler_keys = {k: v for k, v in defaults.items() if k in SamplerConfig.model_fields}
    config = resolve_sampler_config(sampler_keys, where=f"restore_defaults of a {method} model")
    if method != "pi-ddpm" and config.guidance in ("learned", "both"):
        raise PiddpmError(
            f"restore_defaults: guidance = {config.guidance!r} is not valid for a {method} model"
        )
    checks = {
        "autocast": lambda v: isinstance(v, bool),
        "tile": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 16,
        "overlap": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < defaults.get("tile", 256),
        "tile_margin": lambda v: isinstance(v, int) and not isinstance(v, bool) and 2 * v < defaults.get("overlap", 32),
        "border_pad": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 256,
        "std_scale": lambda v: isinstance(v, int | float) and math.isfinite(v) and v > 0,
        "std_floor": lambda v: isinstance(v, int | float) and math.isfinite(v) and v >= 0,
        "std_gradient": lambda v: isinstance(v, int | float) and math.isfinite(v) and v >= 0,
        "percentiles": lambda v: isinstance(v, list | tuple) and len(v) == 2
        and 0 <= v[0] < v[1] <= 100,
    }  # fmt: skip
    for k, v in defaults.items():
        if k in checks and not checks[k](v):
            raise PiddpmError(f"restore_defaults: {k} = {v!r} is not valid for a {method} model")


def _train_config(model_dir: Path):
    from piddpm.config import config_from_dict

    cfg = read_model_doc(model_dir / "model.json")["config"]
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


class _CoordinateSearch:
    """The state of :func:`tune_defaults`: the settings chosen so far and every trial."""

    def __init__(self, model_dir: Path, current: dict[str, Any], tolerance_db: float, log):
        self.model_dir, self.current = model_dir, current
        self.tolerance_db, self.log = tolerance_db, log
        self.trials: list[dict[str, Any]] = []

    def input_baseline(self, pairs, label: str) -> float:
        """Record the raw input's mean PSNR on ``pairs`` (a trial of stage ``input``)."""
        base = _mean_psnr([p["observed"].astype(np.float64) for p in pairs], pairs)
        self.trials.append(
            {"stage": "input", "value": label, "settings": {}, "psnr_db": base, "seconds": 0.0}
        )
        self.log(f"  {'input':9s} {label:22s} PSNR {base:7.3f} dB")
        return base

    def try_one(self, stage: str, label: str, change: dict[str, Any], pairs) -> float:
        """Mean PSNR of the current settings with ``change`` on ``pairs`` (recorded)."""
        trial = {**self.current, **change}
        t0 = time.perf_counter()
        val = _mean_psnr(restore_pairs(self.model_dir, pairs, trial), pairs)
        dt = time.perf_counter() - t0
        self.trials.append(
            {"stage": stage, "value": label, "settings": trial, "psnr_db": val, "seconds": dt}
        )
        self.log(f"  {stage:9s} {label:22s} PSNR {val:7.3f} dB  ({dt:5.1f} s)")
        return val

    def sweep(self, stage: str, options: list[tuple[str, dict[str, Any]]], pairs) -> float:
        """Try each option (cheapest first) on top of the current settings; keep the cheapest
        one within ``tolerance_db`` of the best mean PSNR; return its PSNR."""
        scores = [self.try_one(stage, label, change, pairs) for label, change in options]
        best = max(scores)
        for (_label, change), sc in zip(options, scores, strict=True):
            if sc >= best - self.tolerance_db:
                self.current.update(change)
                return sc
        return best  # pragma: no cover - the best option always qualifies


def _validated_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The restore settings a run validated with (the start of the search)."""
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
    return current


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
        raise PiddpmError(f"the dev seed must differ from the evaluation seed {EVAL_SEED}")
    cfg = read_model_doc(model_dir / "model.json")["config"]
    method = cfg["method"]
    search = _CoordinateSearch(model_dir, _validated_settings(cfg), tolerance_db, log)
    if method != "unet":
        pairs = synthetic_pairs(model_dir, n=n_pairs, seed=seed, size=size)
        search.input_baseline(pairs, f"raw input, {size} px")
        search.current.update(tile=size, overlap=size // 4)  # one tile: no tiling effects yet
        if method == "pi-ddpm":
            opts = [("none", {"guidance": "none"})] + [
                (f"learned, eta {e:g}", {"guidance": "learned", "eta": float(e)})
                for e in sorted(eta_grid)
                if e > 0
            ]
            search.sweep("guidance", opts, pairs)
        search.sweep("steps", [(str(n), {"steps": int(n)}) for n in sorted(steps_grid)], pairs)
        lam_opts = [
            (f"{lam:g}", {"lam": float(lam), "regulariser": "none" if lam == 0 else "l1"})
            for lam in sorted(lam_grid)
        ]
        # no larger weights: with the residual target, l1 on r0 shrinks the output towards
        # the input, so a large lam turns any model into the identity
        search.sweep("lam", lam_opts, pairs)
    big = synthetic_pairs(model_dir, n=n_tile_pairs, seed=seed, size=tile_size)
    search.input_baseline(big, f"raw input, {tile_size} px")
    search.sweep(
        "tile",
        [
            (f"{t} (overlap {t // 4})", {"tile": int(t), "overlap": int(t // 4)})
            for t in sorted(tiles)
            if t <= tile_size
        ],
        big,
    )
    return search.current, search.trials


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
