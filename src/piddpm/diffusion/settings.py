"""Sampler settings: :class:`SamplerConfig`, defined once, and the one rule that resolves them.

Every place that samples a diffusion model takes its settings from here: ``restore()`` and
the CLI, the training validation, the benchmark, and the ``restore_defaults`` of a model's
``model.json``. :func:`resolve_sampler_config` merges them in one order:

    call arguments  >  the model's defaults  >  the :class:`SamplerConfig` defaults

Names: ``eta`` is the weight of the learned physics gradient (the paper's eta, a guidance
strength); ``eta_ddim`` is DDIM's stochasticity (Song et al.'s eta: 0 deterministic, 1 the
ancestral posterior noise); ``lam`` (``lambda`` in metadata) weighs the regulariser.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from piddpm import PiddpmError
from piddpm.choices import Guidance, GuidanceNorm, RegulariserChoice, Sampler, options

__all__ = [
    "DEFAULT_STEPS",
    "LEGACY_KEYS",
    "SamplerConfig",
    "resolve_sampler_config",
]

#: Network evaluations of the few-step samplers when neither the call nor the model says.
DEFAULT_STEPS = 20
#: Older spellings found in model.json files (the training's ``sampler`` section), read as
#: the current names.
LEGACY_KEYS = {"kind": "sampler", "num_steps": "steps"}


class SamplerConfig(BaseModel):
    """How a diffusion model is sampled. Immutable; build one with
    :func:`resolve_sampler_config`, or directly (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    sampler: Sampler = Field(
        "ddim",
        description="ddim (few steps), dpm-solver++ (DPM-Solver++(2M), few steps, "
        "deterministic) or ddpm (ancestral, all T steps of the model's schedule).",
    )
    steps: int | None = Field(
        None,
        ge=1,
        description=f"Network evaluations of ddim / dpm-solver++; None = {DEFAULT_STEPS}. The "
        "ancestral ddpm sampler runs all T steps.",
    )
    eta: float = Field(
        10.0, ge=0, description="Weight of the learned physics gradient (guidance strength)."
    )
    eta_ddim: float | None = Field(
        None,
        ge=0,
        description="DDIM stochasticity: 0 deterministic given r_T, 1 the ancestral noise; "
        "None = 0 for one sample, 1 for several (distinct posterior draws).",
    )
    regulariser: RegulariserChoice = Field("l1", description="Sampling regulariser.")
    lam: float = Field(
        0.015,
        ge=0,
        validation_alias=AliasChoices("lam", "lambda"),
        description="Weight lambda of the sampling regulariser.",
    )
    guidance: Guidance = Field(
        "auto",
        description="Physics guidance: learned (PI-DDPM's learned gradient), known (the PSF's "
        "data-consistency step), both, none; auto = learned for PI-DDPM, none otherwise.",
    )
    samples: int = Field(1, ge=1, description="Posterior samples per image (mean and std).")
    guidance_norm: GuidanceNorm | None = Field(
        None,
        description="per-image: the learned gradient is rescaled to unit rms per image "
        "(tile); none: used as the network gives it; None = none for a tile-invariant "
        "network, per-image otherwise.",
    )

    # ---- what the samplers are given ------------------------------------------------------
    def resolved_guidance(self, method: str) -> str:
        """``guidance`` with ``auto`` made concrete for a model of ``method``."""
        if self.guidance == "auto":
            return "learned" if method == "pi-ddpm" else "none"
        return self.guidance

    def resolved_eta_ddim(self) -> float:
        """``eta_ddim`` with ``None`` made concrete (1 for several samples, else 0)."""
        if self.eta_ddim is not None:
            return float(self.eta_ddim)
        return 1.0 if self.samples > 1 else 0.0

    def resolved_steps(self, num_timesteps: int) -> int:
        """Network evaluations on a schedule of ``num_timesteps`` steps."""
        if self.sampler == "ddpm":
            return num_timesteps
        return int(self.steps or DEFAULT_STEPS)

    def regulariser_or_none(self) -> str | None:
        """The regulariser as the sampler functions take it (``None`` for ``"none"``)."""
        return None if self.regulariser == "none" else self.regulariser


def _model_settings(defaults: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sampler keys of a model's defaults, legacy spellings renamed, others dropped."""
    names = set(SamplerConfig.model_fields) | {"lambda"}
    out: dict[str, Any] = {}
    for key, value in (defaults or {}).items():
        key = LEGACY_KEYS.get(key, key)
        if key == "lambda":
            key = "lam"
        if key in names and value is not None:
            out[key] = value
    if out.get("sampler") not in options(Sampler):
        out.pop("sampler", None)  # an unknown sampler in an old model file: the default
    return out


def resolve_sampler_config(
    call: Mapping[str, Any] | None = None,
    *model_defaults: Mapping[str, Any] | None,
    where: str = "sampler settings",
) -> SamplerConfig:
    """The settings of one sampling run: ``call`` > ``model_defaults`` > the defaults.

    Parameters
    ----------
    call : mapping, optional
        What the caller gave (``None`` values mean "not given"). Unknown keys are refused.
    *model_defaults : mapping, optional
        The model's defaults, lowest priority first (for a model.json: its ``sampler``
        section, then its ``restore_defaults``). Keys that are not sampler settings (tile,
        percentiles, ...) are ignored; ``kind`` / ``num_steps`` are read as ``sampler`` /
        ``steps``.
    where : str
        How errors name the settings.

    Returns
    -------
    SamplerConfig

    Raises
    ------
    PiddpmError
        A value out of range or not among the choices, named with what is expected.
    """
    merged: dict[str, Any] = {}
    for defaults in model_defaults:
        merged.update(_model_settings(defaults))
    for key, value in (call or {}).items():
        if value is not None:
            merged["lam" if key == "lambda" else key] = value
    try:
        return SamplerConfig(**merged)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "?"
        raise PiddpmError(f"{where}: {field} {first.get('input')!r}: {first['msg']}") from None
