"""Synthetic specimens: physical sizes independent of the pixel grid, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from piddpm import PiddpmError
from piddpm.data import (
    DEFAULT_MIXTURE,
    SPECIMENS,
    SpecimenMixture,
    draw_specimen,
    natural_image_files,
    render_specimen,
)

BUILTIN = [n for n in SPECIMENS if n != "images"]


def _bin2(img: np.ndarray) -> np.ndarray:
    h = img.shape[0] // 2
    return img.reshape(h, 2, h, 2).mean(axis=(1, 3))


def _length_inside(curve: np.ndarray, extent_nm: float) -> float:
    """Length (nm) of a polyline inside the square field, from a 1 nm resampling."""
    seg = np.hypot(*np.diff(curve, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.arange(0.5, arc[-1], 1.0)
    x, y = np.interp(t, arc, curve[:, 0]), np.interp(t, arc, curve[:, 1])
    return float(np.sum((x >= 0) & (x < extent_nm) & (y >= 0) & (y < extent_nm)))


# ----------------------------------------------------------------------------- physics
@pytest.mark.parametrize("pixel_nm, size", [(20.0, 256), (40.0, 128)])
def test_filament_integrated_intensity_per_length_is_its_25_nm_width(pixel_nm, size):
    """A fully labelled 25 nm filament carries 25 nm x 1 of density per nm of length, whatever
    the pixel: sum(pixels) x pixel area / length inside the field = 25 nm."""
    extent = 5120.0
    for seed in range(50):
        scene = draw_specimen(
            "filaments",
            extent,
            generator=np.random.default_rng(seed),
            n_filaments=1,
            bundle_probability=0.0,
            brightness_sigma=0.0,
            along_variation=0.0,
            labelling_variation=0.0,
            length_um=(4.0, 4.0),
        )
        curve = scene.layers[0].curves[0]
        length = _length_inside(curve, extent)
        # keep filaments well inside: ends near the border would lose their Gaussian tails
        ends_inside = all(30 < c < extent - 30 for c in (*curve[0], *curve[-1]))
        if length > 2000 and ends_inside:
            break
    else:
        pytest.fail("no filament inside the field in 50 seeds")
    img = scene.render(size, pixel_nm / 1000.0)
    width = img.sum() * pixel_nm**2 / length
    assert width == pytest.approx(25.0, rel=0.02)


def test_binning_a_fine_rendering_reproduces_the_coarse_one():
    """Area averaging is consistent: the 20 nm image binned 2x2 equals the 40 nm image of the
    same scene (same field), for every built-in specimen."""
    extent = 40.0 * 128
    for name in BUILTIN:
        for seed in range(20):  # a sparse specimen may miss a 5 um field: take one that hits
            scene = draw_specimen(name, extent, generator=np.random.default_rng(seed))
            coarse = scene.render(128, 0.040)
            if coarse.std() > 0.01 * coarse.max() > 0:
                break
        fine = _bin2(scene.render(256, 0.020))
        err = np.abs(fine - coarse).sum() / np.abs(coarse).sum()
        assert err < 0.05, f"{name}: binned 20 nm differs from 40 nm by {err:.3f} (L1, relative)"
        assert fine.sum() == pytest.approx(coarse.sum(), rel=0.02), name


def test_same_scene_at_two_pixel_sizes_has_the_same_total_fluorescence():
    """Integrated density (sum x pixel area) is a physical quantity: 50 nm and 200 nm pixels
    over the same 12.8 um field agree for the thin-structure specimens."""
    extent = 12800.0
    for name in ("filaments", "puncta", "er"):
        scene = draw_specimen(name, extent, generator=np.random.default_rng(7))
        a = scene.render(256, 0.050).sum() * 50.0**2
        b = scene.render(64, 0.200).sum() * 200.0**2
        assert a == pytest.approx(b, rel=0.01), name


def _puncta(kind: str, seed: int = 1):
    return draw_specimen(
        "puncta",
        10240.0,
        generator=np.random.default_rng(seed),
        n_puncta=40,
        clustering=(0.0, 0.0),
        brightness_sigma=0.0,
        labelling_variation=0.0,
        ring_probability=(1.0, 1.0) if kind == "ring" else (0.0, 0.0),
    )


@pytest.mark.parametrize("pixel_nm, size", [(20.0, 512), (40.0, 256)])
def test_vesicle_diameters_are_50_to_150_nm_at_20_and_40_nm_pixels(pixel_nm, size):
    """Filled vesicles of unit density: each isolated spot's integrated density is its area,
    so its equivalent diameter sqrt(4 A / pi) must lie in 50-150 nm."""
    img = _puncta("disk").render(size, pixel_nm / 1000.0)
    labels, n = ndimage.label(img > 1e-3)
    sums = ndimage.sum(img, labels, np.arange(1, n + 1)) * pixel_nm**2
    d = np.sqrt(4.0 * sums / np.pi)
    d = d[d > 20]  # ignore specks from spots cut by the border
    assert len(d) >= 30
    # overlapping pairs merge into a larger blob; at most a few are allowed
    inside = (d >= 48) & (d <= 152)
    assert inside.mean() > 0.9, np.sort(d)
    assert 80 < np.median(d) < 120


def test_coated_pit_rings_have_the_same_physical_diameter_at_20_and_40_nm():
    """Rings (coated pits): radius of gyration about each spot's centroid gives the ring
    diameter, corrected for the pixel box (p^2/6) and the wall; it is 50-150 nm and the same
    at 20 nm and 40 nm pixels."""
    scene = _puncta("ring", seed=2)
    meas = {}
    for pixel_nm, size in [(20.0, 512), (40.0, 256)]:
        img = scene.render(size, pixel_nm / 1000.0)
        labels, n = ndimage.label(img > 1e-3)
        out = []
        for sl, lab in zip(ndimage.find_objects(labels), range(1, n + 1), strict=True):
            w = np.where(labels[sl] == lab, img[sl], 0.0)
            if w.sum() * pixel_nm**2 < 20 * 20:
                continue
            yy, xx = np.indices(w.shape) * pixel_nm
            cy, cx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
            r2 = (w * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum() / w.sum()
            wall = 25.0 / np.sqrt(2 * np.pi)
            out.append(2.0 * np.sqrt(max(r2 - pixel_nm**2 / 6.0 - 2 * wall**2, 0.0)))
        meas[pixel_nm] = np.sort(out)
    for pixel_nm, d in meas.items():
        assert np.mean((d > 45) & (d < 160)) > 0.9, (pixel_nm, d)
    assert np.median(meas[20.0]) == pytest.approx(np.median(meas[40.0]), rel=0.08)


def test_dynamic_range_structures_have_dim_and_bright_members():
    """Labelling varies: the brightest filament pixels are several times the typical ones."""
    img = render_specimen(
        "filaments", 256, 0.1, generator=np.random.default_rng(0), haze=(0.0, 0.0)
    )
    on = img[img > 0.05]
    assert np.percentile(on, 99) / np.percentile(on, 25) > 3.0


# ------------------------------------------------------------------- API and determinism
@pytest.mark.parametrize("name", BUILTIN)
def test_render_specimen_shape_range_and_determinism(name):
    a = render_specimen(name, 96, 0.12, generator=np.random.default_rng(5))
    b = render_specimen(name, 96, 0.12, generator=np.random.default_rng(5))
    c = render_specimen(name, 96, 0.12, generator=np.random.default_rng(6))
    assert a.shape == (96, 96) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() == pytest.approx(1.0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.std() > 0.01  # not blank


def test_mixture_chooses_names_with_their_weights():
    mix = SpecimenMixture("filaments:0.3,natural:0.7")
    rng = np.random.default_rng(0)
    names = [mix.choose(rng) for _ in range(4000)]
    frac = names.count("filaments") / len(names)
    assert abs(frac - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 4000)
    assert SpecimenMixture({"puncta": 2, "er": 2}).probabilities.tolist() == [0.5, 0.5]
    default = SpecimenMixture("mixture")
    assert default.names == list(DEFAULT_MIXTURE)
    img = render_specimen("mixture", 64, 0.1, generator=np.random.default_rng(1))
    assert img.shape == (64, 64)


def test_natural_uses_offline_scikit_image_photographs():
    files = natural_image_files()
    assert len(files) >= 5 and all(f.is_file() for f in files)


def test_user_folder_images_are_rendered(tmp_path):
    from PIL import Image

    yy, xx = np.mgrid[0:300, 0:400]
    Image.fromarray(((np.sin(xx / 7.0) * np.cos(yy / 11.0) + 1) * 127).astype(np.uint8)).save(
        tmp_path / "a.png"
    )
    img = render_specimen(
        "images", 64, 0.05, generator=np.random.default_rng(0), images_dir=tmp_path
    )
    assert img.shape == (64, 64) and img.std() > 0.05
    phys = render_specimen(
        "images",
        64,
        0.05,
        generator=np.random.default_rng(0),
        images_dir=tmp_path,
        source_pixel_size_um=0.025,
    )
    assert phys.std() > 0.05


# ------------------------------------------------------------------------------ errors
def test_unknown_specimen_lists_the_valid_names():
    with pytest.raises(PiddpmError, match="unknown specimen 'bananas'.*filaments.*natural"):
        render_specimen("bananas", 32, 0.1, generator=np.random.default_rng(0))
    with pytest.raises(PiddpmError, match="unknown specimen 'nope'"):
        SpecimenMixture("filaments:1,nope:2")
    with pytest.raises(PiddpmError, match="not a number"):
        SpecimenMixture("filaments:x")


def test_empty_image_folder_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(PiddpmError, match=f"{tmp_path}.*holds no image file"):
        render_specimen("images", 32, 0.1, generator=np.random.default_rng(0), images_dir=tmp_path)
    with pytest.raises(PiddpmError, match="needs images_dir"):
        render_specimen("images", 32, 0.1, generator=np.random.default_rng(0))


def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(PiddpmError, match="broken.png"):
        render_specimen("images", 32, 0.1, generator=np.random.default_rng(0), images_dir=tmp_path)


def test_unknown_generator_option_is_reported():
    with pytest.raises(PiddpmError, match="filaments.*colour"):
        render_specimen("filaments", 32, 0.1, generator=np.random.default_rng(0), colour="red")
