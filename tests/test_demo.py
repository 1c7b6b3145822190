"""piddpm demo: outputs, metrics, the physics it shows, determinism, refusing to overwrite.

The main runs point the model registry at an empty folder, so they exercise the
Richardson-Lucy path whatever models are bundled; one test installs tiny random-weight
models (plumbing only, not quality) to exercise the U-Net / DDPM / PI-DDPM path.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from piddpm import PiddpmError
from piddpm.cli import main
from piddpm.demo import MICROSCOPES, PIXEL_SIZE_UM, ms_ssim_settings, run_demo
from piddpm.io import read_image

SIZE = 96
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPECTED_RL = [
    "ground_truth.tif",
    "widefield_psf.tif",
    "widefield_observed.tif",
    "widefield_rl.tif",
    "widefield.png",
    "confocal_psf.tif",
    "confocal_observed.tif",
    "confocal_rl.tif",
    "confocal.png",
    "metrics.csv",
    "metrics.md",
    "demo.json",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small images: one thread is as fast, and avoids oversubscribing a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def no_models(tmp_path_factory):
    import piddpm.models as reg

    empty = tmp_path_factory.mktemp("no-models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reg, "MODELS_DIR", empty)
        yield


@pytest.fixture(scope="module")
def demo(tmp_path_factory, no_models):
    out = tmp_path_factory.mktemp("demo") / "out"
    return run_demo(out, size=SIZE, seed=3, fast=True, device="cpu")


def read_metrics(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def metric_values(rows):
    return [(r["modality"], r["method"], r["psnr_db"], r["ms_ssim"], r["nrmse"]) for r in rows]


def test_all_files_are_written_with_pixel_size(demo):
    names = sorted(p.name for p in demo.out_dir.iterdir())
    assert names == sorted(EXPECTED_RL)
    assert sorted(p.name for p in demo.files) == sorted(EXPECTED_RL)
    gt = read_image(demo.out_dir / "ground_truth.tif")
    assert gt.data.shape == (SIZE, SIZE) and gt.axes == "YX"
    assert gt.pixel_size_um[1:] == pytest.approx((PIXEL_SIZE_UM, PIXEL_SIZE_UM))
    assert 0.0 <= gt.data.min() and gt.data.max() == pytest.approx(1.0)
    obs = read_image(demo.out_dir / "widefield_observed.tif")
    assert obs.pixel_size_um[2] == pytest.approx(PIXEL_SIZE_UM)
    assert obs.metadata["metadata"]["na"] == MICROSCOPES["widefield"].na
    for modality in MICROSCOPES:
        psf = read_image(demo.out_dir / f"{modality}_psf.tif").data
        assert psf.sum() == pytest.approx(1.0, abs=1e-5)
        assert np.unravel_index(psf.argmax(), psf.shape) == (psf.shape[0] // 2,) * 2
    settings = json.loads((demo.out_dir / "demo.json").read_text())
    assert settings["seed"] == 3 and settings["size_px"] == SIZE


def test_metrics_are_finite_and_tabulated(demo):
    rows = read_metrics(demo.out_dir / "metrics.csv")
    assert [(r["modality"], r["method"]) for r in rows] == [
        (m, k) for m in MICROSCOPES for k in ("input", "rl", "rl-best")
    ]
    for r in rows:
        assert np.isfinite([float(r["psnr_db"]), float(r["ms_ssim"]), float(r["nrmse"])]).all()
        assert 0.0 < float(r["ms_ssim"]) <= 1.0 and float(r["nrmse"]) > 0
    md = (demo.out_dir / "metrics.md").read_text()
    assert "(v - b) / s" in md and "| widefield | RL |" in md
    assert "no bundled models" in md  # the skip is stated, not silent


def test_observation_photon_scale_matches_the_camera_settings(demo):
    """Background + shot noise: the darkest regions average the 10-photon background, and
    the brightest pixel of the noiseless image is photons + background."""
    from piddpm.demo import CAMERA

    obs = read_image(demo.out_dir / "widefield_observed.tif")
    meta = obs.metadata["metadata"]
    gt = read_image(demo.out_dir / "ground_truth.tif").data.astype(np.float64)
    psf = read_image(demo.out_dir / "widefield_psf.tif").data.astype(np.float64)
    from scipy.signal import fftconvolve

    clean = meta["photons_per_gt_unit"] * fftconvolve(gt, psf, mode="same") + CAMERA["background"]
    assert clean.max() == pytest.approx(CAMERA["photons"] + CAMERA["background"], rel=1e-3)
    resid = obs.data - clean  # Poisson + read noise: zero mean, variance = mean + read^2
    var = clean + CAMERA["read_noise"] ** 2
    z = resid / np.sqrt(var)
    assert abs(z.mean()) < 0.05 and z.std() == pytest.approx(1.0, abs=0.05)


def test_the_oracle_rl_row_is_the_ceiling_of_the_automatic_rule(demo):
    """The best-count RL row is at least as good as the automatic rule (it chooses among the
    same iterates with the ground truth), and stays out of the headline."""
    rows = {(r["modality"], r["method"]): r for r in read_metrics(demo.out_dir / "metrics.csv")}
    for m in MICROSCOPES:
        auto, best = rows[m, "rl"], rows[m, "rl-best"]
        assert float(best["psnr_db"]) >= float(auto["psnr_db"]) - 1e-6
        assert "oracle" in best["details"]
    md = (demo.out_dir / "metrics.md").read_text()
    assert "RL, best count (oracle)" in md.split("**Headline.**")[0]
    assert "oracle" not in md.split("**Headline.**")[1]


def test_richardson_lucy_improves_the_widefield_image(demo):
    """Deconvolution with the true PSF at 200 photons (moderate noise) sharpens the image:
    PSNR, MS-SSIM and NRMSE against the ground truth all improve over the raw observation."""
    rows = {(r["modality"], r["method"]): r for r in read_metrics(demo.out_dir / "metrics.csv")}
    raw, rl = rows["widefield", "input"], rows["widefield", "rl"]
    assert float(rl["psnr_db"]) > float(raw["psnr_db"]) + 0.5
    assert float(rl["ms_ssim"]) > float(raw["ms_ssim"])
    assert float(rl["nrmse"]) < float(raw["nrmse"])


def test_figures_are_valid_pngs(demo):
    from PIL import Image

    for modality in MICROSCOPES:
        path = demo.out_dir / f"{modality}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
            assert im.width > 500 and im.height > 300 and arr.std() > 10  # not blank


def test_same_seed_same_metrics_other_seed_other_metrics(demo, tmp_path, no_models):
    again = run_demo(tmp_path / "again", size=SIZE, seed=3, fast=True, device="cpu")
    first = metric_values(read_metrics(demo.out_dir / "metrics.csv"))
    assert metric_values(read_metrics(again.out_dir / "metrics.csv")) == first
    a = read_image(demo.out_dir / "confocal_observed.tif").data
    b = read_image(again.out_dir / "confocal_observed.tif").data
    assert np.array_equal(a, b)
    other = run_demo(tmp_path / "other", size=SIZE, seed=4, fast=True, device="cpu")
    assert metric_values(read_metrics(other.out_dir / "metrics.csv")) != first


def test_existing_output_is_refused_without_overwrite(tmp_path, no_models, capsys):
    out = tmp_path / "out"
    assert main(["demo", "-o", str(out), "--size", "48", "--fast", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "best PSNR" in printed.strip().splitlines()[-1] and "RL" in printed
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["demo", "-o", str(out), "--size", "48", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    (out / "mine.txt").write_text("keep me")
    run_demo(out, size=48, seed=1, fast=True, overwrite=True, device="cpu")
    assert (out / "mine.txt").read_text() == "keep me"
    assert (out / "ground_truth.tif").stat().st_mtime_ns > before["ground_truth.tif"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    with pytest.raises(PiddpmError, match="not a folder"):
        run_demo(out / "mine.txt", size=48)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"specimen": "unicorns"}, "unknown part 'unicorns'"),
        ({"specimen": "filaments+images"}, "unknown part 'images'"),
        ({"size": 16}, "size 16"),
        ({"seed": -1}, "seed -1"),
    ],
)
def test_bad_settings_are_refused_before_writing(tmp_path, kwargs, match):
    with pytest.raises(PiddpmError, match=match):
        run_demo(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_ms_ssim_settings_fit_the_image():
    assert ms_ssim_settings(256) == (11, 5)  # the standard: > 160 px
    assert ms_ssim_settings(96) == (11, 4)  # 5 scales need > 160 (11 taps) or > 96 (7 taps)
    assert ms_ssim_settings(48) == (11, 3)
    for n in (48, 64, 96, 161, 256):
        win, scales = ms_ssim_settings(n)
        assert n > (win - 1) * 2 ** (scales - 1)


def test_bundled_models_are_used_when_installed(tmp_path, monkeypatch):
    """With (tiny, random-weight) models in the registry the demo also runs U-Net, DDPM and
    PI-DDPM and writes the PI-DDPM uncertainty map; a widefield-only model is not used for
    the confocal image."""
    import piddpm.models as reg
    from piddpm.networks import build_unet, save_model

    schedule = {"kind": "linear", "T": 20, "beta_start": 1e-4, "beta_end": 0.05}
    channels = {"pi-ddpm": (2, 2, True), "ddpm": (2, 1, True), "unet": (1, 1, False)}
    for method, (cin, cout, cond) in channels.items():
        torch.manual_seed(0)
        net = build_unet("tiny", cin, cout, conditioned=cond)
        cfg = {
            "format": "piddpm-model",
            "method": method,
            "preset": "tiny",
            "target": None if method == "unet" else "residual",
            "schedule": None if method == "unet" else schedule,
            "data": {"modality": "widefield"},
        }
        folder = tmp_path / "models" / f"{method}-widefield"
        folder.mkdir(parents=True)
        save_model(folder / "model", net, cfg)
    monkeypatch.setattr(reg, "MODELS_DIR", tmp_path / "models")
    res = run_demo(tmp_path / "out", size=48, seed=0, fast=True, steps=2, device="cpu")
    names = {p.name for p in res.files}
    for method in ("unet", "ddpm", "pi-ddpm", "pi-ddpm_std"):
        assert f"widefield_{method}.tif" in names
        assert f"confocal_{method}.tif" not in names
    std = read_image(res.out_dir / "widefield_pi-ddpm_std.tif").data
    assert np.isfinite(std).all() and std.min() >= 0 and std.max() > 0
    methods = [(r["modality"], r["method"]) for r in res.metrics]
    assert methods[:5] == [("widefield", m) for m in ("input", "rl", "unet", "ddpm", "pi-ddpm")]
    assert all(np.isfinite(r["psnr_db"]) for r in res.metrics)
    assert any("confocal: no bundled U-Net, DDPM, PI-DDPM" in n for n in res.notes)
    meta = read_image(res.out_dir / "widefield_pi-ddpm.tif").metadata["metadata"]
    assert meta["restore"]["model"] == "pi-ddpm-widefield" and meta["restore"]["samples"] == 2
