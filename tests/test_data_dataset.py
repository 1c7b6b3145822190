"""Random microscopes, the PSF bank and the paired dataset: physics, noise, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from piddpm import PiddpmError
from piddpm.data import (
    MicroscopeRanges,
    PairedDataset,
    PSFBank,
    sample_microscope,
    sample_microscopes,
)

# Widefield only, pixels at 0.7 x Nyquist (so the OTF cut-off 2 NA / lambda lies inside the
# sampled band, at 0.35 cycles/pixel), in focus, no aberrations.
WIDEFIELD_FINE = MicroscopeRanges(
    confocal_probability=0.0,
    pixel_nyquist_factor=(0.7, 0.7),
    z_half_range_um=(0.0, 0.0),
    aberration_probability=0.0,
    photons=(200.0, 2000.0),
)


@pytest.fixture(scope="module")
def bank():
    return PSFBank(WIDEFIELD_FINE, 8, seed=1, cache_dir=False)


@pytest.fixture(scope="module")
def default_bank():
    return PSFBank(MicroscopeRanges(), 8, seed=0, cache_dir=False)


def _periodic_blur(img: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Independent circular convolution (numpy FFT), PSF centre at (k // 2, k // 2)."""
    k = psf.shape[0]
    pad = np.zeros_like(img, dtype=np.float64)
    pad[:k, :k] = psf
    pad = np.roll(pad, (-(k // 2), -(k // 2)), axis=(0, 1))
    return np.real(np.fft.ifft2(np.fft.fft2(img) * np.fft.fft2(pad)))


def _radial_freq(n: int) -> np.ndarray:
    f = np.fft.fftfreq(n)
    return np.hypot(f[:, None], f[None, :])


# ------------------------------------------------------------------------- microscopes
def test_microscope_draws_respect_the_ranges():
    ranges = MicroscopeRanges()
    ms = sample_microscopes(ranges, 2000, np.random.default_rng(0))
    na = np.array([m.na for m in ms])
    em = np.array([m.em_wavelength_nm for m in ms])
    px = np.array([m.pixel_size_um for m in ms])
    assert na.min() >= 0.4 and na.max() <= 1.0
    assert all(320 <= m.ex_wavelength_nm <= 400 and 450 <= m.em_wavelength_nm <= 550 for m in ms)
    nyq = em * 1e-3 / (4 * na)
    assert np.all(px / nyq >= 0.5 - 1e-9) and np.all(px / nyq <= 1.6 + 1e-9)
    # the default range is covered, not just respected
    assert (px / nyq).min() < 0.55 and (px / nyq).max() > 1.5
    conf = np.array([m.modality == "confocal" for m in ms])
    assert abs(conf.mean() - 0.5) < 0.05
    pin = np.array([m.pinhole_au for m in ms])
    assert np.all(pin[~conf] == 0) and pin[conf].min() >= 0.1 and pin[conf].max() <= 2.0
    # photons log-uniform in 10-1000: median at the geometric mean, 100
    photons = np.array([m.photons for m in ms])
    assert 85 < np.median(photons) < 118
    ab = np.array([m.aberration_rms_waves for m in ms])
    assert abs((ab > 0).mean() - 0.3) < 0.05 and ab.max() <= 0.075 + 1e-12
    for m in ms:
        assert all(w == 0 for w in m.zernike_waves[:4])  # only Noll 5-11
    one = sample_microscope(ranges, np.random.default_rng(3))
    assert one == sample_microscopes(ranges, 1, np.random.default_rng(3))[0]


def test_oil_objectives_use_oil_index_and_high_na():
    ms = sample_microscopes(MicroscopeRanges(oil_probability=1.0), 200, np.random.default_rng(0))
    assert all(m.ri == 1.515 and 1.2 <= m.na <= 1.45 for m in ms)


def test_invalid_ranges_are_refused_with_the_field_named():
    with pytest.raises(PiddpmError, match="na up to 1.4 must stay below the refractive index"):
        MicroscopeRanges.create(na=(0.5, 1.4))
    with pytest.raises(PiddpmError, match="photons"):
        MicroscopeRanges.create(photons=(100.0, 10.0))
    with pytest.raises(PiddpmError, match="spam"):
        MicroscopeRanges.create(spam=1)


# ----------------------------------------------------------------------------- PSF bank
def test_bank_in_focus_widefield_fwhm_is_0_51_lambda_over_na():
    """Airy FWHM = 0.51 lambda / NA (vectorial: a few % wider at high NA)."""
    ranges = MicroscopeRanges(
        confocal_probability=0.0,
        na=(0.8, 0.8),
        em_wavelength_nm=(500.0, 500.0),
        pixel_nyquist_factor=(0.5, 0.5),
        z_half_range_um=(0.0, 0.0),
        aberration_probability=0.0,
    )
    b = PSFBank(ranges, 1, cache_dir=False)
    k = b.kernels[0].double().numpy()
    c = k.shape[0] // 2
    row = k[c] / k[c, c]
    # half maximum crossing by linear interpolation on the right flank
    i = int(np.argmax(row[c:] < 0.5)) + c
    x_half = i - 1 + (row[i - 1] - 0.5) / (row[i - 1] - row[i])
    fwhm_nm = 2 * (x_half - c) * b.params[0].pixel_size_um * 1000
    assert fwhm_nm == pytest.approx(0.51 * 500 / 0.8, rel=0.08)
    assert float(b.kernels[0].sum()) == pytest.approx(1.0, abs=1e-5)


def test_bank_is_deterministic_cached_and_refreshable(tmp_path):
    r = MicroscopeRanges(z_half_range_um=(0.0, 0.0))  # in focus only: quick to compute
    a = PSFBank(r, n_kernels=6, seed=3, cache_dir=tmp_path)
    assert not a.loaded_from_cache and len(list(tmp_path.glob("*.safetensors"))) == 1
    b = PSFBank(r, n_kernels=6, seed=3, cache_dir=tmp_path)
    assert b.loaded_from_cache
    assert torch.equal(a.kernels, b.kernels) and a.params == b.params
    c = PSFBank(r, n_kernels=6, seed=4, cache_dir=False)
    assert not torch.equal(a.kernels, c.kernels)
    assert not PSFBank(r, n_kernels=6, seed=3, kernel_size=31, cache_dir=tmp_path).loaded_from_cache
    fresh = PSFBank(r, n_kernels=6, seed=3, cache_dir=False)
    assert torch.equal(fresh.kernels, a.kernels)  # the cache holds what is computed
    before = a.kernels.clone()
    idx = a.refresh(0.5, np.random.default_rng(0))
    assert len(idx) == 3
    changed = [not torch.equal(before[i], a.kernels[i]) for i in range(6)]
    assert [i for i, ch in enumerate(changed) if ch] == sorted(idx.tolist())
    b.refresh(0.5, np.random.default_rng(0))
    assert torch.equal(a.kernels, b.kernels)
    torch.testing.assert_close(a.kernels.sum(dim=(-2, -1)), torch.ones(6))


# ------------------------------------------------------------------------------ dataset
def test_item_layout_and_normalisation_convention(default_bank):
    ds = PairedDataset(size=64, length=4, bank=default_bank, seed=0)
    item = ds[0]
    for key in ("gt", "observed", "observed_clean"):
        assert item[key].shape == (1, 64, 64) and item[key].dtype == torch.float32
    assert item["psf"].shape == (1, 33, 33)
    assert float(item["psf"].sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(item["observed"].min()) == pytest.approx(-1.0, abs=1e-6)
    assert float(item["observed"].max()) == pytest.approx(1.0, abs=1e-6)
    p = item["params"]
    assert all(isinstance(v, float) for v in p.values())
    # back to photo-electrons: the clean image peaks at photons + background
    clean_phys = (item["observed_clean"].double() - p["norm_offset"]) / p["norm_scale"]
    assert float(clean_phys.max()) == pytest.approx(p["photons"] + p["background"], rel=1e-5)
    gt_phys = (item["gt"].double() - p["norm_offset"]) / p["norm_scale"]
    assert float(gt_phys.min()) >= p["background"] - 1e-3 * p["photons"]


@pytest.mark.parametrize("index", range(6))
def test_observed_clean_is_the_periodic_blur_of_gt_in_model_units(default_bank, index):
    ds = PairedDataset(size=64, length=6, bank=default_bank, seed=2)
    item = ds[index]
    gt = item["gt"][0].double().numpy()
    psf = item["psf"][0].double().numpy()
    expect = _periodic_blur(gt, psf)
    got = item["observed_clean"][0].double().numpy()
    assert np.abs(got - expect).max() < 1e-5 * max(1.0, np.abs(gt).max())


def test_observations_are_band_limited_by_the_otf(bank):
    """Widefield: no energy beyond the incoherent cut-off 2 NA / lambda in observed_clean;
    beyond it, observed holds only noise, with the power Poisson + read noise predicts."""
    ds = PairedDataset(size=128, length=4, bank=bank, seed=5, specimens="natural")
    for i in range(4):
        item = ds[i]
        p = item["params"]
        fc = 2 * p["na"] / (p["em_wavelength_nm"] * 1e-3) * p["pixel_size_um"]  # cycles / px
        assert fc == pytest.approx(0.35, rel=1e-6)
        beyond = _radial_freq(128) > 1.05 * fc
        gt = item["gt"][0].double().numpy()
        clean = item["observed_clean"][0].double().numpy()
        obs = item["observed"][0].double().numpy()
        p_gt = np.abs(np.fft.fft2(gt - gt.mean())) ** 2
        p_clean = np.abs(np.fft.fft2(clean - clean.mean())) ** 2
        assert p_gt[beyond].sum() / p_gt.sum() > 1e-3  # the specimen has fine detail...
        assert p_clean[beyond].sum() / p_clean.sum() < 1e-5  # ...that the optics remove
        a = p["norm_scale"]
        clean_phys = (clean - p["norm_offset"]) / a
        noise_power = a**2 * (clean_phys.sum() + p["read_noise"] ** 2 * clean.size)
        p_obs = np.abs(np.fft.fft2(obs)) ** 2
        assert p_obs[beyond].mean() / noise_power == pytest.approx(1.0, rel=0.1)


def test_noise_is_poisson_plus_read_noise(bank):
    """(observed - clean) / sqrt(clean + read_noise^2), in photo-electrons, is standard."""
    ds = PairedDataset(size=128, length=3, bank=bank, seed=8, specimens="nuclei")
    zs = []
    for i in range(3):
        item = ds[i]
        p = item["params"]
        to_phys = lambda v, p=p: (v.double().numpy() - p["norm_offset"]) / p["norm_scale"]  # noqa: E731
        clean, obs = to_phys(item["observed_clean"][0]), to_phys(item["observed"][0])
        zs.append((obs - clean) / np.sqrt(clean + p["read_noise"] ** 2))
    z = np.concatenate([v.ravel() for v in zs])
    assert abs(z.mean()) < 0.02
    assert z.var() == pytest.approx(1.0, abs=0.05)


def test_items_are_deterministic_per_seed_and_index(default_bank):
    a = PairedDataset(size=64, length=5, bank=default_bank, seed=11)
    b = PairedDataset(size=64, length=5, bank=default_bank, seed=11)
    c = PairedDataset(size=64, length=5, bank=default_bank, seed=12)
    for i in (0, 3):
        x, y = a[i], b[i]
        for key in ("gt", "observed", "observed_clean", "psf"):
            assert torch.equal(x[key], y[key])
        assert x["params"] == y["params"]
    assert not torch.equal(a[0]["observed"], c[0]["observed"])
    assert not torch.equal(a[0]["observed"], a[1]["observed"])


def test_dataloader_workers_give_the_same_samples_as_the_main_process(default_bank):
    ds = PairedDataset(size=64, length=6, bank=default_bank, seed=21)
    kw = dict(batch_size=2, shuffle=False)
    serial = list(torch.utils.data.DataLoader(ds, num_workers=0, **kw))
    parallel = list(torch.utils.data.DataLoader(ds, num_workers=2, **kw))
    for s, p in zip(serial, parallel, strict=True):
        for key in ("gt", "observed", "observed_clean", "psf"):
            assert torch.equal(s[key], p[key])
        torch.testing.assert_close(s["params"]["photons"], p["params"]["photons"])
    obs = torch.cat([b["observed"] for b in parallel]).flatten(1)
    assert len({tuple(o[:16].tolist()) for o in obs}) == 6  # no repeated streams


def test_percentile_normalisation_maps_robust_range(default_bank):
    ds = PairedDataset(size=64, length=2, bank=default_bank, normalisation="percentile")
    obs = ds[0]["observed"].flatten().double()
    q = torch.quantile(obs, torch.tensor([0.001, 0.999], dtype=torch.float64))
    torch.testing.assert_close(q, torch.tensor([-1.0, 1.0], dtype=torch.float64), atol=1e-5, rtol=0)


def test_dataset_errors_are_clear(default_bank):
    with pytest.raises(PiddpmError, match="unknown specimen 'cells'"):
        PairedDataset(size=64, specimens="cells", bank=default_bank)
    with pytest.raises(PiddpmError, match="needs images_dir"):
        PairedDataset(size=64, specimens="images", bank=default_bank)
    with pytest.raises(PiddpmError, match="kernel size 33 exceeds the image size 16"):
        PairedDataset(size=16, bank=default_bank)
    with pytest.raises(PiddpmError, match="normalisation 'zscore'"):
        PairedDataset(size=64, bank=default_bank, normalisation="zscore")


# ------------------------------------------------------------------------- field crops
def test_field_items_are_normalised_on_the_whole_field_with_restores_rule(monkeypatch):
    """One function computes the intensity range for training fields and for restore's planes,
    and a training item is a window of a field normalised as a whole."""
    import piddpm.normalisation as normalisation
    from piddpm.restore.settings import plane_range as _plane_range

    seen = []
    real = normalisation.intensity_range

    def spy(values, percentiles=normalisation.DEFAULT_PERCENTILES, **kw):
        seen.append((tuple(values.shape[-2:]), tuple(percentiles)))
        return real(values, percentiles, **kw)

    monkeypatch.setattr(normalisation, "intensity_range", spy)
    ds = PairedDataset(
        size=32,
        length=4,
        seed=1,
        n_kernels=4,
        kernel_size=9,
        normalisation="percentile",
        field_factor=3,
    )
    item = ds[0]
    assert seen[-1] == ((96, 96), normalisation.DEFAULT_PERCENTILES)
    assert item["observed"].shape == (1, 32, 32)
    p = item["params"]
    assert p["field_size"] == 96 and 0 <= p["patch_y0"] <= 64 and 0 <= p["patch_x0"] <= 64
    _plane_range(np.zeros((16, 16)) + np.arange(16), (0.1, 99.9))
    assert seen[-1] == ((16, 16), (0.1, 99.9))


def test_field_crops_show_dim_and_background_patches_that_per_patch_minmax_never_shows():
    """Sparse specimens on a 4x-area field: some windows hold only background, which sits
    near -1 after whole-field normalisation; per-patch min-max always spans [-1, 1]."""
    kw = dict(size=32, length=24, seed=2, n_kernels=4, kernel_size=9, specimens="puncta")
    fields = PairedDataset(normalisation="percentile", field_factor=4, **kw)
    patches = PairedDataset(normalisation="minmax", field_factor=1, **kw)
    top_field = [float(fields[i]["observed"].max()) for i in range(len(fields))]
    top_patch = [float(patches[i]["observed"].max()) for i in range(len(patches))]
    assert np.allclose(top_patch, 1.0, atol=1e-5)
    assert min(top_field) < 0.0  # a dim / background-only window


def test_field_crop_keeps_the_forward_model_away_from_the_patch_border():
    from piddpm.acquisition import blur

    ds = PairedDataset(
        size=48,
        length=2,
        seed=3,
        n_kernels=4,
        kernel_size=9,
        normalisation="percentile",
        field_factor=2,
    )
    it = ds[1]
    ref = blur(it["gt"][None].double(), it["psf"][None].double(), boundary="zero")[0]
    inner = (slice(None), slice(4, -4), slice(4, -4))  # kernel radius 4
    assert torch.allclose(ref[inner].float(), it["observed_clean"][inner], atol=1e-4)
