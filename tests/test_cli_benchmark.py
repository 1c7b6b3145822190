"""Tests of ``piddpm benchmark`` (the CLI layer over piddpm.evaluation.run_benchmark)."""

from __future__ import annotations

import csv

import pytest

from piddpm.cli import build_parser, main

MICRO_YAML = """\
suite: synthetic
rl_grid: [1, 3]
synthetic:
  specimens: [puncta]
  modalities: [confocal]
  images_per_group: 1
  size: 64
  kernel_size: 15
  dev_images: 1
  independent_images: 0
figures: 1
"""


def test_benchmark_help_lists_options_with_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["benchmark", "--help"])
    text = capsys.readouterr().out
    for opt in ("--suite", "--quick", "--model-dir", "--models", "--config", "--data-dir", "-o"):
        assert opt in text
    assert "default" in text


def test_benchmark_cli_runs_a_micro_config(tmp_path, capsys):
    cfg = tmp_path / "micro.yaml"
    cfg.write_text(MICRO_YAML)
    out = tmp_path / "out"
    rc = main(["benchmark", "--config", str(cfg), "-o", str(out), "--no-bundled",
               "--methods", "input,rl", "--quiet"])  # fmt: skip
    assert rc == 0
    assert "report.md" in capsys.readouterr().out
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["dataset"], r["label"]) for r in rows] == [
        ("synthetic-confocal", "Input"),
        ("synthetic-confocal", "RL"),
    ]
    assert (out / "report.md").read_text().count("### synthetic-confocal") == 1
    assert (out / "figures" / "synthetic-confocal__puncta-00.png").is_file()
    assert (out / "rl_tuning.json").is_file()


def test_benchmark_cli_real_suite_without_data_says_skipped(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "micro.yaml"
    cfg.write_text(MICRO_YAML.replace("suite: synthetic", "suite: real"))
    monkeypatch.setenv("PIDDPM_SHARED_DATA", str(tmp_path / "nowhere"))
    rc = main(["benchmark", "--config", str(cfg), "-o", str(tmp_path / "o"), "--no-bundled",
               "--methods", "rl", "--quiet"])  # fmt: skip
    assert rc == 0
    report = (tmp_path / "o" / "report.md").read_text()
    assert "real suite skipped: the shared data folder was not found" in report


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "rl,magic"], "--methods magic: unknown"),
        (["--models", "nopath"], "expected name=path"),
        (["--model-dir", "/definitely/not/here"], "is not a folder"),
    ],
)
def test_benchmark_cli_bad_input_is_one_line_error(tmp_path, capsys, argv, message):
    rc = main(["benchmark", "--quick", "--suite", "synthetic", "-o", str(tmp_path / "o"),
               "--no-bundled", *argv])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
