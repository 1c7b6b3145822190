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


def test_a_ddpm_warm_starts_from_the_noise_channel_of_a_pi_ddpm(tmp_path):
    """init_from a pi-ddpm model in a ddpm run: every weight copied, the output layer's
    noise channel kept and its physics-gradient channel dropped; the ddpm network then
    predicts exactly the pi-ddpm's noise channel. A unet run is still refused."""
    from piddpm.models import load_entry, resolve_model
    from piddpm.training.components import build_network, load_initial_weights

    cfg = _tiny_cfg(tmp_path, method="ddpm", init_from="pi-ddpm-widefield")
    net = build_network(cfg)
    load_initial_weights(net, cfg)
    source = load_entry(resolve_model("pi-ddpm-widefield"))
    ref = source.state_dict()
    for k, v in net.state_dict().items():
        assert torch.equal(v, ref[k][:1] if k.startswith("conv_out.") else ref[k]), k
    x = torch.randn(1, 2, 32, 32)
    gamma = torch.tensor([0.5])
    with torch.no_grad():
        assert torch.allclose(net.eval()(x, gamma), source.eval()(x, gamma)[:, :1], atol=1e-6)
    unet = _tiny_cfg(tmp_path, method="unet", init_from="pi-ddpm-widefield")
    with pytest.raises(PiddpmError, match="the network differs.*method"):
        load_initial_weights(build_network(unet), unet)


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


def _tiny_tuning(monkeypatch, etas=(0.0,)):
    """Shrink the re-tuning to seconds: 1 dev pair of 64^2, a 64^2 guard crop, few etas."""
    import piddpm.fit.tune as tune

    monkeypatch.setattr(tune, "N_DEV_PAIRS", 1)
    monkeypatch.setattr(tune, "DEV_SIZE", 64)
    monkeypatch.setattr(tune, "GUARD_CROP", 64)
    monkeypatch.setattr(tune, "ETA_GRID", etas)


def test_fit_end_to_end_and_resume(tmp_path, monkeypatch):
    from piddpm.cli import main

    torch.set_num_threads(1)
    _tiny_tuning(monkeypatch)
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
    # the restore defaults were re-tuned (inherited eta 20 vs guidance none) and recorded
    tuning = report["tuning"]
    assert [t["label"] for t in tuning["trials"]] == ["eta 20 (inherited)", "guidance none"]
    assert cfg["restore_defaults_note"].startswith("chosen by piddpm fit")
    assert report["restore_defaults"]["values"] == cfg["restore_defaults"]
    assert "## Restore defaults (re-tuned" in card and "| guidance none |" in card
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
    # --report-only --no-tune measures the model in the folder again with its stored
    # defaults, without training or tuning
    (out / "FIT_CARD.md").unlink()
    assert main([*args, "--report-only", "--no-tune"]) == 0
    again = json.loads((out / "fit.json").read_text())
    assert again["training"]["steps"] == steps_before and "tuning" not in again
    assert json.loads((out / "model.json").read_text())["config"] == cfg
    assert "Not re-tuned (`--no-tune`)" in (out / "FIT_CARD.md").read_text()
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


@pytest.fixture(scope="module")
def tiny_fit(tmp_path_factory):
    """A fitted run of one training step, not re-tuned (``tune=False``), no card pairs."""
    import piddpm.training as training
    from piddpm.fit import fit

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("tiny_fit")
    real_train = training.train
    paths = _write_images(tmp, n=1)
    with pytest.MonkeyPatch.context() as mp:

        def one_step(cfg, **kw):
            opt = cfg.optimizer.model_copy(update={"warmup_steps": 0})
            return real_train(cfg.model_copy(update={"steps": 1, "optimizer": opt}), **kw)

        mp.setattr(training, "train", one_step)
        fit(paths, out_dir=tmp / "run", minutes=1, progress=False, device="cpu", tune=False,
            eval_n=0, log=lambda *_: None, modality="widefield", na=1.4, ri=1.518, em_nm=670,
            noise_overrides={"photons": (20, 200), "background_fraction": (0, 0.1),
                             "read_noise": (1, 2)})  # fmt: skip
    return tmp / "run", paths


def _fit_kw():
    return dict(progress=False, device="cpu", eval_n=0, log=lambda *_: None,
                modality="widefield", na=1.4, ri=1.518, em_nm=670,
                noise_overrides={"photons": (20, 200), "background_fraction": (0, 0.1),
                                 "read_noise": (1, 2)})  # fmt: skip


def test_no_tune_keeps_the_inherited_defaults(tiny_fit):
    from piddpm.fit.report import fitted_defaults
    from piddpm.models import resolve_model

    run, _ = tiny_fit
    cfg = json.loads((run / "model.json").read_text())["config"]
    start = resolve_model("pi-ddpm-widefield").config["restore_defaults"]
    assert cfg["restore_defaults"] == fitted_defaults(start)
    assert cfg["restore_defaults"]["eta"] == 20.0
    assert "not re-tuned" in cfg["restore_defaults_note"]
    report = json.loads((run / "fit.json").read_text())
    assert "tuning" not in report and report["restore_defaults"]["tuned"] is False


