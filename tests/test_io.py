"""Tests of piddpm.io: reading/writing TIFF, OME-TIFF, PNG/JPEG and (OME-)Zarr."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from piddpm import PiddpmError
from piddpm.io import Image, atomic_path, check_axes, read_image, write_png, write_tiff, write_zarr


def _shared_data() -> Path:
    env = os.environ.get("PIDDPM_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _real(rel: str) -> Path:
    p = _shared_data() / rel
    if not p.exists():
        pytest.skip(f"shared data file {p} is absent (set PIDDPM_SHARED_DATA)")
    return p


def _assert_pixel_size(got, expected):
    assert len(got) == 3
    for g, e in zip(got, expected, strict=True):
        assert (g is None) if e is None else g == pytest.approx(e, rel=1e-6)


def _rand(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


# ---------------------------------------------------------------- OME-TIFF round trips
@pytest.mark.parametrize(
    "axes, shape, pixel_size",
    [
        ("YX", (17, 23), (None, 0.065, 0.065)),
        ("ZYX", (4, 16, 12), (0.3, 0.1, 0.11)),
        ("CYX", (3, 10, 14), (None, 0.2, 0.2)),
        ("TCZYX", (2, 3, 4, 8, 9), (0.5, 0.1, 0.12)),
        ("QYX", (5, 8, 8), (None, None, None)),
    ],
)
def test_tiff_round_trip_with_pixel_size(tmp_path, axes, shape, pixel_size):
    data = _rand(shape)
    path = tmp_path / "img.ome.tif"
    write_tiff(path, data, axes=axes, pixel_size_um=pixel_size, metadata={"note": "x", "n": 3})
    img = read_image(path)
    assert isinstance(img, Image)
    assert img.axes == axes
    assert img.data.dtype == np.float32 and img.data.shape == shape
    np.testing.assert_array_equal(img.data, data)
    _assert_pixel_size(img.pixel_size_um, pixel_size)
    assert img.metadata["format"] == "ome-tiff"
    assert img.metadata["metadata"] == {"note": "x", "n": 3}
    assert img.path == path


def test_write_tiff_converts_to_float32_and_scalar_pixel_size(tmp_path):
    path = tmp_path / "a.tif"
    write_tiff(path, np.arange(12, dtype=np.uint16).reshape(3, 4), axes="yx", pixel_size_um=0.2)
    img = read_image(path)
    assert img.data.dtype == np.float32 and img.axes == "YX"
    assert img.pixel_size_um == (None, 0.2, 0.2)


def test_imagej_tiff_pixel_size_in_nm(tmp_path):
    path = tmp_path / "ij.tif"
    data = (np.arange(3 * 8 * 8) % 251).astype(np.uint8).reshape(3, 8, 8)
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 65.0, 1 / 65.0),
        metadata={"axes": "ZYX", "spacing": 200.0, "unit": "nm"},
    )
    img = read_image(path)
    assert img.axes == "ZYX" and img.data.dtype == np.uint8
    assert img.pixel_size_um == pytest.approx((0.2, 0.065, 0.065))


def test_plain_tiff_resolution_in_centimetres_and_default_dpi_ignored(tmp_path):
    p1 = tmp_path / "cm.tif"
    tifffile.imwrite(
        p1, np.zeros((4, 4), np.uint16), resolution=(40000.0, 40000.0), resolutionunit=3
    )
    assert read_image(p1).pixel_size_um == pytest.approx((None, 0.25, 0.25))
    p2 = tmp_path / "dpi.tif"
    tifffile.imwrite(p2, np.zeros((4, 4), np.uint16), resolution=(72.0, 72.0), resolutionunit=2)
    assert read_image(p2).pixel_size_um == (None, None, None)


def test_plain_multipage_tiff_has_unknown_axis_and_axes_override(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((3, 5, 6), np.uint16), photometric="minisblack")
    assert read_image(path).axes == "QYX"
    assert read_image(path, axes="zyx").axes == "ZYX"


def test_planar_rgb_tiff_has_samples_last(tmp_path):
    path = tmp_path / "rgb.tif"
    data = (np.arange(3 * 5 * 6) % 200).astype(np.uint8).reshape(3, 5, 6)
    tifffile.imwrite(path, data, photometric="rgb", planarconfig="separate")
    img = read_image(path)
    assert img.axes == "YXS" and img.data.shape == (5, 6, 3)
    np.testing.assert_array_equal(img.data, np.moveaxis(data, 0, -1))


# ---------------------------------------------------------------- errors
def test_missing_file(tmp_path):
    with pytest.raises(PiddpmError, match="no such file"):
        read_image(tmp_path / "nope.tif")


def test_unsupported_extension(tmp_path):
    p = tmp_path / "x.bmp"
    p.write_bytes(b"BM")
    with pytest.raises(PiddpmError, match=r"unsupported file type '\.bmp'.*\.tif"):
        read_image(p)


def test_truncated_tiff_is_a_clear_error(tmp_path):
    full = tmp_path / "full.tif"
    data = (np.arange(3 * 64 * 64) % 1000).astype(np.uint16).reshape(3, 64, 64)
    tifffile.imwrite(full, data, photometric="minisblack")
    raw = full.read_bytes()
    for n, name in ((len(raw) // 2, "half.tif"), (100, "head.tif")):
        bad = tmp_path / name
        bad.write_bytes(raw[:n])
        with pytest.raises(PiddpmError, match=rf"{name}.*cannot read the file as TIFF"):
            read_image(bad)


def test_not_an_image_is_a_clear_error(tmp_path):
    p = tmp_path / "fake.png"
    p.write_text("hello")
    with pytest.raises(PiddpmError, match="fake.png.*cannot read"):
        read_image(p)


@pytest.mark.parametrize(
    "axes, ndim, match",
    [
        ("ZWX", 3, "unknown axes letter"),
        ("ZYX", 2, "has 3 letters but the data has 2"),
        ("YYX", 3, "repeat"),
        ("XY", 2, "must end in 'YX'"),
        ("SYX", 3, "must end in 'YX'"),
    ],
)
def test_bad_axes(axes, ndim, match):
    with pytest.raises(PiddpmError, match=match):
        check_axes(axes, ndim, "file.tif")


def test_axes_errors_name_the_file(tmp_path):
    path = tmp_path / "two.tif"
    with pytest.raises(PiddpmError, match="two.tif.*dimension"):
        write_tiff(path, np.zeros((4, 4)), axes="ZYX")
    assert not path.exists()
    write_tiff(path, np.zeros((4, 4)), axes="YX")
    with pytest.raises(PiddpmError, match="two.tif.*unknown axes letter"):
        read_image(path, axes="YW")


# ---------------------------------------------------------------- atomic writes
def test_never_overwrites_without_permission(tmp_path):
    path = tmp_path / "out.tif"
    write_tiff(path, np.ones((4, 4)), axes="YX")
    before = path.read_bytes()
    with pytest.raises(PiddpmError, match=r"out.tif.*already exists.*--overwrite"):
        write_tiff(path, np.zeros((4, 4)), axes="YX")
    assert path.read_bytes() == before
    write_tiff(path, np.zeros((4, 4)), axes="YX", overwrite=True)
    assert read_image(path).data.max() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "x.tif"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("writer crashed")
    assert list(tmp_path.iterdir()) == []
    # an existing file survives a failed overwrite unchanged
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
        raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.tif"]


def test_missing_output_folder(tmp_path):
    with pytest.raises(PiddpmError, match="does not exist"):
        write_tiff(tmp_path / "no" / "x.tif", np.zeros((4, 4)), axes="YX")


def test_reading_does_not_modify_input(tmp_path):
    path = tmp_path / "in.tif"
    write_tiff(path, _rand((6, 7)), axes="YX")
    stat, raw = path.stat(), path.read_bytes()
    img = read_image(path)
    img.data[...] = 0
    assert path.read_bytes() == raw and path.stat().st_mtime_ns == stat.st_mtime_ns


# ---------------------------------------------------------------- Zarr / OME-Zarr
@pytest.mark.parametrize(
    "axes, shape, pixel_size",
    [
        ("YX", (9, 11), (None, 0.1, 0.1)),
        ("ZYX", (3, 8, 6), (0.4, 0.1, 0.1)),
        ("TCZYX", (2, 2, 3, 5, 4), (1.0, 0.2, 0.3)),
    ],
)
def test_zarr_round_trip(tmp_path, axes, shape, pixel_size):
    data = _rand(shape, seed=1)
    path = tmp_path / "img.zarr"
    write_zarr(path, data, axes=axes, pixel_size_um=pixel_size, attrs={"k": 1})
    img = read_image(path)
    assert img.axes == axes and img.metadata["format"] == "ome-zarr"
    np.testing.assert_array_equal(img.data, data)
    _assert_pixel_size(img.pixel_size_um, pixel_size)
    assert img.metadata["metadata"] == {"k": 1}


def test_zarr_axes_reordered_to_ome_order(tmp_path):
    data = _rand((3, 2, 5, 4), seed=2)  # ZCYX
    write_zarr(tmp_path / "a.zarr", data, axes="ZCYX")
    img = read_image(tmp_path / "a.zarr")
    assert img.axes == "CZYX"
    np.testing.assert_array_equal(img.data, data.transpose(1, 0, 2, 3))


def test_zarr_overwrite_rules(tmp_path):
    path = tmp_path / "b.zarr"
    write_zarr(path, np.ones((4, 4)), axes="YX")
    with pytest.raises(PiddpmError, match="already exists"):
        write_zarr(path, np.zeros((4, 4)), axes="YX")
    write_zarr(path, np.zeros((4, 4)), axes="YX", overwrite=True)
    assert read_image(path).data.max() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.zarr"]
    with pytest.raises(PiddpmError, match="OME-Zarr supports"):
        write_zarr(tmp_path / "c.zarr", np.zeros((4, 4, 3)), axes="YXS")


def test_external_ome_zarr_v3_with_nanometres(tmp_path):
    """An OME-Zarr 0.5 (Zarr v3, attributes under 'ome') written by hand, nm units and a
    multiscale-level scale that multiplies the dataset scale."""
    import zarr

    path = tmp_path / "ext.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    data = _rand((2, 6, 7), seed=3)
    root.create_array("s0", shape=data.shape, dtype=data.dtype)[...] = data
    root.create_array("s1", shape=(2, 3, 3), dtype=data.dtype)
    root.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [
                    {"name": "z", "type": "space", "unit": "nanometer"},
                    {"name": "y", "type": "space", "unit": "nanometer"},
                    {"name": "x", "type": "space", "unit": "nanometer"},
                ],
                "datasets": [
                    {
                        "path": "s0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [250.0, 50.0, 50.0]}
                        ],
                    },
                    {
                        "path": "s1",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [250.0, 100.0, 100.0]}
                        ],
                    },
                ],
                "coordinateTransformations": [{"type": "scale", "scale": [2.0, 1.0, 1.0]}],
            }
        ],
    }
    img = read_image(path)
    assert img.axes == "ZYX"
    np.testing.assert_array_equal(img.data, data)
    assert img.pixel_size_um == pytest.approx((0.5, 0.05, 0.05))


def test_plain_zarr_array(tmp_path):
    import zarr

    path = tmp_path / "plain.zarr"
    data = _rand((3, 5, 4), seed=4)
    zarr.create_array(str(path), shape=data.shape, dtype=data.dtype)[...] = data
    img = read_image(path)
    assert img.axes == "QYX"
    np.testing.assert_array_equal(img.data, data)
    assert read_image(path, axes="ZYX").axes == "ZYX"


def test_zarr_group_without_ome_metadata(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "g.zarr"), mode="w").create_array("x", shape=(2, 2), dtype="f4")
    with pytest.raises(PiddpmError, match="multiscales"):
        read_image(tmp_path / "g.zarr")


# ---------------------------------------------------------------- PNG / JPEG
def test_png_round_trip_uint8_uint16_and_float_preview(tmp_path):
    u8 = (np.arange(30) * 8).astype(np.uint8).reshape(5, 6)
    write_png(tmp_path / "a.png", u8)
    img = read_image(tmp_path / "a.png")
    assert img.axes == "YX" and img.data.dtype == np.uint8
    np.testing.assert_array_equal(img.data, u8)
    u16 = (np.arange(30) * 2000).astype(np.uint16).reshape(5, 6)
    write_png(tmp_path / "b.png", u16)
    np.testing.assert_array_equal(read_image(tmp_path / "b.png").data, u16)
    f = np.linspace(-1, 1, 30).reshape(5, 6)
    write_png(tmp_path / "c.png", f)
    got = read_image(tmp_path / "c.png").data
    assert got.min() == 0 and got.max() == 255
    with pytest.raises(PiddpmError, match="already exists"):
        write_png(tmp_path / "c.png", f)


def test_palette_png_ramp_gives_index_and_other_palettes_give_rgb(tmp_path):
    from PIL import Image as PILImage

    idx = (np.arange(64) * 4).astype(np.uint8).reshape(8, 8)
    ramp = PILImage.fromarray(idx, mode="L").convert("P")
    ramp.putpalette([c for i in range(256) for c in (i, i, 0)])  # like the GigaDB files
    ramp.save(tmp_path / "ramp.png")
    img = read_image(tmp_path / "ramp.png")
    assert img.axes == "YX"
    np.testing.assert_array_equal(img.data, idx)
    odd = PILImage.fromarray(idx, mode="L").convert("P")
    odd.putpalette([c for i in range(256) for c in (255 - i, 10, i)])
    odd.save(tmp_path / "odd.png")
    img = read_image(tmp_path / "odd.png")
    assert img.axes == "YXS" and img.data.shape == (8, 8, 3)


def test_rgb_png_keeps_samples_axis(tmp_path):
    rgb = (np.random.default_rng(5).random((6, 7, 3)) * 255).astype(np.uint8)
    write_png(tmp_path / "rgb.png", rgb)
    img = read_image(tmp_path / "rgb.png")
    assert img.axes == "YXS" and img.data.shape == (6, 7, 3)
    np.testing.assert_array_equal(img.data, rgb)


# ---------------------------------------------------------------- real data (MANIFEST)
def test_real_w2s_tif():
    img = read_image(_real("w2s-via-nd-howard/fov010_ch0_triplet/input_avg1_010_0.tif"))
    assert img.data.shape == (512, 512) and img.data.dtype == np.uint8 and img.axes == "YX"


def test_real_gigadb_palette_png():
    img = read_image(_real("gigadb-hagen2021-via-nd-howard/nucleus-lowsnr-sample.png"))
    assert img.data.shape == (512, 512) and img.data.dtype == np.uint8 and img.axes == "YX"
    assert img.data.min() == 0 and img.data.max() == 255  # MANIFEST value range 0..255


def test_real_pyotf_psf_tif():
    img = read_image(_real("pyotf/psf_wl520nm_z300nm_x130nm_na0.85_n1.0.tif"))
    assert img.data.shape == (25, 256, 256) and img.data.dtype == np.uint16
    assert img.axes == "QYX"  # plain multi-page TIFF: meaning of the pages not recorded
    assert int(img.data.min()) == 135 and int(img.data.max()) == 46120


def test_real_imagej_stack_pixel_size():
    img = read_image(_real("psf-extractor/sample_zstack_stacked_ZYX.tif"))
    assert img.data.shape == (34, 512, 512) and img.axes == "ZYX"
    assert img.pixel_size_um == pytest.approx((0.3, 0.108, 0.108))  # MANIFEST: 108 x 108 x 300 nm


def test_real_tiff_resolution_tag():
    img = read_image(_real("xist-nih3t3-microtubules/s_C001Tubulin1.tif"))
    assert img.data.dtype == np.uint16
    assert img.pixel_size_um[1:] == pytest.approx((0.248, 0.248), rel=1e-4)  # MANIFEST 0.248 um/px


def test_real_jpeg_is_rgb():
    img = read_image(_real("imagenet-sample/n01518878_10151.JPEG"))
    assert img.axes == "YXS" and img.data.shape[-1] == 3 and img.data.dtype == np.uint8


def test_axes_override_applies_to_the_files_own_dimension_order(tmp_path):
    """A 3-plane TIFF that tifffile reads as RGB ('YXS') is, with axes='CYX', 3 planes."""
    planes = np.arange(3 * 8 * 9, dtype=np.uint16).reshape(3, 8, 9)
    tifffile.imwrite(tmp_path / "planes.tif", planes)
    img = read_image(tmp_path / "planes.tif", axes="CYX")
    assert img.axes == "CYX"
    np.testing.assert_array_equal(img.data, planes)


def test_axes_override_with_channels_last_is_moved_before_yx(tmp_path):
    planes = np.arange(3 * 8 * 9, dtype=np.uint16).reshape(3, 8, 9)
    tifffile.imwrite(tmp_path / "yxc.tif", np.moveaxis(planes, 0, -1), photometric="minisblack")
    img = read_image(tmp_path / "yxc.tif", axes="YXC")
    assert img.axes == "CYX"
    np.testing.assert_array_equal(img.data, planes)
