"""Tests of piddpm.metrics against independent implementations and analytic cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.signal import convolve2d

from piddpm import PiddpmError
from piddpm import metrics as M

skm = pytest.importorskip("skimage.metrics")
pytorch_msssim = pytest.importorskip("pytorch_msssim")


# ----------------------------------------------------------------------------- fixtures
def smooth_image(n=256, m=None, seed=0, sigma=2.0):
    """A smooth random image in [0, 1] (structure at all scales down to ~sigma px)."""
    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.random((n, m or n)), sigma)
    return (img - img.min()) / (img.max() - img.min())


def bandlimited_noise(n, fc, rng):
    """White noise with a hard circular cut-off at ``fc`` cycles/px, unit variance."""
    spec = np.fft.fft2(rng.standard_normal((n, n)))
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij"))
    spec[f > fc] = 0
    img = np.real(np.fft.ifft2(spec))
    return img / img.std()


def noisy_pair(n, fc, snr_density, seed):
    """Two independent noise realisations of one band-limited image.

    ``snr_density`` is the signal-to-noise power ratio per Fourier pixel inside the band,
    so the expected FRC inside the band is snr / (1 + snr) and 0 outside it.
    """
    rng = np.random.default_rng(seed)
    s = bandlimited_noise(n, fc, rng)
    noise_sd = math.sqrt(1.0 / snr_density / (math.pi * fc**2))  # signal power / band area
    a = s + noise_sd * rng.standard_normal((n, n))
    b = s + noise_sd * rng.standard_normal((n, n))
    return a, b


def sk_ssim(pred, ref, data_range):
    return skm.structural_similarity(
        ref,
        pred,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=data_range,
    )


def t4(x):
    return torch.from_numpy(np.ascontiguousarray(x))[None, None]


# ----------------------------------------------------------------------------- PSNR / NRMSE
def test_psnr_of_a_known_mse_is_10log10_range2_over_mse():
    ref = smooth_image(64)
    pred = ref + 0.1  # MSE = 0.01 exactly, data range 1
    assert M.psnr(pred, ref) == pytest.approx(20.0, abs=1e-9)
    assert M.psnr(pred, ref, data_range=2.0) == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-9)
    assert M.psnr(ref, ref) == math.inf


def test_psnr_matches_skimage():
    ref = smooth_image(128, seed=1) * 300 + 50  # photon-like offset
    pred = ref + np.random.default_rng(2).normal(0, 10, ref.shape)
    for dr in (None, 500.0):
        expect = skm.peak_signal_noise_ratio(
            ref, pred, data_range=(ref.max() - ref.min()) if dr is None else dr
        )
        assert M.psnr(pred, ref, data_range=dr) == pytest.approx(expect, abs=1e-9)


def test_nrmse_of_a_known_error_is_rmse_over_reference_range():
    ref = smooth_image(64) * 4.0 + 1.0  # range 4
    rng = np.random.default_rng(3)
    err = rng.choice([-0.2, 0.2], size=ref.shape)  # RMSE = 0.2 exactly
    assert M.nrmse(ref + err, ref) == pytest.approx(0.05, abs=1e-12)
    expect = skm.normalized_root_mse(ref, ref + err, normalization="min-max")
    assert M.nrmse(ref + err, ref) == pytest.approx(expect, abs=1e-12)


# ----------------------------------------------------------------------------- SSIM
@pytest.mark.parametrize("noise", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("scale, offset", [(1.0, 0.0), (1000.0, 5000.0)])
def test_ssim_matches_skimage_gaussian_window(noise, scale, offset):
    ref = smooth_image(96, 80, seed=4) * scale + offset
    pred = ref + np.random.default_rng(5).normal(0, noise * scale, ref.shape)
    dr = scale
    assert M.ssim(pred, ref, data_range=dr) == pytest.approx(sk_ssim(pred, ref, dr), abs=1e-3)


def test_ssim_identical_images_is_one_and_window_7_matches_pytorch_msssim():
    ref = smooth_image(64, seed=6)
    assert M.ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    pred = ref + np.random.default_rng(7).normal(0, 0.1, ref.shape)
    expect = pytorch_msssim.ssim(t4(pred), t4(ref), data_range=1.0, win_size=7).item()
    assert M.ssim(pred, ref, data_range=1.0, win_size=7) == pytest.approx(expect, abs=2e-3)


# ----------------------------------------------------------------------------- MS-SSIM
@pytest.mark.parametrize("shape", [(256, 256), (200, 181)])  # odd sides: padded pooling
@pytest.mark.parametrize("noise", [0.02, 0.2])
def test_ms_ssim_matches_pytorch_msssim(shape, noise):
    ref = smooth_image(*shape, seed=8)
    pred = ref + np.random.default_rng(9).normal(0, noise, ref.shape)
    expect = pytorch_msssim.ms_ssim(t4(pred), t4(ref), data_range=1.0).item()
    assert M.ms_ssim(pred, ref, data_range=1.0) == pytest.approx(expect, abs=2e-3)


def test_ms_ssim_anticorrelated_structure_is_clamped_to_zero_like_pytorch_msssim():
    ref = smooth_image(192, seed=10)
    pred = 1.0 - ref  # contrast-structure term -1 at every scale
    expect = pytorch_msssim.ms_ssim(t4(pred), t4(ref), data_range=1.0).item()
    got = M.ms_ssim(pred, ref, data_range=1.0)
    assert got == pytest.approx(expect, abs=2e-3)
    assert got == pytest.approx(0.0, abs=1e-6)


def test_ms_ssim_below_minimum_size_raises_with_the_minimum_and_alternatives():
    ref = smooth_image(128, seed=11)
    with pytest.raises(PiddpmError, match=r"> \(win_size - 1\) \* 2\*\*\(scales - 1\) = 160 px"):
        M.ms_ssim(ref, ref)
    with pytest.raises(PiddpmError, match="MS_SSIM_WEIGHTS"):
        M.ms_ssim(ref[:160, :160], ref[:160, :160])  # 160 is not > 160
    # the alternatives named in the message work and agree with pytorch_msssim
    pred = ref + np.random.default_rng(12).normal(0, 0.1, ref.shape)
    expect = pytorch_msssim.ms_ssim(t4(pred), t4(ref), data_range=1.0, win_size=7).item()
    assert M.ms_ssim(pred, ref, data_range=1.0, win_size=7) == pytest.approx(expect, abs=2e-3)
    fewer = M.ms_ssim(pred, ref, data_range=1.0, weights=M.MS_SSIM_WEIGHTS[:3])
    assert 0.0 < fewer < 1.0


# ----------------------------------------------------------------------------- kinds, batches
def test_torch_and_numpy_inputs_give_the_same_numbers():
    ref = smooth_image(176, seed=13)
    pred = ref + np.random.default_rng(14).normal(0, 0.05, ref.shape)
    for fn in (M.psnr, M.nrmse, M.ssim, M.ms_ssim):
        a = fn(pred, ref)
        b = fn(torch.from_numpy(pred), torch.from_numpy(ref))
        c = fn(torch.from_numpy(pred).float(), torch.from_numpy(ref).float())
        assert isinstance(a, float) and isinstance(b, float)
        assert a == pytest.approx(b, abs=1e-12), fn.__name__
        assert a == pytest.approx(c, abs=1e-5), fn.__name__  # float32 rounding of the input


def test_batched_inputs_equal_a_per_image_loop():
    rng = np.random.default_rng(15)
    ref = np.stack(
        [[smooth_image(176, seed=s + 3 * c) * (c + 1) for c in range(3)] for s in range(2)]
    )
    pred = ref + rng.normal(0, 0.05, ref.shape)
    for fn in (M.psnr, M.nrmse, M.ssim, M.ms_ssim):
        batch = fn(pred, ref)
        assert isinstance(batch, np.ndarray) and batch.shape == (2, 3)
        loop = np.array([[fn(pred[i, c], ref[i, c]) for c in range(3)] for i in range(2)])
        np.testing.assert_allclose(batch, loop, atol=1e-12, err_msg=fn.__name__)
        tb = fn(torch.from_numpy(pred), torch.from_numpy(ref))
        assert isinstance(tb, torch.Tensor) and tb.shape == (2, 3)
    # a per-image data range broadcasts over the batch
    dr = np.array([[1.0], [2.0]])
    got = M.psnr(pred, ref, data_range=dr)
    assert got[1, 2] == pytest.approx(M.psnr(pred[1, 2], ref[1, 2], data_range=2.0))


def test_bad_inputs_raise_piddpm_error():
    ref = smooth_image(32)
    with pytest.raises(PiddpmError, match="same shape"):
        M.psnr(ref[:31], ref)
    bad = ref.copy()
    bad[3, 3] = np.nan
    with pytest.raises(PiddpmError, match="NaN"):
        M.ssim(bad, ref)
    with pytest.raises(PiddpmError, match="constant"):
        M.psnr(ref, np.ones_like(ref))
    with pytest.raises(PiddpmError, match="data_range"):
        M.psnr(ref, ref, data_range=-1.0)
    with pytest.raises(PiddpmError, match="win_size"):
        M.ssim(ref, ref, win_size=8)


# ----------------------------------------------------------------------------- FRC
@pytest.mark.parametrize("fc", [0.125, 0.2])
def test_frc_of_two_noisy_copies_crosses_one_seventh_at_the_band_limit(fc):
    a, b = noisy_pair(256, fc, snr_density=3.0, seed=16)
    freqs, frc, counts = M.frc_curve(a, b)
    inside = freqs < 0.8 * fc
    outside = freqs > 1.2 * fc
    assert frc[inside].mean() == pytest.approx(0.75, abs=0.05)  # snr / (1 + snr)
    assert abs(frc[outside].mean()) < 0.02
    assert counts.sum() > 0.7 * 256**2
    # a hard band edge falls inside one ring, so the crossing lands up to ~1 ring beyond it
    # (3 % at fc = 0.125 on 256 px) and the resolution comes out slightly finer
    assert M.frc_resolution(a, b) == pytest.approx(1 / fc, rel=0.06)
    assert M.frc_resolution(a, b, threshold="half-bit") == pytest.approx(1 / fc, rel=0.06)


def test_frc_of_independent_pure_noise_images_is_zero():
    rng = np.random.default_rng(17)
    a, b = rng.standard_normal((2, 256, 256))
    freqs, frc, counts = M.frc_curve(a, b)
    assert np.all(np.abs(frc) < 5 / np.sqrt(counts))  # std of a ring correlation ~ 1/sqrt(n)
    assert abs(frc.mean()) < 0.01
    assert M.frc_resolution(a, b) > 30  # nothing resolved beyond the lowest rings


@pytest.mark.parametrize("fc", [0.125, 0.2])
def test_single_image_checkerboard_frc_agrees_with_two_image_frc(fc):
    a, b = noisy_pair(256, fc, snr_density=3.0, seed=18)
    one = M.frc_resolution(a)
    assert one == pytest.approx(M.frc_resolution(a, b), rel=0.05)
    assert one == pytest.approx(1 / fc, rel=0.05)


def test_frc_units_batches_and_kinds():
    a, b = noisy_pair(128, 0.15, snr_density=3.0, seed=19)
    f_px, frc, _ = M.frc_curve(a, b)
    f_um, _, _ = M.frc_curve(a, b, pixel_size_um=0.05)
    np.testing.assert_allclose(f_um, f_px / 0.05)
    res_px = M.frc_resolution(a, b)
    assert M.frc_resolution(a, b, pixel_size_um=0.05) == pytest.approx(res_px * 50.0)
    tf, tfrc, _ = M.frc_curve(torch.from_numpy(a), torch.from_numpy(b))
    assert isinstance(tfrc, torch.Tensor)
    np.testing.assert_allclose(tfrc.numpy(), frc, atol=1e-12)
    stack_a, stack_b = np.stack([a, b]), np.stack([b, a])
    batch = M.frc_resolution(stack_a, stack_b)
    assert batch.shape == (2,)
    np.testing.assert_allclose(batch, [res_px, M.frc_resolution(b, a)])
    with pytest.raises(PiddpmError, match="threshold"):
        M.frc_resolution(a, b, threshold="1/2-bit")


def test_half_bit_threshold_values_van_heel_schatz():
    # T -> 0.2071 / 1.2071 = 0.1716 for large rings; T(1) = 2.1173 / 2.1173 = 1
    assert M.half_bit_threshold(1.0) == pytest.approx(1.0, abs=1e-4)
    assert M.half_bit_threshold(1e12) == pytest.approx(0.2071 / 1.2071, abs=1e-5)


# ----------------------------------------------------------------------------- decorrelation
@pytest.mark.parametrize("fc", [0.1, 0.2])
def test_decorrelation_resolution_of_band_limited_noise_is_two_over_kc(fc):
    a, _ = noisy_pair(256, fc, snr_density=30.0, seed=20)
    kc = 2 * fc  # cut-off in units of the Nyquist frequency 0.5 cycles/px
    res = M.decorrelation_resolution(a)
    assert res.kc == pytest.approx(kc, rel=0.1)
    assert res.resolution == pytest.approx(2 / kc, rel=0.1)
    assert 0 < res.amplitude < 1
    nm = M.decorrelation_resolution(a, pixel_size_um=0.04)
    assert nm.resolution == pytest.approx(res.resolution * 40.0)


def test_decorrelation_of_white_noise_finds_no_peak():
    rng = np.random.default_rng(21)
    res = M.decorrelation_resolution(rng.standard_normal((128, 128)))
    assert res.resolution == math.inf and res.kc == 0.0


def test_decorrelation_batched_equals_loop():
    a, b = noisy_pair(128, 0.15, snr_density=30.0, seed=22)
    batch = M.decorrelation_resolution(torch.from_numpy(np.stack([a, b])))
    assert isinstance(batch.resolution, torch.Tensor)
    assert batch.resolution[1].item() == pytest.approx(M.decorrelation_resolution(b).resolution)


# ----------------------------------------------------------------------------- data consistency
@pytest.fixture
def shared_blur(monkeypatch):
    """Use piddpm.acquisition.blur; if it is absent, an independent scipy stand-in."""
    try:
        import piddpm.acquisition  # noqa: F401
    except ImportError:
        import sys
        import types

        fake = types.ModuleType("piddpm.acquisition")

        def blur(images, psf, boundary="zero"):
            out = np.stack(
                [
                    convolve2d(im.numpy(), psf[0, 0].numpy(), mode="same")
                    for im in images.reshape(-1, *images.shape[-2:])
                ]
            )
            return torch.from_numpy(out).reshape(images.shape)

        fake.blur = blur
        monkeypatch.setitem(sys.modules, "piddpm.acquisition", fake)


def test_data_consistency_is_relative_noise_norm(shared_blur):
    gt = smooth_image(64, seed=23)
    yy, xx = np.mgrid[-4:5, -4:5]
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))
    psf /= psf.sum()
    clean = convolve2d(gt, psf, mode="same")  # independent reference for A (zero boundary)
    assert M.data_consistency(gt, clean, psf) == pytest.approx(0.0, abs=1e-10)
    noise = np.random.default_rng(24).normal(0, 0.05, gt.shape)
    expect = np.linalg.norm(noise) / np.linalg.norm(clean + noise)
    assert M.data_consistency(gt, clean + noise, psf) == pytest.approx(expect, rel=1e-8)
    batch = M.data_consistency(
        torch.from_numpy(np.stack([gt, gt])),
        torch.from_numpy(np.stack([clean, clean + noise])),
        torch.from_numpy(psf),
    )
    assert isinstance(batch, torch.Tensor)
    np.testing.assert_allclose(batch.numpy(), [0.0, expect], atol=1e-10)


# ----------------------------------------------------------------------------- faithfulness
def _specimen():
    gt = np.zeros((64, 64))
    gt[20:24, 10:50] = 1.0  # a bar
    gt[40, 40] = 0.8  # a point
    return gt


def test_hallucination_score_is_zero_for_the_ground_truth():
    gt = _specimen()
    score = M.hallucination_score(gt, gt)
    assert score == {"background": 0.0, "structure": 0.0, "total": 0.0}


def test_hallucination_score_counts_a_spot_in_empty_background_exactly():
    gt = _specimen()
    restored = gt.copy()
    restored[5:8, 55:58] = 0.5  # far (> margin) from any structure
    score = M.hallucination_score(restored, gt)
    expect = (9 * 0.25) / (restored**2).sum()
    assert score["background"] == pytest.approx(expect, rel=1e-12)
    assert score["structure"] == 0.0
    assert score["total"] == pytest.approx(expect)


def test_hallucination_score_counts_new_structure_but_not_a_one_pixel_shift():
    gt = _specimen()
    restored = gt.copy()
    restored[21, 20:30] = 1.5  # brighter than any gt pixel nearby: excess 0.5 on 10 px
    score = M.hallucination_score(restored, gt)
    assert score["structure"] == pytest.approx(10 * 0.25 / (restored**2).sum(), rel=1e-12)
    assert score["background"] == 0.0
    shifted = np.roll(gt, 1, axis=1)  # a registration error, not a hallucination
    assert M.hallucination_score(shifted, gt)["total"] == 0.0
    batch = M.hallucination_score(np.stack([gt, restored]), np.stack([gt, gt]))
    np.testing.assert_allclose(batch["structure"], [0.0, score["structure"]])


def test_uncertainty_calibration_of_a_gaussian_error_model():
    rng = np.random.default_rng(25)
    mean = rng.random((4, 128, 128))
    std = 0.05 + 0.1 * rng.random(mean.shape)
    gt = mean + std * rng.standard_normal(mean.shape)
    cal = M.uncertainty_calibration(torch.from_numpy(mean), torch.from_numpy(std), gt)
    np.testing.assert_allclose(cal["expected"], [0.6827, 0.9545, 0.9973], atol=1e-4)
    np.testing.assert_allclose(cal["observed"], cal["expected"], atol=0.01)
    assert cal["mean_abs_error"] < 0.01
    over = M.uncertainty_calibration(mean, std / 2, gt)  # over-confident: too narrow
    assert np.all(over["observed"] < over["expected"] - 0.1)
    with pytest.raises(PiddpmError, match="negative"):
        M.uncertainty_calibration(mean, -std, gt)


# ----------------------------------------------------------------------------- normalisation
def test_normalise_percentile_maps_percentiles_to_zero_and_one():
    img = np.random.default_rng(26).gamma(2.0, 30.0, (2, 64, 64))
    out = M.normalise_percentile(img, 1, 99)
    for i in range(2):
        lo, hi = np.percentile(img[i], [1, 99])
        np.testing.assert_allclose(out[i], (img[i] - lo) / (hi - lo), atol=1e-12)
    tout = M.normalise_percentile(torch.from_numpy(img))
    assert isinstance(tout, torch.Tensor)


def test_fit_affine_recovers_scale_and_offset_of_an_8bit_like_pair():
    ref = smooth_image(64, seed=27)
    pred = np.round(ref * 180 + 20)  # same structure, 8-bit scale
    fitted, a, b = M.fit_affine(pred, ref, return_params=True)
    assert a == pytest.approx(1 / 180, rel=1e-2) and b == pytest.approx(-20 / 180, abs=1e-2)
    assert M.psnr(fitted, ref) > 45  # only rounding error is left
    assert M.psnr(pred, ref) < 0


# ------------------------------------------------------------------ whole-image faithfulness
def _sparse_scene(seed=0, size=256):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    clean = 10 + 5 * yy + 3 * xx  # a slow background gradient (uneven illumination)
    spots = np.zeros((size, size))
    spots[rng.integers(0, size, 20), rng.integers(0, size, 20)] = 4000
    clean = clean + ndimage.gaussian_filter(spots, 3)
    return clean, rng.poisson(clean).astype(np.float64)


def test_seam_score_flags_tiles_at_different_levels_and_not_a_smooth_restoration():
    from scipy import ndimage

    from piddpm.metrics import seam_score

    clean, noisy = _sparse_scene()
    assert seam_score(ndimage.gaussian_filter(noisy, 2), noisy, 64) == pytest.approx(1, abs=0.3)
    rng = np.random.default_rng(1)
    offsets = np.kron(rng.normal(0, 2.0, (4, 4)), np.ones((64, 64)))  # 64-px blocks
    assert seam_score(clean + offsets, noisy, 64) > 1.5


def test_background_invention_flags_blobs_in_the_background_and_not_denoising():
    from scipy import ndimage

    from piddpm.metrics import background_invention, background_mask

    clean, noisy = _sparse_scene()
    assert background_invention(ndimage.gaussian_filter(noisy, 2), noisy) < 0.7
    assert background_invention(noisy, noisy) == pytest.approx(1.0)
    mask = background_mask(noisy)
    rng = np.random.default_rng(2)
    blobs = ndimage.gaussian_filter(rng.normal(0, 1, clean.shape), 2)
    invented = clean + 8 * blobs / blobs.std()
    assert mask.mean() == pytest.approx(0.3, abs=0.01)
    assert background_invention(invented, noisy, mask=mask) > 1.5


def test_flat_field_invention_is_one_for_identity_below_for_smoothing_above_for_blobs():
    from scipy import ndimage

    from piddpm.metrics import flat_field_invention

    ident = flat_field_invention(lambda x: x, photons=100)
    assert ident["ratio"] == pytest.approx(1.0) and ident["mean_ratio"] == pytest.approx(1.0)
    # a Poisson field's relative band-pass contrast falls as 1 / sqrt(photons)
    dim = flat_field_invention(lambda x: x, photons=25)
    assert dim["input_contrast"] / ident["input_contrast"] == pytest.approx(2.0, rel=0.05)
    assert flat_field_invention(lambda x: ndimage.gaussian_filter(x, 3))["ratio"] < 0.5
    blobby = flat_field_invention(lambda x: ndimage.gaussian_filter(x, 2) * 8 - 7 * x.mean())
    assert blobby["ratio"] > 1.5


def test_fit_std_scale_recovers_the_factor_of_a_miscalibrated_gaussian_spread():
    from piddpm.metrics import fit_std_scale, uncertainty_calibration

    rng = np.random.default_rng(0)
    true_std = rng.uniform(0.5, 2.0, (4, 64, 64))
    mean = rng.normal(size=true_std.shape)
    gt = mean + true_std * rng.normal(size=true_std.shape)
    reported = true_std / 3.0  # a sampler whose spread is 3x too narrow
    before = uncertainty_calibration(mean, reported, gt)["mean_abs_error"]
    scale, after = fit_std_scale(mean, reported, gt)
    assert scale == pytest.approx(3.0, rel=0.03)
    assert before > 0.3 and after["mean_abs_error"] < 0.01


def test_fit_std_scale_with_a_floor_covers_error_the_samples_do_not_spread_over():
    """Error = sampled spread + an independent part the samples miss: a scale alone cannot
    calibrate 1 and 3 sigma at once; a scale plus a floor gets close."""
    from piddpm.metrics import fit_std_scale

    rng = np.random.default_rng(1)
    std = rng.uniform(0.0, 1.0, (8, 64, 64)) ** 3  # many near-zero spreads (flat background)
    mean = np.zeros_like(std)
    gt = mean + std * rng.normal(size=std.shape) + 0.3 * rng.normal(size=std.shape)
    _, plain = fit_std_scale(mean, std, gt)
    scale, floor, both = fit_std_scale(mean, std, gt, floor=True)
    assert floor > 0 and both["mean_abs_error"] < plain["mean_abs_error"]
    assert both["mean_abs_error"] < 0.05


def test_mean_gradient_of_a_ramp_is_its_slope():
    """Analytic: ``a x + b y`` has |grad| = hypot(a, b) everywhere (central differences are
    exact on a linear ramp, one-sided ones too)."""
    from piddpm.metrics import mean_gradient

    yy, xx = np.mgrid[0:20, 0:30].astype(np.float64)
    g = mean_gradient(np.stack([0.3 * xx - 0.4 * yy, 2.0 * xx]))
    np.testing.assert_allclose(g[0], 0.5, atol=1e-12)
    np.testing.assert_allclose(g[1], 2.0, atol=1e-12)
    with pytest.raises(PiddpmError, match="H, W >= 2"):
        mean_gradient(np.zeros((1, 5)))


def test_fit_spread_puts_the_missing_spread_at_edges():
    """Error whose size follows the mean's edges (as a restoration's does) but a sampled
    spread that does not: a scale and a floor cannot calibrate 1 and 3 sigma at once, the
    gradient term does, and the fitted weight is near the true one."""
    from scipy import ndimage

    from piddpm.metrics import fit_spread, fit_std_scale, mean_gradient

    rng = np.random.default_rng(2)
    mean = ndimage.gaussian_filter((rng.random((6, 96, 96)) > 0.97) * 4.0, (0, 2, 2))
    grad = mean_gradient(mean)
    std = np.full_like(mean, 0.01)
    gt = mean + (0.01 + 0.5 * grad) * rng.normal(size=mean.shape)
    _, _, plain = fit_std_scale(mean, std, gt, floor=True)
    fit = fit_spread(mean, std, gt)
    assert fit["gradient"] == pytest.approx(0.5, rel=0.35)
    assert fit["calibration"]["mean_abs_error"] < 0.02
    assert plain["mean_abs_error"] > 2 * fit["calibration"]["mean_abs_error"]
