"""PNG figures: restoration panels (like the paper's Fig. 2-3) and ablation plots (Fig. 5)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from piddpm.evaluation.suites import Case

__all__ = ["ablation_plots", "display_units", "panel"]


def save_compact_png(fig, path, dpi: int = 90) -> Path:
    """Save a figure as a 256-colour palette PNG (about 4x smaller than RGBA).

    Report panels are grey images plus one colour map, which a 256-entry adaptive palette
    renders without visible loss; this keeps a committed report at a few MB.
    """
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            path, optimize=True
        )
    return Path(path)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def display_units(case: Case, img: np.ndarray) -> np.ndarray:
    """Map an image of the case's observation units to the units used for scoring.

    Synthetic: specimen units ``(y - background) / s``. Real pairs: affine fit to the
    percentile-normalised reference. Single images: 0.1 / 99.9 percentiles to 0 / 1.
    """
    from piddpm.metrics import fit_affine, normalise_percentile

    y = np.asarray(img, dtype=np.float64)
    if case.reference_kind == "ground truth":
        return (y - case.background) / case.scale
    if case.reference is not None and float(np.std(y)) > 0:
        ref = np.asarray(normalise_percentile(case.reference.astype(np.float64)))
        return np.asarray(fit_affine(y, ref))
    if float(np.ptp(y)) > 0:
        return np.asarray(normalise_percentile(y))
    return y


def _std_units(case: Case, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """A posterior std in the display units of :func:`display_units` (scale only)."""
    from piddpm.metrics import fit_affine, normalise_percentile

    s = np.asarray(std, dtype=np.float64)
    if case.reference_kind == "ground truth":
        return s / case.scale
    if case.reference is not None and float(np.std(mean)) > 0:
        ref = np.asarray(normalise_percentile(case.reference.astype(np.float64)))
        _, a, _ = fit_affine(np.asarray(mean, dtype=np.float64), ref, return_params=True)
        return s * abs(float(a))
    return s / max(float(np.ptp(mean)), 1e-12)


def panel(case: Case, outputs: dict, path: str | Path) -> Path:
    """Write one panel: input, each method, reference; below, posterior std (sampled methods)
    and the data residual ``|A y - x|`` (as a fraction of the input's robust range).

    Parameters
    ----------
    case : Case
    outputs : dict
        ``{label: (mean, std or None)}`` in the observation's units.
    path : path of the PNG.
    """
    from piddpm.evaluation.scoring import blur_reflect

    plt = _plt()
    labels = [k for k in outputs if k != "Input"]
    top = [("Input", case.observed)] + [(k, outputs[k][0]) for k in labels]
    if case.reference is not None:
        top.append((f"Reference ({case.reference_kind})", None))
    n = len(top)
    has_std = any(v[1] is not None for v in outputs.values())
    rows = [0, 1, 2] if has_std else [0, 2]
    fig, grid = plt.subplots(len(rows), n, figsize=(2.4 * n, 2.5 * len(rows)), squeeze=False)
    axes = {r: grid[i] for i, r in enumerate(rows)}
    if case.reference is not None and case.reference_kind == "ground truth":
        ref_disp = case.reference
    elif case.reference is not None:
        from piddpm.metrics import normalise_percentile

        ref_disp = np.asarray(normalise_percentile(case.reference.astype(np.float64)))
    else:
        ref_disp = None
    base = ref_disp if ref_disp is not None else display_units(case, case.observed)
    lo, hi = (float(v) for v in np.percentile(base, [0.1, 99.7]))
    x = np.asarray(case.observed, dtype=np.float64)
    xr = max(float(np.percentile(x, 99.9) - np.percentile(x, 0.1)), 1e-12)
    for j, (title, img) in enumerate(top):
        ax = axes[0][j]
        disp = ref_disp if img is None else display_units(case, img)
        ax.imshow(disp, cmap="magma", vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
        for row in rows[1:]:
            axes[row][j].axis("off")
        if img is None or title == "Input":
            continue
        std = outputs[title][1]
        if std is not None:
            axes[1][j].imshow(_std_units(case, img, std), cmap="viridis")
            axes[1][j].set_title("posterior std", fontsize=7)
        res = np.abs(blur_reflect(np.asarray(img, dtype=np.float64), case.psf) - x) / xr
        axes[2][j].imshow(res, cmap="gray", vmin=0, vmax=0.5)
        axes[2][j].set_title("|A y - x| / range", fontsize=7)
    fig.suptitle(f"{case.dataset} / {case.name}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    save_compact_png(fig, path)
    plt.close(fig)
    return path


def ablation_plots(rows: list[dict], fig_dir: str | Path) -> list[Path]:
    """Fig. 5-style plots: MS-SSIM and PSNR against eta (one line per regulariser), against
    lambda, and against the number of sampling steps (with the time per megapixel)."""
    plt = _plt()
    fig_dir = Path(fig_dir)
    out = []

    def mean_by(rs, col):
        d = defaultdict(list)
        for r in rs:
            v = float(r.get(col, math.nan))
            if math.isfinite(v):
                d[r["setting"]].append(v)
        return {k: float(np.mean(v)) for k, v in d.items()}

    for sweep, xname in (("eta", "eta"), ("lambda", "lam")):
        rs = [r for r in rows if r["dataset"] == sweep]
        if not rs:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for ax, col, name in ((axes[0], "ms_ssim", "MS-SSIM"), (axes[1], "psnr", "PSNR (dB)")):
            m = mean_by(rs, col)
            regs = sorted({k.split(",")[1] for k in m})
            for reg in regs:
                pts = sorted((float(k.split(",")[0].split("=")[1]), v) for k, v in m.items()
                             if k.endswith("," + reg))  # fmt: skip
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=reg.upper())
            ax.set_xlabel(xname)
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"PI-DDPM: influence of {xname}", fontsize=9)
        fig.tight_layout()
        p = fig_dir / f"ablation_{sweep}.png"
        save_compact_png(fig, p)
        plt.close(fig)
        out.append(p)
    rs = [r for r in rows if r["dataset"] == "steps"]
    if rs:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        psnr, spm = mean_by(rs, "psnr"), mean_by(rs, "s_per_mpx")
        steps = {}
        for r in rs:
            try:
                steps[r["setting"]] = float(r["steps"])
            except (TypeError, ValueError):
                continue
        ddim = sorted((steps[k], k) for k in psnr if k.startswith("ddim") and k in steps)
        axes[0].plot([s for s, _ in ddim], [psnr[k] for _, k in ddim], "o-", label="DDIM")
        axes[1].plot([s for s, _ in ddim], [spm[k] for _, k in ddim], "o-", label="DDIM")
        for k in psnr:
            if k.startswith("ddpm") and k in steps:
                axes[0].plot([steps[k]], [psnr[k]], "s", label="DDPM (all T)")
                axes[1].plot([steps[k]], [spm[k]], "s", label="DDPM (all T)")
        for ax, name in ((axes[0], "PSNR (dB)"), (axes[1], "s / MPx")):
            ax.set_xscale("log")
            ax.set_xlabel("sampling steps")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("PI-DDPM: number of sampling steps", fontsize=9)
        fig.tight_layout()
        p = fig_dir / "ablation_steps.png"
        save_compact_png(fig, p)
        plt.close(fig)
        out.append(p)
    return out
