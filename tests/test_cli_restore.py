"""``piddpm restore`` and ``piddpm models``: files in, files out, and every failure named."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from piddpm.cli import main
from piddpm.io import read_image, write_tiff, write_zarr
from piddpm.networks import build_unet, save_model

SCHEDULE = {"kind": "linear", "T": 40, "beta_start": 1e-4, "beta_end": 0.05}


def make_model(folder: Path, method: str, seed: int = 0, **extra) -> Path:
    cin, cout, cond = {"pi-ddpm": (2, 2, True), "ddpm": (2, 1, True), "unet": (1, 1, False)}[method]
    torch.manual_seed(seed)
    net = build_unet("tiny", cin, cout, conditioned=cond)
    cfg = {
        "format": "piddpm-model",
        "method": method,
        "target": None if method == "unet" else "residual",
        "schedule": None if method == "unet" else SCHEDULE,
        "data": {"modality": "widefield"},
        **extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_model(folder / "model", net, cfg)
    return folder


@pytest.fixture(scope="module")
def unet_model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("m") / "unet", "unet")


@pytest.fixture(scope="module")
def pi_model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("m") / "pi", "pi-ddpm")


def gaussian_psf(size=7, sigma=1.2):
    y, x = np.mgrid[:size, :size] - size // 2
    k = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return (k / k.sum()).astype(np.float32)


def image(shape=(40, 48), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 200 + 100).astype(np.uint16)


def sha(path: Path) -> str:
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f.relative_to(path).as_posix().encode() + f.read_bytes())
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*argv) -> int:
    return main(["restore", *map(str, argv), "--no-progress", "--device", "cpu"])


@pytest.fixture()
def psf_file(tmp_path):
    p = tmp_path / "psf.tif"
    write_tiff(p, gaussian_psf(), axes="YX")
    return p


# ---------------------------------------------------------------- working runs


def test_rl_on_an_ome_tiff_keeps_axes_shape_pixel_size_and_states_how(tmp_path, psf_file):
    src = tmp_path / "in.ome.tif"
    write_tiff(src, image((3, 40, 48)), axes="ZYX", pixel_size_um=(0.3, 0.1, 0.1))
    before = sha(src)
    out = tmp_path / "out.ome.tif"
    assert (
        run(
            src,
            "-o",
            out,
            "--method",
            "rl",
            "--psf",
            psf_file,
            "--steps",
            "5",
            "--tile",
            "32",
            "--overlap",
            "8",
        )
        == 0
    )
    assert sha(src) == before  # the input is never modified
    res = read_image(out)
    assert res.axes == "ZYX" and res.data.shape == (3, 40, 48) and res.data.dtype == np.float32
    assert res.pixel_size_um == pytest.approx((0.3, 0.1, 0.1))
    meta = res.metadata["metadata"]
    assert meta["method"] == "rl" and meta["steps"] == 5 and "piddpm_version" in meta
    assert 90 < float(np.median(res.data)) < 320  # input intensity units


def test_rl_with_microscope_options_and_a_residual_map(tmp_path):
    src = tmp_path / "in.tif"
    write_tiff(src, image((64, 64)), axes="YX", pixel_size_um=(None, 0.065, 0.065))
    out, res = tmp_path / "out.tif", tmp_path / "res.tif"
    assert (
        run(
            src,
            "-o",
            out,
            "--method",
            "rl",
            "--modality",
            "widefield",
            "--na",
            "1.2",
            "--em-nm",
            "520",
            "--residual",
            res,
            "--tile",
            "64",
        )
        == 0
    )
    r = read_image(res)
    assert r.data.shape == (64, 64) and r.data.min() >= 0
    meta = read_image(out).metadata["metadata"]
    assert "computed" in meta["psf"] and "pixel_um=0.065" in meta["psf"]
    assert isinstance(meta["steps"], int) and 1 <= meta["steps"] <= 200


def test_user_model_with_samples_writes_mean_and_uncertainty(tmp_path, pi_model, psf_file):
    src = tmp_path / "in.tif"
    write_tiff(src, image((36, 44)), axes="YX")
    out, std, res = tmp_path / "o.tif", tmp_path / "s.tif", tmp_path / "r.tif"
    assert (
        run(
            src,
            "-o",
            out,
            "--model",
            pi_model,
            "--samples",
            "2",
            "--steps",
            "2",
            "--uncertainty",
            std,
            "--psf",
            psf_file,
            "--residual",
            res,
            "--tile",
            "32",
            "--overlap",
            "8",
            "--eta",
            "1.5",
            "--lambda",
            "0.01",
            "--seed",
            "3",
        )
        == 0
    )
    for p in (out, std, res):
        assert read_image(p).data.shape == (36, 44)
    assert read_image(std).data.max() > 0
    meta = read_image(out).metadata["metadata"]
    assert (
        meta["method"],
        meta["sampler"],
        meta["steps"],
        meta["eta"],
        meta["lambda"],
        meta["seed"],
        meta["samples"],
    ) == ("pi-ddpm", "ddim", 2, 1.5, 0.01, 3, 2)


def test_png_in_tiff_out(tmp_path, unet_model):
    from PIL import Image

    src = tmp_path / "in.png"
    Image.fromarray(image((30, 30)).astype(np.uint8)).save(src)
    out = tmp_path / "o.tif"
    assert (
        run(
            src,
            "-o",
            out,
            "--model",
            unet_model / "model.safetensors",
            "--tile",
            "32",
            "--overlap",
            "8",
        )
        == 0
    )
    assert read_image(out).data.shape == (30, 30)


def test_zarr_in_zarr_out_with_channels(tmp_path, unet_model):
    src = tmp_path / "in.zarr"
    write_zarr(src, image((2, 33, 41)), axes="CYX", pixel_size_um=(None, 0.2, 0.2))
    out = tmp_path / "out.zarr"
    assert run(src, "-o", out, "--model", unet_model, "--tile", "32", "--overlap", "4") == 0
    r = read_image(out)
    assert r.axes == "CYX" and r.data.shape == (2, 33, 41)
    assert r.pixel_size_um[1:] == pytest.approx((0.2, 0.2))
    assert r.metadata["metadata"]["method"] == "unet"


def test_zarr_to_zarr_streams_in_chunks_and_resumes(tmp_path, psf_file, capsys):
    src = tmp_path / "in.zarr"
    write_zarr(src, image((70, 90)), axes="YX", pixel_size_um=(None, 0.2, 0.2))
    ref = tmp_path / "ref.tif"
    rl = ("--method", "rl", "--psf", psf_file, "--tile", "32", "--overlap", "4")
    assert run(src, "-o", ref, *rl) == 0
    out = tmp_path / "out.zarr"
    assert run(src, "-o", out, *rl, "--chunk", "24") == 0
    assert "in 12 chunks" in capsys.readouterr().out
    np.testing.assert_allclose(read_image(out).data, read_image(ref).data, atol=1e-5)
    assert run(src, "-o", out, *rl, "--chunk", "24") == 2  # exists: --resume or --overwrite
    assert "already exists" in capsys.readouterr().err
    assert run(src, "-o", out, *rl, "--chunk", "24", "--resume") == 0  # complete: nothing to do
    assert run(src, "-o", out, *rl, "--chunk", "16", "--resume") == 2
    assert "other settings" in capsys.readouterr().err


def test_existing_output_needs_overwrite(tmp_path, psf_file, capsys):
    src = tmp_path / "in.tif"
    write_tiff(src, image(), axes="YX")
    out = tmp_path / "o.tif"
    out.write_bytes(b"keep me")
    assert run(src, "-o", out, "--method", "rl", "--psf", psf_file, "--steps", "2") == 2
    assert "o.tif" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert (
        run(src, "-o", out, "--method", "rl", "--psf", psf_file, "--steps", "2", "--overwrite") == 0
    )
    assert read_image(out).data.shape == image().shape


def test_interrupted_write_leaves_no_output_file(tmp_path, psf_file, monkeypatch):
    src = tmp_path / "in.tif"
    write_tiff(src, image(), axes="YX")
    out = tmp_path / "o.tif"

    def broken(path, *args, **kwargs):
        Path(path).write_bytes(b"II*\x00 half a file")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError, match="disk full"):
        run(src, "-o", out, "--method", "rl", "--psf", psf_file, "--steps", "2")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "psf.tif"]


# ---------------------------------------------------------------- failures, named clearly


def _expect_error(capsys, argv, *needles):
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("piddpm restore: error:") and len(err.strip().splitlines()) == 1
    for n in needles:
        assert n in err, err
    return err


def test_unreadable_file(tmp_path, capsys):
    bad = tmp_path / "garbage.tif"
    bad.write_bytes(b"this is not a TIFF")
    _expect_error(capsys, [bad, "-o", tmp_path / "o.tif", "--method", "rl"], "garbage.tif")


def test_truncated_file(tmp_path, capsys):
    good = tmp_path / "t.tif"
    tifffile.imwrite(good, image((64, 64)))
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 3])
    _expect_error(capsys, [good, "-o", tmp_path / "o.tif", "--method", "rl"], "t.tif")


@pytest.mark.parametrize("dtype,needle", [(np.complex64, "complex"), (bool, "boolean")])
def test_unsupported_dtype(tmp_path, capsys, psf_file, dtype, needle):
    src = tmp_path / "d.tif"
    tifffile.imwrite(src, np.ones((16, 16), dtype))
    _expect_error(
        capsys,
        [src, "-o", tmp_path / "o.tif", "--method", "rl", "--psf", psf_file],
        "d.tif",
        needle,
    )


def test_nan_in_input(tmp_path, capsys, psf_file):
    x = image().astype(np.float32)
    x[3, 4] = np.nan
    src = tmp_path / "nan.tif"
    tifffile.imwrite(src, x)
    _expect_error(
        capsys,
        [src, "-o", tmp_path / "o.tif", "--method", "rl", "--psf", psf_file],
        "nan.tif",
        "NaN",
    )


def test_single_pixel_image(tmp_path, capsys, psf_file):
    src = tmp_path / "px.tif"
    tifffile.imwrite(src, np.ones((1, 1), np.float32))
    _expect_error(
        capsys,
        [src, "-o", tmp_path / "o.tif", "--method", "rl", "--psf", psf_file],
        "px.tif",
        "1 x 1 pixels",
    )


def test_rgb_where_grey_is_expected(tmp_path, capsys, psf_file):
    from PIL import Image

    src = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src)
    _expect_error(
        capsys,
        [src, "-o", tmp_path / "o.tif", "--method", "rl", "--psf", psf_file],
        "rgb.png",
        "convert it to grey",
    )


def test_unknown_axes(tmp_path, capsys, psf_file):
    src = tmp_path / "ax.tif"
    tifffile.imwrite(src, np.ones((2, 16, 16), np.float32))
    _expect_error(
        capsys,
        [src, "-o", tmp_path / "o.tif", "--axes", "WYX", "--method", "rl", "--psf", psf_file],
        "ax.tif",
        "unknown axes",
    )


def test_psf_larger_than_the_image(tmp_path, capsys):
    src = tmp_path / "small.tif"
    tifffile.imwrite(src, image((16, 16)))
    big = tmp_path / "big_psf.tif"
    tifffile.imwrite(big, gaussian_psf(31, 4.0))
    _expect_error(
        capsys,
        [src, "-o", tmp_path / "o.tif", "--method", "rl", "--psf", big],
        "big_psf.tif",
        "larger than the image",
    )


def test_model_file_for_another_method(tmp_path, capsys, unet_model):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, image())
    _expect_error(
        capsys,
        [src, "-o", tmp_path / "o.tif", "--model", unet_model, "--method", "pi-ddpm"],
        str(unet_model),
        "'unet', not 'pi-ddpm'",
    )


def test_model_weights_that_do_not_match_their_config(tmp_path, capsys):
    bad = make_model(tmp_path / "bad", "unet")
    doc = json.loads((bad / "model.json").read_text())
    doc["network"]["channel_mults"] = [1, 2]
    (bad / "model.json").write_text(json.dumps(doc))
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, image())
    _expect_error(capsys, [src, "-o", tmp_path / "o.tif", "--model", bad], "do not match")


def test_no_bundled_model_yet(tmp_path, capsys, monkeypatch):
    import piddpm.models as reg

    monkeypatch.setattr(reg, "MODELS_DIR", tmp_path / "none")
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, image())
    _expect_error(
        capsys, [src, "-o", tmp_path / "o.tif"], "no bundled models", "--model PATH", "--method rl"
    )


def test_rl_without_psf_and_uncertainty_without_samples(tmp_path, capsys):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, image())
    _expect_error(capsys, [src, "-o", tmp_path / "o.tif", "--method", "rl"], "needs a PSF")
    _expect_error(
        capsys, [src, "-o", tmp_path / "o.tif", "--uncertainty", tmp_path / "s.tif"], "--samples 2"
    )


# ---------------------------------------------------------------- piddpm models


def test_models_lists_cards_and_prints_one(tmp_path, monkeypatch, capsys):
    import piddpm.models as reg

    monkeypatch.setattr(reg, "MODELS_DIR", tmp_path / "none")
    assert main(["models"]) == 0
    assert "No bundled models" in capsys.readouterr().out

    folder = make_model(tmp_path / "pi-ddpm-widefield", "pi-ddpm", modality="widefield")
    (folder / "MODEL_CARD.md").write_text(
        "# PI-DDPM, widefield\n\nDeconvolves widefield images (trained on synthetic pairs).\n\n"
        "## Limitations\nNot for confocal data.\n"
    )
    monkeypatch.setattr(reg, "MODELS_DIR", tmp_path)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "pi-ddpm-widefield (widefield)" in out and "Deconvolves widefield images" in out
    assert main(["models", "widefield"]) == 0
    out = capsys.readouterr().out
    assert "## Limitations" in out and "method:   pi-ddpm" in out
    assert main(["models", "nonexistent"]) == 2
    assert "unknown model 'nonexistent'" in capsys.readouterr().err


def test_cli_refuses_a_pixel_size_no_microscope_gives_in_one_line(tmp_path, capsys):
    import tifffile

    from piddpm.cli import main

    path = tmp_path / "dpi.tif"
    tifffile.imwrite(
        path, np.full((64, 64), 7, np.uint16), resolution=(10.0, 10.0), resolutionunit=2
    )
    rc = main(
        [
            "restore",
            str(path),
            "-o",
            str(tmp_path / "o.tif"),
            "--method",
            "rl",
            "--na",
            "0.8",
            "--em-nm",
            "520",
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "--pixel-um" in err and "Traceback" not in err


def test_precision_flag_runs_float32_and_bad_values_are_refused(tmp_path, capsys):
    """``--precision float32`` reaches restore() (the metadata says which arithmetic ran);
    a value outside auto/float32/bf16 is refused by the parser naming the choices."""
    src = tmp_path / "in.tif"
    write_tiff(src, image((40, 40)), axes="YX")
    out = tmp_path / "out.tif"
    assert run(src, "-o", out, "--steps", "2", "--precision", "float32") == 0
    assert read_image(out).metadata["metadata"]["precision"] == "float32"
    with pytest.raises(SystemExit) as err:
        run(src, "-o", tmp_path / "o2.tif", "--precision", "double")
    assert err.value.code == 2
    assert "float32" in capsys.readouterr().err
