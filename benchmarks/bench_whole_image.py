"""Whole real images, not crops: seams, invented background, and PSNR where a reference exists.

Every method restores each *whole* image exactly as ``piddpm restore`` would (the model's own
tiling), and the result is scored with the whole-image faithfulness metrics of
:mod:`piddpm.metrics`:

* ``seam``: :func:`piddpm.metrics.seam_score` on the method's tile grid (1 = like the input;
  the issue's bar is <= 1.5);
* ``bg-inv``: :func:`piddpm.metrics.background_invention`, 2-8 px band-pass energy in the
  darkest 30 % of the plane relative to the input's (< 1: noise removed; > 1: structure
  invented);
* ``bg-inv 8-32``: the same for 8-32 px structure (blotches larger than the PSF);
* ``PSNR``: against the high-SNR partner after an affine fit (:func:`piddpm.metrics.fit_affine`),
  where the data set has one; for the synthetic sparse fields (``--synthetic N``), against
  the ground truth (also after an affine fit).

A figure per image shows a 384 x 384 full-resolution window with a normal LUT (0.1-99.9
percentiles) and with a background-stretched LUT (1st-60th percentile), as a user looks for
tile borders and invented blobs in Fiji.

Usage::

    python benchmarks/bench_whole_image.py --out docs/benchmarks/whole-image \\
        --model widefield=pi-ddpm-widefield --model widefield=unet-widefield \\
        --model confocal=pi-ddpm-confocal [--images quick|all] [--threads 1]

``--model MODALITY=NAME_OR_PATH`` may repeat; each model restores the images of its modality.
Richardson-Lucy (assumed PSF, automatic stop) runs on every image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from piddpm.metrics import background_mask

#: (name, modality, observation, reference or None) relative to ../shared/data
IMAGES = {
    "quick": [
        (
            "w2s-010-ch0",
            "widefield",
            "w2s-via-nd-howard/fov010_ch0_triplet/input_avg1_010_0.tif",
            "w2s-via-nd-howard/fov010_ch0_triplet/target_avg400_010_0.tif",
        ),
        (
            "gigadb-nucleus",
            "widefield",
            "gigadb-hagen2021-via-nd-howard/nucleus-lowsnr-sample.png",
            "gigadb-hagen2021-via-nd-howard/nucleus-highsnr-sample.png",
        ),
        ("stardist-dsb2018", "widefield", "stardist/dsb2018_img2d.tif", None),
        ("xist-tubulin1", "confocal", "xist-nih3t3-microtubules/s_C001Tubulin1.tif", None),
    ],
    "all": [
        (
            "gigadb-mito-60x-1",
            "widefield",
            "gigadb-hagen2021-via-nd-howard/mito-60x-noise1-lowsnr-sample.png",
            "gigadb-hagen2021-via-nd-howard/mito-60x-noise1-highsnr-sample.png",
        ),
        (
            "gigadb-mito-confocal",
            "confocal",
            "gigadb-hagen2021-via-nd-howard/mito-confocal-lowsnr-sample.png",
            "gigadb-hagen2021-via-nd-howard/mito-confocal-highsnr-sample.png",
        ),
    ],
}
IMAGES["all"] = IMAGES["quick"] + IMAGES["all"]


def read_image(path: Path) -> np.ndarray:
    if path.suffix == ".png":
        from PIL import Image

        return np.array(Image.open(path)).astype(np.float32)
    import tifffile

    return np.squeeze(tifffile.imread(path)).astype(np.float32)


def stretched(img: np.ndarray, lo_p: float, hi_p: float, ref: np.ndarray | None = None):
    lo, hi = np.percentile(img if ref is None else ref, (lo_p, hi_p))
    return np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1)


def figure(path: Path, name: str, panels: list[tuple[str, np.ndarray]], window: int = 384):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = panels[0][1].shape
    y0, x0 = max((h - window) // 2, 0), max((w - window) // 2, 0)
    win = (slice(y0, y0 + window), slice(x0, x0 + window))
    fig, axes = plt.subplots(2, len(panels), figsize=(2.6 * len(panels), 5.4), squeeze=False)
    for j, (label, img) in enumerate(panels):
        crop = img[win]
        axes[0, j].imshow(stretched(crop, 0.1, 99.9), cmap="gray", vmin=0, vmax=1)
        axes[1, j].imshow(stretched(crop, 1, 60), cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title(label, fontsize=8)
        for a in axes[:, j]:
            a.set_xticks([])
            a.set_yticks([])
    axes[0, 0].set_ylabel("0.1-99.9 %", fontsize=8)
    axes[1, 0].set_ylabel("1-60 % (background)", fontsize=8)
    fig.suptitle(f"{name}: centre {window} x {window}, full resolution", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sparse_field(modality: str, index: int, seed: int, size: int = 512):
    """A 512^2 field of sparse objects (puncta and nuclei on a dark background) through a random
    microscope of the modality, 0.5-1.6x Nyquist: (observation, ground truth, PSF)."""
    from piddpm.data import MicroscopeRanges, PairedDataset

    ranges = MicroscopeRanges(confocal_probability=1.0 if modality == "confocal" else 0.0)
    ds = PairedDataset(size=size, length=index + 1, seed=seed + 9001, ranges=ranges,
                       n_kernels=8, specimens="puncta:1,nuclei:1",
                       normalisation="percentile")  # fmt: skip
    it = ds[index]
    return it["observed"][0].numpy(), it["gt"][0].numpy(), it["psf"][0].numpy()


def tiling_effect(tiled: np.ndarray, obs: np.ndarray, model, seed: int, md: dict, mask) -> dict:
    """The same restore as one tile over the plane and its mirrored border (the position-
    addressed noise makes it the same draw): the 99.9th percentile and the largest of
    |tiled - untiled| relative to the untiled result's 0.1-99.9 % range, and the seam score
    of the tiled result with the untiled one as reference (1: tiling adds no block levels)."""
    from piddpm.metrics import seam_score
    from piddpm.restore import restore

    side = max(obs.shape[-2:]) + 2 * int(md.get("border_pad") or 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = restore(obs, model=model, seed=seed, tile=side, overlap=0, progress=False)
    u = np.asarray(whole.mean, dtype=np.float32)
    span = float(np.percentile(u, 99.9) - np.percentile(u, 0.1))
    diff = np.abs(tiled - u) / span
    tile, overlap = int(md.get("tile") or 128), int(md.get("overlap") or 0)
    return {
        "tiled_vs_untiled_p999": float(np.percentile(diff, 99.9)),
        "tiled_vs_untiled_max": float(diff.max()),
        "seam_vs_untiled": seam_score(tiled, u, tile, overlap=overlap, mask=mask),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench-out/whole-image")
    ap.add_argument("--model", action="append", default=[], metavar="MODALITY=MODEL")
    ap.add_argument("--images", choices=sorted(IMAGES), default="quick")
    ap.add_argument("--synthetic", type=int, default=0,
                    help="also this many synthetic 512^2 sparse fields per modality with a model")  # fmt: skip
    ap.add_argument("--only", nargs="*", help="image names to run (default: the whole set)")
    ap.add_argument("--data", default=None, help="shared data folder (default: ../shared/data)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--untiled",
        action="store_true",
        help="also restore each image with the learned methods as one tile (the "
        "plane and its mirrored border) and report how far the tiled result is "
        "from it: what tiling alone adds, apart from what the method does",
    )
    ap.add_argument(
        "--with-psf",
        action="store_true",
        help="also restore with each learned model given the PSF RL gets (the real suite's "
        "assumed one, the true one on synthetic fields) and guidance both, labelled "
        "'MODEL +psf'",
    )
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from piddpm.evaluation.config import RealSuiteConfig
    from piddpm.evaluation.suites import assumed_psf, shared_data_dir
    from piddpm.metrics import (
        background_invention,
        fit_affine,
        flat_field_invention,
        psnr,
        seam_score,
    )
    from piddpm.restore import restore

    data = Path(args.data) if args.data else shared_data_dir()
    if data is None or not Path(data).is_dir():
        print("shared data folder not found; give --data", file=sys.stderr)
        return 2
    models: dict[str, list[str]] = {"widefield": [], "confocal": []}
    for spec in args.model:
        modality, _, name = spec.partition("=")
        if modality not in models or not name:
            ap.error(f"--model {spec!r}: expected widefield=MODEL or confocal=MODEL")
        models[modality].append(name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = RealSuiteConfig()
    rows = []
    cases = [(n, m, o, r, None) for n, m, o, r in IMAGES[args.images]]
    cases += [
        (f"synthetic-sparse-{m}-{i}", m, None, None, i)
        for m in ("widefield", "confocal")
        if models[m]
        for i in range(args.synthetic)
    ]
    for name, modality, obs_rel, ref_rel, synth in cases:
        if args.only and name not in args.only:
            continue
        if synth is None:
            obs = read_image(Path(data) / obs_rel)
            ref = read_image(Path(data) / ref_rel) if ref_rel else None
            psf, _, _ = assumed_psf(cfg, modality)
        else:  # ground truth known; RL gets the true PSF
            obs, ref, psf = sparse_field(modality, synth, args.seed)
        panels = [("input", obs)]
        mask = background_mask(obs)  # the input's background, for every method's scores
        # the input scores 1 on both ratios by definition
        base = {"image": name, "modality": modality, "shape": list(obs.shape), "method": "input",
                "tile": None, "overlap": None, "seam": 1.0, "bg_invention": 1.0,
                "bg_invention_8_32": 1.0, "seconds": 0.0}  # fmt: skip
        if ref is not None:
            base["psnr_db"] = float(psnr(fit_affine(obs, ref), ref))
        rows.append(base)
        runs = [("rl", "rl", None)] + [(m, None, m) for m in models[modality]]
        if args.with_psf:
            runs += [(f"{m} +psf", None, m) for m in models[modality]]
        for label, method, model in runs:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kw = {"psf": psf} if method == "rl" else {}
                if label.endswith(" +psf"):
                    kw = {"psf": psf, "guidance": "both"}
                res = restore(obs, method=method, model=model, seed=args.seed, **kw)
            dt = time.perf_counter() - t0
            y = np.asarray(res.mean, dtype=np.float32)
            md = res.metadata
            row = {
                "image": name,
                "modality": modality,
                "shape": list(obs.shape),
                "method": label,
                "tile": md.get("tile"),
                "overlap": md.get("overlap"),
                "seam": seam_score(
                    y,
                    obs,
                    int(md.get("tile") or 128),
                    overlap=int(md.get("overlap") or 0),
                    mask=mask,
                ),
                # RL on its own tiling; the seam grid of a learned model is what matters
                "bg_invention": background_invention(y, obs, mask=mask),
                "bg_invention_8_32": background_invention(y, obs, band_px=(8.0, 32.0), mask=mask),
                "seconds": dt,
            }
            if ref is not None:
                row["psnr_db"] = float(psnr(fit_affine(y, ref), ref))
            if args.untiled and method != "rl":
                row.update(tiling_effect(y, obs, model, args.seed, md, mask))
            rows.append(row)
            panels.append((label if len(label) < 28 else "/".join(Path(label).parts[-2:]), y))
            print(json.dumps(row), flush=True)
        if ref is not None:
            panels.append(("high-SNR reference", ref))
        figure(out / f"{name}.png", name, panels)
    # flat-field test: any structure in the output is invented
    flat_rows = []
    for modality in ("widefield", "confocal"):
        psf, _, _ = assumed_psf(cfg, modality)
        for label, method, model in [("rl", "rl", None)] + [(m, None, m) for m in models[modality]]:
            if method != "rl" and not models[modality]:
                continue

            def fn(img, method=method, model=model, psf=psf):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    kw = {"psf": psf} if method == "rl" else {}
                    return restore(img, method=method, model=model, seed=args.seed,
                                   progress=False, **kw).mean  # fmt: skip

            for photons in (10.0, 100.0):
                r = flat_field_invention(fn, size=256, photons=photons, seed=args.seed)
                flat_rows.append({"modality": modality, "method": label, "photons": photons, **r})
                print(json.dumps(flat_rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps({"images": rows, "flat_field": flat_rows},
                                                 indent=1) + "\n")  # fmt: skip
    lines = [
        "| image | method | tile/overlap | seam | bg-inv 2-8 px | bg-inv 8-32 px | PSNR (dB, affine fit) | s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = f"{r['psnr_db']:.2f}" if "psnr_db" in r else "-"
        lines.append(
            f"| {r['image']} | {r['method']} | {r['tile']}/{r['overlap']} | {r['seam']:.2f} | "
            f"{r['bg_invention']:.2f} | {r['bg_invention_8_32']:.2f} | {p} | {r['seconds']:.0f} |"
        )
    untiled = [r for r in rows if "tiled_vs_untiled_p999" in r]
    if untiled:
        lines += [
            "",
            "Tiling alone (--untiled): the tiled result against the same restore as one tile",
            "",
            "| image | method | |tiled - untiled| / range, 99.9th pct | max | seam vs untiled |",
            "|---|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['image']} | {r['method']} | {r['tiled_vs_untiled_p999']:.4f} | "
            f"{r['tiled_vs_untiled_max']:.4f} | {r['seam_vs_untiled']:.2f} |"
            for r in untiled
        ]
    lines += [
        "",
        "Flat field (256^2, Poisson): band-pass (2-8 px) contrast of the output over the input's",
        "",
        "| modality | method | photons | ratio | output mean / input mean |",
        "|---|---|---:|---:|---:|",
    ]
    for r in flat_rows:
        lines.append(
            f"| {r['modality']} | {r['method']} | {r['photons']:g} | {r['ratio']:.3f} | "
            f"{r['mean_ratio']:.3f} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
