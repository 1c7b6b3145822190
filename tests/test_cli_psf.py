"""``piddpm psf``: files, metadata, normalisation, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from piddpm.cli import main
from piddpm.io import read_image
from piddpm.optics import fwhm


def test_widefield_2d_kernel_has_pixel_size_and_unit_sum(tmp_path, capsys):
    out = tmp_path / "wf.tif"
    rc = main(["psf", "--na", "0.9", "--em-nm", "520", "--pixel-um", "0.05", "--size", "33",
               "-o", str(out)])  # fmt: skip
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    img = read_image(out)
    assert img.axes == "YX" and img.data.shape == (33, 33) and img.data.dtype == np.float32
    assert img.pixel_size_um[1:] == pytest.approx((0.05, 0.05))
    assert float(img.data.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(img.data.argmax(), img.data.shape) == (16, 16)
    # the file is a widefield PSF of the right width (vectorial NA 0.9: ~0.31 um)
    assert fwhm(img.data[16], 0.05) == pytest.approx(0.309, rel=0.03)
    with tifffile.TiffFile(out) as tif:  # physical pixel size visible to any OME reader
        assert 'PhysicalSizeX="0.05"' in tif.ome_metadata


def test_confocal_3d_stack_and_projection(tmp_path):
    stack = tmp_path / "cf.tif"
    rc = main(["psf", "--modality", "confocal", "--na", "1.2", "--em-nm", "520", "--ex-nm", "488",
               "--pinhole-au", "0.5", "--pixel-um", "0.04", "--size", "31", "--z-size", "9",
               "--z-step-um", "0.15", "-o", str(stack)])  # fmt: skip
    assert rc == 0
    img = read_image(stack)
    assert img.axes == "ZYX" and img.data.shape == (9, 31, 31)
    assert img.pixel_size_um == pytest.approx((0.15, 0.04, 0.04))
    assert float(img.data.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(img.data.argmax(), img.data.shape) == (4, 15, 15)

    mean = tmp_path / "mean.tif"
    rc = main(["psf", "--na", "0.9", "--em-nm", "520", "--pixel-um", "0.05", "--size", "33",
               "--projection", "mean", "--z-range-um", "3", "-o", str(mean)])  # fmt: skip
    assert rc == 0
    focus = tmp_path / "focus.tif"
    main(["psf", "--na", "0.9", "--em-nm", "520", "--pixel-um", "0.05", "--size", "33",
          "-o", str(focus)])  # fmt: skip
    m, f = read_image(mean).data, read_image(focus).data
    assert float(m.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
    assert m.max() < f.max()  # out-of-focus light spreads the z-mean kernel


def test_existing_output_is_not_overwritten_without_flag(tmp_path, capsys):
    out = tmp_path / "psf.tif"
    out.write_bytes(b"keep me")
    args = ["psf", "--na", "0.5", "--em-nm", "520", "--pixel-um", "0.1", "--size", "15",
            "-o", str(out)]  # fmt: skip
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main([*args, "--overwrite"]) == 0
    assert read_image(out).data.shape == (15, 15)


def test_na_not_below_ri_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "psf.tif"
    rc = main(["psf", "--na", "1.4", "--ri", "1.33", "--em-nm", "520", "--pixel-um", "0.05",
               "--size", "15", "-o", str(out)])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "na = 1.4 >= ri = 1.33" in err and "Traceback" not in err
    assert not out.exists()


def test_confocal_without_excitation_wavelength_is_refused(tmp_path, capsys):
    rc = main(["psf", "--modality", "confocal", "--na", "0.9", "--em-nm", "520", "--pixel-um",
               "0.05", "--size", "15", "-o", str(tmp_path / "x.tif")])  # fmt: skip
    assert rc == 2
    assert "--ex-nm is required" in capsys.readouterr().err


def test_zernike_option_is_parsed_and_bad_values_refused(tmp_path, capsys):
    out = tmp_path / "ab.tif"
    rc = main(["psf", "--na", "0.9", "--em-nm", "520", "--pixel-um", "0.05", "--size", "21",
               "--zernike", "2=0.2", "-o", str(out)])  # fmt: skip
    assert rc == 0
    data = read_image(out).data
    assert np.unravel_index(data.argmax(), data.shape)[1] < 10  # tilt moves the spot in -x
    rc = main(["psf", "--na", "0.9", "--em-nm", "520", "--pixel-um", "0.05", "--size", "21",
               "--zernike", "spherical", "-o", str(tmp_path / "bad.tif")])  # fmt: skip
    assert rc == 2
    assert "NOLL=WAVES" in capsys.readouterr().err
