"""results.csv and report.md: tables like the paper's Table 1, and sentences from the numbers.

The comparison sentences are generated from the per-image results, never written by hand:
for every PI-DDPM variant and every other method on a dataset, the report states the mean
difference and on how many images PI-DDPM is better, and says plainly where it does not
beat a baseline.
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["aggregate", "comparisons", "read_csv", "write_csv", "write_report"]

#: (column, header, higher is better, format)
SYNTHETIC_METRICS = (
    ("psnr", "PSNR (dB)", True, "{:.2f}"),
    ("ms_ssim", "MS-SSIM", True, "{:.3f}"),
    ("nrmse", "NRMSE", False, "{:.4f}"),
    ("data_consistency", "data consistency", None, "{:.3f}"),
    ("halluc_total", "hallucination", False, "{:.4f}"),
    ("calib_mae", "calibration error", False, "{:.3f}"),
    ("s_per_mpx", "s / MPx", False, "{:.2f}"),
)
REAL_METRICS = (
    ("psnr", "PSNR (dB)", True, "{:.2f}"),
    ("ms_ssim", "MS-SSIM", True, "{:.3f}"),
    ("nrmse", "NRMSE", False, "{:.4f}"),
    ("psnr_reblurred", "PSNR of A y (dB)", True, "{:.2f}"),
    ("data_consistency", "data consistency", None, "{:.3f}"),
    ("s_per_mpx", "s / MPx", False, "{:.2f}"),
)
COMPARED = (("psnr", "PSNR", True, "dB"), ("ms_ssim", "MS-SSIM", True, ""),
            ("nrmse", "NRMSE", False, ""), ("halluc_total", "hallucination score", False, ""))  # fmt: skip


def write_csv(rows: list[dict[str, Any]], path: str | Path, columns) -> None:
    """Write rows (dicts) with the given column order; NaN as empty. Atomic (temp + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v)
                        for k, v in r.items()})  # fmt: skip
    os.replace(tmp, path)


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read results.csv back (metric columns as floats, NaN where empty)."""
    from piddpm.evaluation.scoring import COLUMNS

    floats = set(COLUMNS) | {"seconds", "s_per_mpx"}
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in floats & r.keys():
            r[k] = float(r[k]) if r[k] not in ("", None) else math.nan
    return rows


def _val(r, col) -> float:
    v = r.get(col, math.nan)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def aggregate(rows, keys=("suite", "dataset", "label")) -> dict[tuple, dict[str, tuple]]:
    """``{key: {metric: (mean, std, n)}}`` over the rows of each group (NaNs ignored)."""
    from piddpm.evaluation.scoring import COLUMNS

    groups: dict[tuple, list] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    out = {}
    for key, rs in groups.items():
        stats = {}
        for col in (*COLUMNS, "s_per_mpx", "seconds"):
            v = np.array([_val(r, col) for r in rs])
            v = v[np.isfinite(v)]
            stats[col] = (
                (float(v.mean()), float(v.std()), int(v.size)) if v.size else (math.nan, 0.0, 0)
            )
        out[key] = stats
    return out


def _cell(stat, fmt) -> str:
    m, s, n = stat
    if n == 0 or not math.isfinite(m):
        return "–"
    return fmt.format(m) if n == 1 else f"{fmt.format(m)} ± {fmt.format(s)}"


def _ordered_labels(rows) -> list[str]:
    from piddpm.evaluation.config import METHOD_ORDER

    seen = {}
    for r in rows:
        seen.setdefault(r["label"], METHOD_ORDER.index(r["method"]) if r["method"] in
                        METHOD_ORDER else 99)  # fmt: skip
    return sorted(seen, key=lambda k: (seen[k], k))


def table(rows, suite, dataset, metrics) -> str:
    """A markdown table: one row per method label, mean ± std over images per metric."""
    rs = [r for r in rows if r["suite"] == suite and r["dataset"] == dataset]
    agg = aggregate(rs)
    cols = [m for m in metrics if any(agg[k][m[0]][2] for k in agg)]
    n_img = len({r["image"] for r in rs})
    head = "| method | " + " | ".join(
        h + (" ↑" if up else " ↓" if up is False else "") for _, h, up, _ in cols) + " |"  # fmt: skip
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    best = {}
    for col, _, up, _ in cols:
        vals = {k[2]: agg[k][col][0] for k in agg if math.isfinite(agg[k][col][0])}
        if up is not None and vals and col != "s_per_mpx":
            best[col] = (max if up else min)(vals, key=vals.get)
    for label in _ordered_labels(rs):
        key = (suite, dataset, label)
        cells = []
        for col, _, _, fmt in cols:
            c = _cell(agg[key][col], fmt)
            cells.append(f"**{c}**" if best.get(col) == label else c)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return f"{n_img} image(s); mean ± std over images; best in bold.\n\n" + "\n".join(lines)


def comparisons(rows, suite, dataset) -> list[str]:
    """Sentences comparing every PI-DDPM variant with every other method, from the numbers."""
    rs = [r for r in rows if r["suite"] == suite and r["dataset"] == dataset]
    by = defaultdict(dict)
    for r in rs:
        by[r["label"]][r["image"]] = r
    pis = [lab for lab in _ordered_labels(rs) if lab.startswith("PI-DDPM")]
    others = [lab for lab in _ordered_labels(rs) if not lab.startswith("PI-DDPM")]
    out = []
    for i, pi in enumerate(pis):
        for other in others + pis[i + 1 :]:
            worse, better = [], []
            for col, name, up, unit in COMPARED:
                imgs = [i for i in by[pi] if i in by[other]
                        and math.isfinite(_val(by[pi][i], col))
                        and math.isfinite(_val(by[other][i], col))]  # fmt: skip
                if not imgs:
                    continue
                a = np.array([_val(by[pi][i], col) for i in imgs])
                b = np.array([_val(by[other][i], col) for i in imgs])
                wins = int(((a > b) if up else (a < b)).sum())
                fmt = "{:.2f}" if col == "psnr" else "{:.3f}" if col == "ms_ssim" else "{:.4f}"
                txt = (f"{name} {fmt.format(a.mean())} vs {fmt.format(b.mean())}"
                       f"{(' ' + unit) if unit else ''}, better on {wins} of {len(imgs)}")  # fmt: skip
                good = (a.mean() > b.mean()) if up else (a.mean() < b.mean())
                (better if good else worse).append(txt)
            if worse:
                out.append(f"- **{pi} does not beat {other}** in " + "; ".join(worse) + ".")
            if better:
                out.append(f"- {pi} beats {other} in " + "; ".join(better) + ".")
    return out


def _best_sentences(rows, suite, dataset) -> str:
    agg = aggregate([r for r in rows if r["suite"] == suite and r["dataset"] == dataset])
    vals = {k[2]: v["psnr"][0] for k, v in agg.items() if math.isfinite(v["psnr"][0])}
    if not vals:
        return ""
    best = max(vals, key=vals.get)
    s = f"Best mean PSNR on this dataset: **{best}** ({vals[best]:.2f} dB)."
    if "Input" in vals and best != "Input":
        s += f" The unrestored input scores {vals['Input']:.2f} dB."
    worse_than_input = [k for k, v in vals.items() if k != "Input" and "Input" in vals
                        and v < vals["Input"]]  # fmt: skip
    if worse_than_input:
        s += " Below the unrestored input in PSNR: " + ", ".join(worse_than_input) + "."
    return s


def _noref_table(rows) -> str:
    rs = [r for r in rows if r["suite"] == "no-reference"]
    if not rs:
        return ""
    images = sorted({r["image"] for r in rs})
    lines = ["| method | " + " | ".join(f"{i}: FRC / decorr." for i in images) + " |",
             "|" + "---|" * (len(images) + 1)]  # fmt: skip
    for label in _ordered_labels(rs):
        cells = []
        for img in images:
            r = next((x for x in rs if x["label"] == label and x["image"] == img), None)
            if r is None:
                cells.append("–")
                continue
            f, d = _val(r, "frc_resolution"), _val(r, "decorr_resolution")
            cells.append(f"{f:.0f} / {d:.0f}" if math.isfinite(f) and math.isfinite(d) else
                         f"{f:.3g} / {d:.3g}")  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(path, rows, *, cfg, notes, rl_tuning, figures, env, elapsed_s, out_dir) -> None:
    """Write report.md (tables per suite and dataset, comparisons, tuning, ablations)."""
    out_dir = Path(out_dir)
    L: list[str] = []
    L += _header_lines(cfg, notes, env, elapsed_s)
    L += _suite_lines(rows, cfg)
    L += _noref_lines(rows)
    L += _rl_tuning_lines(rl_tuning)
    L += _ablation_lines(rows, cfg)
    L += _figure_and_file_lines(figures, out_dir)
    Path(path).write_text("\n".join(L), encoding="utf-8")


def _header_lines(cfg, notes, env, elapsed_s) -> list[str]:
    """Title, configuration, models used, notes and the description of the methods."""
    L: list[str] = []
    L.append("# piddpm benchmark report\n")
    L.append(
        f"Configuration: suite **{cfg.suite}**{' (--quick subset)' if cfg.quick else ''}; "
        f"piddpm {env.get('piddpm')}, torch {env.get('torch', '?')} "
        f"({env.get('threads', '?')} threads), device {env.get('device')}, "
        f"{env.get('platform')}; total wall time {elapsed_s / 60:.1f} min.\n"
    )
    if env.get("models"):
        L.append("Models used:\n")
        L += [f"- `{m['name']}`: {m['method']}, modality {m['modality'] or 'unknown'}"
              for m in env["models"]]  # fmt: skip
        L.append("")
    else:
        L.append(
            "**No trained model was found** (bundled, `--model-dir` or `--models`): only "
            "Richardson-Lucy and the unrestored input are compared. This report therefore "
            "says nothing about U-Net, DDPM or PI-DDPM.\n"
        )
    if notes:
        L.append("Notes:\n")
        L += [f"- {n}" for n in notes]
        L.append("")
    L.append(
        "Methods: *Input* is the observation itself (no restoration); *RL* is Richardson-Lucy "
        "with the case's PSF and an iteration count tuned on dev data (see below); "
        "*PI-DDPM (known PSF)* samples a PI-DDPM model with the analytic physics gradient "
        "of the known PSF instead of the learned one. Each diffusion method appears once per "
        "sampler setting `[name]`. All methods run through `piddpm.restore` (percentile "
        "normalisation of the input to [-1, 1], tiling, inverse map). Timings are wall "
        "seconds per megapixel of the whole `restore` call on this machine (model loading "
        "included).\n"
    )
    return L


def _suite_lines(rows, cfg) -> list[str]:
    """One section per suite (synthetic, real): how it is scored, then a table, the best
    methods and the comparisons per dataset."""
    L: list[str] = []
    suites = [("synthetic", "Synthetic suite", SYNTHETIC_METRICS), ("real", "Real suite",
              REAL_METRICS)]  # fmt: skip
    for suite, title, metrics in suites:
        datasets = sorted({r["dataset"] for r in rows if r["suite"] == suite})
        if not datasets:
            continue
        L.append(f"## {title}\n")
        L.append(_suite_intro(suite, cfg))
        for ds in datasets:
            L += _dataset_lines(rows, suite, ds, metrics)
    return L


def _suite_intro(suite: str, cfg) -> str:
    """The paragraph that says what a suite holds and how its images are normalised."""
    if suite == "synthetic":
        return (
            "Seeded test set rendered by `piddpm.data` specimens (no haze: background 0) "
            f"through microscopes drawn from ranges wider than training (NA "
            f"{cfg.synthetic.na[0]}-{cfg.synthetic.na[1]}, emission "
            f"{cfg.synthetic.em_wavelength_nm[0]:g}-{cfg.synthetic.em_wavelength_nm[1]:g} "
            f"nm, pixel {cfg.synthetic.pixel_nyquist_factor[0]}-"
            f"{cfg.synthetic.pixel_nyquist_factor[1]} x Nyquist, "
            f"{cfg.synthetic.photons[0]:g}-{cfg.synthetic.photons[1]:g} photons), "
            f"{cfg.synthetic.size} x {cfg.synthetic.size} px. Datasets ending in "
            "`-psfmodels` use in-focus PSFs from `psfmodels` (an independent vectorial "
            "implementation). **Normalisation:** none fitted: the restoration `y` "
            "(photo-electrons) is mapped to specimen units `(y - background) / s` with "
            "the simulation's known background and scale and compared with the ground "
            "truth (0 background, peak 1), `data_range = 1`. Data consistency is "
            "`||A y - x|| / ||x||` with the true PSF; its noise floor (the same for the "
            "ground truth) is in results.csv (`dc_noise_floor`). Hallucination: energy "
            "fraction of the restoration not explained by the ground truth (0 is "
            "perfect). Calibration: mean |observed - expected| coverage of the 1/2/3 "
            "sigma intervals of the posterior std (with samples > 1).\n"
        )
    else:
        return (
            "TEST split of the shared data (MANIFEST.md; the dev split was used only to "
            "tune RL). **Normalisation:** the reference is mapped by its 0.1 / 99.9 "
            "percentiles to 0 / 1, the restoration by a least-squares affine fit "
            "`a y + b` to that reference (as CARE / W2S), then PSNR, MS-SSIM and NRMSE "
            "with `data_range = 1`. The fit can only improve the scores; it removes the "
            "unknown 8-bit scaling of each file. Where the reference is a widefield image "
            "(W2S 400-frame average, GigaDB high-SNR), a deconvolved restoration is "
            "sharper than the reference by design: *PSNR of A y* compares the restoration "
            "re-blurred with the assumed PSF instead. The files record no optics: the "
            f"PSF is assumed ({cfg.real.na} NA, {cfg.real.em_wavelength_nm:g} nm, pixel "
            f"{cfg.real.psf_nyquist_factor:g} x Nyquist; confocal pinhole "
            f"{cfg.real.pinhole_au:g} AU). Large images are centre-cropped to "
            f"{cfg.real.crop} x {cfg.real.crop} px.\n"
        )


def _dataset_lines(rows, suite: str, ds: str, metrics) -> list[str]:
    """Heading, table, best methods and comparisons of one dataset of a suite."""
    L: list[str] = []
    ref = ", ".join(sorted({r["reference"] for r in rows
                            if r["suite"] == suite and r["dataset"] == ds}))  # fmt: skip
    L.append(f"### {ds} (reference: {ref})\n")
    L.append(table(rows, suite, ds, metrics) + "\n")
    best = _best_sentences(rows, suite, ds)
    if best:
        L.append(best + "\n")
    comp = comparisons(rows, suite, ds)
    if comp:
        L.append("\n".join(comp) + "\n")
    elif not any(r["method"].startswith("pi-ddpm") for r in rows):
        L.append("No PI-DDPM result on this dataset: no comparison with it is possible.\n")
    return L


def _noref_lines(rows) -> list[str]:
    """The no-reference resolution section of the single real images (none if empty)."""
    L: list[str] = []
    noref = _noref_table(rows)
    if noref:
        L.append("## Single real images: no-reference resolution\n")
        L.append(
            "Single-image Fourier ring correlation (1/7 threshold, checkerboard split) and "
            "decorrelation analysis of each restoration (nm where the file records the "
            "pixel size, else px; smaller is finer, but a method that adds structure or "
            "noise can also lower these numbers: read them with the figures).\n"
        )
        L.append(noref + "\n")
    return L


def _rl_tuning_lines(rl_tuning) -> list[str]:
    """The Richardson-Lucy iteration tuning on dev data."""
    L: list[str] = []
    L.append("## Richardson-Lucy iterations (tuned on dev data only)\n")
    if rl_tuning:
        L.append("| family | dev images | grid | mean dev PSNR per grid value | chosen |")
        L.append("|---|---|---|---|---|")
        for fam, r in rl_tuning.items():
            sc = ", ".join(f"{s:.2f}" for s in r["scores"])
            L.append(f"| {fam} | {r['n_cases']} | {r['grid']} | {sc} | **{r['iterations']}** |")
        L.append(
            "\nThe W2S value is used for both W2S datasets; the GigaDB value also for the "
            "single real images.\n"
        )
    else:
        L.append("RL was not run.\n")
    return L


def _ablation_lines(rows, cfg) -> list[str]:
    """The PI-DDPM sampler ablations: one table per sweep."""
    L: list[str] = []
    L.append("## Ablations (PI-DDPM sampler)\n")
    abl = [r for r in rows if r["suite"] == "ablation"]
    if not abl:
        L.append("Not run: " + (
            "no PI-DDPM model was found." if cfg.ablation.enabled else "disabled.") + "\n")  # fmt: skip
    else:
        L.append(
            f"{len({r['image'] for r in abl})} synthetic test image(s), one sample each. "
            "Sweeps: guidance weight eta for each regulariser, regulariser weight lambda, "
            "number of DDIM steps (and the ancestral DDPM sampler over all T steps where "
            "enabled).\n"
        )
        for sweep in ("eta", "lambda", "steps"):
            rs = [r for r in abl if r["dataset"] == sweep]
            if not rs:
                continue
            agg = aggregate(rs, keys=("setting",))
            L.append(f"### {sweep}\n")
            L.append("| setting | PSNR (dB) | MS-SSIM | NRMSE | hallucination | s / MPx |")
            L.append("|---|---|---|---|---|---|")
            for (setting,), st in agg.items():
                L.append(f"| {setting} | {_cell(st['psnr'], '{:.2f}')} | "
                         f"{_cell(st['ms_ssim'], '{:.3f}')} | {_cell(st['nrmse'], '{:.4f}')} | "
                         f"{_cell(st['halluc_total'], '{:.4f}')} | "
                         f"{_cell(st['s_per_mpx'], '{:.2f}')} |")  # fmt: skip
            best = max(agg, key=lambda k: agg[k]["psnr"][0] if math.isfinite(
                agg[k]["psnr"][0]) else -1e9)  # fmt: skip
            L.append(f"\nBest PSNR in this sweep: `{best[0]}` ({agg[best]['psnr'][0]:.2f} dB).\n")
    return L


def _figure_and_file_lines(figures, out_dir: Path) -> list[str]:
    """The figures (relative links) and the list of files written."""
    L: list[str] = []
    if figures:
        L.append("## Figures\n")
        L.append(
            "Panels: top row input, each method, reference (one display range: the "
            "reference's 0.1-99.7 percentiles, in the units used for scoring); middle row "
            "(if any method sampled more than once) the posterior std; bottom row the data "
            "residual |A y - x| as a fraction of the input's robust range.\n"
        )
        for f in figures:
            rel = os.path.relpath(f, out_dir)
            L.append(f"![{Path(f).stem}]({rel})\n")
    L.append("## Files\n")
    L.append("- `results.csv`: one row per image x method x setting (all metrics, timings).")
    L.append("- `rl_tuning.json`: the RL dev tuning (also cached in `rl_tuning_cache.json`).")
    L.append("- `figures/`: the panels above.\n")
    return L
