"""Calibration of a predicted per-pixel uncertainty (e.g. the spread of DDPM samples)."""

from __future__ import annotations

import math

import numpy as np
import torch

from piddpm import PiddpmError
from piddpm.metrics._common import _check_image, _to_tensor


def uncertainty_calibration(mean, std, gt, ks=(1, 2, 3)):
    """Calibration of a predicted per-pixel standard deviation (e.g. over DDPM samples).

    For each ``k`` the observed fraction of pixels with ``|gt - mean| <= k std`` is
    compared with the Gaussian expectation ``erf(k / sqrt(2))`` (0.6827, 0.9545, 0.9973 for
    k = 1, 2, 3). All pixels of all images are pooled.

    Parameters
    ----------
    mean, std, gt : ndarray or Tensor, same shape (..., H, W)
        Predicted mean, predicted standard deviation (>= 0), ground truth.
    ks : sequence of float
        Multiples of the standard deviation.

    Returns
    -------
    dict
        ``ks`` (ndarray), ``observed`` (ndarray), ``expected`` (ndarray), ``abs_error``
        (ndarray, ``|observed - expected|``) and ``mean_abs_error`` (float).
    """
    m, kind = _to_tensor(mean, "mean")
    s, _ = _to_tensor(std, "std")
    g, _ = _to_tensor(gt, "gt")
    for t, name in ((m, "mean"), (s, "std"), (g, "gt")):
        _check_image(t, name)
    if not (m.shape == s.shape == g.shape):
        raise PiddpmError(
            f"mean, std and gt must have the same shape, got {tuple(m.shape)}, "
            f"{tuple(s.shape)}, {tuple(g.shape)}"
        )
    if bool((s < 0).any()):
        raise PiddpmError("std: contains negative values; a standard deviation is >= 0")
    ks_arr = np.asarray(ks, dtype=np.float64).reshape(-1)
    if len(ks_arr) == 0 or bool((ks_arr <= 0).any()):
        raise PiddpmError(f"ks: expected positive multiples of std, got {ks!r}")
    err = (g.to(m.device) - m).abs()
    s = s.to(m.device)
    observed = np.array([float((err <= k * s).to(torch.float64).mean()) for k in ks_arr])
    expected = np.array([math.erf(k / math.sqrt(2.0)) for k in ks_arr])
    abs_error = np.abs(observed - expected)
    return {
        "ks": ks_arr,
        "observed": observed,
        "expected": expected,
        "abs_error": abs_error,
        "mean_abs_error": float(abs_error.mean()),
    }


def fit_std_scale(mean, std, gt, ks=(1, 2, 3), *, floor: bool = False) -> tuple:
    """The factor ``c`` (and optionally a floor ``f``) that best calibrate a predicted std.

    The calibrated spread is ``c * std + f``. Minimises the mean ``|observed - expected|``
    coverage error of :func:`uncertainty_calibration` (a log grid of ``c`` from 0.05 to 50,
    then a finer grid around the best value; ``f`` from quantiles of the absolute error,
    ``f = 0`` included). One scale corrects a spread that is too narrow or too wide overall;
    the floor, in the units of ``mean``, covers error the samples do not spread over (heavy
    tails), which a scale alone trades between the 1- and 3-sigma coverages.

    Returns
    -------
    scale : float
    floor : float
        Only with ``floor=True``.
    calibration : dict
        :func:`uncertainty_calibration` of the calibrated spread.
    """
    m = np.asarray(mean, dtype=np.float64)
    s = np.asarray(std, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if not (m.shape == s.shape == g.shape):
        raise PiddpmError(f"mean, std and gt shapes differ: {m.shape}, {s.shape}, {g.shape}")
    err = np.abs(g - m).reshape(-1)
    sd = s.reshape(-1)
    if err.size > 400_000:  # a regular subsample keeps the search fast
        step = int(np.ceil(err.size / 400_000))
        err, sd = err[::step], sd[::step]
    expected = np.array([math.erf(k / math.sqrt(2.0)) for k in ks])

    def best_scale(f: float) -> tuple[float, float]:
        def error(c: float) -> float:
            spread = c * sd + f
            observed = np.array([(err <= k * spread).mean() for k in ks])
            return float(np.abs(observed - expected).mean())

        grid = np.exp(np.linspace(np.log(0.05), np.log(50.0), 121))
        c = grid[int(np.argmin([error(c) for c in grid]))]
        fine = c * np.exp(np.linspace(-0.06, 0.06, 31))
        errs = [error(c) for c in fine]
        i = int(np.argmin(errs))
        return float(fine[i]), errs[i]

    floors = [0.0]
    if floor:
        floors += [float(v) for v in np.quantile(err, [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]) if v > 0]
    fits = [(f, *best_scale(f)) for f in floors]
    f_best, c_best, _ = min(fits, key=lambda t: t[2])
    cal = uncertainty_calibration(m, c_best * s + f_best, g, ks)
    return (c_best, f_best, cal) if floor else (c_best, cal)
