"""The methods a benchmark compares, how they are run, and Richardson-Lucy tuning on dev data.

Every method goes through :func:`piddpm.restore` (the API users call), so the benchmark
measures exactly what users get: same percentile normalisation, tiling and inverse map.

- ``input``: the observation itself (no restoration), the floor every method should beat.
- ``rl``: Richardson-Lucy with the case's PSF and an iteration count tuned on dev data
  (:func:`tune_rl`: the grid value with the best mean PSNR, cached in a JSON file).
- ``unet``, ``ddpm``, ``pi-ddpm``: a model of that method, if one exists (bundled, or given
  by ``--model-dir`` / ``--models``); the model whose modality matches the case is preferred.
- ``pi-ddpm-known``: a PI-DDPM model sampled with the known-PSF physics gradient
  (``guidance="known"``) instead of the learned one.

Diffusion methods run once per sampler setting of the configuration.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from piddpm import PiddpmError
from piddpm.evaluation.config import METHOD_ORDER, SamplerSetting

__all__ = [
    "DISPLAY",
    "MethodPlan",
    "MethodOutput",
    "discover_models",
    "parse_models_arg",
    "plan_methods",
    "run_method",
    "tune_rl",
]

#: How methods are named in tables (the paper's names).
DISPLAY = {
    "input": "Input",
    "rl": "RL",
    "unet": "U-Net",
    "ddpm": "DDPM",
    "pi-ddpm": "PI-DDPM",
    "pi-ddpm-known": "PI-DDPM (known PSF)",
}
_MODEL_METHOD = {"unet": "unet", "ddpm": "ddpm", "pi-ddpm": "pi-ddpm", "pi-ddpm-known": "pi-ddpm"}


@dataclass
class MethodPlan:
    """One method x setting to run on every case.

    ``models`` are the candidate model entries (per modality, see :meth:`model_for`).
    """

    method: str
    setting: SamplerSetting | None = None
    models: list[Any] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        name = DISPLAY.get(self.method, self.method)
        return f"{name} [{self.setting.name}]" if self.setting is not None else name

    @property
    def setting_name(self) -> str:
        return self.setting.name if self.setting is not None else ""

    def model_for(self, modality: str):
        """The model entry for a case: matching modality first, then mixed/unknown, else any."""
        if not self.models:
            return None
        for entry in self.models:
            if entry.modality == modality:
                return entry
        for entry in self.models:
            if entry.modality in (None, "mixed", "both"):
                return entry
        return self.models[0]


@dataclass
class MethodOutput:
    """A restoration of one case: ``mean`` (and ``std``) in the observation's units."""

    mean: np.ndarray
    std: np.ndarray | None
    seconds: float
    model: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


def parse_models_arg(text: str | None) -> dict[str, str]:
    """``"name=path,name2=path2"`` -> ``{name: path}`` (names are free labels)."""
    out: dict[str, str] = {}
    if not text:
        return out
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise PiddpmError(f"--models entry {item!r}: expected name=path (comma separated)")
        name, path = item.split("=", 1)
        if not name.strip() or not path.strip():
            raise PiddpmError(f"--models entry {item!r}: expected name=path (comma separated)")
        out[name.strip()] = path.strip()
    return out


def discover_models(
    model_dir: str | Path | None = None,
    models: dict[str, str] | None = None,
    *,
    bundled: bool = True,
) -> list[Any]:
    """Model entries from the bundled registry, a run folder and explicit paths.

    Parameters
    ----------
    model_dir : path, optional
        A folder that is itself a model (``model.json`` + ``model.safetensors``, as written
        by ``piddpm train``) or holds such folders (searched two levels deep).
    models : dict, optional
        ``{label: path}`` from ``--models``.
    bundled : bool
        Include the bundled models (``piddpm.models.list_models``).

    Returns
    -------
    list of piddpm.models.ModelEntry
        Explicit models first, then the run folder's, then bundled ones (no duplicates).
    """
    from piddpm.models import list_models, resolve_model

    entries = []
    for _label, path in (models or {}).items():
        entries.append(resolve_model(Path(path)))
    if model_dir is not None:
        root = Path(model_dir)
        if not root.is_dir():
            raise PiddpmError(f"--model-dir {root} is not a folder")
        found = sorted(
            {p.parent for p in root.glob("model.json")}
            | {p.parent for p in root.glob("*/model.json")}
            | {p.parent for p in root.glob("*/*/model.json")}
        )
        found = [p for p in found if (p / "model.safetensors").is_file()]
        if not found:
            raise PiddpmError(
                f"--model-dir {root} holds no model (a folder with model.json + "
                "model.safetensors, as written by piddpm train)"
            )
        entries += [resolve_model(p) for p in found]
    if bundled:
        try:
            entries += list_models()
        except PiddpmError as err:
            warnings.warn(f"bundled models unavailable: {err}", stacklevel=2)
    seen, unique = set(), []
    for e in entries:
        key = str(Path(e.weights).resolve())
        if key not in seen:
            seen.add(key)
            unique.append(e)
    return unique


