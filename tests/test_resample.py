"""piddpm.resample: band-limited resampling and the pixel-size plan for learned models."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from piddpm import PiddpmError
from piddpm.resample import check_pixel_size, fourier_resample, sampling_plan


def test_a_band_limited_sinusoid_is_interpolated_exactly_at_the_new_pixel_centres():
    x = np.arange(128)
    plane = np.cos(2 * np.pi * 0.05 * x)[None, :].repeat(64, 0)
    up = fourier_resample(plane, (96, 192))
    centres = (np.arange(192) + 0.5) / 1.5 - 0.5  # pixel centres of the finer grid
    ref = np.cos(2 * np.pi * 0.05 * centres)
    assert np.abs(up[:, 30:-30] - ref[30:-30]).max() < 0.01


@pytest.mark.parametrize("shape", [(300, 270), (333, 301), (201, 179)])
def test_up_then_down_sampling_returns_the_plane(shape):
    rng = np.random.default_rng(0)
    plane = ndimage.gaussian_filter(rng.normal(size=(200, 180)), 3)
    back = fourier_resample(fourier_resample(plane, shape), plane.shape)
    assert np.abs(back - plane)[20:-20, 20:-20].max() < 5e-3 * np.ptp(plane)


def test_constant_stays_constant_and_down_sampling_removes_what_the_grid_cannot_carry():
    assert np.allclose(fourier_resample(np.full((50, 60), 3.0), (80, 70)), 3.0, atol=1e-5)
    x = np.arange(128)
    fine = np.cos(2 * np.pi * 0.4 * x)[None, :].repeat(32, 0)  # above the coarse Nyquist
    coarse = fourier_resample(fine, (32, 64))  # Nyquist of the coarse grid: 0.25 / input px
    assert np.abs(coarse[:, 10:-10]).max() < 0.05  # filtered, not aliased


def test_sampling_plan_keeps_in_range_pixels_and_moves_others_to_the_nearest_end():
    nyq = 0.52 / (4 * 0.8)  # um
    inside = sampling_plan(1.0 * nyq, 0.8, 520, (0.5, 1.6))
    assert not inside.resamples and inside.zoom == pytest.approx(1.0)
    coarse = sampling_plan(2.4 * nyq, 0.8, 520, (0.5, 1.6))
    assert coarse.zoom == pytest.approx(1.5) and coarse.target_factor == pytest.approx(1.6)
    assert coarse.model_pixel_um == pytest.approx(1.6 * nyq)
    fine = sampling_plan(0.25 * nyq, 0.8, 520, (0.5, 1.6))
    assert fine.zoom == pytest.approx(0.5)


def test_implausible_pixel_sizes_are_refused_with_the_option_named():
    assert check_pixel_size(0.065, "x.tif") == 0.065
    for bad in (2540.0, 0.0, -1, float("nan"), 1e-4):
        with pytest.raises(PiddpmError, match="--pixel-um"):
            check_pixel_size(bad, "x.tif")
