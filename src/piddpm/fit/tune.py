"""Re-tune a fitted model's restore defaults (``piddpm fit``, after training).

A fitted network inherits the starting model's ``restore_defaults``, tuned for *that*
network. The learned-guidance weight ``eta`` in particular does not carry over: on a real
bead plane the fitted models restored with the inherited ``eta 20`` lift the background and
draw dark crescents around the beads, which held-out synthetic pairs do not show
(docs/fit.md). :func:`tune_fitted_defaults` therefore sweeps ``eta`` (0 = guidance none),
scores each setting on synthetic dev pairs of the fit's microscope and noise
(:func:`piddpm.models.tuning.synthetic_pairs`, seed :data:`~piddpm.models.tuning.DEV_SEED`,
disjoint from the card's evaluation seed) and checks it on the user's own image(s) with a
background guard (:func:`guard_metrics`). The rule: the best dev PSNR among the settings that
pass the guard; within ``tolerance_db`` of it, the weakest guidance.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from piddpm import PiddpmError

__all__ = ["ETA_GRID", "GUARD_LIMITS", "guard_metrics", "tune_fitted_defaults", "tuning_note"]

#: Learned-guidance weights tried (0 means ``guidance none``); the inherited one is added.
ETA_GRID = (0.0, 2.0, 5.0, 10.0, 20.0)
#: Limits of the background guard (see :func:`guard_metrics`): a setting passes when on every
#: guard image |level_shift| <= ``level_shift``, dark_excess <= ``dark_excess`` and
#: texture <= ``texture``.
GUARD_LIMITS = {"level_shift": 0.02, "dark_excess": 0.005, "texture": 1.5}
#: Guard image side (the centre crop of each guard plane), dev pairs and their side: the
#: defaults of :func:`tune_fitted_defaults` (read at call time).
GUARD_CROP = 256
N_DEV_PAIRS = 8
DEV_SIZE = 128
#: A pixel is "dark" when it lies more than this share of the signal range below the
#: input's background level.
DARK_DEPTH = 0.05
#: Floor of the texture denominator, as a share of the signal range: on a nearly noiseless
#: (clipped 8-bit) background the input's band-pass energy is ~0 and any ratio would explode.
TEXTURE_FLOOR = 0.01


def guard_metrics(restored: np.ndarray, image: np.ndarray) -> dict[str, float]:
    """Background faithfulness of one restoration of the user's ``image`` (same units).

    The background is :func:`piddpm.metrics.background_mask` of the input (its darkest 30 %
    after smoothing); its level ``b`` is the input's median there and the signal range ``r``
    is the input's 99.5th percentile minus ``b``.

    Returns
    -------
    dict
        ``level_shift``: (restored background median - ``b``) / ``r`` (the lifted background
        of the inherited ``eta 20`` on the bead plane: +0.05); ``dark_excess``: share of the
        restored pixels more than :data:`DARK_DEPTH` ``r`` below ``b``, minus the input's own
        share (dark halos and moats: +0.011 there); ``texture``: band-pass (2-8 px) rms of
        the restored background over the input's, the input's floored at
        :data:`TEXTURE_FLOOR` ``r`` (:func:`piddpm.metrics.background_invention` with a
        floor; above 1: structure invented in the background).
    """
    from piddpm.metrics import background_invention, background_mask

    img = np.asarray(image, np.float64)
    out = np.asarray(restored, np.float64)
    if out.shape != img.shape:
        raise PiddpmError(f"restored {out.shape} and input {img.shape} differ in shape")
    if not np.isfinite(out).all():
        return {"level_shift": math.inf, "dark_excess": math.inf, "texture": math.inf}
    mask = background_mask(img)
    b = float(np.median(img[mask]))
    r = max(float(np.percentile(img, 99.5)) - b, 1e-12)
    dark = b - DARK_DEPTH * r
    return {
        "level_shift": (float(np.median(out[mask])) - b) / r,
        "dark_excess": float(np.mean(out < dark) - np.mean(img < dark)),
        "texture": background_invention(out, img, mask=mask, floor=TEXTURE_FLOOR * r),
    }


def _passes(guard: dict[str, float]) -> bool:
    return (
        abs(guard["level_shift"]) <= GUARD_LIMITS["level_shift"]
        and guard["dark_excess"] <= GUARD_LIMITS["dark_excess"]
        and guard["texture"] <= GUARD_LIMITS["texture"]
    )


def _violation(guard: dict[str, float]) -> float:
    """How far a setting is from passing (max over the limits of value / limit)."""
    return max(
        abs(guard["level_shift"]) / GUARD_LIMITS["level_shift"],
        guard["dark_excess"] / GUARD_LIMITS["dark_excess"],
        guard["texture"] / GUARD_LIMITS["texture"],
    )


def _candidates(inherited: dict[str, Any], eta_grid) -> list[tuple[str, dict[str, Any]]]:
    """Inherited setting first, then guidance none, then the other weights ascending (a sweep
    cut short by the time budget has measured the most useful ones)."""
    etas = {float(e) for e in eta_grid}
    opts: list[tuple[str, dict[str, Any]]] = []
    inherited_eta = None
    if inherited.get("guidance", "learned") in ("learned", "both"):
        inherited_eta = float(inherited.get("eta", 20.0))
        opts.append((f"eta {inherited_eta:g} (inherited)", {}))
    else:
        opts.append((f"guidance {inherited.get('guidance')} (inherited)", {}))
    if 0.0 in etas and inherited.get("guidance") != "none":
        opts.append(("guidance none", {"guidance": "none"}))
    for e in sorted(etas - {0.0, inherited_eta}):
        opts.append((f"eta {e:g}", {"guidance": "learned", "eta": e}))
    return opts


def tune_fitted_defaults(
    run_dir: str | Path,
    inherited: dict[str, Any],
    guard_images: list[np.ndarray],
    microscope: dict[str, Any],
    *,
    eta_grid: tuple[float, ...] | None = None,
    n_pairs: int | None = None,
    size: int | None = None,
    seed: int | None = None,
    guard_crop: int | None = None,
    tolerance_db: float = 0.1,
    deadline: float | None = None,
    min_trials: int = 2,
    restore_fn=None,
    log=print,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Choose the fitted model's restore defaults: an ``eta`` sweep with a background guard.

    Each candidate (the inherited setting, ``guidance none``, then ``learned`` with each
    ``eta`` of ``eta_grid``; every other key as inherited) is

    1. scored by its mean PSNR on ``n_pairs`` synthetic dev pairs of ``size`` px drawn like the
       fit's training data (seed ``seed``, default
       :data:`piddpm.models.tuning.DEV_SEED`, never the card's evaluation seed), each restored
       as one tile; and
    2. checked on the centre ``guard_crop`` px of each of ``guard_images`` (the user's planes,
       restored with the microscope and the candidate setting) by :func:`guard_metrics`
       against :data:`GUARD_LIMITS`, the worst guard image counting.

    **Rule.** Among the candidates that pass the guard, the best dev PSNR; any candidate
    within ``tolerance_db`` of it with weaker guidance (none < smaller ``eta``) is preferred,
    as :func:`piddpm.models.tuning.tune_defaults` prefers the cheaper setting. If none passes,
    the candidate closest to passing (smallest ``max(value / limit)``) is chosen and the
    result says so. Candidates are tried until ``deadline`` (a :func:`time.monotonic` time;
    at least ``min_trials`` are always tried) in the order of :func:`_candidates`.

    Parameters
    ----------
    eta_grid, n_pairs, size, guard_crop
        Default :data:`ETA_GRID`, :data:`N_DEV_PAIRS`, :data:`DEV_SIZE`, :data:`GUARD_CROP`.
    run_dir : path
        The fitted run folder (``model.json``, ``model.safetensors``).
    inherited : dict
        The restore defaults the fit starts from (the starting model's, calibration removed).
    guard_images : list of ndarray
        The user's planes (input intensity units).
    microscope : dict
        ``restore``'s microscope dict for the guard images (``modality``, ``na``, ... ,
        ``pixel_um``).
    restore_fn : callable, optional
        ``restore_fn(image, settings) -> restored`` for the guard images (tests); default
        :func:`piddpm.restore.restore` with the run folder as the model.

    Returns
    -------
    defaults : dict
        The chosen ``restore_defaults`` (the inherited ones with the chosen guidance / eta).
    record : dict
        ``trials`` (per candidate: ``label``, ``change``, ``psnr_db``, ``guard`` per image,
        ``worst`` guard values, ``passes``, ``seconds``), ``chosen`` (label), ``rule``,
        ``limits``, ``n_pairs``, ``size``, ``seed``, ``guard_crop``, ``guard_images``,
        ``all_failed``, ``cut_short`` (candidates skipped for time), ``seconds``.
    """
    from piddpm.evaluation.suites import centre_crop
    from piddpm.models.files import read_model_doc
    from piddpm.models.tuning import DEV_SEED, EVAL_SEED, restore_kwargs, synthetic_pairs

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    eta_grid = ETA_GRID if eta_grid is None else eta_grid
    n_pairs = N_DEV_PAIRS if n_pairs is None else int(n_pairs)
    size = DEV_SIZE if size is None else int(size)
    guard_crop = GUARD_CROP if guard_crop is None else int(guard_crop)
    seed = DEV_SEED if seed is None else int(seed)
    if seed == EVAL_SEED:
        raise PiddpmError(f"the tuning seed must differ from the card's evaluation seed {seed}")
    if n_pairs < 1 or not guard_images:
        raise PiddpmError("tuning needs at least one dev pair and one guard image")
    method = read_model_doc(run_dir / "model.json")["config"].get("method")
    if method != "pi-ddpm":
        raise PiddpmError(
            f"re-tuning needs a PI-DDPM model (this one is {method!r}); use --no-tune"
        )
    if restore_fn is None:
        from piddpm.restore import restore

        def restore_fn(img, settings):
            res = restore(img, model=str(run_dir), microscope=microscope,
                          pixel_size_um=microscope["pixel_um"], progress=False, device="cpu",
                          seed=0, residual=False, **restore_kwargs(settings))  # fmt: skip
            return np.asarray(res.mean, np.float64)

    crops = [centre_crop(np.asarray(p, np.float32), guard_crop) for p in guard_images]
    pairs = synthetic_pairs(run_dir, n=n_pairs, seed=seed, size=size)
    candidates = _candidates(inherited, eta_grid)
    trials: list[dict[str, Any]] = []
    for i, (label, change) in enumerate(candidates):
        if i >= min_trials and deadline is not None and time.monotonic() > deadline:
            break
        trials.append(_trial(run_dir, pairs, crops, label, change, inherited, size, restore_fn))
        log(_trial_line(trials[-1]))
    chosen, passing = _choose(trials, tolerance_db)
    defaults = {**inherited, **chosen["change"]}
    record = {
        "trials": trials,
        "chosen": chosen["label"],
        "chosen_settings": {k: defaults.get(k) for k in ("guidance", "eta", "lam", "regulariser")},
        "all_failed": not passing,
        "cut_short": [label for label, _ in candidates[len(trials) :]],
        "rule": _rule_text(tolerance_db),
        "limits": dict(GUARD_LIMITS),
        "n_pairs": n_pairs,
        "size": size,
        "seed": seed,
        "guard_crop": guard_crop,
        "guard_images": len(crops),
        "seconds": time.perf_counter() - t0,
    }
    return defaults, record


