"""Tests of the evaluation harness (piddpm.evaluation): suites, scoring, RL tuning, report."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest

from piddpm import PiddpmError
from piddpm.evaluation import (
    BenchmarkConfig,
    Case,
    MethodPlan,
    RealSuiteConfig,
    SyntheticSuiteConfig,
    load_config,
    manifest_files,
    real_cases,
    run_benchmark,
    run_method,
    score,
    split_of,
    synthetic_cases,
    tune_rl,
)
from piddpm.evaluation.report import comparisons
from piddpm.evaluation.runner import RESULT_COLUMNS


def _data_dir() -> Path | None:
    env = os.environ.get("PIDDPM_SHARED_DATA")
    p = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return p if (p / "MANIFEST.md").is_file() else None


MICRO_SYNTH = dict(
    specimens=["filaments"],
    modalities=["widefield"],
    images_per_group=2,
    size=64,
    kernel_size=15,
    dev_images=1,
    independent_images=0,
)


def _micro_config(**extra) -> BenchmarkConfig:
    base = BenchmarkConfig.quick_config().model_dump()
    base.update(
        suite="synthetic",
        methods=["input", "rl", "pi-ddpm", "pi-ddpm-known"],
        samplers=[{"name": "ddim2", "steps": 2, "samples": 2}],
        rl_grid=[1, 4],
        synthetic={**base["synthetic"], **MICRO_SYNTH},
        ablation={
            "images": 1,
            "etas": [0.0, 10.0],
            "regularisers": ["l1"],
            "lams": [0.015],
            "ddim_steps": [2],
            "include_ddpm": False,
            "steps": 2,
        },
        figures=1,
    )
    base.update(extra)
    return BenchmarkConfig.model_validate(base)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight tiny PI-DDPM exported like `piddpm train` does (model.json + weights)."""
    import torch

    from piddpm.config import TrainConfig
    from piddpm.training import build_network, export_model

    cfg = TrainConfig(
        method="pi-ddpm",
        model={"preset": "tiny", "overrides": {"base_channels": 8, "channel_mults": [1, 2]}},
        schedule={"T": 20},
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("run") / "pi-ddpm-tiny"
    folder.mkdir()
    export_model(folder / "model", build_network(cfg), cfg)
    return folder


@pytest.fixture(scope="module")
def micro_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = run_benchmark(
        _micro_config(), out, model_dir=tiny_model.parent, bundled=False, log=lambda *_: None
    )
    return out, res


# ------------------------------------------------------------------------------ config
def test_yaml_config_overrides_defaults_and_refuses_unknown_keys(tmp_path):
    good = tmp_path / "b.yaml"
    good.write_text("suite: synthetic\nsynthetic:\n  size: 96\nrl_grid: [3, 1]\n")
    cfg = load_config(good, quick=True)
    assert cfg.suite == "synthetic" and cfg.synthetic.size == 96
    assert cfg.synthetic.specimens == ["filaments", "puncta"]  # quick default kept
    assert cfg.rl_grid == [1, 3]
    bad = tmp_path / "bad.yaml"
    bad.write_text("synthetic:\n  sise: 96\n")
    with pytest.raises(PiddpmError, match="sise"):
        load_config(bad)


# ------------------------------------------------------------------------------ synthetic
def test_synthetic_set_is_seeded_and_wider_than_training():
    cfg = SyntheticSuiteConfig(**MICRO_SYNTH)
    a = synthetic_cases(cfg, "test")
    b = synthetic_cases(cfg, "test")
    assert [c.name for c in a] == ["filaments-00", "filaments-01"]
    for ca, cb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ca.observed, cb.observed)
        assert 0.3 <= ca.params["na"] <= 1.2
    dev = synthetic_cases(cfg, "dev")
    assert all(not np.array_equal(dev[0].observed, c.observed) for c in a)
    from piddpm.data import MicroscopeRanges

    train = MicroscopeRanges()
    assert cfg.na[0] < train.na[0] and cfg.na[1] > train.na[1]
    assert cfg.em_wavelength_nm[0] < train.em_wavelength_nm[0]


def test_synthetic_observation_mean_is_scaled_blur_plus_background():
    """E[x] = s A gt + background, and a periodic unit-sum blur preserves the image sum, so
    the mean photo-electron count is s mean(gt) + background (Poisson error ~ 1/sqrt(N))."""
    case = synthetic_cases(SyntheticSuiteConfig(**MICRO_SYNTH), "test")[0]
    expected = case.scale * case.reference.mean() + case.background
    n = case.observed.size
    tol = 5 * math.sqrt(expected / n) + 5 * case.params["read_noise"] / math.sqrt(n) + 1e-3
    assert abs(case.observed.mean() - expected) < tol
    assert abs(float(case.psf.sum()) - 1) < 1e-5


