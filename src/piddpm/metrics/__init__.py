"""Image-quality, resolution, consistency and faithfulness metrics.

Every metric accepts NumPy arrays or torch tensors of shape ``(..., H, W)``: the last two
axes are the image, any leading axes are a batch (``(B, C, H, W)`` gives one value per
image and channel). A single ``(H, W)`` image gives a Python ``float``; a batch gives an
array of the same kind as the input (a ``numpy.ndarray``, or a ``torch.Tensor`` on the
input's device) with the leading shape. All arithmetic is done in float64 (SSIM variances
``E[x^2] - E[x]^2`` lose all precision in float32 for images with large offsets, such as
photon counts).

Definitions, conventions and references are in ``docs/metrics.md``. In short:

- ``psnr``, ``ssim``, ``ms_ssim``: the data range defaults to ``ref.max() - ref.min()`` of
  each reference image (the paper uses the maximum pixel value of the image; on images
  normalised to start at 0 the two agree). Pass ``data_range`` explicitly to compare
  numbers across images.
- ``nrmse``: RMSE divided by ``ref.max() - ref.min()`` (the paper's definition).
- ``frc_curve`` / ``frc_resolution``: Fourier ring correlation from two images, or from one
  image by a diagonal checkerboard split with an exact half-pixel phase correction.
- ``decorrelation_resolution``: Descloux et al. (2019) decorrelation analysis.
- ``data_consistency``: ``||A y_hat - x|| / ||x||`` with ``piddpm.acquisition.blur``.
- ``hallucination_score``, ``uncertainty_calibration``: faithfulness on synthetic data.
- ``normalise_percentile``, ``fit_affine``: helpers for real pairs with different scales.

The package is split by responsibility; every name is importable from ``piddpm.metrics``:

- ``quality``: PSNR, NRMSE, SSIM, MS-SSIM;
- ``resolution``: FRC curve and resolution, half-bit threshold, decorrelation analysis;
- ``consistency``: data consistency;
- ``faithfulness``: hallucination score, background mask, seam score, background and
  flat-field invention;
- ``calibration``: uncertainty calibration and its fitted std scale;
- ``normalisation``: percentile normalisation and affine fit.
"""

from piddpm.metrics.calibration import (
    fit_spread,
    fit_std_scale,
    mean_gradient,
    uncertainty_calibration,
)
from piddpm.metrics.consistency import data_consistency
from piddpm.metrics.faithfulness import (
    background_invention,
    background_mask,
    flat_field_invention,
    hallucination_score,
    seam_score,
)
from piddpm.metrics.normalisation import fit_affine, normalise_percentile
from piddpm.metrics.quality import MS_SSIM_WEIGHTS, ms_ssim, nrmse, psnr, ssim
from piddpm.metrics.resolution import (
    DecorrelationResult,
    Threshold,  # noqa: F401  (type alias of the signatures, not in __all__)
    Window,  # noqa: F401
    decorrelation_resolution,
    frc_curve,
    frc_resolution,
    half_bit_threshold,
)

__all__ = [
    "MS_SSIM_WEIGHTS",
    "psnr",
    "ssim",
    "ms_ssim",
    "nrmse",
    "frc_curve",
    "frc_resolution",
    "half_bit_threshold",
    "decorrelation_resolution",
    "DecorrelationResult",
    "data_consistency",
    "hallucination_score",
    "uncertainty_calibration",
    "normalise_percentile",
    "fit_affine",
    "fit_spread",
    "fit_std_scale",
    "mean_gradient",
    "background_mask",
    "seam_score",
    "background_invention",
    "flat_field_invention",
]
