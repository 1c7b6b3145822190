"""``run_benchmark``: cases x methods -> results.csv, report.md and figures."""

from __future__ import annotations

import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from piddpm import PiddpmError, __version__
from piddpm.evaluation.config import BenchmarkConfig, SamplerSetting
from piddpm.evaluation.methods import (
    MethodPlan,
    discover_models,
    plan_methods,
    run_method,
    tune_rl,
)
from piddpm.evaluation.scoring import COLUMNS, score
from piddpm.evaluation.suites import (
    Case,
    no_reference_cases,
    real_cases,
    shared_data_dir,
    synthetic_cases,
)

__all__ = ["BenchmarkResult", "run_benchmark", "RESULT_COLUMNS"]

#: Columns of results.csv, in order.
RESULT_COLUMNS = (
    "suite",
    "dataset",
    "image",
    "modality",
    "reference",
    "method",
    "label",
    "setting",
    "model",
    "sampler",
    "steps",
    "samples",
    "eta",
    "lambda",
    "regulariser",
    "guidance",
    "height",
    "width",
    "seconds",
    "s_per_mpx",
    *COLUMNS,
    "normalisation",
)

NORM_SYNTHETIC = "specimen units ((y - background) / s vs ground truth), data_range 1"
NORM_REAL = "reference 0.1/99.9 percentiles -> 0/1; prediction affine-fitted; data_range 1"
NORM_NOREF = "none (resolution of the restoration itself)"


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` produced."""

    out_dir: Path
    rows: list[dict[str, Any]]
    notes: list[str]
    rl_tuning: dict[str, Any]
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def _setting_fields(plan: MethodPlan, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "sampler": settings.get("sampler") or "",
        "steps": settings.get("steps") if settings.get("steps") is not None else "",
        "samples": settings.get("samples") if settings.get("samples") is not None else "",
        "eta": settings.get("eta") if settings.get("eta") is not None else "",
        "lambda": settings.get("lambda") if settings.get("lambda") is not None else "",
        "regulariser": settings.get("regulariser") or "",
        "guidance": settings.get("guidance") or "",
    }


def _row(suite, case: Case, plan: MethodPlan, out, metrics, setting_name=None) -> dict:
    mpx = case.megapixels
    norm = {"synthetic": NORM_SYNTHETIC, "ablation": NORM_SYNTHETIC, "real": NORM_REAL}.get(
        suite, NORM_NOREF
    )
    row = {
        "suite": suite,
        "dataset": case.dataset,
        "image": case.name,
        "modality": case.modality,
        "reference": case.reference_kind,
        "method": plan.method,
        "label": plan.label if setting_name is None else f"{plan.label.split(' [')[0]}",
        "setting": plan.setting_name if setting_name is None else setting_name,
        "model": out.model,
        **_setting_fields(plan, out.settings),
        "height": case.observed.shape[0],
        "width": case.observed.shape[1],
        "seconds": round(out.seconds, 4),
        "s_per_mpx": round(out.seconds / mpx, 4) if mpx > 0 else math.nan,
        **metrics,
        "normalisation": norm,
    }
    return row


class _Runner:
    def __init__(self, cfg: BenchmarkConfig, out_dir: Path, log):
        self.cfg, self.out, self.log = cfg, out_dir, log
        self.rows: list[dict[str, Any]] = []
        self.keep: dict[tuple[str, str], dict[str, Any]] = {}  # (dataset, image) -> outputs
        self.cases: dict[tuple[str, str], Case] = {}
        self.kept_per_dataset: dict[str, int] = {}
        self.warmed: list[MethodPlan] = []

    def warm_up(self, cases, plans, rl_iters) -> None:
        """One untimed call per plan on a small crop: imports, model loading and first-call
        allocations do not land in the first image's timing."""
        if not cases:
            return
        c = cases[0]
        side = min(64, *c.observed.shape)
        crop = np.ascontiguousarray(c.observed[:side, :side])
        for plan in plans:
            if plan.method == "input" or plan in self.warmed:
                continue
            self.warmed.append(plan)
            try:
                run_method(plan, crop, c.psf if c.psf.shape[0] <= side else c.psf[:side, :side],
                           c.modality, rl_iterations=rl_iters.get(c.dataset, 1),
                           seed=self.cfg.seed, device=self.cfg.device, tile=self.cfg.tile)  # fmt: skip
            except PiddpmError:
                pass

    def run_cases(self, suite, cases, plans, rl_iters: dict[str, int]) -> None:
        total = len(cases) * len(plans)
        k = 0
        self.warm_up(cases, plans, rl_iters)
        for case in cases:
            keep = self.kept_per_dataset.get(case.dataset, 0) < self.cfg.figures
            if keep:
                self.kept_per_dataset[case.dataset] = self.kept_per_dataset.get(case.dataset, 0) + 1
                self.keep[(case.dataset, case.name)] = {}
                self.cases[(case.dataset, case.name)] = case
            for plan in plans:
                k += 1
                n_rl = rl_iters.get(case.dataset) if plan.method == "rl" else None
                try:
                    out = run_method(plan, case.observed, case.psf, case.modality,
                                     rl_iterations=n_rl, seed=self.cfg.seed,
                                     device=self.cfg.device, tile=self.cfg.tile)  # fmt: skip
                except PiddpmError as err:
                    self.log(f"  {case.dataset}/{case.name} {plan.label}: failed: {err}")
                    continue
                metrics = score(case, out.mean, out.std)
                self.rows.append(_row(suite, case, plan, out, metrics))
                if keep:
                    self.keep[(case.dataset, case.name)][plan.label] = (out.mean, out.std)
                what = (f"FRC {metrics['frc_resolution']:.4g}" if suite == "no-reference"
                        else f"PSNR {metrics['psnr']:.2f}")  # fmt: skip
                self.log(f"  [{k}/{total}] {case.dataset}/{case.name} {plan.label}: {what}, "
                         f"{out.seconds:.2f} s")  # fmt: skip


def _psnr_score(case: Case, restored: np.ndarray) -> float:
    return score(case, restored)["psnr"]


def run_benchmark(
    cfg: BenchmarkConfig,
    out_dir: str | Path,
    *,
    model_dir: str | Path | None = None,
    models: dict[str, str] | None = None,
    bundled: bool = True,
    data_dir: str | Path | None = None,
    log=print,
) -> BenchmarkResult:
    """Run the benchmark and write ``results.csv``, ``report.md``, ``rl_tuning.json`` and
    ``figures/*.png`` into ``out_dir``.

    Parameters
    ----------
    cfg : BenchmarkConfig
    out_dir : path
        Output folder (created; existing files of the same names are replaced).
    model_dir, models, bundled
        Where to find trained models (see :func:`piddpm.evaluation.discover_models`).
    data_dir : path, optional
        The shared real data (default: ``$PIDDPM_SHARED_DATA`` or ``../shared/data``).
    log : callable
        Progress messages (default ``print``).

    Returns
    -------
    BenchmarkResult
    """
    from piddpm.evaluation.report import write_csv, write_report

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = discover_models(model_dir, models, bundled=bundled)
    plans, notes = plan_methods(list(cfg.methods), list(cfg.samplers), entries)
    for n in notes:
        log("note: " + n)
    runner = _Runner(cfg, out, log)
    rl_tuning: dict[str, Any] = {}
    cache = out / "rl_tuning_cache.json"
    want_rl = any(p.method == "rl" for p in plans)
    synth_cases = _synthetic_suite(cfg, entries, plans, runner, notes, rl_tuning, cache, want_rl)
    if cfg.suite in ("real", "all"):
        _real_suite(cfg, data_dir, plans, runner, notes, rl_tuning, cache, want_rl)
    ablation_rows = _ablation_suite(cfg, entries, synth_cases, runner, notes)
    figures = _write_figures(runner, ablation_rows, out / "figures")

    write_csv(runner.rows, out / "results.csv", RESULT_COLUMNS)
    import json

    (out / "rl_tuning.json").write_text(json.dumps(rl_tuning, indent=2))
    env = _environment(cfg, entries)
    elapsed = time.perf_counter() - t_start
    write_report(out / "report.md", runner.rows, cfg=cfg, notes=notes, rl_tuning=rl_tuning,
                 figures=figures, env=env, elapsed_s=elapsed, out_dir=out)  # fmt: skip
    log(f"wrote {out / 'results.csv'} ({len(runner.rows)} rows) and {out / 'report.md'}")
    return BenchmarkResult(out, runner.rows, notes, rl_tuning, figures, elapsed)


def _synthetic_suite(
    cfg: BenchmarkConfig, entries, plans, runner: _Runner, notes: list[str],
    rl_tuning: dict[str, Any], cache: Path, want_rl: bool,
) -> list[Case]:  # fmt: skip
    """Render the seeded synthetic test set (also needed by the ablations) and, when the
    suite is run, tune RL per modality on the dev set and run every plan on it; returns the
    test cases."""
    log = runner.log
    synth_cases: list[Case] = []
    if cfg.suite in ("synthetic", "all") or (cfg.ablation.enabled and any(
            e.method == "pi-ddpm" for e in entries)):  # fmt: skip
        log("synthetic suite: rendering the seeded test set")
        synth_cases = synthetic_cases(cfg.synthetic, "test", log=lambda m: notes.append(m))
    if cfg.suite in ("synthetic", "all"):
        rl_iters: dict[str, int] = {}
        if want_rl:
            dev = synthetic_cases(cfg.synthetic, "dev")
            for modality in cfg.synthetic.modalities:
                dcases = [c for c in dev if c.modality == modality] or dev
                fam = f"synthetic-{modality}"
                res = tune_rl(fam, dcases, cfg.rl_grid, _psnr_score, cache_file=cache,
                              tile=cfg.tile)  # fmt: skip
                rl_tuning[fam] = res
                log(f"RL tuned on {len(dcases)} dev images ({fam}): {res['iterations']} iterations")
                for c in synth_cases:
                    if c.modality == modality:
                        rl_iters[c.dataset] = res["iterations"]
        log(f"synthetic suite: {len(synth_cases)} images x {len(plans)} methods")
        runner.run_cases("synthetic", synth_cases, plans, rl_iters)
    return synth_cases


def _real_suite(
    cfg: BenchmarkConfig, data_dir, plans, runner: _Runner, notes: list[str],
    rl_tuning: dict[str, Any], cache: Path, want_rl: bool,
) -> None:  # fmt: skip
    """The real suite: the shared data's test pairs and single images, RL tuned per family
    on the dev pairs; a note instead when the shared data folder is missing."""
    log = runner.log
    ddir = Path(data_dir) if data_dir is not None else shared_data_dir()
    if ddir is None or not (ddir / "MANIFEST.md").is_file():
        msg = (
            "real suite skipped: the shared data folder was not found (set "
            "PIDDPM_SHARED_DATA or place it at ../shared/data; see docs/evaluation.md)"
        )
        notes.append(msg)
        log("note: " + msg)
        return
    tests = real_cases(cfg.real, ddir, "test")
    singles = no_reference_cases(cfg.real, ddir) if cfg.real.no_reference else []
    rl_iters = {}
    if want_rl:
        dev = real_cases(cfg.real, ddir, "dev")
        for fam, targets in (("w2s", ("w2s-sim", "w2s-avg400")),
                             ("gigadb", ("gigadb", "single-images"))):  # fmt: skip
            dcases = [c for c in dev if c.dataset == f"dev-{fam}"]
            if not dcases:
                continue
            res = tune_rl(fam, dcases, cfg.rl_grid, _psnr_score, cache_file=cache,
                          tile=cfg.tile)  # fmt: skip
            rl_tuning[fam] = res
            log(f"RL tuned on {len(dcases)} dev pairs ({fam}): {res['iterations']} iterations")
            for t in targets:
                rl_iters[t] = res["iterations"]
    log(f"real suite: {len(tests)} test pairs, {len(singles)} single images")
    runner.run_cases("real", tests, plans, rl_iters)
    runner.run_cases("no-reference", singles, plans, rl_iters)


def _ablation_suite(
    cfg: BenchmarkConfig, entries, synth_cases: list[Case], runner: _Runner, notes: list[str]
) -> list[dict[str, Any]]:
    """The PI-DDPM sampler ablations (rows also added to the runner's), or a note why not."""
    pi_models = [e for e in entries if e.method == "pi-ddpm"]
    ablation_rows: list[dict[str, Any]] = []
    if not cfg.ablation.enabled:
        notes.append("ablations disabled in the configuration")
    elif not pi_models:
        notes.append("ablations skipped: no PI-DDPM model was found")
    else:
        ablation_rows = _ablations(cfg, synth_cases, pi_models, runner.log)
        runner.rows += ablation_rows
    return ablation_rows


def _write_figures(runner: _Runner, ablation_rows, fig_dir: Path) -> list[Path]:
    """Panels of the kept images and the ablation plots, in ``fig_dir``; returns the paths."""
    from piddpm.evaluation.figures import ablation_plots, panel

    figures: list[Path] = []
    fig_dir.mkdir(exist_ok=True)
    for (dataset, name), outputs in runner.keep.items():
        if outputs:
            path = fig_dir / f"{dataset}__{name}.png"
            panel(runner.cases[(dataset, name)], outputs, path)
            figures.append(path)
    if ablation_rows:
        figures += ablation_plots(ablation_rows, fig_dir)
    return figures


def _environment(cfg: BenchmarkConfig, entries) -> dict[str, Any]:
    """Versions, platform, device and the models used, for the report."""
    env = {
        "piddpm": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": cfg.device,
        "models": [
            {"name": e.name, "method": e.method, "modality": e.modality, "weights": str(e.weights)}
            for e in entries
        ],
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return env


def _ablations(cfg: BenchmarkConfig, cases: list[Case], models, log) -> list[dict[str, Any]]:
    """eta x regulariser, lambda x regulariser and step-count sweeps of PI-DDPM."""
    a = cfg.ablation
    mods = {e.modality for e in models}
    pool = [c for c in cases if c.modality in mods] or cases
    pool = pool[: a.images]
    sweeps: list[tuple[str, str, SamplerSetting]] = []
    base_samples = 1
    for reg in a.regularisers:
        for eta in a.etas:
            sweeps.append(("eta", f"eta={eta:g},{reg}", SamplerSetting(
                name=f"eta{eta:g}-{reg}", steps=a.steps, samples=base_samples, eta=eta,
                regulariser=reg)))  # fmt: skip
        for lam in a.lams:
            sweeps.append(("lambda", f"lam={lam:g},{reg}", SamplerSetting(
                name=f"lam{lam:g}-{reg}", steps=a.steps, samples=base_samples, lam=lam,
                regulariser=reg)))  # fmt: skip
    for n in a.ddim_steps:
        sweeps.append(("steps", f"ddim,{n}", SamplerSetting(name=f"ddim{n}", steps=n,
                                                            samples=base_samples)))  # fmt: skip
    if a.include_ddpm:
        sweeps.append(("steps", "ddpm,T", SamplerSetting(name="ddpm", sampler="ddpm",
                                                         steps=None, samples=base_samples)))  # fmt: skip
    rows = []
    log(f"ablations: {len(sweeps)} settings x {len(pool)} images")
    for sweep, setting_name, setting in sweeps:
        plan = MethodPlan("pi-ddpm", setting=setting, models=models)
        for case in pool:
            try:
                out = run_method(plan, case.observed, case.psf, case.modality, seed=cfg.seed,
                                 device=cfg.device, tile=cfg.tile)  # fmt: skip
            except PiddpmError as err:
                log(f"  ablation {setting_name} {case.name}: failed: {err}")
                continue
            metrics = score(case, out.mean, out.std)
            row = _row("ablation", case, plan, out, metrics, setting_name=setting_name)
            row["dataset"] = sweep
            row["image"] = f"{case.dataset}/{case.name}"
            rows.append(row)
        log(f"  ablation {setting_name}: done")
    return rows
