"""Physics tests of piddpm.optics: each test checks a fact of optics, never the code's own output.

References used here:
- analytic limits (Airy pattern, axial extent, OTF support, Zernike orthonormality);
- an independent Richards-Wolf evaluation by Gauss-Legendre quadrature of the Bessel integrals
  I0, I1, I2 (unpolarised intensity |I0|^2 + 2|I1|^2 + |I2|^2), written below with scipy;
- the independent package ``psfmodels`` (Aguet / Gibson-Lanni vectorial model, C++).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import j0, j1

from piddpm import PiddpmError
from piddpm.optics import (
    airy_unit_um,
    confocal_psf,
    frequencies_per_um,
    fwhm,
    noll_to_nm,
    nyquist_pixel_um,
    otf,
    project_psf,
    psf_fwhm_um,
    radial_profile,
    widefield_psf,
    z_positions_um,
    zernike,
)

F64 = torch.float64


def richards_wolf(r_um, z_um, na, ri, wavelength_um, n_quad=200):
    """Unpolarised Richards-Wolf intensity by quadrature over the aperture angle (independent of
    the pupil/Fourier implementation under test)."""
    alpha = math.asin(na / ri)
    x, w = np.polynomial.legendre.leggauss(n_quad)
    theta = 0.5 * alpha * (x + 1.0)
    w = 0.5 * alpha * w
    k = 2.0 * math.pi * ri / wavelength_um
    r_um, z_um = np.broadcast_arrays(np.asarray(r_um, float), np.asarray(z_um, float))
    # evaluate each distinct (r, z) once
    pairs, inverse = np.unique(
        np.stack([r_um.ravel(), z_um.ravel()], 1), axis=0, return_inverse=True
    )
    r, z = pairs[:, :1], pairs[:, 1:]
    st, ct = np.sin(theta), np.cos(theta)
    base = w * np.sqrt(ct) * np.exp(1j * k * z * ct)
    arg = k * r * st
    i0 = (base * st * (1 + ct) * j0(arg)).sum(-1)
    i1 = (base * st**2 * j1(arg)).sum(-1)
    safe = np.where(arg > 0, arg, 1.0)
    bessel2 = np.where(arg > 0, 2 * j1(arg) / safe - j0(arg), 0.0)  # J2 by recurrence
    i2 = (base * st * (1 - ct) * bessel2).sum(-1)
    inten = np.abs(i0) ** 2 + 2 * np.abs(i1) ** 2 + np.abs(i2) ** 2
    return inten[inverse.reshape(-1)].reshape(r_um.shape)


def centre_row(psf2d):
    a = np.asarray(psf2d)
    return a[a.shape[0] // 2]


# ----------------------------------------------------------------------------- widefield


def test_lateral_fwhm_is_0p51_lambda_over_na_at_low_na():
    """For moderate NA the in-focus FWHM is 0.51 lambda / NA (Airy disc) within 3 %.

    (Unpolarised vectorial widths grow with NA: +1.9 % at NA 0.5, +2.4 % at 0.6 and +3.1 % at
    0.7 in water, the last confirmed by psfmodels, so 0.7 is just outside 3 %.)"""
    for na in (0.3, 0.5, 0.6):
        px = 0.01 * 0.52 / na  # 100 pixels per lambda/NA
        psf = widefield_psf(na, 520, px, 161, dtype=F64)[0]
        width = fwhm(centre_row(psf), px)
        assert width == pytest.approx(0.51 * 0.52 / na, rel=0.03), na


def test_first_dark_ring_at_0p61_lambda_over_na():
    """The first minimum of the in-focus widefield PSF lies at 0.61 lambda / NA (low NA)."""
    na, wl = 0.4, 0.52
    px = 0.01 * wl / na
    psf = widefield_psf(na, wl * 1e3, px, 161, dtype=F64)[0].numpy()
    radius, prof = radial_profile(psf)
    first_min = int(np.argmax((prof[1:-1] < prof[:-2]) & (prof[1:-1] < prof[2:]))) + 1
    # parabolic refinement of the minimum
    y0, y1, y2 = prof[first_min - 1 : first_min + 2]
    shift = 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)
    r_min = (radius[first_min] + shift) * px
    assert r_min == pytest.approx(0.61 * wl / na, rel=0.03)
    assert prof[first_min] < 0.01 * prof[0]  # a dark ring, not just a dip


@pytest.mark.parametrize("na, ri", [(0.5, 1.33), (0.9, 1.33), (1.2, 1.33), (1.4, 1.515)])
def test_in_focus_psf_matches_richards_wolf_quadrature(na, ri):
    """The in-focus PSF equals the Richards-Wolf vectorial integral (unpolarised light):
    profile within 0.5 % of the peak, FWHM within 1 % (the vectorial value for this NA)."""
    wl, px, n = 0.52, 0.02, 61
    psf = widefield_psf(na, wl * 1e3, px, n, ri=ri, dtype=F64)[0].numpy()
    x = (np.arange(n) - n // 2) * px
    ref = richards_wolf(np.hypot(x[:, None], x[None, :]), 0.0, na, ri, wl)
    ref /= ref.sum()
    assert np.abs(psf - ref).max() < 5e-3 * ref.max()
    assert fwhm(centre_row(psf), px) == pytest.approx(fwhm(centre_row(ref), px), rel=0.01)


def test_axial_fwhm_is_0p88_lambda_over_n_minus_sqrt_n2_minus_na2():
    """Widefield axial FWHM = 0.88 lambda / (n - sqrt(n^2 - NA^2)) within 10 % (NA <= 0.9)."""
    wl, ri = 0.52, 1.33
    for na in (0.5, 0.9):
        expected = 0.88 * wl / (ri - math.sqrt(ri**2 - na**2))
        dz = expected / 40
        z = z_positions_um(161, dz)
        psf = widefield_psf(na, 520, 0.05, 5, ri=ri, z_um=z, dtype=F64)
        assert fwhm(psf[:, 2, 2], dz) == pytest.approx(expected, rel=0.10), na


def test_defocused_planes_match_richards_wolf_quadrature():
    """Defocus propagation exp(i kz z) reproduces the Debye integral off focus (NA 1.2 water)."""
    na, ri, wl, px, n = 1.2, 1.33, 0.52, 0.04, 41
    z = np.array([-1.0, -0.3, 0.4, 1.5])
    psf = widefield_psf(na, 520, px, n, ri=ri, z_um=z, dtype=F64).numpy()
    x = (np.arange(n) - n // 2) * px
    ref = richards_wolf(np.hypot(x[:, None], x[None, :])[None], z[:, None, None], na, ri, wl)
    ref /= ref.sum()
    assert np.abs(psf - ref).max() < 5e-3 * ref.max()


def test_small_grid_gives_the_same_psf_as_a_large_grid():
    """A 33-pixel PSF is the centre of the 257-pixel one (no widening on small grids, the pyotf
    failure): same values up to normalisation, FWHM equal to the Richards-Wolf value within 1 %."""
    na, wl, px = 0.9, 0.52, 0.06
    small = widefield_psf(na, 520, px, 33, dtype=F64)[0].numpy()
    big = widefield_psf(na, 520, px, 257, dtype=F64)[0].numpy()
    crop = big[128 - 16 : 128 + 17, 128 - 16 : 128 + 17]
    np.testing.assert_allclose(small / small.max(), crop / crop.max(), atol=2e-3)
    x = np.arange(-200, 201) * 0.002
    ref = fwhm(richards_wolf(np.abs(x), 0.0, na, 1.33, wl), 0.002)
    assert fwhm(centre_row(small), px) == pytest.approx(ref, rel=0.01)


def test_widefield_psf_has_unit_sum_and_mirror_symmetry():
    """Unit total sum; aberration-free PSFs are symmetric under x / y mirrors, x<->y and +-z."""
    z = z_positions_um(7, 0.2)
    psf = widefield_psf(1.1, 600, 0.05, 33, z_um=z, dtype=F64)
    assert psf.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(psf, psf.flip(-1), atol=1e-12 * psf.max().item() + 1e-15)
    assert torch.allclose(psf, psf.flip(-2), atol=1e-12)
    assert torch.allclose(psf, psf.transpose(-1, -2), atol=1e-12)
    assert torch.allclose(psf, psf.flip(-3), atol=1e-12)


def test_float32_and_float64_agree():
    """float32 and float64 give the same PSF to 1e-5 of the peak (widefield and confocal)."""
    z = z_positions_um(5, 0.3)
    for fn in (
        lambda dt: widefield_psf(1.0, 520, 0.04, 45, z_um=z, zernike_waves={11: 0.1}, dtype=dt),
        lambda dt: confocal_psf(1.0, 488, 520, 1.0, 0.04, 45, z_um=z, dtype=dt),
    ):
        a, b = fn(torch.float32), fn(torch.float64)
        assert a.dtype == torch.float32 and b.dtype == torch.float64
        assert (a.double() - b).abs().max() < 1e-5 * b.max()


def test_scalar_model_is_narrower_than_vectorial_at_high_na():
    """Depolarisation (the z field) widens the unpolarised vectorial focus at high NA; the scalar
    model stays close to the Airy width (0.51 lambda/NA within 3 %)."""
    na, px = 1.3, 0.01
    vec = fwhm(centre_row(widefield_psf(na, 520, px, 81, ri=1.515, dtype=F64)[0]), px)
    sca = fwhm(centre_row(widefield_psf(na, 520, px, 81, ri=1.515, vectorial=False)[0]), px)
    assert vec > 1.03 * sca
    assert sca == pytest.approx(0.51 * 0.52 / na, rel=0.03)


# ----------------------------------------------------------------------------- batches


def test_batch_of_microscopes_equals_one_at_a_time():
    """B parameters as 1-D tensors give (B, Z, H, W), each equal to the single-microscope PSF."""
    na = torch.tensor([0.6, 1.0, 1.25])
    wl = torch.tensor([450.0, 520.0, 600.0])
    px = torch.tensor([0.05, 0.04, 0.06])
    z = [-0.5, 0.0, 0.5]
    batch = widefield_psf(na, wl, px, 33, z_um=z, dtype=F64)
    assert batch.shape == (3, 3, 33, 33)
    for i in range(3):
        single = widefield_psf(float(na[i]), float(wl[i]), float(px[i]), 33, z_um=z, dtype=F64)
        assert torch.allclose(batch[i], single, atol=1e-12)
    conf = confocal_psf(na, 400.0, wl, torch.tensor([0.0, 1.0, 3.0]), px, 33, dtype=F64)
    assert conf.shape == (3, 1, 33, 33)
    single = confocal_psf(1.0, 400.0, 520.0, 1.0, 0.04, 33, dtype=F64)
    assert torch.allclose(conf[1], single, atol=1e-12)
    aberr = widefield_psf(
        0.8, 520, 0.05, 33, zernike_waves=torch.tensor([[0, 0, 0, 0.1], [0, 0, 0, 0.0]])
    )
    assert aberr.shape == (2, 1, 33, 33)


def test_gradient_with_respect_to_aberrations_matches_finite_difference():
    """The PSF is differentiable in the Zernike coefficients (autograd = finite difference)."""
    coef = torch.tensor([0.0, 0.0, 0.0, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.08], dtype=F64)
    coef.requires_grad_(True)

    def peak(c):
        return widefield_psf(0.9, 520, 0.05, 17, zernike_waves=c, dtype=F64)[0, 8, 8]

    (grad,) = torch.autograd.grad(peak(coef), coef)
    eps = 1e-6
    for j in (3, 10):
        d = torch.zeros_like(coef)
        d[j] = eps
        fd = (peak(coef.detach() + d) - peak(coef.detach() - d)) / (2 * eps)
        assert grad[j].item() == pytest.approx(fd.item(), rel=1e-4)


# ----------------------------------------------------------------------------- confocal


def test_closed_pinhole_confocal_is_1p3_to_1p5_times_narrower():
    """Equal ex/em wavelengths, pinhole <= 0.1 AU: lateral FWHM narrower than widefield by a
    factor 1.3 to 1.5 (the PSF is close to the square of the widefield PSF)."""
    px = 0.01
    wf = fwhm(centre_row(widefield_psf(0.9, 520, px, 81)[0]), px)
    for pinhole in (0.0, 0.1):
        cf = fwhm(centre_row(confocal_psf(0.9, 520, 520, pinhole, px, 81)[0]), px)
        assert 1.3 <= wf / cf <= 1.5, pinhole


def test_open_pinhole_confocal_approaches_excitation_psf():
    """With a pinhole >= 5 AU the confocal lateral FWHM is that of the excitation PSF (3 %)."""
    px = 0.02
    ex = fwhm(centre_row(widefield_psf(1.2, 488, px, 65)[0]), px)
    for pinhole in (5.0, 8.0):
        cf = fwhm(centre_row(confocal_psf(1.2, 488, 520, pinhole, px, 65)[0]), px)
        assert cf == pytest.approx(ex, rel=0.03), pinhole


def test_huge_pinhole_confocal_is_the_excitation_psf():
    """A 1000 AU pinhole collects all emission light: the confocal PSF is the excitation PSF
    (in 3-D, to 1e-3 of the peak), computed in bounded time."""
    z = z_positions_um(5, 0.3)
    ex = widefield_psf(1.2, 488, 0.04, 33, z_um=z, dtype=F64)
    cf = confocal_psf(1.2, 488, 520, 1000.0, 0.04, 33, z_um=z, dtype=F64)
    assert (cf - ex).abs().max() < 1e-3 * ex.max()


def test_point_detector_confocal_is_excitation_times_emission():
    """A 0 AU pinhole (ideal point detector) gives h_ex * h_em (normalised) in 3-D."""
    z = z_positions_um(5, 0.2)
    ex = widefield_psf(1.1, 488, 0.04, 33, z_um=z, dtype=F64)
    em = widefield_psf(1.1, 520, 0.04, 33, z_um=z, dtype=F64)
    cf = confocal_psf(1.1, 488, 520, 0.0, 0.04, 33, z_um=z, dtype=F64)
    prod = ex * em
    assert torch.allclose(cf, prod / prod.sum(), atol=1e-12)


def test_confocal_1au_matches_psfmodels():
    """Confocal PSF at 1 AU (ex 488, em 520, NA 0.9 water) matches psfmodels' confocal_psf:
    lateral FWHM within 3 %, profile correlation > 0.99."""
    psfmodels = pytest.importorskip("psfmodels")
    px, n = 0.04, 41
    ours = confocal_psf(0.9, 488, 520, 1.0, px, n, dtype=F64)[0].numpy()
    ref = psfmodels.confocal_psf(
        z=1, nx=n, dxy=px, NA=0.9, ex_wvl=0.488, em_wvl=0.520, pinhole_au=1.0,
        ni=1.33, ni0=1.33, ns=1.33, oversample_factor=1,
    )[0]  # fmt: skip
    assert fwhm(centre_row(ours), px) == pytest.approx(fwhm(centre_row(ref), px), rel=0.03)
    assert np.corrcoef(centre_row(ours), centre_row(ref))[0, 1] > 0.99


# ----------------------------------------------------------------------------- psfmodels


@pytest.mark.parametrize("na, ri", [(0.9, 1.33), (1.2, 1.33), (1.4, 1.515)])
def test_in_focus_psf_agrees_with_psfmodels(na, ri):
    """Independent vectorial implementation (psfmodels, no index mismatch, point sampling):
    in-focus profile correlation > 0.99 and FWHM within 3 %; axial FWHM within 3 %."""
    psfmodels = pytest.importorskip("psfmodels")
    px, n, wl = 0.03, 65, 0.52
    kw = dict(dxy=px, NA=na, wvl=wl, ni=ri, ni0=ri, ns=ri, model="vectorial", oversample_factor=1)
    ref = psfmodels.make_psf(1, n, dz=0.1, **kw)[0]
    ours = widefield_psf(na, wl * 1e3, px, n, ri=ri, dtype=F64)[0].numpy()
    assert np.corrcoef(centre_row(ours), centre_row(ref))[0, 1] > 0.99
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.99
    assert fwhm(centre_row(ours), px) == pytest.approx(fwhm(centre_row(ref), px), rel=0.03)
    dz = 0.04
    ref_z = psfmodels.make_psf(61, 5, dz=dz, **kw)[:, 2, 2]
    ours_z = widefield_psf(na, wl * 1e3, px, 5, ri=ri, z_um=z_positions_um(61, dz))[:, 2, 2]
    assert fwhm(ours_z, dz) == pytest.approx(fwhm(ref_z, dz), rel=0.03)


# ----------------------------------------------------------------------------- OTF


def test_widefield_otf_support_ends_at_2na_over_lambda():
    """The incoherent OTF vanishes beyond 2 NA / lambda: relative energy there < 1e-4."""
    for na, wl, px in ((0.9, 0.52, 0.05), (1.3, 0.6, 0.04)):
        n = 129
        spec = otf(widefield_psf(na, wl * 1e3, px, n, ri=1.515, dtype=F64)[0])
        assert spec[n // 2, n // 2].real.item() == pytest.approx(1.0, abs=1e-12)
        f = frequencies_per_um(n, px)
        fr = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
        energy = spec.abs() ** 2
        outside = energy[fr > 2 * na / wl].sum() / energy.sum()
        assert outside < 1e-4
        inside = energy[fr < 0.9 * 2 * na / wl].sum() / energy.sum()
        assert inside > 0.99


def test_otf_padding_keeps_dc_centred_and_unit():
    """Zero-padding to a larger grid samples the same OTF more finely (value at 0 stays 1)."""
    psf = widefield_psf(0.8, 520, 0.06, 31, dtype=F64)[0]
    small, big = otf(psf), otf(psf, shape=(62, 62))
    assert big.shape == (62, 62)
    assert big[31, 31].real.item() == pytest.approx(1.0, abs=1e-12)
    # frequency 2 / (62 px) on the big grid is frequency 1 / (31 px) on the small one
    assert big[31, 33].item() == pytest.approx(small[15, 16].item(), abs=1e-12)


# ----------------------------------------------------------------------------- Zernike


def test_zernike_noll_indices_and_unit_rms_orthonormality():
    """Noll's table (j -> n, m) and <Z_i Z_j> over the unit disc = delta_ij (unit rms)."""
    table = {1: (0, 0), 2: (1, 1), 3: (1, -1), 4: (2, 0), 5: (2, -2), 6: (2, 2), 7: (3, -1),
             8: (3, 1), 11: (4, 0), 22: (6, 0)}  # fmt: skip
    for j, nm in table.items():
        assert noll_to_nm(j) == nm
    n = 801
    u = (torch.arange(n, dtype=F64) + 0.5) / n * 2 - 1
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    rho, phi = torch.sqrt(xx**2 + yy**2), torch.atan2(yy, xx)
    inside = rho <= 1
    zs = torch.stack([zernike(j, rho, phi)[inside] for j in range(1, 16)])
    gram = zs @ zs.T / inside.sum()
    assert torch.allclose(gram, torch.eye(15, dtype=F64), atol=5e-3)
    z4 = zernike(4, rho, phi)
    assert torch.allclose(z4, math.sqrt(3) * (2 * rho**2 - 1))


