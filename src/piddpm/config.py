"""Typed, validated training configuration.

A training run is described by one YAML file that maps onto :class:`TrainConfig`. Every
field has a description (``docs/training.md`` lists them all), unknown fields are errors,
and cross-field checks say what is wrong and where::

    from piddpm.config import load_config
    cfg = load_config("configs/tiny-pi-ddpm-widefield.yaml", overrides={"steps": 10})

Errors are :class:`piddpm.PiddpmError` messages of the form
``configs/x.yaml: field 'optimizer.lr': Input should be greater than 0 (got -0.001)``.

The resolved configuration is saved as JSON (``config.json`` beside the weights) with
:func:`save_config`, and read back with :func:`load_config` (JSON is YAML).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from piddpm import PiddpmError
from piddpm.choices import Guidance, Method, RegulariserChoice, TrainingModality

#: Training methods. ``pi-ddpm``: residual diffusion with the learned physics gradient (2
#: output channels); ``ddpm``: the same diffusion without the physics term (1 output
#: channel); ``unet``: a supervised U-Net (observation -> ground truth), no diffusion.
Precision = Literal["fp32", "bf16", "fp16"]

#: Format version of the saved configuration (bumped on incompatible changes).
CONFIG_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ModelConfig(_Strict):
    """The network: a named U-Net preset plus keyword overrides."""

    preset: str = Field(
        "tiny",
        description="U-Net preset name from `piddpm.networks.PRESETS` (e.g. tiny, small, paper).",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments passed to `build_unet` on top of the preset "
        "(e.g. `{base_channels: 24, channel_mults: [1, 2, 4]}`). Channel counts and conditioning are set by "
        "the method and must not appear here.",
    )

    @field_validator("overrides")
    @classmethod
    def _no_method_owned_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        owned = {"in_channels", "out_channels", "conditioned", "preset"} & set(value)
        if owned:
            raise ValueError(
                f"keys {sorted(owned)} are set by `method` and `preset`; remove them from overrides"
            )
        return value


class DataConfig(_Strict):
    """Synthetic training pairs from :class:`piddpm.data.PairedDataset`."""

    specimens: str = Field(
        "mixture",
        description="Specimen mixture `name:weight,name:weight` (names from "
        "`piddpm.data.SPECIMENS`; weights are relative); `mixture` = the library's "
        "default mixture.",
    )
    modality: TrainingModality = Field(
        "widefield",
        description="Microscope modality of the simulated pairs: widefield, confocal, or "
        "mixed (both, drawn per sample).",
    )
    ranges: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of `piddpm.data.MicroscopeRanges` fields (NA, wavelengths, "
        "pinhole, pixel size, photons, background, read noise ranges as [lo, hi]); omitted "
        "fields keep the library defaults. `confocal_probability` follows `data.modality`.",
    )
    microscope: dict[str, Any] | None = Field(
        None,
        description="One fixed microscope instead of the random ranges (fields of "
        "`piddpm.data.FixedMicroscope`: modality, na, ri, em_wavelength_nm, ex_wavelength_nm, "
        "pinhole_au, pixel_size_um, and `jitter` of `piddpm.data.MicroscopeJitter`: small "
        "random NA, wavelength, pixel, defocus and aberration deviations). `data.ranges` then "
        "sets only the camera ranges (photons, background_fraction, read_noise). What "
        "`piddpm fit` trains with.",
    )
    psf_file: str | None = Field(
        None,
        description="A measured PSF (TIFF, 2-D or a 3-D stack whose brightest plane is used) "
        "on the training pixel grid, used for every kernel (with a small random width "
        "jitter) instead of computed PSFs. Needs `data.microscope` for the pixel size.",
    )
    psf_size: int = Field(
        33,
        ge=3,
        description="Side of the simulated PSF kernels in pixels (odd; at most the patch size).",
    )
    n_kernels: int = Field(
        256,
        ge=1,
        description="Number of random microscopes (PSF kernels) in the training PSF bank "
        "(computed once, cached on disk).",
    )
    normalisation: Literal["minmax", "percentile"] = Field(
        "minmax",
        description="Per-sample affine map from the noisy observation to model units: its "
        "min/max (minmax, as the paper) or 0.1/99.9 percentiles (percentile) to -1/1.",
    )
    field_factor: int = Field(
        1,
        ge=1,
        le=8,
        description="1: each patch is simulated and normalised on its own. k > 1: a field of "
        "k x the patch side is simulated, normalised as a whole with `normalisation` (the rule "
        "restore applies to a whole plane) and a random patch is cut from it, so dim, "
        "background-only and partly saturated patches occur in training as tiles do at "
        "restore time (cost: k^2 x the simulation per patch).",
    )
    images_dir: str | None = Field(
        None,
        description="Folder of natural images for the `natural` specimen; None = the "
        "dataset default (bundled or shared sample images).",
    )
    dataset_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Further keyword arguments passed unchanged to `PairedDataset`.",
    )

    @field_validator("specimens")
    @classmethod
    def _parse_mixture(cls, value: str) -> str:
        parse_mixture(value)
        return value

    @field_validator("psf_size")
    @classmethod
    def _odd_psf(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"must be odd so the PSF centre is a pixel (got {value})")
        return value

    @model_validator(mode="after")
    def _microscope_matches(self) -> DataConfig:
        if self.microscope is None:
            if self.psf_file is not None:
                raise ValueError("data.psf_file needs data.microscope (its pixel size)")
            return self
        from piddpm.data.microscopes import FixedMicroscope

        micro = FixedMicroscope(**self.microscope)
        if micro.modality != self.modality:
            raise ValueError(
                f"data.microscope.modality {micro.modality!r} differs from data.modality "
                f"{self.modality!r}; give the same modality"
            )
        owned = sorted(set(self.ranges) & set(micro.range_fields()))
        if owned:
            raise ValueError(
                f"data.ranges keys {owned} are set by data.microscope; with a fixed "
                "microscope data.ranges holds only the camera ranges"
            )
        return self


class ScheduleConfig(_Strict):
    """The noise schedule used for training (and for validation sampling)."""

    kind: Literal["cosine", "linear"] = Field(
        "cosine", description="Beta schedule: cosine (Nichol & Dhariwal 2021) or linear."
    )
    T: int = Field(2000, ge=2, description="Number of diffusion steps of the schedule.")
    beta_start: float = Field(1e-4, gt=0, lt=1, description="First beta (linear schedule only).")
    beta_end: float = Field(0.03, gt=0, lt=1, description="Last beta (linear schedule only).")
    cosine_s: float = Field(0.008, ge=0, description="Offset s of the cosine schedule.")

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleConfig:
        if self.kind == "linear" and not self.beta_start < self.beta_end:
            raise ValueError(
                f"beta_start ({self.beta_start}) must be smaller than beta_end ({self.beta_end})"
            )
        return self


class DiffusionConfig(_Strict):
    """Options of the diffusion objective (ignored for `method: unet`)."""

    target: Literal["residual", "direct"] | None = Field(
        None,
        description="What the network models: the residual r = y0 - x (residual) or the "
        "image y0 itself (direct). None = residual for diffusion methods (as the paper's "
        "code) and direct for the supervised U-Net (it predicts y0 from x).",
    )
    physics_weight: float | None = Field(
        None,
        ge=0,
        description="Weight w of the physics-gradient term ||g - g_hat||^2 (pi-ddpm only; "
        "None = 0.01, the paper's value).",
    )
    physics_norm: Literal["rms", "none"] = Field(
        "rms",
        description="Normalisation of the physics target g: divided per image by its rms "
        "(rms) or raw (none). The sampler must use the same (stored in model.json).",
    )
    physics_reference: Literal["matched", "unscaled"] = Field(
        "matched",
        description="Reference of the physics target: matched, g = 2 A^T(A y_t - sqrt(gamma) "
        "x_clean) (the misfit at the signal scale of y_t; default), or unscaled, g = 2 A^T(A y_t "
        "- x_clean) as MATH.md writes it, whose brightness term dominates at high noise and "
        "makes learned guidance push samples towards full brightness (docs/diffusion.md).",
    )
    supervised_loss: Literal["mse", "l1"] = Field(
        "mse", description="Loss of the supervised U-Net (method unet only)."
    )


class OptimizerConfig(_Strict):
    """AdamW and the learning-rate schedule (a pure function of the step)."""

    lr: float = Field(1e-4, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay of AdamW.")
    betas: tuple[float, float] = Field(
        (0.9, 0.999), description="AdamW (beta1, beta2), each in [0, 1)."
    )
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    warmup_steps: int = Field(
        0, ge=0, description="Linear learning-rate warm-up from 0 over this many steps."
    )
    lr_decay: Literal["constant", "cosine", "halve"] = Field(
        "constant",
        description="After warm-up: constant; cosine decay to `min_lr_ratio * lr` at the last "
        "step; or halve (x0.5 from `halve_at` of the run on, as the paper).",
    )
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Final lr / peak lr of the cosine decay."
    )
    halve_at: float = Field(
        0.8, gt=0, le=1, description="Fraction of the run after which `halve` halves the lr."
    )

    @field_validator("betas")
    @classmethod
    def _betas_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        for b in value:
            if not 0.0 <= b < 1.0:
                raise ValueError(f"each beta must be in [0, 1) (got {list(value)})")
        return value


class ValidationConfig(_Strict):
    """Periodic validation on fixed synthetic samples: PSNR and PNG previews."""

    every: int = Field(
        500, ge=0, description="Validate every this many steps (0 = only at the end)."
    )
    num_samples: int = Field(
        4, ge=1, description="Number of fixed validation samples (also the preview rows)."
    )
    size: int | None = Field(
        None,
        ge=8,
        description="Validation image size in pixels; None = the training patch size.",
    )
    sampler: Literal["ddim"] = Field(
        "ddim", description="Sampler used for diffusion models during validation."
    )
    schedule: ScheduleConfig = Field(
        default_factory=lambda: ScheduleConfig(
            kind="linear", T=200, beta_start=1e-4, beta_end=3e-2
        ),
        description="Sampling schedule for validation (the network is trained on continuous "
        "noise levels, so any schedule applies); default the paper's test-time schedule, "
        "linear, T = 200, beta 1e-4 .. 3e-2. DDIM on the cosine T = 2000 training schedule "
        "starts at gamma_T ~ 6e-10, where small noise-prediction errors are amplified.",
    )
    num_steps: int = Field(20, ge=1, description="Sampler steps for validation (DDIM).")
    guidance: Guidance = Field(
        "auto",
        description="Physics guidance during validation sampling: auto = learned for "
        "pi-ddpm, none for ddpm; known / both use the validation samples' true PSFs.",
    )
    regulariser: RegulariserChoice = Field(
        "l1", description="Sampling regulariser of the validation sampler (paper: l1)."
    )
    lam: float = Field(0.015, ge=0, description="Weight of the sampling regulariser.")
    eta: float = Field(
        10.0, ge=0, description="Weight of the learned physics gradient when sampling."
    )
    seed: int = Field(
        12345, description="Seed of the validation set (independent of the training seed)."
    )

    def sampler_config(self, method: str):
        """These settings as a :class:`piddpm.diffusion.SamplerConfig` (one sample, DDIM
        deterministic, guidance resolved for ``method``)."""
        from piddpm.diffusion.settings import resolve_sampler_config

        cfg = resolve_sampler_config(
            {
                "sampler": self.sampler,
                "steps": self.num_steps,
                "guidance": self.guidance,
                "regulariser": self.regulariser,
                "lam": self.lam,
                "eta": self.eta,
            },
            where="validation",
        )
        return cfg.model_copy(update={"guidance": cfg.resolved_guidance(method)})


class TrainConfig(_Strict):
    """Everything that defines a training run. Load with :func:`load_config`."""

    version: int = Field(CONFIG_VERSION, description="Configuration format version.")
    name: str = Field("run", description="A short name for the run (stored in model.json).")
    method: Method = Field(
        "pi-ddpm",
        description="pi-ddpm (diffusion + learned physics gradient), ddpm (plain "
        "conditional diffusion), or unet (supervised baseline).",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="The network.")
    data: DataConfig = Field(default_factory=DataConfig, description="The training data.")
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig, description="Training noise schedule."
    )
    diffusion: DiffusionConfig = Field(
        default_factory=DiffusionConfig, description="Diffusion objective options."
    )
    optimizer: OptimizerConfig = Field(
        default_factory=OptimizerConfig, description="AdamW and learning-rate schedule."
    )
    validation: ValidationConfig = Field(
        default_factory=ValidationConfig, description="Periodic validation."
    )
    steps: int = Field(10000, ge=1, description="Total optimiser steps of the run.")
    batch_size: int = Field(
        8, ge=1, description="Images per step per process (global batch = this x world size)."
    )
    patch_size: int = Field(64, ge=8, description="Side of the square training patches in pixels.")
    num_workers: int = Field(
        0, ge=0, description="DataLoader worker processes that simulate the pairs."
    )
    batch_reuse: int = Field(
        1,
        ge=1,
        description="Optimiser steps per simulated batch. Each reuse draws new noise levels "
        "and noise and applies one of the 8 rotations/flips to the whole batch (images and "
        "PSFs alike, which keeps observed_clean = A(gt) exact). Values above 1 trade data "
        "diversity for speed when simulation, not the network, limits the step rate (GPUs).",
    )
    max_time_s: float | None = Field(
        None,
        gt=0,
        description="Wall-clock budget of this invocation in seconds: when it is spent the run "
        "validates, checkpoints and exports its model as if `steps` were reached (model.json "
        "records the step it stopped at). null = no limit. Set a constant learning rate "
        "(optimizer.lr_decay: constant) for time-boxed runs, so the stop does not cut a decay "
        "short.",
    )
    seed: int = Field(0, description="Seed of the data stream, noise draws and initialisation.")
    init_from: str | None = Field(
        None,
        description="Fine-tune: a trained model (bundled name, run folder or model.json) whose "
        "weights initialise the network and its EMA at step 0 (not on --resume). Its method, "
        "preset and overrides must equal this run's; a ddpm run may start from a pi-ddpm "
        "model (its output layer's noise channel).",
    )
    ema_decay: float = Field(
        0.999, ge=0, lt=1, description="Decay of the exponential moving average of the weights."
    )
    ema_warmup: bool = Field(
        True,
        description="Use min(ema_decay, (1 + n) / (10 + n)) at update n, so early EMA "
        "weights are not dominated by the initialisation.",
    )
    grad_clip: float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm to this value; null = off."
    )
    precision: Precision = Field(
        "fp32",
        description="fp32; bf16 autocast (CPU or GPU); fp16 autocast with a gradient scaler "
        "(GPU only).",
    )
    channels_last: bool = Field(
        False, description="Use the channels_last memory format (faster with bf16 on CPU)."
    )
    compile: bool = Field(
        False, description="torch.compile the network (gains 10-25 % after a long compile)."
    )
    checkpoint_every: int = Field(
        1000, ge=1, description="Write a resumable checkpoint every this many steps."
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="Number of most recent checkpoints kept on disk."
    )
    log_every: int = Field(10, ge=1, description="Write a CSV log row every this many steps.")
    out_dir: str = Field("runs/run", description="Output folder (overridden by `--out`).")

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainConfig:
        if self.version != CONFIG_VERSION:
            raise ValueError(
                f"version: this piddpm reads configuration version {CONFIG_VERSION} "
                f"(got {self.version})"
            )
        if self.optimizer.warmup_steps >= self.steps and self.optimizer.warmup_steps > 0:
            raise ValueError(
                f"optimizer.warmup_steps ({self.optimizer.warmup_steps}) must be smaller "
                f"than steps ({self.steps})"
            )
        if self.diffusion.target is None:
            self.diffusion.target = "direct" if self.method == "unet" else "residual"
        val_size = self.validation.size or self.patch_size
        if self.data.psf_size > min(self.patch_size, val_size):
            raise ValueError(
                f"data.psf_size ({self.data.psf_size}) must not exceed patch_size "
                f"({self.patch_size}) or validation.size ({val_size})"
            )
        if self.method == "pi-ddpm" and self.diffusion.physics_weight is None:
            self.diffusion.physics_weight = 0.01
        if self.method != "pi-ddpm" and self.diffusion.physics_weight is not None:
            raise ValueError(
                f"diffusion.physics_weight applies to method pi-ddpm only (method is {self.method})"
            )
        if self.method == "ddpm" and self.validation.guidance in ("learned", "both"):
            raise ValueError(
                "validation.guidance 'learned' needs the physics-gradient output of method pi-ddpm"
            )
        return self


def parse_mixture(spec: str) -> dict[str, float]:
    """Parse a specimen mixture ``"filaments:0.3,natural:0.7"`` into normalised weights.

    Parameters
    ----------
    spec : str
        Comma-separated ``name:weight`` pairs (a bare ``name`` has weight 1).

    Returns
    -------
    dict of str to float
        Weights summing to one.
    """
    weights: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty entry in specimen mixture {spec!r}")
        name, _, weight = part.partition(":")
        name = name.strip()
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"weight of {name!r} in {spec!r} is not a number") from None
        if not w > 0:
            raise ValueError(f"weight of {name!r} in {spec!r} must be positive (got {w})")
        if name in weights:
            raise ValueError(f"specimen {name!r} appears twice in {spec!r}")
        weights[name] = w
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()}


def mixture_weights(spec: str) -> dict[str, float]:
    """Normalised specimen weights as :class:`piddpm.data.SpecimenMixture` resolves them
    (``"mixture"`` expands to the library's default mixture).

    Raises
    ------
    PiddpmError
        For unknown specimen names or bad weights.
    """
    try:
        from piddpm.data import SpecimenMixture
    except ImportError:
        return parse_mixture(spec)
    mix = SpecimenMixture(spec)
    return {n: float(p) for n, p in zip(mix.names, mix.probabilities, strict=True)}


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if not loc:  # a cross-field check: its message names the fields
            lines.append(msg)
            continue
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see docs/training.md)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif "input" in e and e["type"] not in ("model_type", "dict_type"):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"field '{loc}': {msg}")
    return f"{source}: " + "; ".join(lines)


def config_from_dict(
    data: Mapping[str, Any], *, source: str = "<config>", check_libraries: bool = True
) -> TrainConfig:
    """Validate a mapping into a :class:`TrainConfig`.

    Parameters
    ----------
    data : mapping
        Nested configuration (as read from YAML/JSON).
    source : str
        Name of the origin (file path) used in error messages.
    check_libraries : bool
        Also check names against the installed modules (network preset in
        ``piddpm.networks.PRESETS``, specimen names and microscope ranges in
        ``piddpm.data``), when those modules are importable.

    Raises
    ------
    PiddpmError
        Naming ``source`` and each bad field.
    """
    if not isinstance(data, Mapping):
        raise PiddpmError(
            f"{source}: the configuration must be a mapping of fields (got {type(data).__name__})"
        )
    try:
        cfg = TrainConfig.model_validate(dict(data))
    except ValidationError as err:
        raise PiddpmError(_format_errors(err, source)) from None
    if check_libraries:
        _check_against_libraries(cfg, source)
    return cfg


def _check_against_libraries(cfg: TrainConfig, source: str) -> None:
    """Check names that only the networks / data modules know (when they are installed)."""
    try:
        from piddpm.networks import PRESETS
    except ImportError:
        PRESETS = None
    if PRESETS is not None and cfg.model.preset not in PRESETS:
        raise PiddpmError(
            f"{source}: field 'model.preset': unknown preset {cfg.model.preset!r}; "
            f"expected one of {sorted(PRESETS)}"
        )
    try:
        from piddpm import data as data_module
    except ImportError:
        return
    try:
        mixture_weights(cfg.data.specimens)
    except PiddpmError as err:
        raise PiddpmError(f"{source}: field 'data.specimens': {err}") from None
    if getattr(data_module, "MicroscopeRanges", None) is not None:
        try:
            make_ranges(cfg.data)
        except PiddpmError as err:
            raise PiddpmError(f"{source}: field 'data.ranges': {err}") from None


def make_ranges(data_cfg: DataConfig):
    """Build the :class:`piddpm.data.MicroscopeRanges` that a :class:`DataConfig` describes.

    ``data.modality`` sets ``confocal_probability`` (widefield 0, confocal 1, mixed: the
    library default or the value given in ``data.ranges``).

    Raises
    ------
    PiddpmError
        If a key is not a ``MicroscopeRanges`` field or a value is rejected; the message
        names the ``data.ranges`` key.
    """
    from pydantic import ValidationError as _VE

    from piddpm.data import MicroscopeRanges

    kwargs = dict(data_cfg.ranges)
    if data_cfg.microscope is not None:
        from piddpm.data.microscopes import FixedMicroscope

        kwargs.update(FixedMicroscope(**data_cfg.microscope).range_fields())
    known = _field_names(MicroscopeRanges)
    if known is not None:
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise PiddpmError(
                f"unknown microscope range field(s) {unknown}; expected some of {sorted(known)}"
            )
    if data_cfg.modality != "mixed":
        if "confocal_probability" in kwargs:
            raise PiddpmError(
                "confocal_probability is set by data.modality "
                f"({data_cfg.modality}); give it only with modality: mixed"
            )
        kwargs["confocal_probability"] = 1.0 if data_cfg.modality == "confocal" else 0.0
    for key, value in list(kwargs.items()):
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    try:
        return MicroscopeRanges(**kwargs)
    except _VE as err:
        parts = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        raise PiddpmError("; ".join(parts)) from None
    except (TypeError, ValueError) as err:
        raise PiddpmError(str(err)) from None


def _field_names(cls) -> set[str] | None:
    import dataclasses

    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    fields = getattr(cls, "model_fields", None)
    if fields is not None:
        return set(fields)
    return None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise PiddpmError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(
    path: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    *,
    check_libraries: bool = True,
) -> TrainConfig:
    """Read and validate a YAML (or JSON) training configuration.

    Parameters
    ----------
    path : path-like
        The configuration file.
    overrides : mapping, optional
        Dotted field names to values applied before validation,
        e.g. ``{"steps": 100, "optimizer.lr": 2e-4}``.
    check_libraries : bool
        See :func:`config_from_dict`.

    Returns
    -------
    TrainConfig

    Raises
    ------
    PiddpmError
        If the file is missing or not valid YAML, or a field is unknown, missing or invalid;
        the message names the file and the field.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PiddpmError(f"{path}: configuration file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise PiddpmError(f"{path}: not valid JSON: {err}") from None
    except yaml.YAMLError as err:
        raise PiddpmError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PiddpmError(
            f"{path}: the configuration must be a mapping of fields (got {type(data).__name__})"
        )
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return config_from_dict(data, source=str(path), check_libraries=check_libraries)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The fully resolved configuration as plain JSON-compatible data."""
    return cfg.model_dump(mode="json")


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved configuration as JSON, atomically (temporary file + rename)."""
    path = Path(path)
    text = json.dumps(config_to_dict(cfg), indent=2, sort_keys=False) + "\n"
    write_text_atomic(path, text)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def field_reference() -> str:
    """A Markdown table of every configuration field, its default and description."""
    rows = ["| field | type | default | description |", "|---|---|---|---|"]

    def walk(instance: BaseModel, prefix: str) -> None:
        for name, info in type(instance).model_fields.items():
            default = getattr(instance, name)
            if isinstance(default, BaseModel):
                walk(default, f"{prefix}{name}.")
                continue
            if isinstance(default, tuple):
                default = list(default)
            ann = info.annotation
            tname = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
            tname = tname.replace("|", "\\|")
            desc = (info.description or "").replace("|", "\\|")
            rows.append(f"| `{prefix}{name}` | `{tname}` | `{json.dumps(default)}` | {desc} |")

    walk(TrainConfig.model_construct(), "")  # defaults, before any resolution
    return "\n".join(rows)
