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