def test_defocus_zernike_equals_axial_shift_at_low_na():
    """Paraxially n cos(theta) ~ n - NA^2 rho^2 / (2 n), so a defocus term c Z4 (waves rms,
    Z4 = sqrt(3)(2 rho^2 - 1)) equals observing the aberration-free PSF at
    z = 4 sqrt(3) c n lambda / NA^2: correlation > 0.99 at NA 0.3, best focus moved there."""
    na, ri, wl, c = 0.3, 1.33, 0.52, 0.5
    dz = 4 * math.sqrt(3) * c * ri * wl / na**2  # 26.6 um, two axial FWHMs
    aberrated = widefield_psf(na, 520, 0.2, 81, ri=ri, zernike_waves={4: c}, dtype=F64)[0]
    shifted = widefield_psf(na, 520, 0.2, 81, ri=ri, z_um=[dz], dtype=F64)[0]
    focus = widefield_psf(na, 520, 0.2, 81, ri=ri, dtype=F64)[0]
    assert np.corrcoef(aberrated.ravel(), shifted.ravel())[0, 1] > 0.99
    assert np.corrcoef(aberrated.ravel(), focus.ravel())[0, 1] < 0.5
    z = np.linspace(0.0, 2 * dz, 201)
    axial = widefield_psf(na, 520, 0.2, 3, ri=ri, z_um=z, zernike_waves={4: c}, dtype=F64)
    assert z[int(axial[:, 1, 1].argmax())] == pytest.approx(dz, rel=0.03)