def test_independent_psfs_from_psfmodels_match_own_fwhm_scale():
    pytest.importorskip("psfmodels")
    cfg = SyntheticSuiteConfig(**{**MICRO_SYNTH, "independent_images": 1, "images_per_group": 1})
    cases = synthetic_cases(cfg, "test")
    ind = [c for c in cases if c.dataset.endswith("-psfmodels")]
    assert len(ind) == 1 and ind[0].params["psf_source"].startswith("psfmodels")
    # widefield FWHM ~ 0.51 lambda / NA; at 0.7-1.3 x Nyquist that is 1.6-2.9 px: the
    # independent kernel's second moment must be in that range of widths
    k = ind[0].psf.astype(np.float64)
    yy, xx = np.indices(k.shape) - k.shape[0] // 2
    sigma_px = math.sqrt(float((k * (xx**2 + yy**2)).sum()) / 2)
    fwhm_px = 2.355 * sigma_px
    assert 1.0 < fwhm_px < 5.0


# ------------------------------------------------------------------------------ scoring
def test_scoring_perfect_restoration_is_ideal():
    case = synthetic_cases(SyntheticSuiteConfig(**MICRO_SYNTH), "test")[0]
    clean = case.scale * case.reference + case.background
    s = score(case, clean)
    assert s["psnr"] > 120  # exact up to float round-off of (s gt + b - b) / s
    # not exactly 0: ground-truth pixels dimmer than 5 % of the peak count as background
    assert s["halluc_total"] < 0.01
    assert score(case, 2 * clean)["halluc_total"] > s["halluc_total"]
    assert s["data_consistency"] == pytest.approx(s["dc_noise_floor"])
    assert math.isnan(s["calib_mae"])
    s2 = score(case, clean, std=np.full_like(clean, 1e-3 * case.scale))
    assert s2["calib_1sigma"] == 1.0  # every pixel within 1 sigma of itself


# ------------------------------------------------------------------------------ RL tuning
def test_rl_tuning_picks_the_known_best_iteration_count(tmp_path):
    """Reference = RL after exactly 10 iterations: PSNR is infinite at 10 and finite at
    every other grid value, so the tuner must pick 10 (an interior point of the grid)."""
    case = synthetic_cases(SyntheticSuiteConfig(**MICRO_SYNTH), "dev")[0]
    target = run_method(MethodPlan("rl"), case.observed, case.psf, case.modality,
                        rl_iterations=10).mean  # fmt: skip

    def psnr_to_target(c, restored):
        from piddpm.metrics import psnr

        return float(psnr(restored, target, data_range=float(np.ptp(target))))

    cache = tmp_path / "cache.json"
    res = tune_rl("known", [case], [2, 5, 10, 20, 40], psnr_to_target, cache_file=cache)
    assert res["iterations"] == 10 and not res["cached"]
    assert res["scores"][2] == math.inf and all(math.isfinite(v) for i, v in
                                                enumerate(res["scores"]) if i != 2)  # fmt: skip
    again = tune_rl("known", [case], [2, 5, 10, 20, 40], psnr_to_target, cache_file=cache)
    assert again["cached"] and again["iterations"] == 10
    other = tune_rl("known", [case], [2, 5], psnr_to_target, cache_file=cache)
    assert not other["cached"] and other["iterations"] == 5


# ------------------------------------------------------------------------------ report
def _row(label, method, image, psnr):
    return {"suite": "synthetic", "dataset": "d", "label": label, "method": method,
            "image": image, "psnr": psnr, "ms_ssim": math.nan, "nrmse": math.nan,
            "halluc_total": math.nan}  # fmt: skip


def test_comparison_sentences_follow_the_numbers():
    rows = [
        _row("RL", "rl", "a", 30.0),
        _row("RL", "rl", "b", 20.0),
        _row("PI-DDPM [x]", "pi-ddpm", "a", 25.0),
        _row("PI-DDPM [x]", "pi-ddpm", "b", 21.0),
        _row("U-Net", "unet", "a", 10.0),
        _row("U-Net", "unet", "b", 11.0),
    ]
    text = "\n".join(comparisons(rows, "synthetic", "d"))
    assert "**PI-DDPM [x] does not beat RL** in PSNR 23.00 vs 25.00 dB, better on 1 of 2" in text
    assert "PI-DDPM [x] beats U-Net in PSNR 23.00 vs 10.50 dB, better on 2 of 2" in text


