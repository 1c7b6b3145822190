"""Tests of the acquisition model: blur operator A, its adjoint, binning and camera noise."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage
import scipy.signal
import torch

from piddpm import PiddpmError
from piddpm.acquisition import (
    BlurOperator,
    acquire,
    add_noise,
    bin_pixels,
    blur,
    blur_adjoint,
    fast_fft_size,
)

BOUNDARIES = ["zero", "periodic"]
PSF_SIZES = [(5, 5), (4, 6), (7, 4), (6, 6)]  # odd, even and mixed


def _rand(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=dtype)


def _reference_blur(x: np.ndarray, psf: np.ndarray, boundary: str) -> np.ndarray:
    """Direct (non-FFT) reference: y[i,j] = sum_mn psf[m,n] x[i + kh//2 - m, j + kw//2 - n]."""
    kh, kw = psf.shape
    if boundary == "zero":
        full = scipy.signal.convolve(x, psf, mode="full", method="direct")
        return full[kh // 2 : kh // 2 + x.shape[0], kw // 2 : kw // 2 + x.shape[1]]
    out = np.zeros_like(x)
    for m in range(kh):
        for n in range(kw):
            out += psf[m, n] * np.roll(x, (m - kh // 2, n - kw // 2), axis=(0, 1))
    return out


# ---------------------------------------------------------------- the operator A
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("ksize", PSF_SIZES)
def test_delta_psf_at_centre_is_identity(boundary, ksize):
    x = _rand((2, 3, 11, 14))
    psf = torch.zeros(ksize, dtype=torch.float64)
    psf[ksize[0] // 2, ksize[1] // 2] = 1.0
    torch.testing.assert_close(blur(x, psf, boundary), x, atol=1e-12, rtol=0)
    torch.testing.assert_close(blur_adjoint(x, psf, boundary), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("ksize", PSF_SIZES)
def test_blur_matches_direct_convolution(boundary, ksize):
    x = _rand((13, 17), seed=1)
    psf = _rand(ksize, seed=2)  # non-symmetric
    ours = blur(x, psf, boundary).numpy()
    ref = _reference_blur(x.numpy(), psf.numpy(), boundary)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_zero_boundary_equals_scipy_same_for_odd_psf():
    x = _rand((20, 23), seed=3)
    psf = _rand((7, 5), seed=4)
    ref = scipy.signal.convolve(x.numpy(), psf.numpy(), mode="same")
    np.testing.assert_allclose(blur(x, psf, "zero").numpy(), ref, rtol=1e-10, atol=1e-12)


def test_shift_psf_moves_image_by_offset_from_centre():
    # a delta one pixel below the centre shifts the image down by one (periodic)
    x = _rand((8, 10), seed=5)
    psf = torch.zeros(5, 5, dtype=torch.float64)
    psf[3, 2] = 1.0
    torch.testing.assert_close(blur(x, psf, "periodic"), torch.roll(x, 1, dims=0))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("ksize", PSF_SIZES)
@pytest.mark.parametrize("shared", [True, False])
def test_adjoint_identity(dtype, boundary, ksize, shared):
    """<A x, y> == <x, A^T y> for random images and non-symmetric PSFs."""
    x = _rand((3, 2, 13, 18), dtype, seed=6) - 0.3
    y = _rand((3, 2, 13, 18), dtype, seed=7) - 0.6
    psf = _rand(((1 if shared else 3), 1) + ksize, dtype, seed=8)
    lhs = (blur(x, psf, boundary).double() * y.double()).sum()
    rhs = (x.double() * blur_adjoint(y, psf, boundary).double()).sum()
    scale = (blur(x, psf, boundary).double().abs() * y.double().abs()).sum()
    assert abs(float(lhs - rhs)) <= 1e-5 * float(scale)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_adjoint_equals_transpose_of_explicit_matrix(boundary):
    """Build A column by column and compare A^T with blur_adjoint (small, float64)."""
    h, w = 5, 6
    psf = _rand((3, 4), seed=9)
    eye = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)
    a = blur(eye, psf, boundary).reshape(h * w, h * w).T  # column j = A e_j
    at = blur_adjoint(eye, psf, boundary).reshape(h * w, h * w).T
    torch.testing.assert_close(at, a.T, atol=1e-12, rtol=0)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_autograd_gives_data_fidelity_gradient(boundary):
    """d/dx ||A x - y||^2 = 2 A^T (A x - y)."""
    x = _rand((2, 1, 12, 15), seed=10).requires_grad_(True)
    y = _rand((2, 1, 12, 15), seed=11)
    psf = _rand((2, 1, 5, 4), seed=12)
    loss = ((blur(x, psf, boundary) - y) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, x)
    expected = 2 * blur_adjoint(blur(x.detach(), psf, boundary) - y, psf, boundary)
    torch.testing.assert_close(grad, expected)


def test_per_sample_psf_applies_each_psf_to_its_sample():
    x = _rand((3, 2, 10, 12), seed=13)
    psf = _rand((3, 1, 5, 3), seed=14)
    out = blur(x, psf, "zero")
    for b in range(3):
        torch.testing.assert_close(out[b : b + 1], blur(x[b : b + 1], psf[b : b + 1], "zero"))
    shared = blur(x, psf[:1], "zero")
    torch.testing.assert_close(shared[2:3], blur(x[2:3], psf[0, 0], "zero"))


def test_psf_sum_scales_flux_periodic():
    """Periodic blur conserves flux times the PSF sum (the PSF is not renormalised)."""
    x = _rand((1, 1, 16, 16), seed=15)
    psf = _rand((5, 5), seed=16)
    out = blur(x, psf, "periodic")
    assert float(out.sum()) == pytest.approx(float(x.sum() * psf.sum()), rel=1e-12)
    torch.testing.assert_close(blur(x, 3 * psf), 3 * blur(x, psf))


def test_dtype_and_device_preserved_and_int_input_promoted():
    x = _rand((1, 1, 9, 9), torch.float32)
    psf = np.ones((3, 3)) / 9  # numpy float64 PSF is cast to the image dtype
    assert blur(x, psf).dtype == torch.float32
    xi = torch.ones(9, 9, dtype=torch.int64)
    assert blur(xi, psf).is_floating_point()


@pytest.mark.parametrize(
    "psf, match",
    [
        (torch.ones(20, 3), "larger than the image"),
        (-torch.ones(3, 3), "negative"),
        (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), "NaN"),
        (torch.zeros(3, 3), "sums to zero"),
        (torch.ones(2, 1, 3, 3), "does not match"),
        (torch.ones(3, 3, 3), "shape"),
    ],
)
def test_bad_psf_raises_clear_error(psf, match):
    with pytest.raises(PiddpmError, match=match):
        blur(torch.ones(3, 1, 10, 10), psf)


def test_bad_boundary_and_image_shape():
    with pytest.raises(PiddpmError, match="boundary"):
        blur(torch.ones(8, 8), torch.ones(3, 3), boundary="mirror")
    with pytest.raises(PiddpmError, match="boundary"):
        blur_adjoint(torch.ones(8, 8), torch.ones(3, 3), boundary="reflect")
    with pytest.raises(PiddpmError, match=r"\(B, C, H, W\)"):
        blur(torch.ones(2, 8, 8), torch.ones(3, 3))


def test_reflect_boundary_is_scipy_mirror_convolution_and_keeps_a_flat_image_flat():
    """The reflecting boundary extends the image by mirror reflection: it equals
    scipy.ndimage.convolve(mode="mirror") and, with a unit-sum PSF, a flat image stays flat
    at the border (energy is conserved pixel by pixel; "zero" darkens the rim)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(23, 31, generator=gen, dtype=torch.float64)
    psf = torch.rand(7, 5, generator=gen, dtype=torch.float64)
    psf /= psf.sum()
    ref = scipy.ndimage.convolve(x.numpy(), psf.numpy(), mode="mirror")
    np.testing.assert_allclose(blur(x, psf, boundary="reflect").numpy(), ref, atol=1e-12)
    flat = torch.full((16, 16), 3.0, dtype=torch.float64)
    torch.testing.assert_close(blur(flat, psf, boundary="reflect"), flat)
    assert blur(flat, psf, boundary="zero")[0, 0] < 3.0 - 0.1


def test_fast_fft_size_matches_scipy():
    for n in range(1, 300):
        assert fast_fft_size(n) == scipy.fft.next_fast_len(n, real=True)


# ---------------------------------------------------------------- BlurOperator
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_blur_operator_matches_functions_and_caches_otf(boundary):
    x = _rand((2, 3, 14, 11), torch.float32, seed=17)
    psf = _rand((2, 1, 4, 5), torch.float32, seed=18)
    op = BlurOperator(psf, image_shape=(14, 11), boundary=boundary)
    torch.testing.assert_close(op(x), blur(x, psf, boundary))
    torch.testing.assert_close(op.T(x), blur_adjoint(x, psf, boundary))
    torch.testing.assert_close(op.adjoint(x), op.T(x))
    otf = op.otf(torch.float32, x.device)
    assert op.otf(torch.float32, x.device) is otf  # computed once
    x64 = x.double()
    torch.testing.assert_close(op(x64), blur(x64, psf.double(), boundary))
    with pytest.raises(PiddpmError, match="image_shape"):
        op(torch.ones(2, 3, 10, 10))


def test_blur_operator_rejects_psf_larger_than_image():
    with pytest.raises(PiddpmError, match="larger than the image"):
        BlurOperator(torch.ones(9, 9), image_shape=(8, 16))


# ---------------------------------------------------------------- binning
def test_bin_pixels_sum_conserves_photons_and_mean_averages():
    x = _rand((2, 1, 6, 9), seed=19)
    s = bin_pixels(x, 3, "sum")
    m = bin_pixels(x, 3, "mean")
    assert s.shape == (2, 1, 2, 3)
    assert float(s.sum()) == pytest.approx(float(x.sum()))
    assert float(s[0, 0, 1, 2]) == pytest.approx(float(x[0, 0, 3:6, 6:9].sum()))
    torch.testing.assert_close(m, s / 9)
    with pytest.raises(PiddpmError, match="multiple of the binning factor"):
        bin_pixels(x, 4)
    with pytest.raises(PiddpmError, match="integer >= 1"):
        bin_pixels(x, 0)


# ---------------------------------------------------------------- noise
N = 256


def _flat(value=1.0, b=1):
    return torch.full((b, 1, N, N), value, dtype=torch.float64)


def test_poisson_shot_noise_mean_equals_variance():
    obs = add_noise(_flat(), photons=50.0, generator=0)
    assert float(obs.mean()) == pytest.approx(50.0, rel=0.01)
    assert float(obs.var()) == pytest.approx(50.0, rel=0.04)
    assert torch.equal(obs, obs.round())  # photon counts are integers


def test_background_adds_poisson_photons():
    obs = add_noise(_flat(), photons=20.0, background=10.0, generator=1)
    assert float(obs.mean()) == pytest.approx(30.0, rel=0.01)
    assert float(obs.var()) == pytest.approx(30.0, rel=0.04)


def test_read_noise_variance_adds_in_quadrature():
    obs = add_noise(_flat(), photons=40.0, read_noise=3.0, generator=2)
    assert float(obs.mean()) == pytest.approx(40.0, rel=0.01)
    assert float(obs.var()) == pytest.approx(40.0 + 9.0, rel=0.04)


def test_gain_and_offset_scale_mean_and_variance():
    obs = add_noise(_flat(), photons=30.0, read_noise=2.0, gain=2.5, offset=100.0, generator=3)
    assert float(obs.mean()) == pytest.approx(2.5 * 30.0 + 100.0, rel=0.01)
    assert float(obs.var()) == pytest.approx(2.5**2 * (30.0 + 4.0), rel=0.04)


def test_photons_refer_to_brightest_pixel():
    clean = _flat(0.5)
    clean[0, 0, :8, :8] = 2.0  # brightest region
    obs = add_noise(clean, photons=100.0, generator=4)
    assert float(obs[0, 0, :8, :8].mean()) == pytest.approx(100.0, rel=0.03)
    assert float(obs[0, 0, 64:, 64:].mean()) == pytest.approx(25.0, rel=0.02)


def test_per_sample_photons():
    photons = torch.tensor([10.0, 200.0])
    obs = add_noise(_flat(b=2), photons=photons, generator=5)
    assert float(obs[0].mean()) == pytest.approx(10.0, rel=0.02)
    assert float(obs[1].mean()) == pytest.approx(200.0, rel=0.01)
    with pytest.raises(PiddpmError, match="length B=2"):
        add_noise(_flat(b=2), photons=torch.ones(3))


def test_quantisation_rounds_and_clips_to_bit_depth():
    obs = add_noise(
        _flat(), photons=300.0, read_noise=5.0, gain=1.3, offset=-10.0, bit_depth=8, generator=6
    )
    assert torch.equal(obs, obs.round())
    assert float(obs.min()) >= 0 and float(obs.max()) == 255.0  # saturates at 2^8 - 1
    low = add_noise(_flat(), photons=1.0, offset=-5.0, read_noise=1.0, bit_depth=12, generator=7)
    assert float(low.min()) == 0.0  # negative ADU clipped at 0


def test_same_seed_same_noise_different_seed_different():
    clean = _rand((2, 1, 32, 32), seed=20)
    kw = dict(photons=30.0, background=2.0, read_noise=1.5)
    a = add_noise(clean, generator=torch.Generator().manual_seed(11), **kw)
    b = add_noise(clean, generator=torch.Generator().manual_seed(11), **kw)
    c = add_noise(clean, generator=torch.Generator().manual_seed(12), **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(photons=0.0), "photons"),
        (dict(photons=10.0, background=-1.0), "background"),
        (dict(photons=10.0, read_noise=-1.0), "read_noise"),
        (dict(photons=10.0, gain=0.0), "gain"),
        (dict(photons=10.0, bit_depth=0), "bit_depth"),
    ],
)
def test_bad_noise_parameters(kwargs, match):
    with pytest.raises(PiddpmError, match=match):
        add_noise(_flat(), **kwargs)


def test_negative_clean_image_is_rejected():
    with pytest.raises(PiddpmError, match="negative"):
        add_noise(_flat() - 2.0, photons=10.0)


# ---------------------------------------------------------------- acquire
def test_acquire_observed_clean_is_expectation_of_observed():
    gt = torch.zeros(2, 1, 64, 64, dtype=torch.float64)
    gt[:, :, 20:44, 20:44] = 1.0
    psf = torch.ones(5, 5, dtype=torch.float64) / 25
    out = acquire(
        gt,
        psf,
        photons=torch.tensor([50.0, 80.0]),
        background=5.0,
        read_noise=1.0,
        gain=2.0,
        offset=10.0,
        boundary="periodic",
        generator=8,
    )
    assert out["observed"].shape == gt.shape
    torch.testing.assert_close(out["blurred"], blur(gt, psf, "periodic"))
    # brightest pixel: gain * (photons + background) + offset
    assert float(out["observed_clean"][0].max()) == pytest.approx(2 * (50 + 5) + 10)
    assert float(out["observed_clean"][1].max()) == pytest.approx(2 * (80 + 5) + 10)
    # E[observed] = observed_clean: compare means over the flat interior and background
    obs, clean = out["observed"], out["observed_clean"]
    for b in range(2):
        assert float(obs[b, 0, 24:40, 24:40].mean()) == pytest.approx(
            float(clean[b, 0, 24:40, 24:40].mean()), rel=0.02
        )
        assert float(obs[b, 0, :10].mean()) == pytest.approx(20.0, rel=0.03)
    # observed_clean is an affine map of A gt (the data-normalisation convention relies on it)
    a = (clean[0] - clean[0].min()) / (clean[0].max() - clean[0].min())
    ref = out["blurred"][0] / out["blurred"][0].max()
    torch.testing.assert_close(a, ref)


def test_acquire_with_binning_and_2d_input():
    gt = torch.ones(32, 48)
    out = acquire(
        gt, torch.ones(3, 3) / 9, photons=10.0, binning=4, boundary="periodic", generator=9
    )
    assert out["observed"].shape == (8, 12)
    assert float(out["observed_clean"].mean()) == pytest.approx(10.0)
