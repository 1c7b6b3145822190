"""Reading a run's configuration for ``piddpm train``, with the warm-up capped to short runs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from piddpm import PiddpmError
from piddpm.config import TrainConfig, load_config


def load_run_config(
    path: str | os.PathLike, overrides: Mapping[str, Any] | None = None
) -> tuple[TrainConfig, str | None]:
    """Read a training configuration with overrides, capping the warm-up to a short run.

    A ``steps`` override at or below the file's ``optimizer.warmup_steps`` (say
    ``--steps 12`` with a 200-step warm-up) would make the configuration invalid; the
    warm-up is then capped to ``steps // 2`` (0 for one step) and a one-line note says so.

    Parameters
    ----------
    path : path-like
        The YAML (or JSON) configuration.
    overrides : mapping, optional
        Dotted field names to values, as for :func:`piddpm.config.load_config`.

    Returns
    -------
    config : TrainConfig
    note : str or None
        The note to show when the warm-up was capped, else None.

    Raises
    ------
    PiddpmError
        As :func:`piddpm.config.load_config`.
    """
    overrides = dict(overrides or {})
    steps = overrides.get("steps")
    if steps is None or "optimizer.warmup_steps" in overrides:
        return load_config(path, overrides), None
    try:
        as_written = load_config(path, {k: v for k, v in overrides.items() if k != "steps"})
    except PiddpmError:  # the file has other problems: report them as they are
        return load_config(path, overrides), None
    warmup = as_written.optimizer.warmup_steps
    if warmup == 0 or steps > warmup:
        return load_config(path, overrides), None
    capped = max(int(steps) // 2, 0)
    overrides["optimizer.warmup_steps"] = capped
    note = (
        f"note: --steps {steps} is not above optimizer.warmup_steps ({warmup}); "
        f"warm-up capped to {capped} steps (steps // 2)"
    )
    return load_config(path, overrides), note