# ------------------------------------------------------------------------------ harness
def test_micro_benchmark_writes_results_report_and_figures(micro_run):
    out, res = micro_run
    with open(out / "results.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert tuple(reader.fieldnames) == RESULT_COLUMNS
    main = [r for r in rows if r["suite"] == "synthetic"]
    # 2 images x (input, rl, pi-ddpm [ddim2], pi-ddpm-known [ddim2])
    assert len(main) == 8
    assert {r["label"] for r in main} == {
        "Input", "RL", "PI-DDPM [ddim2]", "PI-DDPM (known PSF) [ddim2]"}  # fmt: skip
    for r in main:
        assert r["psnr"] != "" and float(r["s_per_mpx"]) >= 0
        if r["method"].startswith("pi-ddpm"):
            assert r["calib_mae"] != ""  # samples = 2 -> calibration measured
            assert r["samples"] == "2" and r["steps"] == "2"
        if r["method"] == "rl":
            assert r["steps"] in ("1", "4")  # the tuned grid value
    abl = [r for r in rows if r["suite"] == "ablation"]
    assert {r["setting"] for r in abl} == {"eta=0,l1", "eta=10,l1", "lam=0.015,l1", "ddim,2"}
    report = (out / "report.md").read_text()
    assert "### synthetic-widefield (reference: ground truth)" in report
    assert "| method | PSNR (dB) ↑ | MS-SSIM ↑ | NRMSE ↓" in report
    assert "| PI-DDPM (known PSF) [ddim2] |" in report
    assert "## Ablations (PI-DDPM sampler)" in report and "### eta" in report
    assert "Richardson-Lucy iterations (tuned on dev data only)" in report
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "synthetic-widefield__filaments-00.png" in figs
    assert {"ablation_eta.png", "ablation_lambda.png", "ablation_steps.png"} <= set(figs)
    assert all((out / "figures" / f).stat().st_size > 1000 for f in figs)


def test_without_models_the_report_says_so(tmp_path):
    cfg = _micro_config(methods=["input", "rl", "pi-ddpm"])
    cfg.synthetic.images_per_group = 1
    res = run_benchmark(cfg, tmp_path, bundled=False, log=lambda *_: None)
    report = (tmp_path / "report.md").read_text()
    assert "No trained model was found" in report
    assert "ablations skipped: no PI-DDPM model was found" in report
    assert {r["method"] for r in res.rows} == {"input", "rl"}


# ------------------------------------------------------------------------------ real data
def test_split_patterns_follow_the_manifest_splits():
    assert split_of("w2s-via-nd-howard/fov010_ch0_triplet/sim_sim_010_0.tif") == "test"
    w2s = "w2s-via-nd-howard/avg1_avg400_8bit_fov081-100/"
    assert split_of(w2s + "input_avg1_091_2.tif") == "test"
    assert split_of(w2s + "target_avg400_100_0.tif") == "test"
    assert split_of(w2s + "input_avg1_090_0.tif") == "dev"
    assert split_of(w2s + "input_avg1_081_1.tif") == "dev"
    g = "gigadb-hagen2021-via-nd-howard/"
    assert split_of(g + "mito-60x-noise2-lowsnr-sample.png") == "test"
    assert split_of(g + "mito-20x-noise1-highsnr-sample.png") == "dev"
    assert split_of(g + "membrane-lowsnr-sample.png") == "dev"
    assert split_of("sdeconv/celegans.tif") is None


def test_real_loader_reads_only_manifest_test_files():
    data = _data_dir()
    if data is None:
        pytest.skip("shared real data (../shared/data or $PIDDPM_SHARED_DATA) is absent")
    cfg = RealSuiteConfig(crop=64, w2s_fovs=[91, 100], w2s_channels=[0, 2],
                          w2s_dev_fovs=[81], dev_pairs=2)  # fmt: skip
    listed = set(manifest_files(data))
    opened: list[str] = []
    cases = real_cases(cfg, data, "test", opened=opened)
    assert len(cases) == 1 + 4 + 5  # triplet, W2S pairs, GigaDB pairs
    assert opened and set(opened) <= listed
    assert all(split_of(f) == "test" for f in opened)
    assert "w2s-via-nd-howard/fov010_ch0_triplet/sim_sim_010_0.tif" in opened
    assert all(c.observed.shape == (64, 64) == c.reference.shape for c in cases)
    dev_opened: list[str] = []
    dev = real_cases(cfg, data, "dev", opened=dev_opened)
    assert dev and all(split_of(f) == "dev" for f in dev_opened)
    assert not set(dev_opened) & set(opened)


def test_real_loader_refuses_a_dev_file_in_the_test_split(tmp_path):
    data = _data_dir()
    if data is None:
        pytest.skip("shared real data (../shared/data or $PIDDPM_SHARED_DATA) is absent")
    cfg = RealSuiteConfig(crop=32, triplet=False, w2s_fovs=[85], w2s_channels=[0], gigadb=[])
    with pytest.raises(PiddpmError, match="dev split"):
        real_cases(cfg, data, "test")


def test_case_megapixels():
    c = Case("real", "d", "n", np.zeros((500, 400), np.float32), np.ones((1, 1), np.float32))
    assert c.megapixels == pytest.approx(0.2)