def test_tilt_zernike_shifts_the_psf_by_2c_lambda_over_na():
    """Z2 = 2 rho cos(phi) with c waves rms is a linear phase: the PSF moves by
    -2 c lambda / NA in x, exactly (here 2 pixels)."""
    na, wl, px = 1.0, 0.5, 0.05
    c = 2 * px * na / (2 * wl)  # shift of 2 px
    tilted = widefield_psf(na, wl * 1e3, px, 41, zernike_waves={2: c}, dtype=F64)[0]
    ref = widefield_psf(na, wl * 1e3, px, 45, dtype=F64)[0]
    expected = ref[2:-2, 4:]  # value at x is the reference at x + 2 px
    assert torch.allclose(tilted / tilted.max(), expected / expected.max(), atol=2e-3)


def test_piston_leaves_the_psf_unchanged_and_matches_richards_wolf():
    """A constant phase (Noll 1) changes nothing: the general (aberrated) transform path also
    reproduces the Richards-Wolf integral, in and out of focus."""
    na, ri, wl, px, n = 1.0, 1.33, 0.52, 0.04, 31
    z = np.array([0.0, 0.6])
    psf = widefield_psf(na, 520, px, n, ri=ri, z_um=z, zernike_waves={1: 0.3}, dtype=F64).numpy()
    x = (np.arange(n) - n // 2) * px
    ref = richards_wolf(np.hypot(x[:, None], x[None, :])[None], z[:, None, None], na, ri, wl)
    ref /= ref.sum()
    assert np.abs(psf - ref).max() < 5e-3 * ref.max()


def test_spherical_aberration_breaks_axial_symmetry_and_lowers_the_peak():
    """Spherical aberration (Noll 11, sqrt(5)(6 rho^4 - 6 rho^2 + 1)) makes I(z) != I(-z) and
    lowers the focal peak to the Strehl ratio |<exp(2 pi i w Z11)>|^2 (pupil average; low NA,
    where the pupil is uniformly filled), about exp(-(2 pi w)^2) (Marechal)."""
    w = 0.06
    # one plane on a wide field (25 um): the unit sum is the whole (phase-independent) energy
    kw = dict(vectorial=False, dtype=F64, ri=1.33)
    clean = widefield_psf(0.3, 520, 0.1, 257, **kw)[0]
    sph = widefield_psf(0.3, 520, 0.1, 257, zernike_waves={11: w}, **kw)[0]
    axial = widefield_psf(0.8, 520, 0.05, 3, z_um=z_positions_um(41, 0.1), zernike_waves={11: w})
    axial = axial[:, 1, 1]
    assert (axial - axial.flip(0)).abs().max() > 0.02 * axial.max()
    rho2 = (np.arange(200000) + 0.5) / 200000  # rho^2 uniform = uniform over the disc area
    z11 = math.sqrt(5) * (6 * rho2**2 - 6 * rho2 + 1)
    strehl_exact = abs(np.exp(2j * math.pi * w * z11).mean()) ** 2
    strehl = (sph[128, 128] / clean[128, 128]).item()
    assert strehl == pytest.approx(strehl_exact, rel=0.01)
    assert strehl == pytest.approx(math.exp(-((2 * math.pi * w) ** 2)), rel=0.03)


# ----------------------------------------------------------------------------- projections


def test_projections_are_unit_sum_and_mean_projection_is_wider():
    """focus / mean / max kernels sum to 1; out-of-focus light makes the z-mean kernel wider."""
    z = z_positions_um(41, 0.1)
    psf = widefield_psf(0.9, 520, 0.05, 33, z_um=z, dtype=F64)
    focus = project_psf(psf, "focus")
    assert torch.allclose(focus, psf[20] / psf[20].sum())
    widths = {}
    for mode in ("focus", "mean", "max"):
        k = project_psf(psf, mode)
        assert k.shape == (33, 33)
        assert k.sum().item() == pytest.approx(1.0, abs=1e-12)
        widths[mode] = fwhm(centre_row(k), 0.05)
    assert widths["mean"] > 1.05 * widths["focus"]
    assert project_psf(psf, "focus", z_um=z.numpy() + 0.1).equal(psf[19] / psf[19].sum())


# ----------------------------------------------------------------------------- helpers


def test_airy_unit_and_nyquist_pixel():
    """1 AU = 1.22 lambda / NA, Nyquist pixel = lambda / (4 NA)."""
    assert airy_unit_um(1.22, 500) == pytest.approx(0.5)
    assert nyquist_pixel_um(1.0, 520) == pytest.approx(0.13)
    au = airy_unit_um(torch.tensor([1.0, 0.5]), 500.0)
    assert torch.allclose(au, torch.tensor([0.61, 1.22]))


def test_fwhm_of_sampled_gaussian_is_2p355_sigma():
    """fwhm() of a Gaussian profile is 2 sqrt(2 ln 2) sigma, to sub-pixel accuracy."""
    sigma = 2.3
    x = np.arange(-20, 21)
    assert fwhm(np.exp(-(x**2) / (2 * sigma**2))) == pytest.approx(2.3548 * sigma, rel=5e-3)
    cube = np.exp(-(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) / 8)
    widths = psf_fwhm_um(cube, 0.1, 0.2)
    assert widths["z_um"] == pytest.approx(2 * widths["x_um"], rel=1e-3)
    with pytest.raises(PiddpmError, match="half maximum"):
        fwhm(np.ones(5) + np.arange(5))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(na=1.4), "na = 1.4 >= ri = 1.33"),
        (dict(na=0.0), "na = 0"),
        (dict(em_wavelength_nm=-520.0), "em_wavelength_nm = -520"),
        (dict(pixel_size_um=0.0), "pixel_size_um = 0"),
        (dict(size=0), "size 0"),
        (dict(na=torch.tensor([0.5, 0.9]), pixel_size_um=torch.tensor([0.05] * 3)), "same length"),
        (dict(z_um=[float("nan")]), "z_um"),
    ],
)
def test_bad_optics_raise_piddpm_error_naming_the_value(kwargs, message):
    args = dict(na=0.9, em_wavelength_nm=520.0, pixel_size_um=0.05, size=17)
    args.update(kwargs)
    with pytest.raises(PiddpmError, match=message.replace("(", r"\(")):
        widefield_psf(**args)


