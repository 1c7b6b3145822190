"""The training configuration: validation messages name the file and field; overrides;
every shipped example config validates; the saved JSON round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from piddpm import PiddpmError
from piddpm.config import (
    TrainConfig,
    config_from_dict,
    field_reference,
    load_config,
    parse_mixture,
    save_config,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_valid_and_follow_the_paper():
    cfg = TrainConfig()
    assert cfg.method == "pi-ddpm"
    assert cfg.schedule.kind == "cosine" and cfg.schedule.T == 2000
    assert cfg.diffusion.physics_weight == 0.01
    assert cfg.diffusion.target == "residual"  # resolved from None for a diffusion method
    assert cfg.optimizer.lr == 1e-4


def test_unet_target_defaults_to_direct_prediction():
    cfg = config_from_dict({"method": "unet"})
    assert cfg.diffusion.target == "direct"


def test_unknown_field_names_file_and_field(tmp_path):
    path = write(tmp_path, "method: ddpm\noptimizer:\n  lr: 1.0e-4\n  learning_rate: 3\n")
    with pytest.raises(PiddpmError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "optimizer.learning_rate" in msg and "unknown field" in msg


def test_bad_method_lists_the_choices(tmp_path):
    path = write(tmp_path, "method: gan\n")
    with pytest.raises(PiddpmError, match=r"field 'method'.*'pi-ddpm', 'ddpm' or 'unet'"):
        load_config(path)


def test_negative_lr_is_refused_with_its_value(tmp_path):
    path = write(tmp_path, "optimizer: {lr: -0.001}\n")
    with pytest.raises(
        PiddpmError, match=r"cfg.yaml: field 'optimizer.lr': .*greater than 0.*-0.001"
    ):
        load_config(path)


def test_several_errors_are_all_reported(tmp_path):
    path = write(tmp_path, "steps: 0\nbatch_size: -1\n")
    with pytest.raises(PiddpmError) as err:
        load_config(path)
    assert "field 'steps'" in str(err.value) and "field 'batch_size'" in str(err.value)


def test_cross_field_checks_say_what_is_wrong():
    with pytest.raises(PiddpmError, match=r"warmup_steps \(50\) must be smaller than steps \(10\)"):
        config_from_dict({"steps": 10, "optimizer": {"warmup_steps": 50}})
    with pytest.raises(PiddpmError, match="physics_weight applies to method pi-ddpm only"):
        config_from_dict({"method": "ddpm", "diffusion": {"physics_weight": 0.1}})
    with pytest.raises(PiddpmError, match="beta_start .* must be smaller than beta_end"):
        config_from_dict({"schedule": {"kind": "linear", "beta_start": 0.1, "beta_end": 0.01}})
    with pytest.raises(PiddpmError, match="guidance 'learned' needs the physics-gradient"):
        config_from_dict({"method": "ddpm", "validation": {"guidance": "learned"}})
    with pytest.raises(PiddpmError, match="set by `method`"):
        config_from_dict({"model": {"overrides": {"out_channels": 3}}})
    with pytest.raises(PiddpmError, match="must be odd"):
        config_from_dict({"data": {"psf_size": 32}})


def test_unknown_preset_and_specimen_are_checked_against_the_libraries():
    pytest.importorskip("piddpm.networks")
    with pytest.raises(PiddpmError, match=r"field 'model.preset': unknown preset 'huge'"):
        config_from_dict({"model": {"preset": "huge"}}, source="x.yaml")
    data = pytest.importorskip("piddpm.data")
    if not hasattr(data, "SpecimenMixture"):
        pytest.skip("piddpm.data.SpecimenMixture not available yet")
    with pytest.raises(PiddpmError, match=r"x.yaml: field 'data.specimens'"):
        config_from_dict({"data": {"specimens": "unicorns:1"}}, source="x.yaml")


def test_unknown_microscope_range_is_refused():
    data = pytest.importorskip("piddpm.data")
    if not hasattr(data, "MicroscopeRanges"):
        pytest.skip("piddpm.data.MicroscopeRanges not available yet")
    with pytest.raises(PiddpmError, match=r"field 'data.ranges': unknown microscope range"):
        config_from_dict({"data": {"ranges": {"warp_factor": [1, 2]}}}, source="x.yaml")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(PiddpmError, match="configuration file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(PiddpmError, match="not valid YAML"):
        load_config(write(tmp_path, "steps: [1, 2\n"))
    with pytest.raises(PiddpmError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n", "list.yaml"))


def test_dotted_overrides_apply_before_validation(tmp_path):
    path = write(tmp_path, "steps: 100\noptimizer: {lr: 1.0e-4}\n")
    cfg = load_config(path, {"steps": 7, "optimizer.lr": 2e-4, "out_dir": "elsewhere"})
    assert cfg.steps == 7 and cfg.optimizer.lr == 2e-4 and cfg.out_dir == "elsewhere"
    with pytest.raises(PiddpmError, match=r"field 'steps'"):
        load_config(path, {"steps": -3})


def test_saved_json_round_trips(tmp_path):
    cfg = config_from_dict(
        {"method": "ddpm", "steps": 5, "optimizer": {"betas": [0.8, 0.99]}, "data": {"ranges": {}}}
    )
    path = save_config(cfg, tmp_path / "config.json")
    assert json.loads(path.read_text())["method"] == "ddpm"
    assert load_config(path) == cfg


def test_mixture_parsing():
    assert parse_mixture("filaments:1,natural:3") == {"filaments": 0.25, "natural": 0.75}
    with pytest.raises(ValueError, match="must be positive"):
        parse_mixture("filaments:0")
    with pytest.raises(ValueError, match="not a number"):
        parse_mixture("filaments:lots")


def test_field_reference_documents_every_field():
    table = field_reference()
    for dotted in ("optimizer.lr", "validation.num_steps", "data.ranges", "precision"):
        assert f"`{dotted}`" in table
    rows = table.splitlines()[2:]
    assert all(not row.endswith("|  |") for row in rows)  # every field has a description


EXAMPLES = sorted(CONFIG_DIR.glob("*.yaml"))


def test_the_example_configs_exist():
    names = {p.name for p in EXAMPLES}
    for method in ("pi-ddpm", "ddpm", "unet"):
        for modality in ("widefield", "confocal"):
            assert f"{method}-{modality}.yaml" in names
            assert f"tiny-{method}-{modality}.yaml" in names


def cfg_init_from(path):
    return load_config(path).init_from


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_config_validates(path):
    cfg = load_config(path)
    stem = path.stem.removeprefix("tiny-").removeprefix("fixed-").removesuffix("-gpu")
    if stem.endswith("-continue"):  # continues a bundled model of that method and modality
        stem = stem.removesuffix("-continue")
        assert cfg_init_from(path) == stem
    if stem.endswith("-warm"):  # a ddpm warm-started from the pi-ddpm of that modality
        stem = stem.removesuffix("-warm")
        assert cfg_init_from(path) == f"pi-{stem}"
    method, _, modality = stem.rpartition("-")
    assert cfg.method == method
    assert cfg.data.modality == modality
    if path.name.startswith("tiny-"):
        assert cfg.model.preset == "tiny"
    if path.name.startswith("fixed-"):  # one microscope (data.microscope), fine-tuned
        assert cfg.data.microscope is not None and cfg.init_from
    if path.stem.endswith("-gpu"):  # time-boxed runs: no decay for --max-time to cut short
        assert cfg.optimizer.lr_decay == "constant" and cfg.batch_reuse > 1
