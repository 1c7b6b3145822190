"""Scores of one restoration of one case (the columns of ``results.csv``).

- **Synthetic** (ground truth known, same physics as the observation): the restoration
  ``y`` (photo-electrons) is mapped to specimen units ``(y - background) / s`` and compared
  directly with the ground truth (background 0, peak 1) with ``data_range = 1``: PSNR,
  MS-SSIM, NRMSE, the hallucination score, and with ``samples > 1`` the uncertainty
  calibration. Data consistency ``||A y - x|| / ||x||`` uses the true PSF and the periodic
  blur of the simulation; ``dc_noise_floor`` is the same quantity for the ground truth
  (the relative noise level): a good restoration sits near it.
- **Real pairs** (references acquired differently, 8-bit, arbitrary scale): the reference
  is mapped by its 0.1 / 99.9 percentiles to 0 / 1, the restoration by the least-squares
  affine fit to it (CARE / W2S practice), then PSNR, MS-SSIM, NRMSE with ``data_range = 1``.
  Where the reference is a low-noise *widefield* image (W2S avg400, GigaDB high-SNR), a
  deconvolved restoration is sharper than the reference by design, so
  ``psnr_reblurred`` also compares ``A y`` (re-blurred with the assumed PSF) with it.
- **Single real images**: single-image FRC (1/7 threshold) and decorrelation resolution, in
  nm where the file records the pixel size, else in px.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from piddpm.evaluation.suites import Case

__all__ = ["COLUMNS", "blur_reflect", "ms_ssim_settings", "score"]

#: Metric columns of results.csv (NaN where a metric does not apply).
COLUMNS = (
    "psnr",
    "ms_ssim",
    "nrmse",
    "psnr_reblurred",
    "data_consistency",
    "dc_noise_floor",
    "halluc_total",
    "halluc_background",
    "halluc_structure",
    "calib_mae",
    "calib_1sigma",
    "frc_resolution",
    "decorr_resolution",
)


def ms_ssim_settings(side: int) -> tuple[int, tuple[float, ...], str]:
    """MS-SSIM window and scale weights that fit an image side (see docs/metrics.md)."""
    from piddpm.metrics import MS_SSIM_WEIGHTS

    for win, m in ((11, 5), (7, 5), (7, 4), (7, 3), (5, 3), (3, 2)):
        if side > (win - 1) * 2 ** (m - 1):
            note = "" if (win, m) == (11, 5) else f"MS-SSIM with a {win}-px window, {m} scales"
            return win, tuple(MS_SSIM_WEIGHTS[:m]), note
    return 3, tuple(MS_SSIM_WEIGHTS[:1]), "MS-SSIM on a single scale (image too small)"


def blur_reflect(y: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """``A y`` with the image extended by mirror reflection (no dark border), same size."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from piddpm.acquisition import blur

    t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float64))[None, None]
    k = torch.from_numpy(np.ascontiguousarray(psf, dtype=np.float64))[None, None]
    ph, pw = psf.shape[0] // 2, psf.shape[1] // 2
    h, w = y.shape
    mode = "reflect" if (ph < h and pw < w) else "replicate"
    tp = F.pad(t, (pw, pw, ph, ph), mode=mode)
    return blur(tp, k, boundary="zero")[0, 0, ph : ph + h, pw : pw + w].numpy()


def _similarity(pred: np.ndarray, ref: np.ndarray, data_range: float) -> dict[str, float]:
    from piddpm.metrics import ms_ssim, nrmse, psnr

    win, weights, _ = ms_ssim_settings(min(ref.shape))
    return {
        "psnr": float(psnr(pred, ref, data_range=data_range)),
        "ms_ssim": float(
            ms_ssim(pred, ref, data_range=data_range, win_size=win, weights=weights)
        ),  # fmt: skip
        "nrmse": float(nrmse(pred, ref)),
    }


def score(case: Case, mean: np.ndarray, std: np.ndarray | None = None) -> dict[str, float]:
    """All applicable metrics of a restoration ``mean`` (and ``std``) of ``case``.

    Parameters
    ----------
    case : Case
    mean : ndarray (H, W)
        The restoration in the observation's units.
    std : ndarray (H, W), optional
        Per-pixel posterior standard deviation, same units.

    Returns
    -------
    dict
        One float per entry of :data:`COLUMNS` (NaN where it does not apply).
    """
    from piddpm import metrics as M  # noqa: N812

    out = {c: math.nan for c in COLUMNS}
    y = np.asarray(mean, dtype=np.float64)
    x = np.asarray(case.observed, dtype=np.float64)
    if not np.isfinite(y).all():
        return out
    if case.suite in ("synthetic", "dev", "ablation") and case.reference_kind == "ground truth":
        gt = np.asarray(case.reference, dtype=np.float64)
        yu = (y - case.background) / case.scale
        out.update(_similarity(yu, gt, 1.0))
        out["data_consistency"] = float(M.data_consistency(y, x, case.psf, boundary="periodic"))
        clean = case.scale * gt + case.background
        out["dc_noise_floor"] = float(M.data_consistency(clean, x, case.psf, boundary="periodic"))
        if gt.max() > 0:
            h = M.hallucination_score(yu, gt)
            out["halluc_total"] = float(h["total"])
            out["halluc_background"] = float(h["background"])
            out["halluc_structure"] = float(h["structure"])
        if std is not None:
            su = np.asarray(std, dtype=np.float64) / case.scale
            cal = M.uncertainty_calibration(yu, np.clip(su, 0, None), gt)
            out["calib_mae"] = float(cal["mean_abs_error"])
            out["calib_1sigma"] = float(cal["observed"][0])
        return out
    fit_ok = float(np.std(y)) > 0
    if case.reference is not None:
        ref_n = np.asarray(M.normalise_percentile(case.reference.astype(np.float64)))
        if fit_ok:
            out.update(_similarity(np.asarray(M.fit_affine(y, ref_n)), ref_n, 1.0))
            if not case.reference_kind.startswith("SIM"):
                ay = blur_reflect(y, case.psf)
                if float(np.std(ay)) > 0:
                    fitted = np.asarray(M.fit_affine(ay, ref_n))
                    out["psnr_reblurred"] = float(M.psnr(fitted, ref_n, data_range=1.0))
    denom = float(np.linalg.norm(x))
    if denom > 0:
        out["data_consistency"] = float(np.linalg.norm(blur_reflect(y, case.psf) - x) / denom)
    if case.suite == "no-reference" and fit_ok:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["frc_resolution"] = float(M.frc_resolution(y, pixel_size_um=case.pixel_size_um))
            out["decorr_resolution"] = float(
                M.decorrelation_resolution(y, pixel_size_um=case.pixel_size_um)[0]
            )
    return out
