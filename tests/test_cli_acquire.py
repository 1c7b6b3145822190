"""Tests of ``piddpm acquire`` run through ``piddpm.cli.main`` on temporary files.

The PSFs are hand-made Gaussians (no dependency on piddpm.optics).
"""

from __future__ import annotations

import numpy as np
import pytest

from piddpm.cli import main
from piddpm.io import read_image, write_tiff


def _gaussian(size=9, sigma=1.5):
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


@pytest.fixture
def files(tmp_path):
    gt = np.zeros((64, 80), np.float32)
    gt[16:48, 20:60] = 2.0
    write_tiff(tmp_path / "gt.tif", gt, axes="YX", pixel_size_um=(None, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", _gaussian(), axes="YX", pixel_size_um=(None, 0.1, 0.1))
    return tmp_path


def _run(*argv):
    return main(["acquire", *map(str, argv)])


def test_mean_intensity_follows_photons_gain_offset(files):
    out = files / "obs.tif"
    rc = _run(
        files / "gt.tif",
        "--psf",
        files / "psf.tif",
        "--photons",
        200,
        "--background",
        10,
        "--gain",
        2,
        "--offset",
        100,
        "--boundary",
        "periodic",
        "-o",
        out,
    )
    assert rc == 0
    img = read_image(out)
    assert img.data.dtype == np.float32 and img.data.shape == (64, 80) and img.axes == "YX"
    assert img.pixel_size_um[0] is None and img.pixel_size_um[1:] == pytest.approx((0.1, 0.1))
    inside = img.data[24:40, 28:52].mean()  # flat top of the blurred square: the brightest pixels
    outside = img.data[:8].mean()  # background only
    assert inside == pytest.approx(2 * (200 + 10) + 100, rel=0.02)
    assert outside == pytest.approx(2 * 10 + 100, rel=0.03)
    meta = img.metadata["metadata"]
    assert meta["photons"] == 200 and meta["units"] == "ADU"


def test_same_seed_same_image_other_seed_differs(files):
    for name, seed in (("a.tif", 3), ("b.tif", 3), ("c.tif", 4)):
        assert (
            _run(files / "gt.tif", "--psf", files / "psf.tif", "--seed", seed, "-o", files / name)
            == 0
        )
    a, b, c = (read_image(files / n).data for n in ("a.tif", "b.tif", "c.tif"))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_quantised_read_noise_output(files):
    out = files / "q.tif"
    assert (
        _run(
            files / "gt.tif",
            "--psf",
            files / "psf.tif",
            "--photons",
            5000,
            "--read-noise",
            2,
            "--bit-depth",
            12,
            "-o",
            out,
        )
        == 0
    )
    data = read_image(out).data
    np.testing.assert_array_equal(data, np.round(data))
    assert data.max() == 4095  # 5000 photons saturate a 12-bit ADC


def test_stack_blurred_plane_by_plane_keeps_relative_brightness(files):
    stack = np.zeros((3, 32, 32), np.float32)
    stack[0, 8:24, 8:24] = 1.0
    stack[1, 8:24, 8:24] = 0.5
    write_tiff(files / "stack.tif", stack, axes="ZYX", pixel_size_um=(0.3, 0.1, 0.1))
    out = files / "stack_obs.tif"
    assert (
        _run(
            files / "stack.tif",
            "--psf",
            files / "psf.tif",
            "--photons",
            400,
            "--boundary",
            "periodic",
            "-o",
            out,
        )
        == 0
    )
    img = read_image(out)
    assert img.axes == "ZYX" and img.data.shape == (3, 32, 32)
    assert img.pixel_size_um == pytest.approx((0.3, 0.1, 0.1))
    assert img.data[0, 12:20, 12:20].mean() == pytest.approx(400, rel=0.03)
    assert img.data[1, 12:20, 12:20].mean() == pytest.approx(200, rel=0.04)
    assert img.data[2].max() == 0  # an empty plane stays dark (no background)


def test_binning_scales_pixel_size(files):
    out = files / "bin.tif"
    assert _run(files / "gt.tif", "--psf", files / "psf.tif", "--binning", 2, "-o", out) == 0
    img = read_image(out)
    assert img.data.shape == (32, 40)
    assert img.pixel_size_um[1:] == pytest.approx((0.2, 0.2))


def test_3d_psf_with_2d_gt_uses_in_focus_plane(files):
    psf3d = np.stack([_gaussian(9, 3.0) * 0.3, _gaussian(9, 1.0), _gaussian(9, 3.0) * 0.3])
    write_tiff(files / "psf3d.tif", psf3d, axes="ZYX", pixel_size_um=(0.3, 0.1, 0.1))
    write_tiff(files / "psf2d.tif", _gaussian(9, 1.0), axes="YX", pixel_size_um=(None, 0.1, 0.1))
    with pytest.warns(UserWarning, match="in-focus plane 1 of 3"):
        assert _run(files / "gt.tif", "--psf", files / "psf3d.tif", "-o", files / "o3.tif") == 0
    assert _run(files / "gt.tif", "--psf", files / "psf2d.tif", "-o", files / "o2.tif") == 0
    np.testing.assert_array_equal(
        read_image(files / "o3.tif").data, read_image(files / "o2.tif").data
    )


def test_3d_psf_with_stack_is_an_error(files, capsys):
    write_tiff(files / "stack.tif", np.ones((2, 32, 32)), axes="ZYX")
    write_tiff(files / "psf3d.tif", np.ones((3, 5, 5)), axes="ZYX")
    assert _run(files / "stack.tif", "--psf", files / "psf3d.tif", "-o", files / "o.tif") == 2
    assert "3D convolution" in capsys.readouterr().err
    assert not (files / "o.tif").exists()


def test_pixel_size_mismatch_names_both_values(files, capsys):
    write_tiff(files / "psf_coarse.tif", _gaussian(), axes="YX", pixel_size_um=(None, 0.13, 0.13))
    rc = _run(files / "gt.tif", "--psf", files / "psf_coarse.tif", "-o", files / "o.tif")
    assert rc == 2
    err = capsys.readouterr().err
    assert "0.13 um" in err and "0.1 um" in err and "psf_coarse.tif" in err
    # within 1 % is accepted
    write_tiff(
        files / "psf_close.tif", _gaussian(), axes="YX", pixel_size_um=(None, 0.1005, 0.1005)
    )
    assert _run(files / "gt.tif", "--psf", files / "psf_close.tif", "-o", files / "o.tif") == 0


def test_existing_output_needs_overwrite(files, capsys):
    out = files / "o.tif"
    assert _run(files / "gt.tif", "--psf", files / "psf.tif", "-o", out) == 0
    before = out.read_bytes()
    assert _run(files / "gt.tif", "--psf", files / "psf.tif", "--seed", 9, "-o", out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert (
        _run(files / "gt.tif", "--psf", files / "psf.tif", "--seed", 9, "--overwrite", "-o", out)
        == 0
    )
    assert out.read_bytes() != before


def test_output_may_not_replace_input(files, capsys):
    gt_bytes = (files / "gt.tif").read_bytes()
    rc = _run(files / "gt.tif", "--psf", files / "psf.tif", "--overwrite", "-o", files / "gt.tif")
    assert rc == 2 and "replace the input" in capsys.readouterr().err
    assert (files / "gt.tif").read_bytes() == gt_bytes


@pytest.mark.parametrize(
    "psf, match",
    [
        (np.ones((101, 101), np.float32), "larger than the image"),
        (-np.ones((5, 5), np.float32), "PSF must be finite, >= 0"),
    ],
)
def test_bad_psf_errors(files, capsys, psf, match):
    write_tiff(files / "bad.tif", psf, axes="YX", pixel_size_um=0.1)
    assert _run(files / "gt.tif", "--psf", files / "bad.tif", "-o", files / "o.tif") == 2
    assert match in capsys.readouterr().err


def test_missing_input_and_bad_photons(files, capsys):
    assert _run(files / "none.tif", "--psf", files / "psf.tif", "-o", files / "o.tif") == 2
    assert "no such file" in capsys.readouterr().err
    assert (
        _run(files / "gt.tif", "--psf", files / "psf.tif", "--photons", 0, "-o", files / "o.tif")
        == 2
    )
    assert "photons must be > 0" in capsys.readouterr().err
