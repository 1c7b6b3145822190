"""piddpm.restore: planes, intensity mapping, tiling, methods, model registry, errors.

Models here are tiny random-weight U-Nets saved with ``piddpm.networks.save_model``: they
test the plumbing (shapes, units, determinism, metadata), not restoration quality.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

import piddpm
from piddpm import PiddpmError
from piddpm.networks import build_unet, save_model
from piddpm.restore import load_psf, make_psf, noise_sigma, restore, rl_iterations
from piddpm.restore.settings import BORDER_PAD

SCHEDULE = {"kind": "linear", "T": 40, "beta_start": 1e-4, "beta_end": 0.05}
CHANNELS = {"pi-ddpm": (2, 2, True), "ddpm": (2, 1, True), "unet": (1, 1, False)}


def make_model(folder, method="pi-ddpm", seed=0, net_options=None, jitter=0.0, **extra):
    """A random-weight tiny model folder (model.safetensors + model.json) for ``method``;
    ``net_options`` override the preset, ``jitter`` adds noise to every parameter (norm
    affines included). Returns the folder."""
    cin, cout, cond = CHANNELS[method]
    torch.manual_seed(seed)
    net = build_unet("tiny", cin, cout, conditioned=cond, **(net_options or {}))
    if jitter:
        with torch.no_grad():
            for p in net.parameters():
                p.add_(jitter * torch.randn_like(p))
    cfg = {
        "format": "piddpm-model",
        "method": method,
        "preset": "tiny",
        "target": None if method == "unet" else "residual",
        "schedule": None if method == "unet" else SCHEDULE,
        "data": {"modality": "widefield"},
        **extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_model(folder / "model", net, cfg)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {m: make_model(root / m, m) for m in CHANNELS}


def gaussian_psf(size=9, sigma=1.5):
    y, x = np.mgrid[:size, :size] - size // 2
    k = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return (k / k.sum()).astype(np.float32)


def beads(shape=(96, 96), n=12, seed=0):
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, np.float32)
    gt[rng.integers(8, shape[0] - 8, n), rng.integers(8, shape[1] - 8, n)] = 1.0
    return gt


def blurred(gt, psf):
    return ndimage.convolve(gt, psf, mode="constant").astype(np.float32)


def fwhm_px(profile):
    half = profile.max() / 2
    above = np.nonzero(profile >= half)[0]
    return above[-1] - above[0] + 1


# ---------------------------------------------------------------- Richardson-Lucy path


def test_rl_sharpens_a_blurred_point_and_keeps_the_intensity_scale():
    """A point blurred by a Gaussian (sigma 2 px, FWHM 4.7 px) on a camera offset of 100
    is narrowed by RL and the background stays at the offset (output in input units)."""
    psf = gaussian_psf(15, 2.0)
    gt = np.zeros((64, 64), np.float32)
    gt[32, 32] = 1000.0
    obs = blurred(gt, psf) + 100.0
    r = restore(obs, method="rl", psf=psf, steps=50, tile=64, progress=False, device="cpu")
    assert r.mean.dtype == np.float32 and r.mean.shape == obs.shape
    assert fwhm_px(r.mean[32] - 100) < fwhm_px(obs[32] - 100) - 1
    assert abs(np.median(r.mean) - 100.0) < 1.0
    # flux above the offset is conserved by RL (to within the edge losses)
    assert abs((r.mean - 100).sum() / (obs - 100).sum() - 1) < 0.05
    assert r.residual is not None and r.residual.shape == obs.shape
    # noiseless data: the restoration explains the data far better than the input itself
    lo, hi = np.percentile(obs, [0.1, 99.9])
    input_residual = np.abs(ndimage.convolve(obs, psf, mode="nearest") - obs) / (hi - lo)
    assert r.residual.max() < 0.3 * input_residual.max()
    assert r.metadata["method"] == "rl" and r.metadata["steps"] == 50


def test_rl_tiled_equals_untiled_away_from_the_border():
    psf = gaussian_psf(9, 1.5)
    rng = np.random.default_rng(1)
    obs = blurred(beads((160, 160), 40) * 50, psf) + rng.random((160, 160)).astype(np.float32)
    kw = dict(method="rl", psf=psf, steps=8, progress=False, device="cpu", residual=False)
    whole = restore(obs, tile=256, **kw).mean
    tiled = restore(obs, tile=64, overlap=24, batch_size=3, **kw).mean
    inner = (slice(20, -20), slice(20, -20))
    assert np.abs(tiled - whole)[inner].max() < 0.01 * whole.max()


def test_noise_estimate_matches_the_true_noise_level():
    rng = np.random.default_rng(2)
    smooth = ndimage.gaussian_filter(rng.random((128, 128)), 6) * 100
    noisy = smooth + rng.normal(0, 3.0, smooth.shape)
    assert noise_sigma(noisy) == pytest.approx(3.0, rel=0.1)


def test_rl_iteration_rule_stops_earlier_on_noisier_data():
    """Discrepancy principle: the noisier the data, the fewer iterations before RL fits
    the noise."""
    psf = gaussian_psf(9, 1.5)
    clean = blurred(beads((64, 64), 14) * 40, psf) + 0.2
    rng = np.random.default_rng(3)
    counts = []
    for photons in (10, 100, 1000):
        obs = rng.poisson(clean / clean.max() * photons).astype(np.float32)
        counts.append(rl_iterations(obs / obs.max(), psf, 64))
    assert 1 <= counts[0] < counts[1] < counts[2] <= 200


def test_psf_from_microscope_settings_has_unit_sum_and_the_expected_width():
    """Widefield NA 1.0, 500 nm, 50 nm pixels: FWHM ~ 0.51 lambda/NA = 255 nm ~ 5 px."""
    psf = make_psf(na=1.0, em_nm=500, pixel_um=0.05)
    assert psf.shape[0] % 2 == 1 and psf.sum() == pytest.approx(1.0, abs=1e-4)
    width_nm = fwhm_px(psf[psf.shape[0] // 2]) * 50
    assert 200 <= width_nm <= 350


def test_3d_psf_file_is_reduced_to_its_brightest_plane(tmp_path):
    from piddpm.io import write_tiff

    stack = np.stack([gaussian_psf(11, s) for s in (3.0, 1.0, 2.0)])
    write_tiff(tmp_path / "psf.tif", stack, axes="ZYX")
    psf, desc = load_psf(tmp_path / "psf.tif")
    np.testing.assert_allclose(psf, gaussian_psf(11, 1.0), atol=1e-6)
    assert "plane 1" in desc


# ---------------------------------------------------------------- models and intensity


@pytest.mark.parametrize("method", ["unet", "pi-ddpm"])
def test_output_follows_an_affine_change_of_input_units(models, method):
    """Percentile normalisation in, inverse map out: restore(a x + b) = a restore(x) + b."""
    rng = np.random.default_rng(4)
    x = ndimage.gaussian_filter(rng.random((48, 40)), 2).astype(np.float32)
    kw = dict(model=str(models[method]), tile=32, overlap=8, progress=False, device="cpu")
    if method == "pi-ddpm":
        kw.update(steps=2, samples=2)
    r1 = restore(x, **kw)
    r2 = restore(x * 300.0 + 1000.0, **kw)
    scale = np.abs(r1.mean).max()
    np.testing.assert_allclose(r2.mean, r1.mean * 300.0 + 1000.0, atol=2e-3 * 300 * scale)
    if method == "pi-ddpm":
        assert r1.std is not None and r1.std.shape == x.shape and r1.std.max() > 0
        np.testing.assert_allclose(r2.std, r1.std * 300.0, rtol=1e-2, atol=1e-3 * r2.std.max())


def test_stack_planes_are_restored_independently_and_shape_is_kept(models):
    rng = np.random.default_rng(5)
    stack = rng.random((3, 2, 37, 45)).astype(np.float32)  # C, Z, Y, X; odd sizes
    kw = dict(model=models["unet"], tile=32, overlap=8, progress=False, device="cpu")
    r = restore(stack, axes="CZYX", **kw)
    assert r.mean.shape == stack.shape
    one = restore(stack[1, 0], **kw)
    np.testing.assert_allclose(r.mean[1, 0], one.mean, rtol=1e-5, atol=1e-6)


def test_input_is_never_modified(models):
    x = (np.random.default_rng(6).random((40, 40)) * 1000).astype(np.uint16)
    before = hashlib.sha256(x.tobytes()).hexdigest()
    restore(x, model=models["unet"], tile=32, overlap=4, progress=False, device="cpu")
    assert hashlib.sha256(x.tobytes()).hexdigest() == before


def test_torch_and_dask_inputs_give_the_same_kind_back(models):
    x = np.random.default_rng(7).random((40, 36)).astype(np.float32)
    kw = dict(model=models["unet"], tile=32, overlap=4, progress=False, device="cpu")
    ref = restore(x, **kw).mean
    rt = restore(torch.from_numpy(x), **kw).mean
    assert isinstance(rt, torch.Tensor)
    np.testing.assert_allclose(rt.numpy(), ref, rtol=1e-6)
    da = pytest.importorskip("dask.array")
    rd = restore(da.from_array(x, chunks=(20, 36)), **kw).mean
    assert isinstance(rd, da.Array)
    np.testing.assert_allclose(rd.compute(), ref, rtol=1e-6)


def test_diffusion_is_seeded_and_states_how_it_was_made(models):
    x = np.random.default_rng(8).random((32, 32)).astype(np.float32)
    kw = dict(
        model=models["pi-ddpm"],
        steps=3,
        tile=32,
        overlap=8,
        progress=False,
        device="cpu",
        eta=2.0,
        lam=0.01,
    )
    a, b = restore(x, seed=1, **kw), restore(x, seed=1, **kw)
    c = restore(x, seed=2, **kw)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert not np.allclose(a.mean, c.mean)
    m = a.metadata
    assert (m["method"], m["sampler"], m["steps"], m["eta"], m["lambda"], m["seed"]) == (
        "pi-ddpm",
        "ddim",
        3,
        2.0,
        0.01,
        1,
    )
    assert m["piddpm_version"] == piddpm.__version__
    json.dumps(m)  # storable in the output file


def test_known_psf_guidance_and_residual_with_a_ddpm_model(models):
    psf = gaussian_psf(7, 1.0)
    x = blurred(beads((40, 40), 6), psf)
    r = restore(
        x,
        model=models["ddpm"],
        psf=psf,
        guidance="known",
        steps=2,
        tile=40,
        progress=False,
        device="cpu",
    )
    assert r.residual.shape == x.shape and r.residual.min() >= 0
    with pytest.raises(PiddpmError, match="learned physics gradient"):
        restore(x, model=models["ddpm"], guidance="learned", progress=False, device="cpu")


def test_callable_after_the_submodule_is_imported():
    import piddpm.restore as mod  # sets piddpm.restore to the module

    assert mod is piddpm.restore or callable(piddpm.restore)
    psf = gaussian_psf(5, 1.0)
    r = piddpm.restore(
        np.ones((16, 16), np.float32), method="rl", psf=psf, steps=2, progress=False, device="cpu"
    )
    assert r.mean.shape == (16, 16)


# ---------------------------------------------------------------- registry


def test_registry_lists_and_resolves_bundled_models_and_aliases(tmp_path, monkeypatch):
    import piddpm.models as reg

    make_model(tmp_path / "pi-ddpm-widefield", "pi-ddpm", description="Widefield PI-DDPM")
    (tmp_path / "pi-ddpm-widefield" / "MODEL_CARD.md").write_text(
        "# PI-DDPM widefield\n\nRestores widefield images.\n\n## Limits\n..."
    )
    make_model(tmp_path / "unet-widefield", "unet")
    monkeypatch.setattr(reg, "MODELS_DIR", tmp_path)
    names = [e.name for e in reg.list_models()]
    assert names == ["pi-ddpm-widefield", "unet-widefield"]
    e = reg.resolve_model("widefield")
    assert e.name == "pi-ddpm-widefield" and e.bundled and e.method == "pi-ddpm"
    assert e.summary == "Widefield PI-DDPM" and "Limits" in e.card
    assert reg.resolve_model("unet-widefield").summary.startswith("unet")
    net, entry = reg.load_bundled("widefield")
    assert entry.name == "pi-ddpm-widefield" and net.out_channels == 2
    with pytest.raises(PiddpmError, match="unknown model 'nope'.*pi-ddpm-widefield"):
        reg.resolve_model("nope")


def test_no_bundled_model_error_suggests_a_path_or_rl(tmp_path, monkeypatch):
    import piddpm.models as reg

    monkeypatch.setattr(reg, "MODELS_DIR", tmp_path / "empty")
    with pytest.raises(PiddpmError, match=r"ships no bundled models.*--model PATH.*--method rl"):
        restore(np.ones((16, 16), np.float32), progress=False)


def test_user_model_by_folder_safetensors_or_json(models):
    from piddpm.models import resolve_model

    folder = models["unet"]
    for p in (folder, folder / "model.safetensors", folder / "model.json"):
        e = resolve_model(p)
        assert e.method == "unet" and not e.bundled


def test_weights_that_do_not_match_the_config_are_refused(tmp_path, models):
    from piddpm.models import load_entry, resolve_model

    bad = make_model(tmp_path / "bad", "unet")
    doc = json.loads((bad / "model.json").read_text())
    doc["network"]["base_channels"] = 8  # the weights were made with 16
    (bad / "model.json").write_text(json.dumps(doc))
    with pytest.raises(PiddpmError, match="do not match"):
        load_entry(resolve_model(bad))
    with pytest.raises(PiddpmError, match="do not match"):
        restore(np.ones((16, 16), np.float32), model=bad, progress=False, device="cpu")


def test_model_for_another_method_is_refused(models):
    with pytest.raises(PiddpmError, match="trained for method 'unet', not 'pi-ddpm'"):
        restore(
            np.ones((16, 16), np.float32), model=models["unet"], method="pi-ddpm", progress=False
        )


def test_other_modality_warns(models):
    with pytest.warns(UserWarning, match="trained on widefield"):
        restore(
            np.random.default_rng(0).random((16, 16)),
            model=models["unet"],
            microscope={
                "modality": "confocal",
                "na": 1.0,
                "em_nm": 520,
                "ex_nm": 488,
                "pixel_um": 0.05,
            },
            progress=False,
            tile=16,
            overlap=4,
            device="cpu",
        )


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "data,kwargs,match",
    [
        (np.ones((16, 16), np.complex64), {}, "complex"),
        (np.ones((16, 16), bool), {}, "boolean"),
        (np.full((16, 16), np.nan, np.float32), {}, "NaN or infinite"),
        (np.ones((1, 1), np.float32), {}, r"1 x 1 pixels"),
        (np.ones((32, 32, 3), np.uint8), {}, "RGB"),
        (np.ones((4, 16, 16), np.float32), {"axes": "QWYX"}, "axes"),
        (np.ones((4, 16, 16), np.float32), {"axes": "YXS"}, "axes|colour"),
        (np.ones((16, 16), np.float32), {"psf": np.ones((21, 21))}, "larger than the image"),
        (np.ones((16, 16), np.float32), {"psf": None}, "needs a PSF"),
        (np.ones((16, 16), np.float32), {"samples": 0}, "samples"),
        (np.ones((16, 16), np.float32), {"tile": 16, "overlap": -1}, "overlap"),
        (np.ones((16, 16), np.float32), {"tile": 1}, "tile size"),
    ],
)
def test_bad_input_is_reported_clearly(data, kwargs, match):
    kw = {"method": "rl", "psf": gaussian_psf(5), "progress": False, "device": "cpu"}
    kw.update(kwargs)
    with pytest.raises(PiddpmError, match=match):
        restore(data, **kw)


def test_nan_in_one_plane_names_the_plane():
    x = np.ones((3, 16, 16), np.float32)
    x[2, 4, 4] = np.inf
    with pytest.raises(PiddpmError, match=r"plane Z=2"):
        restore(x, axes="ZYX", method="rl", psf=gaussian_psf(5), progress=False, device="cpu")


def test_tiling_defaults_come_from_the_model_unless_given(tmp_path):
    """GroupNorm statistics depend on the tile, so each model carries its measured tiling."""
    folder = make_model(tmp_path / "m", "unet", restore_defaults={"tile": 48, "overlap": 12})
    x = np.random.default_rng(3).random((100, 90)).astype(np.float32)
    kw = dict(model=folder, progress=False, device="cpu")
    m = restore(x, **kw).metadata
    assert (m["tile"], m["overlap"]) == (48, 12)
    m = restore(x, tile=64, **kw).metadata
    assert (m["tile"], m["overlap"]) == (64, 12)
    m = restore(x, method="rl", psf=gaussian_psf(), model=None, progress=False).metadata
    assert (m["tile"], m["overlap"]) == (256, 32)


def test_loaded_networks_are_cached_until_the_file_changes(tmp_path):
    import os

    from piddpm.models import load_entry, resolve_model

    folder = make_model(tmp_path / "c", "unet")
    entry = resolve_model(str(folder))
    first = load_entry(entry)
    assert load_entry(resolve_model(str(folder))) is first
    st = os.stat(entry.weights)
    os.utime(entry.weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_entry(resolve_model(str(folder))) is not first


# ---------------------------------------------------------------------- exact tiling
def _shallow_invariant_model(folder, method, seed=0):
    """A random-weight 2-level U-Net with per-pixel LayerNorm (receptive radius 24 px)."""
    options = {"norm": "layer", "channel_mults": (1, 2), "base_channels": 8}
    radius = build_unet("tiny", **options).receptive_radius()
    folder = make_model(folder, method, seed, net_options=options, jitter=0.1,
                        restore_defaults={"tile_margin": radius})  # fmt: skip
    return folder, radius


@pytest.mark.parametrize(
    "method, options",
    [
        ("unet", {}),
        ("pi-ddpm", {"sampler": "ddim", "steps": 3, "eta_ddim": 0.0}),
        # stochastic sampling: the noise is one field per plane, so tiles agree as well
        ("pi-ddpm", {"sampler": "ddim", "steps": 3, "eta_ddim": 1.0, "samples": 2}),
    ],
)
def test_tiled_restore_equals_the_untiled_one_for_a_tile_invariant_network(
    tmp_path, method, options
):
    folder, radius = _shallow_invariant_model(tmp_path / method, method)
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.poisson(20 * beads((256, 256), n=40)).astype(np.float32), 1)
    img += rng.normal(0, 0.05, img.shape).astype(np.float32)
    # untiled: one tile over the plane and its mirrored border (restore_planes)
    untiled = 256 + 2 * BORDER_PAD
    whole = restore(img, method=method, model=folder, tile=untiled, overlap=0, seed=3, **options)
    tiled = restore(
        img, method=method, model=folder, tile=96, overlap=2 * radius + 2, seed=3, **options
    )
    assert tiled.metadata["tile_margin"] == radius
    span = np.ptp(whole.mean)
    # float32 rounding differs between tile sizes; the contract is 0.5 % of the range
    assert np.abs(tiled.mean - whole.mean).max() < 5e-4 * span
    if options.get("samples", 1) > 1:
        assert np.abs(tiled.std - whole.std).max() < 5e-4 * span


# ---------------------------------------------------------------------- pixel sizes
def test_a_file_stating_10_pixels_per_inch_is_not_read_as_a_microscope_pixel(tmp_path, models):
    import tifffile

    path = tmp_path / "dpi.tif"
    img = (beads((64, 64)) * 200).astype(np.uint16)
    tifffile.imwrite(path, img, resolution=(10.0, 10.0), resolutionunit=2)  # 2540 um "pixels"
    with pytest.warns(UserWarning, match="no microscope gives"):
        res = restore(path, model=models["unet"], progress=False)
    assert "pixel_size_um" not in res.metadata
    with pytest.warns(UserWarning), pytest.raises(PiddpmError, match="--pixel-um"):
        restore(path, method="rl", microscope={"na": 0.8, "em_nm": 520}, progress=False)
    with pytest.raises(PiddpmError, match="--pixel-um"):
        restore(img, model=models["unet"], pixel_size_um=2540.0, progress=False)


def test_off_range_sampling_is_resampled_into_the_models_range_and_back(models):
    img = ndimage.gaussian_filter(beads((96, 96), n=20) * 100, 1.0).astype(np.float32) + 5
    mic = {"na": 0.8, "em_nm": 520.0, "modality": "widefield"}
    nyq = 0.52 / 3.2
    res = restore(
        img, model=models["unet"], microscope={**mic, "pixel_um": 0.4 * nyq}, progress=False
    )
    s = res.metadata["sampling"]
    assert s["resampled"] and s["zoom"] == pytest.approx(0.5)  # the test model: 0.8-1.2
    assert res.mean.shape == img.shape and res.residual.shape == img.shape
    inside = restore(img, model=models["unet"], microscope={**mic, "pixel_um": nyq}, progress=False)
    assert not inside.metadata["sampling"]["resampled"]
    native = restore(
        img,
        model=models["unet"],
        microscope={**mic, "pixel_um": 0.4 * nyq},
        resample=False,
        progress=False,
    )
    assert not np.allclose(native.mean, res.mean)


def test_the_models_std_scale_multiplies_the_posterior_spread(tmp_path):
    img = ndimage.gaussian_filter(beads((64, 64)) * 100, 1.0).astype(np.float32)
    plain = make_model(tmp_path / "plain", "pi-ddpm")
    scaled = make_model(tmp_path / "scaled", "pi-ddpm", restore_defaults={"std_scale": 2.5})
    kw = dict(samples=3, steps=3, seed=1, progress=False)
    a = restore(img, model=plain, **kw)
    b = restore(img, model=scaled, **kw)
    assert np.allclose(b.std, 2.5 * a.std, rtol=1e-5, atol=1e-6)
    floored = make_model(tmp_path / "floored", "pi-ddpm", restore_defaults={"std_floor": 0.1})
    c = restore(img, model=floored, **kw)
    span = np.subtract(*np.percentile(img, [99.9, 0.1]))
    assert np.allclose(c.std, a.std + 0.1 * span / 2, rtol=1e-4, atol=1e-5)
    assert np.array_equal(a.mean, b.mean)
    assert b.metadata["std_scale"] == 2.5


def test_calibration_fits_and_stores_the_factor(tmp_path, monkeypatch):
    """Plumbing on a random model: the factor is fitted on dev pairs, reported on test pairs,
    and written where restore reads it."""
    import piddpm.evaluation.calibration as calibration
    from piddpm.data import PairedDataset
    from piddpm.models import resolve_model

    folder = make_model(tmp_path / "m", "pi-ddpm")

    def pairs(entry, n, size, seed):
        ds = PairedDataset(size=size, length=n, seed=seed, n_kernels=4, kernel_size=9)
        return [ds[i] for i in range(n)]

    monkeypatch.setattr(calibration, "_pairs", pairs)  # a random model has no training config
    result = calibration.calibrate_spread(folder, pairs=2, size=32, samples=2, options={"steps": 2})
    assert result["std_scale"] > 0
    assert result["test"]["after"]["mean_abs_error"] <= 1.0
    assert result["std_gradient"] >= 0 and "scale_and_floor_only" in result
    calibration.store_std_scale(folder, result)
    defaults = resolve_model(folder).restore_defaults
    assert defaults["std_scale"] == result["std_scale"]
    assert defaults["std_gradient"] == result["std_gradient"]


def test_restore_applies_the_gradient_term_of_the_calibrated_spread(tmp_path):
    """std = (c * raw + f + g * |grad mean|) * half-range, the mean in model units: the
    difference between two models that differ only in ``g`` is ``g`` times the gradient of
    the restored mean (model units) times the half range."""
    from piddpm.metrics import mean_gradient
    from piddpm.models.files import read_model_doc, write_model_doc

    folder = make_model(tmp_path / "m", "pi-ddpm")
    obs = np.random.default_rng(5).poisson(40.0, (40, 36)).astype(np.float32)
    kw = dict(steps=2, samples=2, seed=3, progress=False, device="cpu", percentiles=(0, 100))
    base = restore(obs, model=str(folder), **kw)
    doc = read_model_doc(folder / "model.json")
    doc["config"].setdefault("restore_defaults", {})["std_gradient"] = 0.25
    write_model_doc(folder / "model.json", doc)
    res = restore(obs, model=str(folder), **kw)
    assert res.metadata["std_gradient"] == 0.25
    np.testing.assert_array_equal(res.mean, base.mean)
    half = (obs.max() - obs.min()) / 2.0
    expected = 0.25 * mean_gradient(np.asarray(res.mean, np.float64) / half) * half
    np.testing.assert_allclose(res.std - base.std, expected, rtol=1e-4, atol=1e-5 * half)


def test_bf16_autocast_is_a_model_default_used_only_where_bf16_is_native(tmp_path):
    """``restore_defaults.autocast`` switches the diffusion sampler to bf16 autocast, but only on
    a device with native bf16 (elsewhere it would be emulated and slower); the metadata says
    which precision ran, and the result stays close to float32."""
    import shutil

    from piddpm.models import MODELS_DIR
    from piddpm.models.files import read_model_doc, write_model_doc
    from piddpm.restore.runners import bf16_is_fast

    assert bf16_is_fast("meta") is False
    src = MODELS_DIR / "pi-ddpm-widefield"
    if not src.is_dir():
        pytest.skip("bundled pi-ddpm-widefield not installed")
    copies = {}
    for autocast in (False, True):
        dst = copies[autocast] = tmp_path / f"pi-ddpm-widefield-{autocast}"
        shutil.copytree(src, dst)
        doc = read_model_doc(dst / "model.json")
        doc["config"]["restore_defaults"]["autocast"] = autocast
        write_model_doc(dst / "model.json", doc)
    obs = np.random.default_rng(0).poisson(30.0, (48, 40)).astype(np.float32)
    kw = dict(steps=3, seed=1, progress=False, device="cpu")
    ref = restore(obs, model=str(copies[False]), **kw)
    res = restore(obs, model=str(copies[True]), **kw)
    assert ref.metadata["precision"] == "float32"
    native = bf16_is_fast("cpu")
    assert res.metadata["precision"] == ("bf16 autocast" if native else "float32")
    span = float(np.percentile(ref.mean, 99.9) - np.percentile(ref.mean, 0.1))
    assert float(np.abs(res.mean - ref.mean).max()) < 0.05 * span


def test_precision_overrides_the_model_default(tmp_path):
    """``precision="float32"`` runs a bf16-default model in float32 and gives exactly the
    float32 result; ``"bf16"`` forces autocast (metadata says so, the result stays close);
    the U-Net says it ignores bf16; an unknown precision is refused naming the choices."""
    from piddpm.models import resolve_model

    entry = resolve_model("pi-ddpm-widefield")
    if not entry.restore_defaults.get("autocast"):
        pytest.skip("the bundled pi-ddpm-widefield does not default to bf16")
    obs = np.random.default_rng(0).poisson(30.0, (48, 40)).astype(np.float32)
    kw = dict(model="pi-ddpm-widefield", steps=3, seed=1, progress=False, device="cpu")
    f32 = restore(obs, precision="float32", **kw)
    assert f32.metadata["precision"] == "float32"
    bf16 = restore(obs, precision="bf16", **kw)
    assert bf16.metadata["precision"] == "bf16 autocast"
    span = float(np.percentile(f32.mean, 99.9) - np.percentile(f32.mean, 0.1))
    assert 0 < float(np.abs(bf16.mean - f32.mean).max()) < 0.05 * span
    auto = restore(obs, precision="auto", **kw)
    from piddpm.restore.runners import bf16_is_fast

    same_as = bf16 if bf16_is_fast("cpu") else f32
    np.testing.assert_array_equal(auto.mean, same_as.mean)
    with pytest.warns(UserWarning, match="precision bf16"):
        restore(obs, model="unet-widefield", precision="bf16", progress=False)
    with pytest.raises(PiddpmError, match="precision.*float32"):
        restore(obs, precision="fp64", **kw)


@pytest.mark.parametrize("name", ["unet-widefield", "pi-ddpm-widefield"])
def test_a_flat_field_keeps_its_level_up_to_the_image_border(tmp_path, name):
    """The learned methods see the plane mirrored beyond the image border (restore_planes),
    not the network's zero padding: on a dark flat background (bright objects in the centre
    put it near -1 in the network's units, as in fluorescence images) the outer rows and
    columns keep the level of the background next to them. With ``border_pad`` 0 the same
    model leaves a rim (the control)."""
    import shutil

    from piddpm.models import MODELS_DIR
    from piddpm.models.files import read_model_doc, write_model_doc

    if not (MODELS_DIR / name).is_dir():
        pytest.skip(f"bundled {name} not installed")
    bare = tmp_path / name
    shutil.copytree(MODELS_DIR / name, bare)
    doc = read_model_doc(bare / "model.json")
    doc["config"]["restore_defaults"]["border_pad"] = 0
    write_model_doc(bare / "model.json", doc)
    level, size = 20.0, 192
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:size, :size]
    clean = np.full((size, size), level)
    for cy, cx in rng.uniform(72, size - 72, (12, 2)):
        clean += 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))
    obs = rng.poisson(clean).astype(np.float32)
    kw = dict(seed=0, progress=False, device="cpu")

    def rim(res) -> float:
        """Largest |mean of a side's 3 outermost lines - mean of its lines 16-40| / level."""
        out = res.mean.astype(np.float64)
        worst = 0.0
        for k in range(4):
            side = np.rot90(out, k)[:, 40:-40]
            worst = max(worst, abs(side[:3].mean() - side[16:40].mean()))
        return worst / level

    mirrored = restore(obs, model=name, **kw)
    assert mirrored.metadata["border_pad"] == BORDER_PAD
    assert rim(mirrored) < 0.02
    assert rim(restore(obs, model=str(bare), **kw)) > 2 * rim(mirrored)
