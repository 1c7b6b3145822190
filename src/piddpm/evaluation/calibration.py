"""Calibrated spread: fit how a diffusion model's posterior std maps to its error, on
synthetic dev pairs.

The per-pixel std over a few posterior samples is too narrow or too wide for a given model
(measured: 1/2/3-sigma coverage errors of 0.12-0.29 on synthetic test pairs before this
step), and its error is heavy-tailed: concentrated at edges. :func:`calibrate_spread`
restores synthetic pairs drawn like the model's training data (a *dev* seed, never the test
seed), fits the spread ``c * std + f + g * |grad mean|`` with
:func:`piddpm.metrics.fit_spread` (a scale, a floor, and spread in proportion to the local
gradient of the restored mean), and reports the coverage on a second, held-out set (test
seed) before and after, beside the scale-and-floor-only fit. :func:`store_std_scale` writes
``c``, ``f`` and ``g`` into model.json's ``restore_defaults`` (``std_scale``, ``std_floor``,
``std_gradient``), which :func:`piddpm.restore.restore` applies to the std it returns
(``--uncertainty``).

Run it as ``python scripts/calibrate_spread.py MODEL_DIR``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from piddpm import PiddpmError
from piddpm.choices import DiffusionMethod
from piddpm.choices import options as choice_options

__all__ = ["calibrate_spread", "store_std_scale", "DEV_SEED", "TEST_SEED"]

#: Seeds of the synthetic pairs: the scale is fitted on DEV_SEED, reported on TEST_SEED.
DEV_SEED, TEST_SEED = 2024, 4242


def _pairs(entry, n: int, size: int, seed: int):
    from piddpm.config import TrainConfig
    from piddpm.training import make_dataset

    train = (entry.config.get("training") or {}).get("config")
    if not train:
        raise PiddpmError(
            f"model {entry.name}: model.json has no training configuration to draw pairs from"
        )
    cfg = TrainConfig.model_validate(train)
    ds = make_dataset(cfg, size=size, length=n, seed=seed, n_kernels=min(64, cfg.data.n_kernels))
    return [ds[i] for i in range(n)]


def _restore_pairs(model, pairs, samples: int, options: dict[str, Any]):
    from piddpm.metrics import mean_gradient
    from piddpm.normalisation import intensity_range
    from piddpm.restore import restore

    means, stds, gts = [], [], []
    for i, item in enumerate(pairs):
        obs = item["observed"][0].numpy()
        lo, hi = intensity_range(obs)
        half = (hi - lo) / 2  # restore's model units: errors and spreads in units of this
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            res = restore(obs, model=model, samples=samples, seed=i, progress=False, **options)
        md = res.metadata
        mean = np.asarray(res.mean, np.float64) / half
        # undo a calibration already in the model: spread = c * raw + f + g * |grad mean|
        extra = (md.get("std_floor") or 0.0) + (md.get("std_gradient") or 0.0) * mean_gradient(mean)
        raw = (np.asarray(res.std, np.float64) / half - extra) / max(
            md.get("std_scale") or 1.0, 1e-12
        )
        means.append(mean)
        stds.append(np.clip(raw, 0.0, None))
        gts.append(item["gt"][0].numpy().astype(np.float64) / half)
    return np.stack(means), np.stack(stds), np.stack(gts)


def calibrate_spread(
    model: str | os.PathLike,
    *,
    pairs: int = 16,
    size: int = 128,
    samples: int = 4,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit the std factor of a diffusion model and measure its coverage before and after.

    Parameters
    ----------
    model : str or path
        A bundled name or a model folder.
    pairs : int
        Synthetic pairs per set (dev for the fit, test for the report).
    size : int
        Side of the pairs in pixels.
    samples : int
        Posterior samples per restoration (the std is over these); use what users will use.
    options : dict, optional
        Further :func:`piddpm.restore.restore` keywords (sampler settings).

    Returns
    -------
    dict
        ``std_scale``, ``samples``, ``dev`` and ``test`` (each ``before`` / ``after``:
        observed coverage at 1/2/3 sigma and mean absolute coverage error).
    """
    from piddpm.metrics import fit_spread, fit_std_scale, mean_gradient, uncertainty_calibration
    from piddpm.models import resolve_model

    if samples < 2:
        raise PiddpmError(f"calibration needs samples >= 2 (a std), got {samples}")
    entry = resolve_model(model)
    if entry.method not in choice_options(DiffusionMethod):
        raise PiddpmError(f"model {entry.name} is a {entry.method}: it has no posterior spread")
    opts = dict(options or {})
    out: dict[str, Any] = {"samples": samples, "pairs": pairs, "size": size, "options": opts}
    dev = _restore_pairs(model, _pairs(entry, pairs, size, DEV_SEED), samples, opts)
    fit = fit_spread(*dev)
    scale, floor, grad_w = fit["scale"], fit["floor"], fit["gradient"]
    plain_scale, plain_floor, plain_dev = fit_std_scale(*dev, floor=True)
    test = _restore_pairs(model, _pairs(entry, pairs, size, TEST_SEED), samples, opts)
    test_mean, test_std, test_gt = test

    def summary(cal):
        return {
            "observed": [round(float(v), 4) for v in cal["observed"]],
            "mean_abs_error": round(float(cal["mean_abs_error"]), 4),
        }

    spread = scale * test_std + floor + grad_w * mean_gradient(test_mean)
    plain = plain_scale * test_std + plain_floor
    out.update(
        std_scale=round(scale, 4),
        std_floor=round(floor, 5),
        std_gradient=round(grad_w, 5),
        spread="std_scale * std + std_floor + std_gradient * |grad mean| (model units)",
        expected=[0.6827, 0.9545, 0.9973],
        dev={
            "seed": DEV_SEED,
            "before": summary(uncertainty_calibration(*dev)),
            "after": summary(fit["calibration"]),
        },
        test={
            "seed": TEST_SEED,
            "before": summary(uncertainty_calibration(*test)),
            "after": summary(uncertainty_calibration(test_mean, spread, test_gt)),
        },
        scale_and_floor_only={
            "std_scale": round(plain_scale, 4),
            "std_floor": round(plain_floor, 5),
            "dev": summary(plain_dev),
            "test": summary(uncertainty_calibration(test_mean, plain, test_gt)),
        },
    )
    return out


def store_std_scale(model_dir: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Write the fitted spread (``std_scale``, ``std_floor``, ``std_gradient``) and the
    measurement into ``model_dir/model.json`` (``restore_defaults``, ``calibration``);
    atomic replace."""
    from piddpm.models.files import read_model_doc, write_model_doc

    path = Path(model_dir) / "model.json"
    if not path.is_file():
        raise PiddpmError(f"{path} not found: give a model folder")
    doc = read_model_doc(path)
    cfg = doc.setdefault("config", {})
    rd = cfg.setdefault("restore_defaults", {})
    rd["std_scale"] = float(result["std_scale"])
    rd["std_floor"] = float(result.get("std_floor", 0.0))
    rd["std_gradient"] = float(result.get("std_gradient", 0.0))
    cfg["calibration"] = result
    return write_model_doc(path, doc)
