"""3-D Richardson-Lucy (``rl-3d``): against scikit-image's n-D RL, against physics (flat
specimens, the analytic axial width of a widefield PSF), chunked against in-memory, and its
one-line input errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy.signal import fftconvolve
from skimage.restoration import richardson_lucy as sk_richardson_lucy

from piddpm import PiddpmError
from piddpm.baselines import richardson_lucy_3d, rl_iterations
from piddpm.optics import psf_fwhm_um, z_positions_um
from piddpm.optics.kernels import make_psf_3d
from piddpm.restore import restore


def _gauss_psf(shape=(9, 7, 7), sigma=(1.5, 1.0, 1.0)):
    axes = [
        np.exp(-((np.arange(n) - n // 2) ** 2) / (2 * s * s))
        for n, s in zip(shape, sigma, strict=True)
    ]
    psf = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (psf / psf.sum()).astype(np.float32)


def _beads(shape=(32, 48, 48), n=40, seed=0):
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, np.float32)
    gt[tuple(rng.integers(0, shape, (n, 3)).T)] = 100.0
    return gt


def _blurred(gt, psf, offset=0.5):
    return (fftconvolve(gt, psf, mode="same") + offset).astype(np.float32)


# ---------------------------------------------------------------- against scikit-image
@pytest.mark.parametrize("num_iter", [5, 10])
def test_equals_skimage_nd_away_from_the_borders(num_iter):
    """scikit-image: zero boundary, start 0.5; ours: extended object and sensitivity. The
    two differ only through the borders, so the interior agrees within 1e-3 relative."""
    psf = _gauss_psf()
    data = _blurred(_beads(), psf)
    ref = sk_richardson_lucy(data, psf, num_iter=num_iter, clip=False)
    ours = richardson_lucy_3d(data, psf, num_iter)
    assert ours.shape == data.shape and ours.dtype == np.float32
    inner = (slice(12, -12),) * 3
    err = np.abs(ours[inner] - ref[inner]).max() / np.abs(ref[inner]).max()
    assert err < 1e-3


# ---------------------------------------------------------------- physics
def test_flat_specimen_stays_flat_up_to_the_top_and_bottom_planes():
    """A uniform specimen gives uniform data; the extended-object model explains them with a
    uniform object, so no plane rings or brightens (a zero-boundary RL does, at the top and
    bottom planes: it must put the missing out-of-focus light somewhere)."""
    psf = _gauss_psf((9, 5, 5), (2.0, 1.0, 1.0))
    data = np.full((16, 24, 24), 7.0, np.float32)
    ours = richardson_lucy_3d(data, psf, 30)
    assert np.abs(ours / 7.0 - 1.0).max() < 1e-3
    zero_boundary = sk_richardson_lucy(data, psf, num_iter=30, clip=False)
    assert np.abs(zero_boundary[[0, -1]] / 7.0 - 1.0).max() > 0.1  # what this avoids


def test_sharpens_a_blurred_point_axially():
    psf = _gauss_psf((15, 7, 7), (2.5, 1.0, 1.0))
    gt = np.zeros((31, 25, 25), np.float32)
    gt[15, 12, 12] = 1000.0
    data = _blurred(gt, psf, 0.1)
    before = psf_fwhm_um(data, 1.0, 1.0)["z_um"]
    after = psf_fwhm_um(richardson_lucy_3d(data, psf, 50), 1.0, 1.0)["z_um"]
    assert after < 0.6 * before


def test_widefield_psf_axial_width_matches_the_analytic_formula():
    """Axial FWHM of the computed vectorial widefield PSF against the non-paraxial estimate
    0.88 lambda / (n - sqrt(n^2 - NA^2)) (paraxially ~1.77 n lambda / NA^2), at the stack's
    z step; the planes sit at z_positions_um (focus = plane n_z // 2)."""
    for na, step in ((0.5, 0.2), (0.95, 0.05)):
        psf = make_psf_3d(na=na, em_nm=520, pixel_um=0.05, z_step_um=step, ri=1.0, n_z=101)
        assert psf.shape[0] == 101 and abs(psf.sum() - 1) < 1e-5
        assert int(np.argmax(psf.max(axis=(1, 2)))) == 50 == int(np.argmin(np.abs(
            z_positions_um(101, step).numpy())))  # fmt: skip
        analytic = 0.88 * 0.52 / (1.0 - np.sqrt(1.0 - na * na))
        measured = psf_fwhm_um(psf, 0.05, step)["z_um"]
        assert abs(measured / analytic - 1) < 0.1


def test_psf_depth_follows_the_z_step_and_the_stack():
    coarse = make_psf_3d(na=0.8, em_nm=520, pixel_um=0.1, z_step_um=0.4, ri=1.0)
    fine = make_psf_3d(na=0.8, em_nm=520, pixel_um=0.1, z_step_um=0.2, ri=1.0)
    assert coarse.shape[0] % 2 == 1 and fine.shape[0] > 1.8 * coarse.shape[0]
    capped = make_psf_3d(na=0.8, em_nm=520, pixel_um=0.1, z_step_um=0.2, ri=1.0, max_planes=12)
    assert capped.shape[0] == 11


def test_auto_rule_stops_earlier_on_noisier_stacks():
    psf = _gauss_psf()
    clean = _blurred(_beads((16, 48, 48), 30), psf, 2.0)
    rng = np.random.default_rng(1)
    counts = [
        rl_iterations(np.clip(clean + rng.normal(0, s, clean.shape), 0, None), psf, 256)
        for s in (0.05, 1.0)
    ]
    assert 1 <= counts[1] < counts[0]


# ---------------------------------------------------------------- chunking
def test_chunked_equals_in_memory():
    psf = _gauss_psf()
    data = _blurred(_beads((20, 64, 56)), psf)
    whole = richardson_lucy_3d(data, psf, 10)
    chunked, info = richardson_lucy_3d(
        data, psf, 10, max_voxels=28 * 50 * 50, overlap_px=14, return_info=True
    )
    assert info["chunks"] > 1
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-4 * whole.max())


