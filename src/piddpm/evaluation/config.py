"""Typed configuration of ``piddpm benchmark`` (pydantic v2; YAML on disk).

``BenchmarkConfig()`` is the full benchmark; :meth:`BenchmarkConfig.quick` the small subset
that ``--quick`` runs (few images, 128^2 synthetic / 256^2 real crops, DDIM with 10 steps).
Every field has a docstring; unknown keys are refused so that a typo in a YAML file is an
error, not a silently ignored setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from piddpm import PiddpmError
from piddpm.choices import Method, Modality, Regulariser, RegulariserChoice, Sampler, options

__all__ = [
    "AblationConfig",
    "BenchmarkConfig",
    "MethodName",
    "RealSuiteConfig",
    "SamplerSetting",
    "SyntheticSuiteConfig",
    "Suite",
    "load_config",
]

Suite = Literal["synthetic", "real", "all"]
#: Methods the benchmark knows. ``input`` is the unrestored observation (a floor every method
#: should beat); ``pi-ddpm-known`` is PI-DDPM sampled with the known-PSF physics gradient.
MethodName = Literal["input", "rl", Method, "pi-ddpm-known"]
METHOD_ORDER: tuple[str, ...] = ("input", "rl", "unet", "ddpm", "pi-ddpm", "pi-ddpm-known")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class SamplerSetting(_Strict):
    """One sampler setting of the diffusion methods (a row per setting in the tables)."""

    name: str = Field("ddim20", description="Short label used in tables and results.csv.")
    sampler: Sampler = Field(
        "ddim",
        description="ddim / dpm-solver++ (steps jumps) or ddpm (ancestral, all T steps).",
    )
    steps: int | None = Field(20, ge=1, description="DDIM / DPM-Solver++ steps (ignored by ddpm).")
    samples: int = Field(
        1, ge=1, description="Posterior samples per image; > 1 gives the per-pixel std."
    )
    eta: float | None = Field(None, description="Physics-guidance weight; null: model default.")
    regulariser: RegulariserChoice | None = Field(
        None, description="Sampling regulariser; null: model default."
    )
    lam: float | None = Field(None, ge=0, description="Regulariser weight; null: model default.")
    eta_ddim: float | None = Field(
        None, ge=0, le=1, description="DDIM stochasticity; null: model default (1 if samples>1)."
    )


class SyntheticSuiteConfig(_Strict):
    """Seeded synthetic test set with known ground truth."""

    specimens: list[str] = Field(
        ["filaments", "puncta", "er", "nuclei", "natural"],
        description="Specimen types (piddpm.data.SPECIMENS); one group per type and modality.",
    )
    modalities: list[Modality] = Field(
        list(options(Modality)), description="Microscope modalities."
    )
    images_per_group: int = Field(4, ge=1, description="Test images per specimen x modality.")
    size: int = Field(256, ge=32, description="Image side (px).")
    kernel_size: int = Field(33, ge=3, description="PSF kernel side (px, odd).")
    seed: int = Field(20240601, description="Seed of the test set (fixed).")
    dev_seed: int = Field(777, description="Seed of the dev set used only to tune Richardson-Lucy.")
    dev_images: int = Field(6, ge=1, description="Images in the synthetic dev set.")
    na: tuple[float, float] = Field(
        (0.3, 1.2), description="NA range of the test microscopes (training: 0.4-1.0)."
    )
    em_wavelength_nm: tuple[float, float] = Field(
        (420.0, 600.0), description="Emission range in nm (training: 450-550)."
    )
    pixel_nyquist_factor: tuple[float, float] = Field(
        (0.7, 1.3), description="Pixel size in units of lambda/(4 NA) (training: 0.8-1.2)."
    )
    photons: tuple[float, float] = Field(
        (10.0, 1000.0), description="Photons at the brightest pixel (log-uniform)."
    )
    independent_psf: bool = Field(
        True,
        description="Add a part whose PSFs come from psfmodels (an independent "
        "implementation); skipped with a note if psfmodels is not installed.",
    )
    independent_images: int = Field(
        4, ge=0, description="Images per modality in the psfmodels part."
    )

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"kernel_size {v} must be odd")
        return v

    @model_validator(mode="after")
    def _fits(self):
        if self.kernel_size > self.size:
            raise ValueError(f"kernel_size {self.kernel_size} exceeds the image size {self.size}")
        return self


class RealSuiteConfig(_Strict):
    """The TEST split of the shared real data (``MANIFEST.md``); dev only for RL tuning."""

    crop: int = Field(512, ge=32, description="Side (px) of the centred crop of large images.")
    w2s_fovs: list[int] = Field(
        list(range(91, 101)), description="W2S avg1 -> avg400 test FOVs (091-100)."
    )
    w2s_channels: list[int] = Field([0, 1, 2], description="W2S channels.")
    w2s_dev_fovs: list[int] = Field(list(range(81, 91)), description="W2S dev FOVs (tuning only).")
    triplet: bool = Field(True, description="Include the W2S FOV 010 widefield -> SIM triplet.")
    gigadb: list[str] = Field(
        ["actin-60x-noise1", "mito-60x-noise1", "mito-60x-noise2", "mito-confocal", "nucleus"],
        description="GigaDB test pairs.",
    )
    gigadb_dev: list[str] = Field(
        ["actin-20x-noise1", "mito-20x-noise1", "membrane"],
        description="GigaDB dev pairs (tuning only).",
    )
    no_reference: list[str] = Field(
        [
            "xist-nih3t3-microtubules/s_C001Tubulin1.tif",
            "sdeconv/celegans.tif",
            "stardist/dsb2018_img2d.tif",
        ],
        description="Single real images for no-reference metrics (paths in the data folder).",
    )
    psf_nyquist_factor: float = Field(
        1.0,
        gt=0,
        description="The real images record no optics: the PSF assumes pixel = factor x "
        "lambda/(4 NA) (Nyquist sampling, as the training data).",
    )
    na: float = Field(1.0, gt=0, description="NA of the assumed PSF (sets only its shape).")
    em_wavelength_nm: float = Field(520.0, gt=0, description="Emission of the assumed PSF.")
    ex_wavelength_nm: float = Field(488.0, gt=0, description="Excitation (confocal PSF).")
    pinhole_au: float = Field(1.0, gt=0, description="Pinhole of the assumed confocal PSF.")
    dev_pairs: int = Field(6, ge=1, description="Dev pairs per family used to tune RL.")


class AblationConfig(_Strict):
    """Sweeps of the PI-DDPM sampler (run only when a PI-DDPM model exists)."""

    enabled: bool = Field(True, description="Run the ablations when a PI-DDPM model exists.")
    images: int = Field(4, ge=1, description="Synthetic test images used.")
    etas: list[float] = Field(
        [0.0, 1.0, 5.0, 10.0, 25.0, 50.0], description="Guidance weights eta swept."
    )
    regularisers: list[Regulariser] = Field(list(options(Regulariser)), description="Regularisers.")
    lams: list[float] = Field([0.0, 0.005, 0.015, 0.05], description="Regulariser weights.")
    ddim_steps: list[int] = Field([5, 10, 20, 50], description="DDIM step counts.")
    include_ddpm: bool = Field(
        True, description="Also run the ancestral DDPM sampler (all T steps; slow on CPU)."
    )
    steps: int = Field(20, ge=1, description="DDIM steps of the eta / lambda sweeps.")


class BenchmarkConfig(_Strict):
    """Everything that defines one benchmark run."""

    suite: Suite = Field("all", description="synthetic, real or all.")
    methods: list[MethodName] = Field(
        list(METHOD_ORDER), description="Methods; learned ones run only if a model exists."
    )
    samplers: list[SamplerSetting] = Field(
        default_factory=lambda: [
            SamplerSetting(name="ddim20", sampler="ddim", steps=20, samples=4),
        ],
        description="Sampler settings of the diffusion methods.",
    )
    rl_grid: list[int] = Field(
        [2, 5, 10, 20, 40, 80, 160], description="Richardson-Lucy iterations tried on dev data."
    )
    synthetic: SyntheticSuiteConfig = Field(default_factory=SyntheticSuiteConfig)
    real: RealSuiteConfig = Field(default_factory=RealSuiteConfig)
    ablation: AblationConfig = Field(default_factory=AblationConfig)
    figures: int = Field(2, ge=0, description="Figure panels per dataset.")
    tile: int | None = Field(
        None,
        ge=16,
        description="Tile side (px) passed to piddpm.restore; null: each model's measured "
        "tiling (restore_defaults), 256 for RL.",
    )
    device: str = Field("cpu", description="Torch device for the learned methods.")
    seed: int = Field(0, description="Seed of the diffusion sampling noise.")
    quick: bool = Field(False, description="Whether this is the --quick subset.")

    @field_validator("rl_grid")
    @classmethod
    def _grid(cls, v: list[int]) -> list[int]:
        if not v or any(int(n) < 1 for n in v):
            raise ValueError(f"rl_grid {v} must be a non-empty list of positive iterations")
        return sorted({int(n) for n in v})

    @field_validator("samplers")
    @classmethod
    def _names(cls, v: list[SamplerSetting]) -> list[SamplerSetting]:
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError(f"sampler setting names must be unique, got {names}")
        return v

    @classmethod
    def quick_config(cls, **overrides) -> BenchmarkConfig:
        """The ``--quick`` subset: finishes in minutes on a 2-core CPU (RL + small models)."""
        cfg = cls(
            quick=True,
            samplers=[SamplerSetting(name="ddim10", sampler="ddim", steps=10, samples=2)],
            rl_grid=[2, 5, 10, 20, 40],
            synthetic=SyntheticSuiteConfig(
                specimens=["filaments", "puncta"],
                images_per_group=1,
                size=128,
                dev_images=3,
                independent_images=1,
            ),
            real=RealSuiteConfig(
                crop=256,
                w2s_fovs=[91],
                w2s_dev_fovs=[81],
                dev_pairs=2,
                gigadb=["actin-60x-noise1", "mito-60x-noise2", "mito-confocal"],
                no_reference=["xist-nih3t3-microtubules/s_C001Tubulin1.tif"],
            ),
            ablation=AblationConfig(
                images=2,
                etas=[0.0, 10.0, 25.0],
                lams=[0.0, 0.015],
                ddim_steps=[5, 10, 20],
                include_ddpm=False,
                steps=10,
            ),
            figures=1,
        )
        return cfg.model_copy(update=overrides) if overrides else cfg


def load_config(path: str | os.PathLike | None, *, quick: bool = False) -> BenchmarkConfig:
    """Load a YAML benchmark configuration over the defaults (full, or quick with ``quick``).

    Keys in the file replace the defaults section by section (a nested section given in the
    file is validated as a whole, with its own defaults for keys it omits).
    """
    base = BenchmarkConfig.quick_config() if quick else BenchmarkConfig()
    if path is None:
        return base
    import yaml

    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise PiddpmError(f"cannot read benchmark config {p}: {err}") from err
    except yaml.YAMLError as err:
        raise PiddpmError(f"benchmark config {p} is not valid YAML: {err}") from err
    if not isinstance(doc, dict):
        raise PiddpmError(f"benchmark config {p} must hold a mapping of settings")
    merged = base.model_dump()
    for key, value in doc.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    try:
        return BenchmarkConfig(**merged)
    except Exception as err:  # pydantic.ValidationError
        raise PiddpmError(f"invalid benchmark config {p}: {err}") from err
