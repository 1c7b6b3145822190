"""``piddpm train``: options, overrides, resume through the CLI, one-line errors."""

from __future__ import annotations

import json

import pytest
import yaml

from piddpm.cli import main

TINY = {
    "method": "ddpm",
    "model": {"preset": "tiny"},
    "steps": 2,
    "batch_size": 2,
    "patch_size": 32,
    "log_every": 1,
    "checkpoint_every": 1,
    "keep_checkpoints": 1,
    "schedule": {"T": 50},
    "validation": {"every": 0, "num_samples": 1, "num_steps": 2},
    "data": {"specimens": "puncta", "psf_size": 9, "n_kernels": 2},
}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_help_states_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--config", "--steps", "--out", "--resume", "--device", "--seed"):
        assert option in text
    assert "(default: auto)" in text


def test_train_then_resume_to_more_steps(tmp_path, config_file, capsys):
    out = tmp_path / "run"
    rc = main(
        ["train", "--config", str(config_file), "--out", str(out), "--seed", "3", "--no-progress"]
    )
    assert rc == 0, capsys.readouterr().err
    assert "trained 2 steps" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    assert saved["seed"] == 3 and saved["out_dir"] == str(out) and saved["steps"] == 2
    model = json.loads((out / "model.json").read_text())["config"]
    assert model["training"]["steps"] == 2

    # continue the same run (its saved config) up to step 3
    rc = main(["train", "--resume", "--out", str(out), "--steps", "3", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    rows = (out / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert json.loads((out / "model.json").read_text())["config"]["training"]["steps"] == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_0000003.json",
        "step_0000003.safetensors",
    ]


def test_precision_option_overrides_the_config(tmp_path, config_file, capsys):
    data = yaml.safe_load(config_file.read_text())
    data["precision"] = "bf16"
    config_file.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    argv = ["train", "--config", str(config_file), "--out", str(out), "--steps", "1"]
    rc = main([*argv, "--precision", "fp32", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["precision"] == "fp32"
    with pytest.raises(SystemExit):
        main([*argv, "--precision", "fp64"])
    assert "invalid choice: 'fp64'" in capsys.readouterr().err


def test_stop_at_leaves_a_resumable_run(tmp_path, config_file, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--config",
            str(config_file),
            "--out",
            str(out),
            "--stop-at",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "stopped at step 1; continue with --resume" in capsys.readouterr().out
    assert not (out / "model.json").exists()


def test_errors_are_one_line_with_the_file(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    assert main(["train", "--config", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "not found" in err

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "optimiser": {"lr": 1e-4}}))
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: field 'optimiser': unknown field" in err

    assert main(["train", "--resume"]) == 2
    assert "needs --out" in capsys.readouterr().err
    assert main(["train", "--steps", "3"]) == 2
    assert "--config is required" in capsys.readouterr().err


def test_steps_at_or_below_the_warmup_cap_it_with_a_note(tmp_path, capsys):
    """--steps N <= optimizer.warmup_steps trains with the warm-up capped to N // 2 and says
    so in one line, instead of refusing the configuration."""
    path = tmp_path / "warm.yaml"
    path.write_text(yaml.safe_dump({**TINY, "steps": 400, "optimizer": {"warmup_steps": 200}}))
    out = tmp_path / "run"
    rc = main(["train", "--config", str(path), "--out", str(out), "--steps", "2", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (
        "note: --steps 2 is not above optimizer.warmup_steps (200); warm-up capped to 1 "
        "steps (steps // 2)"
    )
    assert "trained 2 steps" in printed[-1]
    saved = json.loads((out / "config.json").read_text())
    assert saved["steps"] == 2 and saved["optimizer"]["warmup_steps"] == 1


def test_warmup_cap_of_the_example_config():
    """The example from the issue: the tiny config (200 warm-up steps) with --steps 12."""
    from pathlib import Path

    from piddpm.training import load_run_config

    example = Path(__file__).resolve().parents[1] / "configs" / "tiny-pi-ddpm-widefield.yaml"
    cfg, note = load_run_config(example, {"steps": 12, "out_dir": "/tmp/unused"})
    assert (cfg.steps, cfg.optimizer.warmup_steps) == (12, 6)
    assert note is not None and "(200)" in note and "capped to 6" in note
    cfg, note = load_run_config(example, {"steps": 1})
    assert (cfg.steps, cfg.optimizer.warmup_steps, note is not None) == (1, 0, True)
    cfg, note = load_run_config(example, {"steps": 201})
    assert (cfg.optimizer.warmup_steps, note) == (200, None)
    cfg, note = load_run_config(example)
    assert note is None and cfg.optimizer.warmup_steps == 200