# ---------------------------------------------------------------- restore wiring
def test_restore_rl3d_per_stack_and_channels(tmp_path):
    psf = _gauss_psf()
    rng = np.random.default_rng(3)
    stack = rng.poisson(_blurred(_beads((16, 40, 40)), psf, 20.0) * 10).astype(np.float32)
    two = np.stack([stack, 2 * stack + 5])
    res = restore(two, method="rl-3d", psf=psf, steps=5, axes="CZYX", device="cpu")
    assert res.mean.shape == two.shape and res.metadata["method"] == "rl-3d"
    assert res.metadata["steps"] == 5 and res.residual is None
    one = restore(stack, method="rl-3d", psf=psf, steps=5, axes="ZYX", device="cpu").mean
    np.testing.assert_allclose(res.mean[0], one, rtol=1e-5, atol=1e-4)
    # percentile normalisation per stack: an affine change of the data maps through
    np.testing.assert_allclose(res.mean[1], 2 * one + 5, rtol=1e-3, atol=1e-3 * one.max())


def test_restore_rl3d_xy_chunks_from_tile_and_overlap(tmp_path):
    """``tile`` is rl-3d's XY chunk side (``--tile`` on the command line): the chunked
    stack equals the unchunked one (each chunk carries an ``overlap`` halo)."""
    psf = _gauss_psf()
    rng = np.random.default_rng(5)
    stack = rng.poisson(_blurred(_beads((12, 64, 64)), psf, 20.0) * 10).astype(np.float32)
    whole = restore(stack, method="rl-3d", psf=psf, steps=8, axes="ZYX", device="cpu").mean
    res = restore(stack, method="rl-3d", psf=psf, steps=8, axes="ZYX", device="cpu",
                  tile=24, overlap=psf.shape[1])  # fmt: skip
    assert res.metadata["xy_chunks"] == 9  # 64 / 24 -> 3 x 3 chunks
    np.testing.assert_allclose(res.mean, whole, rtol=0, atol=1e-4 * whole.max())
    with pytest.raises(PiddpmError, match="tile \\(rl-3d XY chunk side\\) must be"):
        restore(stack, method="rl-3d", psf=psf, steps=2, axes="ZYX", device="cpu", tile=8)