def plan_methods(
    methods: list[str], samplers: list[SamplerSetting], entries: list[Any]
) -> tuple[list[MethodPlan], list[str]]:
    """The method x setting plans for the available models, and notes on what is skipped."""
    plans: list[MethodPlan] = []
    notes: list[str] = []
    for method in sorted(set(methods), key=METHOD_ORDER.index):
        if method in ("input", "rl"):
            plans.append(MethodPlan(method))
            continue
        wanted = _MODEL_METHOD[method]
        cands = [e for e in entries if e.method == wanted]
        if not cands:
            notes.append(
                f"{DISPLAY[method]}: skipped, no {wanted} model found (bundled models, "
                "--model-dir or --models)"
            )
            continue
        if method == "unet":
            plans.append(MethodPlan(method, models=cands))
        else:
            plans += [MethodPlan(method, setting=s, models=cands) for s in samplers]
    return plans, notes


def run_method(
    plan: MethodPlan,
    observed: np.ndarray,
    psf: np.ndarray,
    modality: str,
    *,
    rl_iterations: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    tile: int | None = None,
) -> MethodOutput:
    """Restore one observation ``(H, W)`` with a plan; times the call (seconds, wall)."""
    from piddpm.restore import restore

    obs = np.ascontiguousarray(observed, dtype=np.float32)
    if plan.method == "input":
        return MethodOutput(mean=obs.copy(), std=None, seconds=0.0, settings={})
    # tile None: each model's own measured tiling (restore_defaults), 256 / 32 for RL
    overlap = None if tile is None else max(16, tile // 8)
    common = dict(psf=psf, tile=tile, overlap=overlap, device=device, seed=seed,
                  progress=False, residual=False)  # fmt: skip
    if plan.method == "rl":
        if rl_iterations is None:
            raise PiddpmError("rl needs a tuned iteration count (tune_rl)")
        t0 = time.perf_counter()
        res = restore(obs, method="rl", steps=int(rl_iterations), **common)
        dt = time.perf_counter() - t0
        return MethodOutput(np.asarray(res.mean), None, dt, "",
                            {"steps": int(rl_iterations)})  # fmt: skip
    entry = plan.model_for(modality)
    kwargs: dict[str, Any] = {}
    if plan.method != "unet":
        s = plan.setting
        kwargs = dict(
            sampler=s.sampler,
            steps=s.steps if s.sampler == "ddim" else None,
            samples=s.samples,
            eta=s.eta,
            regulariser=s.regulariser,
            lam=s.lam,
            eta_ddim=s.eta_ddim,
            guidance={"pi-ddpm": "learned", "pi-ddpm-known": "known", "ddpm": "none"}[plan.method],
        )
        kwargs.update(plan.overrides)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = entry.name if entry.bundled else str(entry.weights)
        res = restore(obs, model=model, method=_MODEL_METHOD[plan.method], **kwargs, **common)
    dt = time.perf_counter() - t0
    meta = res.metadata
    settings = {k: meta.get(k) for k in ("sampler", "steps", "samples", "eta", "lambda",
                                         "regulariser", "guidance")}  # fmt: skip
    std = None if res.std is None else np.asarray(res.std)
    return MethodOutput(np.asarray(res.mean), std, dt, entry.name, settings)


# --------------------------------------------------------------------------------------
# Richardson-Lucy tuning on dev data
# --------------------------------------------------------------------------------------
def _fingerprint(cases, grid) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(sorted(int(g) for g in grid)).encode())
    for c in cases:
        h.update(c.dataset.encode() + c.name.encode())
        h.update(np.ascontiguousarray(c.observed).tobytes())
        h.update(np.ascontiguousarray(c.psf).tobytes())
    return h.hexdigest()[:16]


def tune_rl(
    family: str,
    cases: list,
    grid: list[int],
    score,
    *,
    cache_file: str | Path | None = None,
    tile: int | None = None,
) -> dict[str, Any]:
    """Pick the RL iteration count with the best mean score (PSNR) over dev cases.

    Parameters
    ----------
    family : str
        Name of what is tuned (``"synthetic"``, ``"w2s"``, ``"gigadb"``): a cache key.
    cases : list of Case
        Dev cases (never test cases).
    grid : list of int
        Iteration counts tried.
    score : callable (case, restored ndarray) -> float
        Higher is better (the benchmark passes PSNR).
    cache_file : path, optional
        JSON cache; a result for the same family, grid and data (hashed) is reused.

    Returns
    -------
    dict
        ``iterations`` (the best), ``grid``, ``scores`` (mean per grid value), ``n_cases``,
        ``cached`` (bool).
    """
    if not cases:
        raise PiddpmError(f"RL tuning for {family}: no dev cases")
    key = f"{family}:{_fingerprint(cases, grid)}"
    cache: dict[str, Any] = {}
    if cache_file is not None and Path(cache_file).is_file():
        try:
            cache = json.loads(Path(cache_file).read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
        if key in cache:
            return {**cache[key], "cached": True}
    plan = MethodPlan("rl")
    scores = []
    for n in grid:
        vals = [
            score(
                c, run_method(plan, c.observed, c.psf, c.modality, rl_iterations=n, tile=tile).mean
            )  # fmt: skip
            for c in cases
        ]
        scores.append(float(np.mean(vals)))
    best = int(grid[int(np.nanargmax(scores))])
    out = {"iterations": best, "grid": [int(g) for g in grid], "scores": scores,
           "n_cases": len(cases), "cases": [f"{c.dataset}/{c.name}" for c in cases]}  # fmt: skip
    if cache_file is not None:
        cache[key] = out
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(cache_file) + ".tmp")
        tmp.write_text(json.dumps(cache, indent=2))
        tmp.replace(cache_file)
    return {**out, "cached": False}
