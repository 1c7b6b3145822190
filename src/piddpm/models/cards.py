"""``MODEL_CARD.md`` of a bundled model, generated from its ``model.json``, the training
run's ``log.csv`` / ``val.csv``, its restore defaults (and how they were tuned) and its
held-out evaluation (:mod:`piddpm.models.tuning`)."""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from piddpm.models.tuning import DEV_SEED
from piddpm.training.outputs import cpu_name, read_log


def _fmt_range(v) -> str:
    if isinstance(v, list | tuple) and len(v) == 2:
        return f"{v[0]:g} to {v[1]:g}" if v[0] != v[1] else f"{v[0]:g}"
    return str(v)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


METHOD_TEXT = {
    "pi-ddpm": "PI-DDPM (physics-informed DDPM: the network predicts the noise and the "
    "gradient of the physics (re-blur) loss, used as learned guidance while sampling)",
    "ddpm": "DDPM (conditional denoising diffusion, no physics term)",
    "unet": "U-Net (direct supervised regression, one forward pass, no sampling)",
}


def model_card(
    name: str,
    cfg: dict[str, Any],
    run_dir: Path,
    export: dict[str, Any],
    defaults: dict[str, Any],
    evaluation: dict[str, Any] | None,
    tuning: list[dict[str, Any]] | None,
    notes: tuple[str, ...] = (),
) -> str:
    """The ``MODEL_CARD.md`` text, generated from the model configuration, the run's
    ``log.csv`` / ``val.csv`` and the held-out evaluation."""
    card = _CardWriter(name, cfg, run_dir, export, defaults, evaluation, tuning, notes)
    for section in (
        card._header,
        card._training,
        card._ranges_and_validation,
        card._restore_defaults,
        card._evaluation,
        card._limits,
    ):
        section()
    return "\n".join(card.lines)