def _rule_text(tolerance_db: float) -> str:
    """The choice rule, in words, for the record and the card."""
    return (
        f"best dev PSNR among the settings passing the background guard (|level "
        f"shift| <= {GUARD_LIMITS['level_shift']}, dark excess <= "
        f"{GUARD_LIMITS['dark_excess']}, texture <= {GUARD_LIMITS['texture']}); within "
        f"{tolerance_db:g} dB of it the weakest guidance"
    )


def _trial(run_dir, pairs, crops, label, change, inherited, size, restore_fn) -> dict[str, Any]:
    """One candidate of :func:`tune_fitted_defaults`: dev PSNR and the background guard."""
    from piddpm.models.tuning import restore_pairs, score

    settings = {**inherited, **change}
    t1 = time.perf_counter()
    with warnings.catch_warnings():  # model-unit pairs carry no pixel size, by design
        warnings.filterwarnings("ignore", message=".*no microscope given.*")
        ests = restore_pairs(run_dir, pairs, {**settings, "tile": size, "overlap": size // 4})
    vals = [score(e, p["gt"])["psnr_db"] for e, p in zip(ests, pairs, strict=True)]
    psnr = float(np.mean(vals)) if all(np.isfinite(vals)) else -math.inf
    guards = [guard_metrics(restore_fn(c, settings), c) for c in crops]
    worst = {
        "level_shift": max((g["level_shift"] for g in guards), key=abs),
        "dark_excess": max(g["dark_excess"] for g in guards),
        "texture": max(g["texture"] for g in guards),
    }
    return {"label": label, "change": change, "psnr_db": psnr, "guard": guards,
            "guidance": settings.get("guidance"), "eta": settings.get("eta"),
            "worst": worst, "passes": _passes(worst),
            "seconds": time.perf_counter() - t1}  # fmt: skip


def _trial_line(trial: dict[str, Any]) -> str:
    """The log line of one trial."""
    worst = trial["worst"]
    return (f"  tune {trial['label']:24s} dev PSNR {trial['psnr_db']:6.2f} dB  background "
            f"shift {worst['level_shift']:+.4f}, dark {worst['dark_excess']:+.4f}, texture "
            f"{worst['texture']:.2f}  {'ok' if trial['passes'] else 'REJECTED'} "
            f"({trial['seconds']:.0f} s)")  # fmt: skip


def _choose(trials: list[dict[str, Any]], tolerance_db: float):
    """The rule of :func:`tune_fitted_defaults`: the chosen trial and the passing ones."""
    passing = [t for t in trials if t["passes"]]
    if passing:
        best = max(t["psnr_db"] for t in passing)
        near = [t for t in passing if t["psnr_db"] >= best - tolerance_db]
        chosen = min(near, key=_strength)
    else:
        chosen = min(trials, key=lambda t: _violation(t["worst"]))
    for t in trials:
        t["chosen"] = t is chosen
    return chosen, passing


def _strength(trial: dict[str, Any]) -> float:
    """Guidance strength of a trial for the tie-break (none weakest)."""
    if trial["guidance"] == "none":
        return -1.0
    return float(trial["eta"] if trial["eta"] is not None else math.inf)


def tuning_note(record: dict[str, Any], start_model: str) -> str:
    """One line for ``restore_defaults_note`` in model.json."""
    t = {x["label"]: x for x in record["trials"]}[record["chosen"]]
    how = ("no setting passed the background guard; the closest to passing"
           if record["all_failed"] else record["rule"])  # fmt: skip
    return (f"chosen by piddpm fit after training: {record['chosen']} of "
            f"{', '.join(x['label'] for x in record['trials'])} (other keys inherited from "
            f"{start_model}); {how}; dev PSNR {t['psnr_db']:.2f} dB on {record['n_pairs']} "
            f"synthetic pairs (seed {record['seed']}), background shift "
            f"{t['worst']['level_shift']:+.4f}, dark excess {t['worst']['dark_excess']:+.4f}, "
            f"texture {t['worst']['texture']:.2f} on {record['guard_images']} of your "
            f"images (fit.json 'tuning')")  # fmt: skip
