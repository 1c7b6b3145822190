"""Settings of a restore that come from the model: the model itself, its percentiles, its
tiling and its schedule (the sampler settings: :mod:`piddpm.diffusion.settings`)."""

from __future__ import annotations

import warnings

import numpy as np

from piddpm import PiddpmError
from piddpm.normalisation import DEFAULT_PERCENTILES, check_percentiles

__all__ = [
    "BORDER_PAD",
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "TILE_MARGIN_FRACTION",
    "border_pad_for",
    "check_net_matches",
    "check_tiling",
    "percentiles_from_config",
    "plane_range",
    "resolve_entry",
    "schedule_for",
]

#: Tiling used when neither the call nor the model's ``restore_defaults`` give one.
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32
#: For tile-invariant networks, the fraction of the overlap at each inner tile edge that gets
#: no blending weight (unless the model's restore_defaults give ``tile_margin``).
TILE_MARGIN_FRACTION = 0.25
#: Pixels (on the model's grid) by which the learned methods mirror a plane beyond each image
#: border before tiling, so the network never sees its zero padding at the image's edge
#: (unless the model's restore_defaults give ``border_pad``; see restore_planes).
BORDER_PAD = 32


def border_pad_for(entry) -> int:
    """Pixels a restore mirrors beyond the image borders (see restore_planes): the model's
    ``restore_defaults.border_pad``, else :data:`BORDER_PAD`; 0 without a model (RL)."""
    if entry is None:
        return 0
    return int(entry.restore_defaults.get("border_pad", BORDER_PAD))


def percentiles_from_config(cfg: dict | None) -> tuple[float, float]:
    if not cfg:
        return DEFAULT_PERCENTILES
    norm = (cfg.get("restore_defaults") or {}).get("percentiles") or cfg.get("percentiles")
    if norm is None and isinstance(cfg.get("normalisation"), dict):
        norm = cfg["normalisation"].get("percentiles")
    if norm is None:
        return DEFAULT_PERCENTILES
    return check_percentiles(norm)


def plane_range(plane: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The plane's ``(lo, hi)``: the rule training uses on its simulated fields."""
    from piddpm import normalisation

    return normalisation.intensity_range(plane, percentiles)


def expected_channels(method: str) -> tuple[int, int, bool]:
    return {
        "pi-ddpm": (2, 2, True),
        "ddpm": (2, 1, True),
        "unet": (1, 1, False),
    }[method]


def check_net_matches(net, entry) -> None:
    cin, cout, cond = expected_channels(entry.method)
    got = (
        getattr(net, "in_channels", cin),
        getattr(net, "out_channels", cout),
        getattr(net, "conditioned", cond),
    )
    if got != (cin, cout, cond):
        raise PiddpmError(
            f"model {entry.weights} does not match its method {entry.method!r}: the network "
            f"has in/out channels {got[0]}/{got[1]} (conditioned={got[2]}); {entry.method} "
            f"needs {cin}/{cout} (conditioned={cond})"
        )


def schedule_for(entry):
    from piddpm.diffusion.schedules import schedule_from_config

    sched = entry.config.get("schedule")
    if not isinstance(sched, dict):
        raise PiddpmError(
            f"model configuration {entry.config_path} has no 'schedule'; a diffusion model "
            "needs the noise schedule it was trained with"
        )
    return schedule_from_config(sched)


def check_tiling(tile, overlap, shape: tuple[int, int], stacklevel: int = 3) -> tuple[int, int]:
    """Validate ``tile`` / ``overlap`` (pixels) for a plane of ``shape``; returns them as ints."""
    if isinstance(tile, bool) or int(tile) != tile or tile < 2:
        raise PiddpmError(f"tile size must be an integer >= 2 pixels, got {tile!r}")
    tile = int(tile)
    if isinstance(overlap, int) and overlap >= tile:
        warnings.warn(
            f"tile overlap {overlap} px is not smaller than the tile ({tile} px); using "
            f"{tile // 4} px",
            UserWarning,
            stacklevel=stacklevel,
        )
        overlap = tile // 4
    from piddpm.tiling import tile_positions

    tile_positions(shape, tile, overlap)  # validates tile / overlap
    return tile, int(overlap)


def resolve_entry(model, method: str | None, microscope: dict | None):
    """The model entry for a learned ``method`` (None: the model's own); refuses a model
    trained for another method and warns about another modality."""
    from piddpm.models import resolve_model

    entry = resolve_model(model if model is not None else "widefield")
    if method is not None and method != entry.method:
        raise PiddpmError(
            f"model {entry.name} ({entry.config_path}) was trained for method "
            f"{entry.method!r}, not {method!r}; choose a {method} model or pass "
            f"--method {entry.method}"
        )
    wanted = (microscope or {}).get("modality")
    if wanted and entry.modality and entry.modality not in (wanted, "mixed"):
        warnings.warn(
            f"model {entry.name} was trained on {entry.modality} images but modality "
            f"{wanted!r} was requested; results may be poor",
            UserWarning,
            stacklevel=3,
        )
    return entry
