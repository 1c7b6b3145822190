"""The training loop: smoke runs of each method, exact resume, pickle-free checkpoints,
logs, learning-rate schedule, EMA arithmetic, data sharding and DDP (gloo, 2 processes)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from piddpm import PiddpmError
from piddpm.config import TrainConfig, config_from_dict
from piddpm.training import (
    EMA,
    DistInfo,
    StreamBatches,
    learning_rate,
    list_checkpoints,
    load_checkpoint,
    load_trained,
    save_checkpoint,
    train,
)

REPO = Path(__file__).resolve().parents[1]


def tiny_config(method: str = "pi-ddpm", **changes) -> TrainConfig:
    """A 32 x 32, batch-2, tiny-preset run that takes about a second per step on a CPU."""
    data = {
        "method": method,
        "model": {"preset": "tiny"},
        "steps": 2,
        "batch_size": 2,
        "patch_size": 32,
        "log_every": 1,
        "checkpoint_every": 3,
        "validation": {"every": 0, "num_samples": 2, "num_steps": 2},
        "schedule": {"T": 100},
        "data": {"specimens": "filaments:1,puncta:1", "psf_size": 9, "n_kernels": 4},
    }
    if method == "unet":
        data.pop("schedule")
        data["validation"].pop("num_steps")
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return config_from_dict(data)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("method", ["pi-ddpm", "ddpm", "unet"])
def test_smoke_run_writes_model_logs_and_preview(tmp_path, method):
    out = tmp_path / method
    result = train(tiny_config(method), out_dir=out, device="cpu", progress=False)
    assert result.step == 2
    for name in ("config.json", "log.csv", "val.csv", "model.safetensors", "model.json"):
        assert (out / name).is_file(), name
    assert list((out / "previews").glob("step_0000002.png"))
    rows = read_csv(out / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert {"loss", "lr", "images_per_s", "time_s"} <= set(rows[0])
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    if method == "pi-ddpm":
        assert float(rows[0]["loss_phys"]) > 0  # the physics term is trained
    val = read_csv(out / "val.csv")
    assert len(val) == 1 and math.isfinite(float(val[0]["psnr_db"]))

    net, info = load_trained(out / "model.safetensors")
    assert info["method"] == method and info["preset"] == "tiny"
    assert info["training"]["steps"] == 2
    assert info["out_channels"] == {"pi-ddpm": 2, "ddpm": 1, "unet": 1}[method]
    if method != "unet":  # sample with the schedule validation used; trained on another
        assert info["schedule"]["kind"] == "linear" and info["schedule"]["T"] == 200
        assert info["training_schedule"]["kind"] == "cosine"
        assert info["training_schedule"]["T"] == 100
    assert info["percentiles"] == [0.0, 100.0]  # min-max normalisation, as in training
    assert "normalisation" in info and info["val_metrics"]["psnr_db"] == pytest.approx(
        float(val[0]["psnr_db"]), rel=1e-5
    )
    # the exported weights are the EMA weights
    for (k, a), b in zip(net.state_dict().items(), result.ema.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_load_trained_refuses_a_model_not_made_by_train(tmp_path):
    from piddpm.networks import build_unet, save_model

    save_model(tmp_path / "plain", build_unet("tiny", 2, 2), {"method": "pi-ddpm"})
    with pytest.raises(PiddpmError, match="not a model exported by piddpm train"):
        load_trained(tmp_path / "plain.json")


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_resume_continues_exactly(tmp_path):
    """6 steps in one go == 3 steps, a checkpoint, and a resumed run to 6 (bitwise, fp32 CPU).

    A cosine learning-rate decay with warm-up makes the lr differ at every step, so an
    off-by-one in the resumed step or the data stream would show.
    """
    cfg = tiny_config(
        "pi-ddpm",
        steps=6,
        **{"optimizer.warmup_steps": 2, "optimizer.lr_decay": "cosine", "optimizer.lr": 1e-3},
    )
    straight = train(cfg, out_dir=tmp_path / "a", device="cpu", progress=False)
    first = train(cfg, out_dir=tmp_path / "b", device="cpu", progress=False, stop_at_step=3)
    assert first.step == 3 and first.model_path is None
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_0000003.json"]
    resumed = train(cfg, out_dir=tmp_path / "b", resume=True, device="cpu", progress=False)
    assert resumed.step == 6
    a, b = _state(straight.net), _state(resumed.net)
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = _state(straight.ema), _state(resumed.ema)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the resumed log continues without gaps or repeats and matches the straight run
    rows_a, rows_b = read_csv(tmp_path / "a" / "log.csv"), read_csv(tmp_path / "b" / "log.csv")
    assert [r["step"] for r in rows_b] == [str(s) for s in range(1, 7)]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


def test_resume_guards(tmp_path):
    cfg = tiny_config("ddpm")
    with pytest.raises(PiddpmError, match="no checkpoint to resume from"):
        train(cfg, out_dir=tmp_path / "none", resume=True, device="cpu", progress=False)
    train(cfg, out_dir=tmp_path / "run", device="cpu", progress=False)
    with pytest.raises(PiddpmError, match="already holds a training run; pass --resume"):
        train(cfg, out_dir=tmp_path / "run", device="cpu", progress=False)
    changed = tiny_config("ddpm", batch_size=3)
    with pytest.raises(
        PiddpmError, match=r"cannot resume with a different configuration \(batch_size: 2 -> 3\)"
    ):
        train(changed, out_dir=tmp_path / "run", resume=True, device="cpu", progress=False)


@pytest.mark.filterwarnings("ignore:precision bf16 on a CPU without bf16 units")
def test_resume_may_switch_between_fp32_and_bf16_but_not_to_fp16(tmp_path):
    from piddpm.training import checkpoints

    # a run moved to a machine with (or without) bf16 units continues in the other precision
    run = tmp_path / "run"
    train(tiny_config("ddpm", steps=1), out_dir=run, device="cpu", progress=False)
    switched = tiny_config("ddpm", steps=2, precision="bf16", channels_last=True)
    result = train(switched, out_dir=run, resume=True, device="cpu", progress=False)
    assert result.step == 2 and json.loads((run / "config.json").read_text())["precision"] == "bf16"
    with pytest.raises(PiddpmError, match=r"precision: 'bf16' -> 'fp16'"):
        checkpoints.check_resume_compatible(switched, tiny_config("ddpm", precision="fp16"), run)


def test_checkpoint_is_safetensors_and_json_only_and_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config("pi-ddpm")
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.GroupNorm(2, 4))
    ema = EMA(net, 0.9)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.8, 0.95))
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(1, 2, 8, 8)).square().mean().backward()
        opt.step()
        ema.update(net)
    save_checkpoint(
        tmp_path / "ck", net=net, ema=ema, optimizer=opt, scaler=None, step=2, config=cfg
    )
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["ck.json", "ck.safetensors"]  # no temporary files left behind
    for path in tmp_path.iterdir():
        assert not path.read_bytes().startswith(b"\x80")  # not a pickle stream
    meta = json.loads((tmp_path / "ck.json").read_text())
    assert meta["step"] == 2 and meta["config"]["method"] == "pi-ddpm"

    expected_next = torch.rand(3)  # the torch RNG state is restored with the checkpoint
    net2 = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.GroupNorm(2, 4))
    ema2 = EMA(net2, 0.9)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1.0)
    load_checkpoint(tmp_path / "ck.json", net=net2, ema=ema2, optimizer=opt2, scaler=None)
    assert torch.equal(torch.rand(3), expected_next)
    for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(
        ema.module.state_dict().values(), ema2.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert ema2.num_updates == 2
    sa, sb = opt.state_dict(), opt2.state_dict()
    assert sb["param_groups"][0]["betas"] == (0.8, 0.95) and sb["param_groups"][0]["lr"] == 1e-3
    for i in sa["state"]:
        for key, value in sa["state"][i].items():
            assert torch.equal(value, sb["state"][i][key]), (i, key)


def test_learning_rate_schedule():
    cfg = config_from_dict(
        {
            "steps": 100,
            "optimizer": {
                "lr": 1e-3,
                "warmup_steps": 10,
                "lr_decay": "cosine",
                "min_lr_ratio": 0.1,
            },
        }
    )
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)  # warm-up: lr * 1 / 10
    assert learning_rate(cfg, 9) == pytest.approx(1e-3)
    assert learning_rate(cfg, 10) == pytest.approx(1e-3)  # cosine starts at the peak
    assert learning_rate(cfg, 99) == pytest.approx(1e-4)  # and ends at min_lr_ratio * lr
    assert learning_rate(cfg, 54.5) == pytest.approx(0.55e-3)  # halfway: the mean of the two
    halve = config_from_dict(
        {"steps": 100, "optimizer": {"lr": 1e-3, "lr_decay": "halve", "halve_at": 0.8}}
    )
    assert learning_rate(halve, 79) == 1e-3 and learning_rate(halve, 80) == 5e-4


def test_ema_is_the_exponential_average():
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, decay=0.5, warmup=False)
    for value in (1.0, 1.0, 4.0):
        with torch.no_grad():
            net.weight.fill_(value)
        ema.update(net)
    # 0 -> 0.5 -> 0.75 -> 0.5 * 0.75 + 0.5 * 4
    assert ema.module.weight.item() == pytest.approx(2.375)
    warm = EMA(net, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)


def test_stream_is_sharded_by_rank_and_resumable():
    b = 3
    r0 = list(StreamBatches(0, 4, b, DistInfo(0, 2, 0)))
    r1 = list(StreamBatches(0, 4, b, DistInfo(1, 2, 1)))
    seen = [i for batch in r0 + r1 for i in batch]
    assert sorted(seen) == list(range(4 * 2 * b))  # every sample once, none shared
    assert list(StreamBatches(2, 4, b, DistInfo(0, 2, 0))) == r0[2:]  # resume at step 2


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(PiddpmError, match="fp16 needs a CUDA device; use bf16"):
        train(tiny_config("ddpm", precision="fp16"), out_dir=tmp_path, device="cpu", progress=False)


def test_bf16_on_a_cpu_without_bf16_units_warns_and_names_the_fix(tmp_path, monkeypatch):
    import piddpm.training.loop as loop

    monkeypatch.setattr(loop, "bf16_is_fast", lambda device: False)
    cfg = tiny_config("ddpm", precision="bf16", steps=1)
    with pytest.warns(UserWarning, match="without bf16 units.*--precision fp32"):
        train(cfg, out_dir=tmp_path / "a", device="cpu", progress=False)
    monkeypatch.setattr(loop, "bf16_is_fast", lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train(cfg, out_dir=tmp_path / "b", device="cpu", progress=False)


@pytest.mark.filterwarnings("ignore:precision bf16 on a CPU without bf16 units")
def test_bf16_channels_last_run(tmp_path):
    cfg = tiny_config("pi-ddpm", precision="bf16", channels_last=True, steps=1)
    result = train(cfg, out_dir=tmp_path, device="cpu", progress=False)
    assert all(torch.isfinite(p).all() for p in result.net.parameters())
    assert math.isfinite(result.val_metrics["psnr_db"])


def test_ddp_two_processes_gloo_keep_weights_in_sync(tmp_path):
    """torchrun with 2 CPU processes (gloo): training runs, rank 0 writes, weights stay equal."""
    cfg_path = tmp_path / "ddp.json"
    cfg = tiny_config("pi-ddpm", steps=2, batch_size=1)
    cfg_path.write_text(json.dumps(cfg.model_dump(mode="json")))
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "piddpm", "train", "--config", str(cfg_path),
        "--out", str(out), "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "model.json").read_text())["config"]
    assert info["hardware"]["world_size"] == 2
    assert info["training"]["ddp_weight_spread"] == 0.0
    rows = read_csv(out / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2]  # one log, written by rank 0 only
    assert proc.stdout.count("trained 2 steps") == 1


@pytest.mark.parametrize("op", range(8))
def test_dihedral_keeps_observed_clean_equal_to_the_blurred_ground_truth(op):
    """Rotating/flipping image and PSF alike commutes with periodic convolution, so a reused
    batch is still a valid pair: blur(T gt, T h) == T blur(gt, h) == T observed_clean."""
    from piddpm.acquisition import blur
    from piddpm.training import dihedral

    g = torch.Generator().manual_seed(op)
    gt = torch.rand(2, 1, 24, 20, generator=g)  # not square: rot90 swaps the sides
    psf = torch.rand(2, 1, 7, 7, generator=g)  # asymmetric kernel
    psf = psf / psf.sum(dim=(-2, -1), keepdim=True)
    scale = torch.rand(2, 1, generator=g)  # per-sample values are not images
    batch = {
        "gt": gt,
        "observed_clean": blur(gt, psf, boundary="periodic"),
        "psf": psf,
        "scale": scale,
    }
    moved = dihedral(batch, op)
    assert moved["scale"] is scale
    expected = blur(moved["gt"], moved["psf"], boundary="periodic")
    torch.testing.assert_close(moved["observed_clean"], expected, atol=1e-6, rtol=1e-5)
    if op:  # only op 0 is the identity
        assert not torch.equal(moved["gt"], gt) or moved["gt"].shape != gt.shape
    with pytest.raises(ValueError, match="0..7"):
        dihedral(batch, 8)


def test_batch_reuse_draws_fewer_batches_and_resumes_exactly_mid_batch(tmp_path):
    """batch_reuse 2: 5 steps use 3 simulated batches; stopping after step 3 (inside the
    second batch) and resuming reproduces the straight run bitwise."""
    cfg = tiny_config(
        "pi-ddpm",
        steps=5,
        batch_reuse=2,
        **{"optimizer.warmup_steps": 1, "optimizer.lr_decay": "cosine", "optimizer.lr": 1e-3},
    )
    straight = train(cfg, out_dir=tmp_path / "a", device="cpu", progress=False)
    first = train(cfg, out_dir=tmp_path / "b", device="cpu", progress=False, stop_at_step=3)
    assert first.step == 3
    resumed = train(cfg, out_dir=tmp_path / "b", resume=True, device="cpu", progress=False)
    assert resumed.step == 5
    a, b = _state(straight.net), _state(resumed.net)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_a, rows_b = read_csv(tmp_path / "a" / "log.csv"), read_csv(tmp_path / "b" / "log.csv")
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    # reuse changes the run: the same config without reuse trains on other data
    plain = train(
        cfg.model_copy(update={"batch_reuse": 1}),
        out_dir=tmp_path / "c",
        device="cpu",
        progress=False,
    )
    c = _state(plain.net)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_max_time_stops_early_and_exports_the_model(tmp_path):
    """A tiny time budget ends a 1000-step run after its first step with a checkpoint and an
    exported model whose JSON says it stopped on the time limit."""
    cfg = tiny_config("ddpm", steps=1000, max_time_s=1e-3)
    result = train(cfg, out_dir=tmp_path / "r", device="cpu", progress=False)
    assert 1 <= result.step < 1000
    assert result.stopped_by_time_limit
    assert result.model_path is not None and result.model_path.is_file()
    training = load_trained(result.model_path)[1]["training"]
    assert training["steps"] == result.step and training["stopped_by_time_limit"] is True
    assert list_checkpoints(tmp_path / "r")
    # the run can go on later: resume picks up at the step it stopped at
    more = train(
        cfg.model_copy(update={"steps": result.step + 1, "max_time_s": None}),
        out_dir=tmp_path / "r",
        resume=True,
        device="cpu",
        progress=False,
    )
    assert more.step == result.step + 1 and not more.stopped_by_time_limit


def test_cli_max_time_parses_durations():
    import argparse

    from piddpm.cli.train import _duration

    assert _duration("600") == 600 and _duration("90s") == 90
    assert _duration("20m") == 1200 and _duration("8h") == 8 * 3600
    for bad in ("0", "-5m", "soon", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="positive duration"):
            _duration(bad)


def test_the_package_keeps_the_public_names_of_the_former_module():
    """``piddpm.training`` became a package; everything the module exported still is, and the
    model files functions are those of :mod:`piddpm.models.files`."""
    import piddpm.training as training
    from piddpm.models import files

    names = """CHECKPOINT_FORMAT MODEL_FORMAT FORMAT_VERSION RESUMABLE_CHANGES DistInfo
    dist_from_env resolve_device mix_seed learning_rate network_channels build_network
    build_schedule make_dataset StreamBatches EMA save_checkpoint list_checkpoints
    load_checkpoint CsvLog psnr_db write_preview cpu_name hardware_description TrainResult
    restore_batch train dihedral model_config export_model load_trained""".split()
    assert [n for n in names if not hasattr(training, n)] == []
    assert training.export_model is files.export_model
    assert training.load_trained is files.load_trained
    assert (training.MODEL_FORMAT, training.FORMAT_VERSION) == ("piddpm-trained-model", 1)