def test_confocal_bad_input():
    with pytest.raises(PiddpmError, match="pinhole_au = -1"):
        confocal_psf(0.9, 488, 520, -1.0, 0.05, 17)
    with pytest.raises(PiddpmError, match="ex_wavelength_nm = 0"):
        confocal_psf(0.9, 0.0, 520, 1.0, 0.05, 17)


def test_coarse_pixels_warn_with_the_nyquist_value():
    """Pixels coarser than lambda / (4 NA) = 0.13 um (520 nm, NA 1) give a UserWarning."""
    with pytest.warns(UserWarning, match=r"Nyquist pixel 0\.13 um"):
        widefield_psf(1.0, 520, 0.2, 17)


def test_empty_or_negative_psf_is_refused():
    psf = torch.zeros(3, 9, 9)
    with pytest.raises(PiddpmError, match="empty"):
        project_psf(psf)
    with pytest.raises(PiddpmError, match="empty"):
        otf(psf[0])
    neg = torch.rand(3, 9, 9) - 0.5
    with pytest.raises(PiddpmError, match="negative values"):
        project_psf(neg)
    with pytest.raises(PiddpmError, match="negative values"):
        otf(neg[0])
    with pytest.raises(PiddpmError, match="unknown"):
        project_psf(torch.rand(3, 9, 9), "min")
    with pytest.raises(PiddpmError, match="shape"):
        otf(torch.rand(9, 9), shape=(4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu():
    """The same PSF on GPU and CPU (float64) to 1e-10 of the peak."""
    z = z_positions_um(5, 0.2)
    cpu = confocal_psf(1.2, 488, 520, 1.0, 0.04, 33, z_um=z, zernike_waves={11: 0.1}, dtype=F64)
    gpu = confocal_psf(
        1.2, 488, 520, 1.0, 0.04, 33, z_um=z, zernike_waves={11: 0.1}, dtype=F64, device="cuda"
    )
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max() < 1e-10 * cpu.max()