def test_tuning_writes_defaults_that_restore_uses(tiny_fit, tmp_path, monkeypatch):
    """--report-only re-tunes: the choice lands in model.json, valid, and restore --model RUN
    restores with it (same result as passing the chosen guidance / eta explicitly)."""
    import shutil

    from piddpm.fit import fit
    from piddpm.models.tuning import validate_defaults
    from piddpm.restore import restore

    _tiny_tuning(monkeypatch, etas=(0.0, 5.0))
    src, paths = tiny_fit
    run = tmp_path / "run"
    shutil.copytree(src, run)
    res = fit(paths, out_dir=run, report_only=True, **_fit_kw())
    tuning = res.report["tuning"]
    assert [t["label"] for t in tuning["trials"]] == ["eta 20 (inherited)", "guidance none",
                                                      "eta 5"]  # fmt: skip
    assert sum(t["chosen"] for t in tuning["trials"]) == 1
    cfg = json.loads((run / "model.json").read_text())["config"]
    defaults = cfg["restore_defaults"]
    validate_defaults(defaults, "pi-ddpm")
    chosen = next(t for t in tuning["trials"] if t["chosen"])
    assert defaults["guidance"] == chosen["guidance"] and defaults["eta"] == chosen["eta"]
    assert cfg["restore_defaults_note"].startswith(f"chosen by piddpm fit after training: "
                                                   f"{chosen['label']}")  # fmt: skip
    img = np.asarray(__import__("piddpm.io", fromlist=["read_image"]).read_image(paths[0]).data,
                     np.float32)  # fmt: skip
    kw = dict(model=str(run), steps=2, seed=0, progress=False, device="cpu", pixel_size_um=0.065,
              microscope={"modality": "widefield", "na": 1.4, "ri": 1.518, "em_nm": 670})  # fmt: skip
    by_model = np.asarray(restore(img, **kw).mean)
    explicit = np.asarray(restore(img, guidance=defaults["guidance"], eta=defaults["eta"],
                                  **kw).mean)  # fmt: skip
    other = ({"guidance": "learned", "eta": 40.0} if defaults["guidance"] == "none"
             else {"guidance": "none"})  # fmt: skip
    assert np.array_equal(by_model, explicit)
    assert not np.allclose(by_model, np.asarray(restore(img, **other, **kw).mean))


def test_guard_rejects_a_setting_that_lifts_the_background(tiny_fit):
    """A restoration that adds an offset (as the inherited eta 20 did on the bead plane) or
    draws dark moats fails the guard and is not chosen; if every setting fails, the closest
    to passing is used and the record says so."""
    from piddpm.fit.report import fitted_defaults
    from piddpm.fit.tune import guard_metrics, tune_fitted_defaults
    from piddpm.models import resolve_model

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:64, 0:64]
    beads = sum(150 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0) for y, x in
                [(16, 16), (40, 20), (30, 48), (50, 50)])  # fmt: skip
    img = (2.0 + beads + rng.normal(0, 0.05, (64, 64))).astype(np.float32)
    ok = guard_metrics(img, img)
    assert ok["level_shift"] == 0 and ok["dark_excess"] == 0 and ok["texture"] <= 1.0
    lifted = guard_metrics(img + 5.0, img)  # 5 % of the signal range
    assert lifted["level_shift"] > 0.02
    ring = np.exp(-((np.hypot(yy - 30, xx - 48) - 5) ** 2) / 2.0)
    moat = guard_metrics(img - 10.0 * ring, img)  # 11 % of the range deep
    assert moat["dark_excess"] > 0.005 and abs(moat["level_shift"]) < 0.02

    run, _ = tiny_fit
    inherited = fitted_defaults(resolve_model("pi-ddpm-widefield").config["restore_defaults"])
    micro = {"modality": "widefield", "na": 1.4, "ri": 1.518, "em_nm": 670, "pixel_um": 0.065}

    def lifts_at_eta_20(image, settings):  # identity, plus an offset for the inherited eta 20
        lift = settings.get("guidance") == "learned" and settings.get("eta") == 20.0
        return image + (5.0 if lift else 0.0)

    common = dict(eta_grid=(0.0, 5.0), n_pairs=1, size=64, guard_crop=64,
                  log=lambda *_: None)  # fmt: skip
    defaults, record = tune_fitted_defaults(run, inherited, [img], micro,
                                            restore_fn=lifts_at_eta_20, **common)  # fmt: skip
    first = record["trials"][0]
    assert first["label"] == "eta 20 (inherited)" and not first["passes"] and not first["chosen"]
    assert all(t["passes"] for t in record["trials"][1:]) and not record["all_failed"]
    assert defaults["guidance"] == "none" or defaults["eta"] == 5.0

    def always_lifts(image, settings):  # guidance none lifts least
        return image + (3.0 if settings.get("guidance") == "none" else 5.0)

    defaults, record = tune_fitted_defaults(run, inherited, [img], micro,
                                            restore_fn=always_lifts, **common)  # fmt: skip
    assert record["all_failed"] and record["chosen"] == "guidance none"
    assert defaults["guidance"] == "none"


def test_fit_trains_in_fp32_where_bf16_would_be_emulated(monkeypatch):
    import piddpm.devices as devices
    from piddpm.fit import _fast_precision

    cfg = config_from_dict({"method": "pi-ddpm", "precision": "bf16"}, source="test")
    said = []
    monkeypatch.setattr(devices, "bf16_is_fast", lambda device: False)
    assert _fast_precision(cfg, "cpu", said.append).precision == "fp32"
    assert "no bf16 units" in said[0]
    monkeypatch.setattr(devices, "bf16_is_fast", lambda device: True)
    assert _fast_precision(cfg, "cpu", said.append).precision == "bf16"
    fp32 = cfg.model_copy(update={"precision": "fp32"})
    assert _fast_precision(fp32, "cpu", said.append) is fp32 and len(said) == 1
