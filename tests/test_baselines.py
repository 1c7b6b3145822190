"""Tests of the Richardson-Lucy baseline against scikit-image and against physics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.restoration import richardson_lucy as sk_richardson_lucy

from piddpm import PiddpmError
from piddpm.acquisition import acquire, blur
from piddpm.baselines import richardson_lucy


def _gaussian_psf(size=15, sigma=2.0, dtype=torch.float64):
    r = torch.arange(size, dtype=dtype) - size // 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


def _sparse_points(n_points=12, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.zeros(1, 1, size, size, dtype=torch.float64)
    idx = torch.randint(4, size - 4, (2, n_points), generator=g)
    gt[0, 0, idx[0], idx[1]] = 1.0
    return gt


# ---------------------------------------------------------------- against scikit-image
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ksize", [(9, 9), (7, 5)])
def test_matches_skimage_for_odd_psf(dtype, ksize):
    """skimage: scipy 'same' convolution (zero boundary), start 0.5, no sensitivity term."""
    rng = np.random.default_rng(0)
    image = rng.random((40, 52)).astype(dtype)
    psf = rng.random(ksize).astype(dtype)  # non-symmetric
    psf /= psf.sum()
    ref = sk_richardson_lucy(image, psf, num_iter=25, clip=False)
    ours = richardson_lucy(image, psf, 25, boundary="zero", init=0.5, normalize=False)
    assert isinstance(ours, np.ndarray) and ours.dtype == dtype and ours.shape == image.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_matches_skimage_for_even_psf_with_centre_convention():
    """An even PSF has its centre at kh // 2: padding a zero row/column at the end makes
    an odd PSF with the same centre, which scikit-image treats exactly."""
    rng = np.random.default_rng(1)
    image = rng.random((36, 30))
    psf = rng.random((6, 4))
    psf /= psf.sum()
    ref = sk_richardson_lucy(image, np.pad(psf, ((0, 1), (0, 1))), num_iter=20, clip=False)
    ours = richardson_lucy(image, psf, 20, init=0.5, normalize=False)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


# ---------------------------------------------------------------- physics
def test_sharpens_points_and_reduces_error_monotonically():
    """Noiseless blurred point sources: each early RL step brings the estimate closer to
    the truth and raises the peaks (RL increases the likelihood monotonically)."""
    gt = _sparse_points()
    psf = _gaussian_psf()
    data = blur(gt, psf, "periodic")
    errors, peaks = [], []
    for n in range(0, 9):
        u = richardson_lucy(data, psf, n, boundary="periodic")
        errors.append(float((u - gt).norm()))
        peaks.append(float(u.max()))
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False))
    assert all(b > a for a, b in zip(peaks, peaks[1:], strict=False))
    assert peaks[-1] > 2 * float(data.max())


def test_flux_is_conserved_for_periodic_boundary_unit_psf():
    rng = np.random.default_rng(2)
    data = torch.from_numpy(rng.random((2, 1, 48, 40)) * 100)
    u = richardson_lucy(data, _gaussian_psf(9, 1.5), 15, boundary="periodic")
    torch.testing.assert_close(u.sum(dim=(1, 2, 3)), data.sum(dim=(1, 2, 3)), rtol=1e-9, atol=0)


def test_normalize_equals_textbook_update_for_periodic_unit_psf():
    rng = np.random.default_rng(3)
    data = rng.random((32, 32))
    psf = _gaussian_psf(7, 1.0).numpy()
    a = richardson_lucy(data, psf, 10, boundary="periodic", normalize=True)
    b = richardson_lucy(data, psf, 10, boundary="periodic", normalize=False)
    np.testing.assert_allclose(a, b, rtol=1e-10)


def test_psf_scale_does_not_change_normalized_estimate_model():
    """With the sensitivity term, a PSF of sum 2 gives half the estimate (same A u)."""
    data = blur(_sparse_points(seed=4), _gaussian_psf(), "periodic") + 0.01
    u1 = richardson_lucy(data, _gaussian_psf(), 10, boundary="periodic")
    u2 = richardson_lucy(data, 2 * _gaussian_psf(), 10, boundary="periodic")
    torch.testing.assert_close(u2, u1 / 2)


def test_known_background_improves_the_estimate():
    gt = _sparse_points(seed=5) * 50
    psf = _gaussian_psf()
    data = blur(gt, psf, "periodic") + 3.0  # A u + b, b = 3
    with_b = richardson_lucy(data, psf, 30, background=3.0, boundary="periodic")
    without = richardson_lucy(data, psf, 30, boundary="periodic")
    assert float((with_b - gt).norm()) < 0.8 * float((without - gt).norm())
    # without b the estimate must explain the background as object: far too much flux
    assert float(without.sum()) > float(with_b.sum()) + 0.5 * 3.0 * gt[0, 0].numel()


def test_zero_boundary_sensitivity_keeps_border_flux():
    """A flat scene through a zero-boundary blur: the EM update with A^T 1 recovers it,
    the textbook update darkens the border."""
    psf = _gaussian_psf(9, 2.0)
    flat = torch.ones(1, 1, 40, 40, dtype=torch.float64)
    data = blur(flat, psf, "zero")
    good = richardson_lucy(data, psf, 30, normalize=True)
    bad = richardson_lucy(data, psf, 30, normalize=False)
    assert float((good - flat).abs().max()) < float((bad - flat).abs().max())
    assert float((good[..., 0, :] - 1).abs().max()) < 0.1


def test_total_variation_smooths_noisy_estimate():
    gt = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    gt[..., 16:48, 16:48] = 1.0
    psf = _gaussian_psf(9, 1.5)
    obs = acquire(gt, psf, photons=30.0, boundary="periodic", generator=0)["observed"]

    def tv(u):
        return float(u.diff(dim=-1).abs().sum() + u.diff(dim=-2).abs().sum())

    plain = richardson_lucy(obs, psf, 40, boundary="periodic")
    smooth = richardson_lucy(obs, psf, 40, tv_weight=0.01, boundary="periodic")
    assert tv(smooth) < 0.8 * tv(plain)
    assert (smooth >= 0).all()


def test_auto_stops_near_the_noise_level():
    """num_iter='auto' (Poisson discrepancy principle) stops before noise amplification:
    its error is far below one iteration's and below 100 iterations'."""
    psf = _gaussian_psf()
    scene = torch.zeros(1, 1, 96, 96, dtype=torch.float64)
    scene[..., 30:60, 20:70] = 1.0
    scene[..., 40:50, 30:40] = 3.0
    scene = blur(scene, psf, "periodic") + 0.1
    out = acquire(scene, psf, photons=200.0, background=5.0, boundary="periodic", generator=1)
    truth = scene * out["scale"].view(-1, 1, 1, 1)
    obs = out["observed"]

    def err(u):
        return float((u - truth).norm() / truth.norm())

    u, info = richardson_lucy(
        obs, psf, "auto", background=5.0, boundary="periodic", return_info=True
    )
    assert info["discrepancy"][0] <= 1.0
    assert 1 <= info["num_iter"][0] < 50
    assert err(u) < 0.5 * err(richardson_lucy(obs, psf, 1, background=5.0, boundary="periodic"))
    assert err(u) < 0.5 * err(richardson_lucy(obs, psf, 100, background=5.0, boundary="periodic"))


def test_auto_with_read_noise_stops_at_the_noise_level_of_dim_data():
    """Dim data with camera read noise (20 photons peak, background 10, 1.5 e- rms): the
    Poisson discrepancy at the true object is about ``1 + s^2 / (A u + b)`` > 1, so the pure
    Poisson rule never stops and RL fits the noise. With ``read_noise`` (the shifted-Poisson
    model, ``y + s^2 ~ Poisson(A u + b + s^2)``) the rule stops early, with a much smaller
    error; and the model is exactly RL on ``y + s^2`` with background ``b + s^2``."""
    psf = _gaussian_psf(15, 1.5)
    scene = torch.zeros(1, 1, 96, 96, dtype=torch.float64)
    scene[..., 30:60, 20:70] = 1.0
    scene[..., 40:50, 30:40] = 3.0
    scene = blur(scene, psf, "periodic")
    out = acquire(scene, psf, photons=20.0, background=10.0, read_noise=1.5,
                  boundary="periodic", generator=3)  # fmt: skip
    truth = scene * out["scale"].view(-1, 1, 1, 1)
    obs = out["observed"]

    def err(u):
        return float((u - truth).norm() / truth.norm())

    kw = dict(background=10.0, boundary="periodic", return_info=True)
    u_pois, info_pois = richardson_lucy(obs, psf, "auto", **kw)
    u, info = richardson_lucy(obs, psf, "auto", read_noise=1.5, **kw)
    assert info_pois["num_iter"][0] >= 100 and info_pois["discrepancy"][0] > 1.0
    assert info["discrepancy"][0] <= 1.0 and 1 <= info["num_iter"][0] <= 30
    assert err(u) < 0.7 * err(u_pois)
    shifted = richardson_lucy(obs + 2.25, psf, 7, background=12.25, boundary="periodic")
    torch.testing.assert_close(
        richardson_lucy(obs, psf, 7, background=10.0, read_noise=1.5, boundary="periodic"),
        shifted,
    )


# ---------------------------------------------------------------- interface
def test_rtol_stops_early_and_batch_equals_single_runs():
    rng = np.random.default_rng(6)
    data = torch.from_numpy(rng.random((3, 2, 32, 30)))
    data[1] *= 0.01  # different samples converge at different speeds
    psf = torch.stack([_gaussian_psf(7, s) for s in (0.8, 1.5, 2.5)])[:, None]
    u, info = richardson_lucy(data, psf, 500, rtol=1e-2, return_info=True)
    assert all(n < 500 for n in info["num_iter"])
    assert all(r < 1e-2 for r in info["rel_change"])
    for b in range(3):
        ub, ib = richardson_lucy(data[b : b + 1], psf[b : b + 1], 500, rtol=1e-2, return_info=True)
        assert ib["num_iter"][0] == info["num_iter"][b]
        torch.testing.assert_close(u[b : b + 1], ub)


def test_types_and_shapes_round_trip():
    psf = _gaussian_psf(5, 1.0)
    a32 = np.random.default_rng(7).random((20, 24)).astype(np.float32)
    out = richardson_lucy(a32, psf.numpy(), 3)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (20, 24)
    t = torch.from_numpy(a32)
    out_t = richardson_lucy(t, psf, 3)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), out, rtol=1e-6)
    u16 = (a32 * 1000).astype(np.uint16)
    assert richardson_lucy(u16, psf.numpy(), 2).dtype == np.float32
    assert richardson_lucy(t[None, None], psf, 0).shape == (1, 1, 20, 24)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_iter=-1), "num_iter"),
        (dict(num_iter="many"), "num_iter"),
        (dict(tv_weight=0.3), "tv_weight"),
        (dict(rtol=0.0), "rtol"),
        (dict(boundary="reflect"), "boundary"),
        (dict(background=-1.0), "background"),
        (dict(read_noise=-1.0), "read_noise"),
        (dict(read_noise=float("nan")), "read_noise"),
        (dict(init=-np.ones((16, 16))), "init"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(PiddpmError, match=match):
        richardson_lucy(np.ones((16, 16)), np.ones((3, 3)) / 9, **kwargs)


def test_bad_psf_and_image_raise():
    with pytest.raises(PiddpmError, match="negative"):
        richardson_lucy(np.ones((16, 16)), -np.ones((3, 3)))
    with pytest.raises(PiddpmError, match="NaN"):
        richardson_lucy(np.full((16, 16), np.nan), np.ones((3, 3)))
    with pytest.raises(PiddpmError, match="larger than the image"):
        richardson_lucy(np.ones((8, 8)), np.ones((9, 9)))


def test_default_equals_skimage_away_from_the_borders():
    """The default (EM sensitivity, flat start at the data's flux) differs from
    scikit-image's textbook update only within reach of the borders: 48 px in, 30
    iterations of a 31 x 31 widefield PSF agree within 1e-4 (the documented treatment)."""
    from scipy.signal import fftconvolve

    from piddpm.optics import widefield_psf

    rng = np.random.default_rng(8)
    psf = widefield_psf(0.9, 520, 0.05, 31)[0].numpy()
    scene = (rng.random((160, 160)) ** 4).astype(np.float32)
    image = fftconvolve(scene, psf, mode="same").astype(np.float32) + 0.01
    ref = sk_richardson_lucy(image, psf, num_iter=30, clip=False)
    ours = richardson_lucy(image, psf, 30)
    inner = (slice(48, -48),) * 2
    assert np.abs(ours[inner] - ref[inner]).max() < 1e-4 * np.abs(ref[inner]).max()


def test_cuda_matches_cpu_when_available():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(9)
    image = torch.from_numpy(rng.random((2, 1, 64, 80), dtype=np.float32))
    psf = _gaussian_psf(9, 1.5, torch.float32)
    cpu = richardson_lucy(image, psf, 20)
    gpu = richardson_lucy(image.cuda(), psf.cuda(), 20)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


def test_fixed_iterations_batch_with_per_sample_psfs_equals_single_planes():
    """The fixed-count path (per sample on CPU, batched on CUDA) gives each plane the
    result of a call on that plane alone with its own PSF."""
    rng = np.random.default_rng(10)
    data = torch.from_numpy(rng.random((3, 2, 40, 44), dtype=np.float32))
    psf = torch.stack([_gaussian_psf(9, s, torch.float32) for s in (0.8, 1.5, 2.5)])[:, None]
    u = richardson_lucy(data, psf, 10, background=0.1)
    for b in range(3):
        for c in range(2):
            ub = richardson_lucy(data[b, c], psf[b, 0], 10, background=0.1)
            torch.testing.assert_close(u[b, c], ub, rtol=1e-5, atol=1e-6)


def test_sparse_beads_on_a_zero_background_stay_non_negative():
    """Regression: on a plane whose background is exactly 0 after normalisation (an 8-bit
    bead field with a flat floor), FFT round-off made RL estimates -1e-16, which the
    automatic stopping rule then refused as an ``init``."""
    from piddpm.baselines.stopping import rl_iterations

    yy, xx = np.mgrid[0:96, 0:96]
    plane = np.zeros((96, 96), np.float32)
    for cy, cx in ((20, 30), (60, 70), (75, 15)):
        plane += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2)).astype(np.float32)
    plane[plane < 0.05] = 0.0  # most pixels exactly 0
    psf = np.exp(-((yy[:15, :15] - 7) ** 2 + (xx[:15, :15] - 7) ** 2) / (2 * 1.2**2))
    psf = (psf / psf.sum()).astype(np.float32)
    u = richardson_lucy(plane, psf, 5)
    assert u.min() >= 0.0
    assert 1 <= rl_iterations(plane, psf, 64) <= 200


def test_best_iteration_count_is_the_ceiling_of_any_count():
    """The oracle rule picks, among RL's iterates 1..max_iter, the one closest to the truth in
    PSNR: at least as good as the automatic rule and as every fixed count tried."""
    from piddpm.baselines.stopping import best_iteration_count
    from piddpm.metrics import psnr

    psf = _gaussian_psf(15, 1.5)
    scene = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    scene[..., 20:40, 15:45] = 1.0
    scene = blur(scene, psf, "periodic")
    out = acquire(scene, psf, photons=50.0, background=5.0, read_noise=1.0, generator=4)
    truth = (scene * out["scale"].view(-1, 1, 1, 1))[0, 0].numpy()
    obs, k = out["observed"][0, 0].numpy(), psf.numpy()
    kw = dict(background=5.0, read_noise=1.0)
    best, n, db = best_iteration_count(obs, k, truth, max_iter=40, **kw)
    assert 1 <= n <= 40 and db == pytest.approx(psnr(best, truth))
    auto = richardson_lucy(obs, k, "auto", **kw)
    assert db >= psnr(np.asarray(auto, np.float64), truth) - 1e-9
    for m in (1, 5, 20, 40):
        assert db >= psnr(np.asarray(richardson_lucy(obs, k, m, **kw), np.float64), truth) - 1e-9
