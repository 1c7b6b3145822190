"""Held-out synthetic pairs: learned models against Richardson-Lucy (true PSF, automatic stop).

Two kinds of sets:

* ``--pairs-from MODEL_DIR``: pairs drawn like that model's training data (its model.json's
  training configuration), e.g. the cards' held-out pairs of an older bundled model
  (``--seed 20261126``, the bundle script's EVAL_SEED) or the seed-4242 set;
* ``--fields``: 512 x 512 fields with sparse and dense specimens through random widefield
  (or ``--modality confocal``) microscopes at 0.5-1.6 x Nyquist, restored *with the microscope
  given* (``microscope=`` of :func:`piddpm.restore.restore`, so models resample planes outside
  their training range), normalised as a whole with restore's percentile rule.

PSNR / MS-SSIM / NRMSE against the ground truth in the pairs' units (no fit). Usage::

    python benchmarks/bench_heldout.py --pairs-from /tmp/old-models/pi-ddpm-widefield \\
        --seed 20261126 -n 16 --model pi-ddpm-widefield --model /tmp/old-models/pi-ddpm-widefield
    python benchmarks/bench_heldout.py --fields --modality widefield -n 8 \\
        --model pi-ddpm-widefield --model unet-widefield
    python benchmarks/bench_heldout.py --pairs-from src/piddpm/models/pi-ddpm-confocal \\
        --seed 20261126 -n 16 --model pi-ddpm-confocal --with-psf   # + true PSF, guidance both
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


def field_pairs(modality: str, n: int, seed: int, size: int = 512):
    from piddpm.data import MicroscopeRanges, PairedDataset

    ranges = MicroscopeRanges(
        confocal_probability=1.0 if modality == "confocal" else 0.0,
        pixel_nyquist_factor=(0.5, 1.6),
    )
    ds = PairedDataset(
        size=size, length=n, seed=seed, ranges=ranges, n_kernels=n, kernel_size=33,
        normalisation="percentile", field_factor=1, psf_choice="cycle",
    )  # fmt: skip
    pairs = []
    for i in range(n):
        it = ds[i]
        p = it["params"]
        micro = {
            "modality": modality,
            "na": p["na"],
            "em_nm": p["em_wavelength_nm"],
            "ri": p["ri"],
            "pixel_um": p["pixel_size_um"],
        }
        if modality == "confocal":
            micro.update(ex_nm=p["ex_wavelength_nm"], pinhole_au=p["pinhole_au"])
        pairs.append(
            {
                "observed": it["observed"][0].numpy(),
                "gt": it["gt"][0].numpy(),
                "psf": it["psf"][0].numpy(),
                "specimen": it["specimen"],
                "microscope": micro,
                "nyquist": p["pixel_size_um"] / (p["em_wavelength_nm"] * 1e-3 / (4 * p["na"])),
            }
        )
    return pairs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs-from", default=None, help="model folder whose training data to draw")
    ap.add_argument("--fields", action="store_true", help="512^2 fields at 0.5-1.6x Nyquist")
    ap.add_argument("--modality", default="widefield", choices=("widefield", "confocal"))
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--size", type=int, default=128, help="pair side for --pairs-from")
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument(
        "--with-psf",
        action="store_true",
        help="also restore with each learned model given the true PSF RL gets and "
        "guidance both (learned and known-PSF guidance), labelled 'MODEL +psf'",
    )
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from bundle_model import score, synthetic_pairs

    from piddpm.restore import restore

    if args.fields:
        pairs = field_pairs(args.modality, args.n, args.seed)
        label = f"{args.n} fields 512^2 ({args.modality}, 0.5-1.6x Nyquist, seed {args.seed})"
    elif args.pairs_from:
        pairs = synthetic_pairs(Path(args.pairs_from), n=args.n, seed=args.seed, size=args.size)
        label = f"{args.n} pairs like {args.pairs_from} (seed {args.seed}, {args.size}^2)"
    else:
        ap.error("give --pairs-from MODEL_DIR or --fields")
    rows = []
    per: dict[str, list[float]] = {}
    extra = [f"{m} +psf" for m in args.model] if args.with_psf else []
    for name in ["input", "rl", *args.model, *extra]:
        t0 = time.perf_counter()
        scores = []
        for i, p in enumerate(pairs):
            obs = p["observed"]
            if name == "input":
                est = obs
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if name == "rl":
                        res = restore(obs, method="rl", psf=p["psf"], progress=False)
                    else:
                        kw = {"microscope": p["microscope"]} if "microscope" in p else {}
                        if name.endswith(" +psf"):  # the PSF (fields: the microscope's)
                            kw["guidance"] = "both"
                            if "microscope" not in p:
                                kw["psf"] = p["psf"]
                        model = name.removesuffix(" +psf")
                        res = restore(obs, model=model, seed=i, samples=args.samples,
                                      progress=False, **kw)  # fmt: skip
                est = np.asarray(res.mean)
            scores.append(score(est.astype(np.float64), p["gt"]))
        dt = (time.perf_counter() - t0) / len(pairs)
        psnrs = [s["psnr_db"] for s in scores]
        per[name] = psnrs
        row = {
            "method": name,
            "psnr_db": float(np.mean(psnrs)),
            "ms_ssim": float(np.mean([s["ms_ssim"] for s in scores])),
            "nrmse": float(np.mean([s["nrmse"] for s in scores])),
            "seconds_per_image": dt,
        }
        if name not in ("input", "rl"):
            row["wins_vs_rl"] = int(sum(a > b for a, b in zip(psnrs, per["rl"], strict=True)))
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{label}\n")
    print("| method | PSNR (dB) | MS-SSIM | NRMSE | beats RL on | s / image |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        wins = f"{r['wins_vs_rl']}/{len(pairs)}" if "wins_vs_rl" in r else "-"
        print(f"| {r['method']} | {r['psnr_db']:.2f} | {r['ms_ssim']:.4f} | {r['nrmse']:.4f} | "
              f"{wins} | {r['seconds_per_image']:.1f} |")  # fmt: skip
    if "nyquist" in pairs[0]:
        print("\nNyquist factors:", ", ".join(f"{p['nyquist']:.2f}" for p in pairs))
    if args.json:
        Path(args.json).write_text(json.dumps({"set": label, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