def test_cli_rl3d_with_computed_psf(tmp_path):
    from piddpm.cli import main

    rng = np.random.default_rng(2)
    stack = rng.poisson(_blurred(_beads((12, 40, 40)), _gauss_psf()) * 5).astype(np.uint16)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, stack)
    out = tmp_path / "out.tif"
    argv = ["restore", src, "--axes", "ZYX", "--method", "rl-3d", "--modality", "widefield",
            "--na", "0.8", "--em-nm", "520", "--pixel-um", "0.1", "--z-step-um", "0.3",
            "--steps", "3", "-o", out, "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    assert tifffile.imread(out).shape == stack.shape
    chunked = tmp_path / "chunked.tif"  # --tile / --overlap: XY chunks with a halo
    argv[argv.index(out)] = chunked
    assert main([str(a) for a in [*argv, "--tile", "16", "--overlap", "12"]]) == 0
    np.testing.assert_allclose(tifffile.imread(chunked), tifffile.imread(out), rtol=0,
                               atol=1e-4 * float(tifffile.imread(out).max()))  # fmt: skip
    psf_file = tmp_path / "psf3d.tif"  # a plain 3-D TIFF (axes "QYX") is a (Z, Y, X) PSF
    tifffile.imwrite(psf_file, _gauss_psf())
    argv = ["restore", src, "--axes", "ZYX", "--method", "rl-3d", "--psf", psf_file,
            "--steps", "3", "-o", tmp_path / "out2.tif", "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0


def _one_line_error(match, **kwargs):
    with pytest.raises(PiddpmError, match=match) as err:
        restore(method="rl-3d", device="cpu", **kwargs)
    assert "\n" not in str(err.value)


def test_bad_inputs_give_one_line_errors(tmp_path):
    stack = np.ones((8, 32, 32), np.float32)
    _one_line_error("3-D PSF", image=stack, psf=np.ones((5, 5)), axes="ZYX")
    _one_line_error("deeper than the stack", image=stack, psf=np.ones((9, 5, 5)), axes="ZYX")
    _one_line_error("z-stack", image=np.ones((32, 32)), psf=np.ones((3, 5, 5)), axes="YX")
    micro = {"na": 0.8, "em_nm": 520, "pixel_um": 0.1}
    _one_line_error("z step", image=stack, microscope=micro, axes="ZYX")
    _one_line_error("needs a 3-D PSF", image=stack, axes="ZYX")
    path = tmp_path / "psf2d.tif"
    tifffile.imwrite(path, np.ones((5, 5), np.float32))
    _one_line_error("psf2d.tif", image=stack, psf=str(path), axes="ZYX")


@pytest.mark.parametrize("ks", [(7, 5, 5), (6, 4, 5)])
def test_blur_operator_equals_scipy_convolution(ks):
    """The engine's operators against scipy: "valid" (extended object) is
    ``fftconvolve(mode="valid")``, "same" is the full linear convolution cropped at the PSF
    centre ``k // 2``, and the adjoint passes the dot-product test."""
    import torch

    from piddpm.baselines.rl_core import FFTBlur

    rng = np.random.default_rng(4)
    psf, shape = rng.random(ks), (20, 24, 22)
    valid = FFTBlur(torch.from_numpy(psf), shape, "valid")
    u = rng.random(valid.object_shape)
    au = valid.forward(torch.from_numpy(u)).numpy()
    np.testing.assert_allclose(au, fftconvolve(u, psf, mode="valid"), atol=1e-12)
    r = rng.random(shape)
    atr = valid.adjoint(torch.from_numpy(r)).numpy()
    assert abs((au * r).sum() - (u * atr).sum()) < 1e-9 * abs((au * r).sum())
    same = FFTBlur(torch.from_numpy(psf), shape, "same")
    v = rng.random(shape)
    c = [k // 2 for k in ks]
    full = fftconvolve(v, psf, mode="full")
    ref = full[c[0] : c[0] + 20, c[1] : c[1] + 24, c[2] : c[2] + 22]
    np.testing.assert_allclose(same.forward(torch.from_numpy(v)).numpy(), ref, atol=1e-12)