class _CardWriter:
    """The lines of one model card, section by section (see :func:`model_card`)."""

    def __init__(
        self,
        name: str,
        cfg: dict[str, Any],
        run_dir: Path,
        export: dict[str, Any],
        defaults: dict[str, Any],
        evaluation: dict[str, Any] | None,
        tuning: list[dict[str, Any]] | None,
        notes: tuple[str, ...],
    ):
        method = cfg["method"]
        data = cfg.get("data", {})
        tr = cfg.get("training", {})
        tcfg = tr.get("config", {})
        modality = data.get("modality", "unknown")
        step = int(export.get("step") or tr.get("steps") or 0)
        log_rows = [r for r in read_log(run_dir / "log.csv") if r.get("step", math.inf) <= step]
        val_rows = [r for r in read_log(run_dir / "val.csv") if r.get("step", math.inf) <= step]
        last = log_rows[-1] if log_rows else {}
        hw = cfg.get("hardware") or {}
        wall = last.get("time_s", math.nan)
        on_gpu = hw.get("device") == "cuda"
        self.lines: list[str] = []
        self.name = name
        self.cfg = cfg
        self.run_dir = run_dir
        self.export = export
        self.defaults = defaults
        self.evaluation = evaluation
        self.tuning = tuning
        self.notes = notes
        self.method = method
        self.data = data
        self.tr = tr
        self.tcfg = tcfg
        self.modality = modality
        self.step = step
        self.log_rows = log_rows
        self.val_rows = val_rows
        self.last = last
        self.hw = hw
        self.wall = wall
        self.on_gpu = on_gpu

    def _header(self) -> None:
        """Title, summary line and the model's names and source."""
        add = self.lines.append
        name = self.name
        cfg = self.cfg
        run_dir = self.run_dir
        export = self.export
        method = self.method
        modality = self.modality
        step = self.step
        add(f"# {name}")
        add("")
        add(
            f"{METHOD_TEXT.get(method, method)}, `{cfg.get('preset')}` preset, trained for {step} "
            f"steps on synthetic {modality} images. A demonstration-quality model, not a "
            "production model."
        )
        add("")
        from piddpm.models import ALIASES

        aliases = sorted(
            {a for a, t in ALIASES.items() if t == name} | set(cfg.get("aliases") or [])
        )
        add(f"- Aliases: {', '.join(aliases) or 'none'}")
        add(f"- Method: `{method}`; modality: **{modality}**")
        add(f"- Source: `{run_dir.name}` ({Path(export['source']).name}), piddpm "
            f"{cfg.get('piddpm_version', '?')}")  # fmt: skip
        add(f"- Bundled: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}")
        add("")

    def _training(self) -> None:
        """The ``## Training`` section: data, optimiser, hardware, wall time, loss."""
        add = self.lines.append
        cfg = self.cfg
        notes = self.notes
        method = self.method
        data = self.data
        tr = self.tr
        tcfg = self.tcfg
        step = self.step
        log_rows = self.log_rows
        last = self.last
        hw = self.hw
        wall = self.wall
        on_gpu = self.on_gpu
        add("## Training")
        add("")
        weights = data.get("specimen_weights") or {}
        mix = ", ".join(f"{k} {v:.2f}" for k, v in weights.items()) or str(data.get("specimens"))
        add(f"- Training steps: {step} (batch {tr.get('batch_size')}, "
            f"{step * int(tr.get('batch_size') or 0)} images), patch size "
            f"{data.get('patch_size')} x {data.get('patch_size')} px, PSF kernel "
            f"{data.get('psf_size')} px")  # fmt: skip
        add(f"- Specimen mixture (weights): {mix}")
        add(f"- Normalisation: {cfg.get('normalisation')} (observation min/max -> -1/1); "
            f"restore maps percentiles {cfg.get('percentiles')} of each plane to -1/1")  # fmt: skip
        opt = tcfg.get("optimizer", {})
        add(f"- Optimiser: AdamW, lr {opt.get('lr')}, warm-up {opt.get('warmup_steps')} steps, "
            f"{opt.get('lr_decay')} decay; EMA decay {tr.get('ema_decay')}; precision "
            f"{tr.get('precision')}; seed {tr.get('seed')}")  # fmt: skip
        if method != "unet":
            ts = cfg.get("training_schedule") or {}
            add(f"- Noise schedule (training): {ts.get('kind')} T={ts.get('T')}; target "
                f"`{cfg.get('target')}`" + (f"; physics weight {cfg.get('physics_weight')} "
                f"({cfg.get('physics_norm')})" if method == "pi-ddpm" else ""))  # fmt: skip
        sw = ", ".join(
            x
            for x in (
                f"torch {hw['torch']}" if hw.get("torch") else "",
                f"{hw['cpu_threads']} torch thread(s)" if hw.get("cpu_threads") else "",
            )
            if x
        )
        if on_gpu:
            add(f"- Hardware: GPU, {hw.get('device_name')}" + (f"; {sw}" if sw else ""))
        else:
            add(
                f"- Hardware: CPU, 2 cores ({hw.get('device_name') or cpu_name()}), trained "
                "while other jobs shared the machine" + (f"; {sw}" if sw else "")
            )
        if tr.get("stopped_by_time_limit") or tcfg.get("max_time_s"):
            how = (
                f"ended on its time limit at step {step}"
                if tr.get("stopped_by_time_limit")
                else f"reached its {step} steps within it"
            )
            add(f"- Time-boxed: `max_time_s` {tcfg.get('max_time_s')} s per invocation; the run "
                f"{how}")  # fmt: skip
        if tcfg.get("batch_reuse", 1) > 1:
            add(f"- Each simulated batch served {tcfg['batch_reuse']} steps (rotated/flipped "
                "copies; `batch_reuse`)")  # fmt: skip
        for note in notes:
            add(f"- {note}")
        add(f"- Wall time: {_hms(wall)} ({last.get('images_per_s', math.nan):.1f} images/s at the "
            "end)")  # fmt: skip
        if log_rows:
            tail = log_rows[-5:]
            add(f"- Final training loss: {last['loss']:.4f} (mean of the last {len(tail)} "
                f"log rows: {np.mean([r['loss'] for r in tail]):.4f}; first row "
                f"{log_rows[0]['loss']:.4f} at step {int(log_rows[0]['step'])})")  # fmt: skip
        add("")

    def _ranges_and_validation(self) -> None:
        """The microscope / camera ranges and the validation PSNR during training."""
        add = self.lines.append
        cfg = self.cfg
        method = self.method
        data = self.data
        val_rows = self.val_rows
        add("### Microscope and camera ranges of the training data")
        add("")
        add("| parameter | range |")
        add("|---|---|")
        for k, v in (data.get("ranges") or {}).items():
            add(f"| {k} | {_fmt_range(v)} |")
        add("")
        add("### Validation during training")
        add("")
        if val_rows:
            vs = cfg.get("sampler") or {}
            how = (
                "one forward pass"
                if method == "unet"
                else f"DDIM {vs.get('num_steps')} steps, guidance {vs.get('guidance')}"
            )
            add(f"PSNR (dB) on {int(val_rows[-1]['num_samples'])} fixed validation pairs "
                f"({data.get('patch_size')} px, {how}):")  # fmt: skip
            add("")
            add("| step | restored | input | gain |")
            add("|---:|---:|---:|---:|")
            for r in val_rows:
                add(f"| {int(r['step'])} | {r['psnr_db']:.2f} | {r['input_psnr_db']:.2f} | "
                    f"{r['psnr_db'] - r['input_psnr_db']:+.2f} |")  # fmt: skip
            best = max(val_rows, key=lambda r: r["psnr_db"])
            add("")
            add(f"Best {best['psnr_db']:.2f} dB at step {int(best['step'])}; final "
                f"{val_rows[-1]['psnr_db']:.2f} dB.")  # fmt: skip
        else:
            add("No validation rows were recorded up to this step.")
        add("")

    def _restore_defaults(self) -> None:
        """The ``## Restore defaults`` section, with the tuning trials if any."""
        add = self.lines.append
        defaults = self.defaults
        tuning = self.tuning
        data = self.data
        tcfg = self.tcfg
        add("## Restore defaults")
        add("")
        add("Used by `piddpm.restore` / `piddpm restore` when the caller leaves them unset:")
        add("")
        add("```json")
        add(json.dumps(defaults, indent=2, sort_keys=True))
        add("```")
        add("")
        norm = (tcfg.get("model") or {}).get("overrides", {}).get("norm", "group")
        if "tile" in defaults and norm in ("layer", "none"):
            add(f"`tile`/`overlap` set speed, not quality: the network normalises each pixel "
                f"({norm} norm), so its output does not depend on the rest of the tile, and the "
                f"outer `tile_margin` pixels of each inner tile edge get no blending weight; "
                f"tiled and untiled restores agree (tested).")  # fmt: skip
            add("")
        elif "tile" in defaults:
            add(f"`tile`/`overlap` are recommendations: pass `tile={defaults['tile']}, "
                f"overlap={defaults.get('overlap')}` (CLI `--tile`/`--overlap`); the network was "
                f"trained on {data.get('patch_size')} px patches with GroupNorm, whose statistics "
                "depend on the tile size.")  # fmt: skip
            add("")
        if tuning:
            add(f"Chosen by `piddpm models bundle --tune` (`tune_defaults`) on synthetic dev pairs "
                f"(seed {DEV_SEED}), coordinate search, mean PSNR (dB):")  # fmt: skip
            add("")
            add("| stage | value | PSNR | seconds |")
            add("|---|---|---:|---:|")
            for t in tuning:
                add(f"| {t['stage']} | {t['value']} | {t['psnr_db']:.2f} | "
                    f"{t['seconds']:.1f} |")  # fmt: skip
            add("")

    def _evaluation(self) -> None:
        """The ``## Held-out evaluation`` section."""
        add = self.lines.append
        name = self.name
        evaluation = self.evaluation
        modality = self.modality
        add("## Held-out evaluation")
        add("")
        if evaluation:
            ev = evaluation
            spec = ", ".join(f"{k} {v}" for k, v in sorted(ev["specimens"].items()))
            add(f"{ev['n']} synthetic {modality} pairs of {ev['size']} x {ev['size']} px from "
                f"`piddpm.data.PairedDataset` (seed {ev['seed']}, not seen in training or "
                f"validation; specimens: {spec}), same microscope ranges as training. Metrics "
                f"from `piddpm.metrics` against the ground truth in model units: PSNR (data "
                f"range = ground-truth max - min), MS-SSIM ({ev['ms_ssim_window']}-px window, "
                f"{ev['ms_ssim_scales']} scales), NRMSE. Mean +- std over the pairs.")  # fmt: skip
            add("")
            add("| method | PSNR (dB) | MS-SSIM | NRMSE | s / image |")
            add("|---|---:|---:|---:|---:|")
            labels = {
                "input": "raw input",
                "rl": "Richardson-Lucy (true PSF, automatic stop)",
                "model": f"{name} (restore defaults)",
                "model_mean": f"{name}, mean of {ev.get('mean_of')} samples (`--samples "
                f"{ev.get('mean_of')}`)",
            }
            for key in ("input", "rl", "model", "model_mean"):
                if key not in ev["rows"]:
                    continue
                r = ev["rows"][key]
                add(f"| {labels[key]} | {r['psnr_db']:.2f} +- {r['psnr_db_std']:.2f} | "
                    f"{r['ms_ssim']:.3f} +- {r['ms_ssim_std']:.3f} | {r['nrmse']:.3f} +- "
                    f"{r['nrmse_std']:.3f} | {r['seconds']:.2f} |")  # fmt: skip
            add("")
            add(f"The model beats the raw input in PSNR on {ev['wins_vs_input']} of {ev['n']} "
                f"pairs and Richardson-Lucy on {ev['wins_vs_rl']} of {ev['n']}"
                + (f"; the mean of {ev['mean_of']} samples beats Richardson-Lucy on "
                   f"{ev['wins_mean_vs_rl']} of {ev['n']}" if ev.get("mean_of") else "")
                + ". Timings: this 2-core CPU, one thread.")  # fmt: skip
            rows = ev["rows"]
            if rows["model"]["psnr_db"] <= rows["input"]["psnr_db"]:
                add("")
                add(
                    "**Warning: on average this model does not improve on the raw input** "
                    "(too few training steps); use it only to try the pipeline."
                )
            elif rows["model"]["psnr_db"] <= rows["rl"]["psnr_db"]:
                add("")
                better = (
                    rows.get("model_mean", {}).get("psnr_db", -math.inf) > rows["rl"]["psnr_db"]
                )
                add(
                    "On average Richardson-Lucy with the true PSF does better than one sample of "
                    "this model"
                    + (
                        f"; the mean of {ev['mean_of']} samples does better than Richardson-Lucy."
                        if better
                        else "."
                    )
                )
        else:
            add("Not evaluated (`--eval-n 0`).")
        add("")

    def _limits(self) -> None:
        """The ``## Intended use and limits`` section."""
        add = self.lines.append
        cfg = self.cfg
        method = self.method
        data = self.data
        modality = self.modality
        step = self.step
        on_gpu = self.on_gpu
        add("## Intended use and limits")
        add("")
        ranges = data.get("ranges") or {}
        where = "for a few minutes on one GPU" if on_gpu else "on a 2-core CPU"
        add(f"- **Demonstration quality.** A `{cfg.get('preset')}` network trained for only "
            f"{step} steps {where}: good enough to try the pipeline, the demo and the "
            "benchmarks, not for scientific conclusions or production use.")  # fmt: skip
        add(f"- **Modality: {modality} only.** Trained on {modality} PSFs only; on other "
            "modalities expect poor results.")  # fmt: skip
        add(f"- **Sampling near Nyquist.** Pixel sizes were {_fmt_range(ranges.get('pixel_nyquist_factor'))} "
            f"x the Nyquist pixel lambda_em / (4 NA), NA {_fmt_range(ranges.get('na'))}, emission "
            f"{_fmt_range(ranges.get('em_wavelength_nm'))} nm; give the microscope (`--na`, "
            "`--em-nm`, pixel size) and restore resamples planes sampled outside this range into "
            "it and back; without it, such images are outside the training distribution.")  # fmt: skip
        add("- **2D only.** Each plane is restored independently; a z-stack gets no 3-D "
            "deconvolution.")  # fmt: skip
        add("- **Synthetic data only.** Trained on simulated specimens with Poisson + Gaussian "
            f"camera noise (photons {_fmt_range(ranges.get('photons'))} at the peak); real "
            "images with other noise, backgrounds, or structures unlike the specimen mixture may "
            "give artefacts (hallucinated or missing structure).")  # fmt: skip
        if method != "unet":
            add("- Diffusion output is a sample from a learned posterior: use `samples > 1` "
                "to see the per-pixel spread; a single sample can show plausible but wrong "
                "detail.")  # fmt: skip
        add("")
