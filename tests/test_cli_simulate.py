"""``piddpm simulate``: Zarr v3 layout, reproducible bytes, atomic writes, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from piddpm.cli import main

ARGS = ["simulate", "--n", "3", "--size", "64", "--psf-bank-size", "2", "--seed", "4"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIDDPM_CACHE_DIR", str(tmp_path / "cache"))


def _read(path):
    root = zarr.open_group(str(path), mode="r")
    return root, {k: np.asarray(root[k][...]) for k in ("gt", "observed", "observed_clean", "psf")}


def test_simulate_writes_zarr_v3_with_parameters_and_preview(tmp_path, capsys):
    out = tmp_path / "sim.zarr"
    assert main([*ARGS, "--specimen", "puncta", "--modality", "confocal", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    root, arr = _read(out)
    assert root.metadata.zarr_format == 3
    for key in ("gt", "observed", "observed_clean"):
        assert arr[key].shape == (3, 64, 64) and arr[key].dtype == np.float32
    assert arr["psf"].shape == (3, 33, 33)
    np.testing.assert_allclose(arr["psf"].sum(axis=(1, 2)), 1.0, atol=1e-5)
    attrs = dict(root.attrs)
    assert len(attrs["params"]) == 3
    assert all(p["modality"] == 1.0 and p["specimen"] == "puncta" for p in attrs["params"])
    assert attrs["seed"] == 4 and attrs["piddpm_version"]
    assert "observed_clean == blur(gt, psf" in attrs["normalisation_convention"]
    assert arr["observed"].min(axis=(1, 2)) == pytest.approx(-1.0, abs=1e-6)
    png = tmp_path / "sim.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_same_seed_gives_identical_bytes(tmp_path):
    a, b, c = tmp_path / "a.zarr", tmp_path / "b.zarr", tmp_path / "c.zarr"
    assert main([*ARGS, "--specimen", "mixture", "-o", str(a)]) == 0
    assert main([*ARGS, "--specimen", "mixture", "--no-cache", "-o", str(b)]) == 0
    assert main([*ARGS[:-1], "5", "--specimen", "mixture", "-o", str(c)]) == 0
    ra, xa = _read(a)
    rb, xb = _read(b)
    _, xc = _read(c)
    for key in xa:
        assert xa[key].tobytes() == xb[key].tobytes(), key
    assert dict(ra.attrs)["params"] == dict(rb.attrs)["params"]
    assert xa["observed"].tobytes() != xc["observed"].tobytes()


def test_existing_output_is_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "sim.zarr"
    assert main([*ARGS, "--specimen", "filaments", "-o", str(out)]) == 0
    before = _read(out)[1]["gt"].copy()
    assert main([*ARGS, "--specimen", "nuclei", "-o", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert np.array_equal(_read(out)[1]["gt"], before)
    assert main([*ARGS, "--specimen", "nuclei", "--overwrite", "-o", str(out)]) == 0
    assert dict(_read(out)[0].attrs)["specimen"] == "nuclei"


def test_bad_specimen_and_image_folders_give_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "x.zarr")
    assert main([*ARGS, "--specimen", "cells", "-o", out]) == 2
    err = capsys.readouterr().err
    assert "unknown specimen 'cells'" in err and "filaments" in err and "metaballs" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*ARGS, "--specimen", "images", "--images", str(empty), "-o", out]) == 2
    assert f"{empty}" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "scan.tif").write_bytes(b"not a tiff at all")
    assert main([*ARGS, "--specimen", "images", "--images", str(bad), "-o", out]) == 2
    assert "scan.tif" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()
