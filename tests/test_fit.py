"""``piddpm fit``: the fixed microscope with jitter, fine-tuning from a model, a measured PSF
bank, and the command end to end on a tiny budget."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from piddpm import PiddpmError
from piddpm.config import DataConfig, config_from_dict, make_ranges
from piddpm.data import FixedMicroscope, MicroscopeRanges, sample_microscopes

OIL = {"modality": "widefield", "na": 1.4, "ri": 1.518, "em_wavelength_nm": 670.0,
       "pixel_size_um": 0.065}  # fmt: skip


def test_fixed_microscope_ranges_bracket_the_microscope():
    micro = FixedMicroscope(**OIL)
    fields = micro.range_fields()
    assert fields["na"][0] < 1.4 < fields["na"][1] < 1.518
    assert fields["em_wavelength_nm"] == (660.0, 680.0)
    # the Nyquist factor restore compares images with: 65 nm vs lambda / (4 NA) = 119.6 nm
    nyq = 0.065 / (0.670 / (4 * 1.4))
    lo, hi = fields["pixel_nyquist_factor"]
    assert lo < nyq < hi and hi / lo < 1.2
    ranges = MicroscopeRanges(**fields, confocal_probability=0.0)
    drawn = sample_microscopes(ranges, 200, np.random.default_rng(0))
    px = np.array([m.pixel_size_um for m in drawn])
    na = np.array([m.na for m in drawn])
    assert px.min() >= 0.065 * 0.98 - 1e-12 and px.max() <= 0.065 * 1.02 + 1e-12
    assert px.std() > 0  # jittered, not fixed
    assert na.min() >= 1.4 * 0.98 - 1e-12 and na.max() < 1.518
    assert all(m.ri == 1.518 and m.modality == "widefield" for m in drawn)
    aberrated = [m for m in drawn if m.zernike_waves]
    assert aberrated and all(len(m.zernike_waves) == 11 for m in aberrated)
    assert max(m.aberration_rms_waves for m in aberrated) <= 0.05 + 1e-9


def test_fixed_microscope_refuses_na_above_the_index():
    with pytest.raises(ValueError, match="below the refractive index"):
        FixedMicroscope(**{**OIL, "ri": 1.33})


def test_default_draws_unchanged_by_the_pixel_size_option():
    a = sample_microscopes(MicroscopeRanges(), 8, np.random.default_rng(3))
    b = sample_microscopes(MicroscopeRanges(pixel_size_um=None), 8, np.random.default_rng(3))
    assert a == b


def test_data_config_microscope_checks():
    cfg = DataConfig(modality="widefield", microscope=OIL, ranges={"photons": [20, 200]})
    ranges = make_ranges(cfg)
    assert ranges.photons == (20, 200) and ranges.pixel_size_um[0] < 0.065 < ranges.pixel_size_um[1]
    assert ranges.confocal_probability == 0.0
    with pytest.raises(ValueError, match="differs from data.modality"):
        DataConfig(modality="confocal", microscope=OIL)
    with pytest.raises(ValueError, match=r"set by data.microscope"):
        DataConfig(modality="widefield", microscope=OIL, ranges={"na": [0.5, 0.6]})
    with pytest.raises(ValueError, match="psf_file needs data.microscope"):
        DataConfig(psf_file="psf.tif")


def _tiny_cfg(tmp_path, **over):
    base = {"method": "pi-ddpm", "model": {"preset": "tiny", "overrides": {"norm": "layer"}},
            "steps": 2, "batch_size": 1, "patch_size": 32, "data": {"psf_size": 9},
            "validation": {"every": 0, "num_samples": 1, "num_steps": 2, "size": 32},
            "out_dir": str(tmp_path / "run")}  # fmt: skip
    base.update(over)
    return config_from_dict(base, check_libraries=False)


def test_init_from_copies_the_weights_and_refuses_another_network(tmp_path):
    from piddpm.models import load_entry, resolve_model
    from piddpm.training.components import build_network, load_initial_weights

    cfg = _tiny_cfg(tmp_path, init_from="pi-ddpm-widefield")
    net = build_network(cfg)
    load_initial_weights(net, cfg)
    source = load_entry(resolve_model("pi-ddpm-widefield")).state_dict()
    for k, v in net.state_dict().items():
        assert torch.equal(v, source[k]), k
    other = _tiny_cfg(tmp_path, init_from="pi-ddpm-widefield", model={"preset": "tiny"})
    with pytest.raises(PiddpmError, match="the network differs"):
        load_initial_weights(build_network(other), other)


def _gaussian_psf_file(tmp_path, sigma: float, shift=(0.0, 0.0)):
    import tifffile

    yy, xx = np.mgrid[0:41, 0:41].astype(np.float64)
    g = np.exp(-((yy - 20 - shift[0]) ** 2 + (xx - 20 - shift[1]) ** 2) / (2 * sigma**2))
    path = tmp_path / "psf.tif"
    tifffile.imwrite(path, (1000 * g + 10).astype(np.float32))  # with a flat background
    return path


def test_measured_kernel_is_centred_unit_sum_and_keeps_its_width(tmp_path):
    from piddpm.data.measured_bank import MeasuredPSFBank, measured_kernel

    path = _gaussian_psf_file(tmp_path, sigma=2.0, shift=(1.5, -2.0))
    k = measured_kernel(path, 15)
    assert k.shape == (15, 15) and math.isclose(k.sum(), 1.0, rel_tol=1e-9)
    yy, xx = np.mgrid[0:15, 0:15]
    assert abs((k * yy).sum() - 7) < 0.05 and abs((k * xx).sum() - 7) < 0.05
    var = (k * ((yy - 7) ** 2)).sum()
    assert abs(math.sqrt(var) - 2.0) < 0.1  # sigma of the measured Gaussian
    ranges = MicroscopeRanges(**FixedMicroscope(**OIL).range_fields(), confocal_probability=0.0)
    bank = MeasuredPSFBank(path, ranges, 8, kernel_size=15, seed=1)
    widths = [math.sqrt((bank.kernels[i].numpy() * ((yy - 7) ** 2)).sum()) for i in range(8)]
    assert 1.85 < min(widths) < max(widths) < 2.15


def _write_images(tmp_path, n=2, size=64):
    from piddpm.io import write_image

    rng = np.random.default_rng(0)
    paths = []
    ramp = np.linspace(0.0, 1.0, size)[None, :] * np.ones((size, 1))
    for i in range(n):  # gain 2 ADU/e-, offset 100 ADU: 5 e- background, a ramp up to 55 e-
        img = 100 + 2.0 * rng.poisson(5 + 50 * ramp ** (1 + i))
        p = tmp_path / f"img{i}.ome.tif"
        write_image(p, img.astype(np.float32), axes="YX", pixel_size_um=0.065)
        paths.append(p)
    return paths


def test_fit_end_to_end_and_resume(tmp_path, monkeypatch):
    from piddpm.cli import main

    torch.set_num_threads(1)
    paths = _write_images(tmp_path)
    out = tmp_path / "fit"
    args = ["fit", *map(str, paths), "--modality", "widefield", "--na", "1.4", "--ri", "1.518",
            "--em-nm", "670", "--minutes", "0.05", "--photons", "20,200", "--background",
            "0,0.1", "--read-noise", "1,2", "--eval-n", "1", "--no-progress", "-o", str(out),
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    card = (out / "FIT_CARD.md").read_text()
    assert "NA 1.4" in card and "fitted model" in card
    report = json.loads((out / "fit.json").read_text())
    rows = report["heldout"]["rows"]
    assert set(rows) == {"input", "rl", "start", "fitted"}
    assert all(math.isfinite(r["psnr_db"]) for r in rows.values())
    cfg = json.loads((out / "model.json").read_text())["config"]
    assert cfg["restore_defaults"]["steps"] == 15 and "std_scale" not in cfg["restore_defaults"]
    assert cfg["training"]["config"]["data"]["microscope"]["na"] == 1.4
    assert (out / "showcase" / "showcase.png").is_file()
    # restore uses the run folder like any model, on the user's own file
    assert main(["restore", str(paths[0]), "--model", str(out), "--steps", "2", "-o",
                 str(tmp_path / "r.tif"), "--no-progress"]) == 0  # fmt: skip
    # a second fit into the same folder needs --resume; with it, training continues
    with pytest.raises(PiddpmError, match="--resume"):
        from piddpm.fit import fit

        fit(paths, out_dir=out, minutes=0.05, modality="widefield", na=1.4, ri=1.518,
            em_nm=670, noise_overrides={"photons": (20, 200), "background_fraction": (0, 0.1),
                                        "read_noise": (1, 2)})  # fmt: skip
    steps_before = report["training"]["steps"]
    # --report-only measures the model in the folder again, without training
    (out / "FIT_CARD.md").unlink()
    assert main([*args, "--report-only"]) == 0
    assert json.loads((out / "fit.json").read_text())["training"]["steps"] == steps_before
    assert (out / "FIT_CARD.md").is_file()
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "fit.json").read_text())["training"]["steps"] > steps_before


def test_fit_interrupt_exports_the_newest_checkpoint(tmp_path, monkeypatch):
    import piddpm.training as training
    from piddpm.fit import fit

    real_train = training.train

    def interrupted(cfg, **kw):
        real_train(cfg.model_copy(update={"checkpoint_every": 1}), stop_at_step=2,
                   **{k: v for k, v in kw.items() if k != "stop_at_step"})  # fmt: skip
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", interrupted)
    paths = _write_images(tmp_path, n=1)
    res = fit(paths, out_dir=tmp_path / "fit", minutes=1, progress=False, device="cpu",
              modality="widefield", na=1.4, ri=1.518, em_nm=670,
              noise_overrides={"photons": (20, 200), "background_fraction": (0, 0.1),
                               "read_noise": (1, 2)})  # fmt: skip
    assert res.interrupted
    cfg = json.loads((tmp_path / "fit" / "model.json").read_text())["config"]
    assert cfg["training"]["steps"] == 2 and cfg["restore_defaults"]["sampler"] == "ddim"


def test_fit_clear_errors(tmp_path, capsys):
    from piddpm.cli import main
    from piddpm.io import write_image

    p = tmp_path / "nopx.tif"
    write_image(p, np.ones((32, 32), np.float32), axes="YX")
    base = ["--modality", "widefield", "--na", "1.4", "--ri", "1.518", "--em-nm", "670",
            "-o", str(tmp_path / "o")]  # fmt: skip
    assert main(["fit", str(p), *base, "--photons", "20,200", "--background", "0,0.1",
                 "--read-noise", "1,2"]) != 0  # fmt: skip
    assert "states no pixel size; give --pixel-um" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "missing.tif"), *base]) != 0
    assert "missing.tif: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", str(p), *base, "--photons", "200,20"])
    assert "0 <= LO <= HI" in capsys.readouterr().err
    assert main(["fit", str(p), *base[:-2], "--na", "1.6", "--pixel-um", "0.1", "-o",
                 str(tmp_path / "o"), "--photons", "20,200", "--background", "0,0.1",
                 "--read-noise", "1,2"]) != 0  # fmt: skip
    assert "below the refractive index" in capsys.readouterr().err


def test_plan_fits_the_camera_noise_from_the_images(tmp_path):
    """Without explicit ranges the camera model comes from the images (gain 2 ADU/e-,
    offset 100 ADU, 5 e- background and a peak of 55 e- in the files _write_images makes)."""
    from piddpm.fit import plan_fit

    paths = _write_images(tmp_path, n=2, size=128)
    plan = plan_fit(paths, modality="widefield", na=1.4, ri=1.518, em_nm=670,
                    out_dir=tmp_path / "run", minutes=1)  # fmt: skip
    fit = plan.noise["fit"]
    assert abs(fit["gain"] - 2.0) < 0.2 and abs(fit["offset"] - 100) < 5
    lo, hi = plan.ranges["photons"]
    assert lo < 50 < hi and hi < 150  # the peak above the background, widened by the margin
    assert plan.config.data.ranges["photons"] == [lo, hi]
    assert plan.pixel_size_source.startswith("file") and plan.pixel_size_um == 0.065
    assert plan.config.init_from == "pi-ddpm-widefield"


def test_own_images_become_natural_ground_truth(tmp_path, monkeypatch):
    """--own-images: RL-sharpened copies of the user's planes are written to RUN/own-images
    and the run's `natural` specimen reads them (data.images_dir)."""
    import piddpm.training as training
    from piddpm.fit import fit

    real_train = training.train

    def interrupted(cfg, **kw):
        assert cfg.data.images_dir == str(tmp_path / "fit" / "own-images")
        real_train(cfg.model_copy(update={"checkpoint_every": 1}), stop_at_step=1,
                   **{k: v for k, v in kw.items() if k != "stop_at_step"})  # fmt: skip
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", interrupted)
    paths = _write_images(tmp_path, n=2)
    res = fit(paths, out_dir=tmp_path / "fit", minutes=1, progress=False, device="cpu",
              own_images=True, modality="widefield", na=1.4, ri=1.518, em_nm=670,
              noise_overrides={"photons": (20, 200), "background_fraction": (0, 0.1),
                               "read_noise": (1, 2)})  # fmt: skip
    assert res.interrupted
    own = sorted((tmp_path / "fit" / "own-images").glob("*.tif"))
    assert len(own) == 2
    from piddpm.io import read_image

    sharpened = np.asarray(read_image(own[0]).data)
    assert sharpened.shape == (64, 64) and np.isfinite(sharpened).all()
