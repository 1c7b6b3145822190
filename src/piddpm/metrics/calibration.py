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


def _coverage_error(err: np.ndarray, spread: np.ndarray, ks, expected: np.ndarray) -> float:
    """Mean ``|observed - expected|`` coverage of ``err <= k * spread`` (flat arrays)."""
    observed = np.array([(err <= k * spread).mean() for k in ks])
    return float(np.abs(observed - expected).mean())


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
            return _coverage_error(err, c * sd + f, ks, expected)

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


def mean_gradient(mean) -> np.ndarray:
    """Gradient magnitude ``|grad mean|`` per pixel over the last two axes.

    Central differences inside, one-sided at the edges (:func:`numpy.gradient`), in the
    units of ``mean`` per pixel. The term of the calibrated spread (:func:`fit_spread`) that
    puts more spread where the restored image changes fast: edges, where a restoration's
    error concentrates and a few posterior samples rarely spread enough.

    Parameters
    ----------
    mean : ndarray, shape (..., H, W)
        A restored image (H, W >= 2).

    Returns
    -------
    ndarray (float64), same shape
    """
    m = np.asarray(mean, dtype=np.float64)
    if m.ndim < 2 or min(m.shape[-2:]) < 2:
        raise PiddpmError(f"mean: expected (..., H, W) with H, W >= 2, got {m.shape}")
    gy, gx = np.gradient(m, axis=(-2, -1))
    return np.hypot(gy, gx)


def fit_spread(mean, std, gt, ks=(1, 2, 3)) -> dict:
    """Fit the calibrated spread ``c * std + f + g * |grad mean|`` of a predicted std.

    ``c`` scales the samples' spread, the floor ``f`` covers error they do not spread over,
    and ``g`` adds spread in proportion to the local gradient of the mean
    (:func:`mean_gradient`): the error of a restoration is heavy-tailed because it is
    concentrated at edges, which one scale and floor trade between the 1- and 3-sigma
    coverages. The three are chosen to minimise the mean ``|observed - expected|``
    coverage error of :func:`uncertainty_calibration` (grids: ``g`` 0 and 1e-3 to 10
    log-spaced, ``f`` 0 and quantiles of the absolute error, ``c`` a log grid from 0.05 to
    50 refined around the best value). ``g = 0`` is in the grid, so the fit is never worse
    on the fitting data than :func:`fit_std_scale` with ``floor=True`` on the same grids.

    Parameters
    ----------
    mean, std, gt : ndarray, same shape (..., H, W)
        Predicted mean, predicted std (>= 0), ground truth, in the same units.
    ks : sequence of float
        Multiples of the spread whose coverage is fitted.

    Returns
    -------
    dict
        ``scale`` (c), ``floor`` (f, units of ``mean``), ``gradient`` (g, pixels) and
        ``calibration`` (:func:`uncertainty_calibration` of the fitted spread).
    """
    m = np.asarray(mean, dtype=np.float64)
    s = np.asarray(std, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if not (m.shape == s.shape == g.shape):
        raise PiddpmError(f"mean, std and gt shapes differ: {m.shape}, {s.shape}, {g.shape}")
    grad = mean_gradient(m).reshape(-1)
    err = np.abs(g - m).reshape(-1)
    sd = s.reshape(-1)
    if err.size > 200_000:  # a regular subsample keeps the search fast
        step = int(np.ceil(err.size / 200_000))
        err, sd, grad = err[::step], sd[::step], grad[::step]
    expected = np.array([math.erf(k / math.sqrt(2.0)) for k in ks])

    def error(c: float, f: float, w: float) -> float:
        return _coverage_error(err, c * sd + f + w * grad, ks, expected)

    floors = [0.0] + [float(v) for v in np.quantile(err, [0.05, 0.1, 0.2, 0.3, 0.4]) if v > 0]
    weights = [0.0] + [float(v) for v in np.geomspace(1e-3, 10.0, 20)]
    coarse = np.exp(np.linspace(np.log(0.05), np.log(50.0), 61))
    best = (math.inf, 1.0, 0.0, 0.0)
    for f in floors:
        for w in weights:
            errs = [error(c, f, w) for c in coarse]
            i = int(np.argmin(errs))
            if errs[i] < best[0]:
                best = (errs[i], float(coarse[i]), f, w)
    _, c0, f_best, w_best = best
    fine = c0 * np.exp(np.linspace(-0.12, 0.12, 25))
    c_best = float(fine[int(np.argmin([error(c, f_best, w_best) for c in fine]))])
    spread = c_best * s + f_best + w_best * mean_gradient(m)
    return {
        "scale": c_best,
        "floor": f_best,
        "gradient": w_best,
        "calibration": uncertainty_calibration(m, spread, g, ks),
    }
