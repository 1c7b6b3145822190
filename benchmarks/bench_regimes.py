"""Which method where: RL, the U-Net and PI-DDPM by specimen and photon count.

Run: ``python benchmarks/bench_regimes.py [--modality widefield|confocal] [--threads 1]
[--models unet-widefield,pi-ddpm-widefield] [--samples 1]``

The demo's microscope and camera (``piddpm.demo``: 256^2 at 110 nm, NA 1.0 water, 520 nm,
background 10 photons, read noise 1.5 e-), four built-in specimens at 20, 200 and 2000
photons at the brightest pixel, seed 0. Each method restores the same observation: RL with
the true PSF, known background and read noise, and the automatic rule
(``richardson_lucy(num_iter="auto", read_noise=1.5)``); the bundled models through
``piddpm.restore.restore`` with their defaults, the PSF and the microscope given (PI-DDPM:
``--samples`` posterior samples averaged). PSNR (dB) against the ground truth after the demo's
physical normalisation ``(v - b) / s``; the best of each row in bold.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch


def main() -> None:
    from _demo_cases import demo_cases
    from piddpm import demo
    from piddpm.baselines import richardson_lucy
    from piddpm.metrics import psnr
    from piddpm.restore import restore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modality", choices=("widefield", "confocal"), default="widefield")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default=None, help="comma-separated (default: U-Net, PI-DDPM)")
    ap.add_argument("--samples", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*no microscope given.*")
    mod = args.modality
    models = (args.models or f"unet-{mod},pi-ddpm-{mod}").split(",")
    micro = demo.MICROSCOPES[mod]
    bg, s = demo.CAMERA["background"], demo.CAMERA["read_noise"]
    psf, cases = demo_cases(mod)
    given = {"modality": mod, "na": micro.na, "em_nm": micro.em_wavelength_nm, "ri": micro.ri}
    print(f"\n## PSNR (dB) by specimen and photons ({mod}; PI-DDPM samples: {args.samples})")
    print("| specimen | photons peak | input | RL | " + " | ".join(models) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(models))
    for spec, photons, gt, obs, scale in cases:
        u = richardson_lucy(obs, psf.astype(np.float32), "auto", background=bg, read_noise=s)
        vals = [psnr((obs - bg) / scale, gt), psnr(np.asarray(u, np.float64) / scale, gt)]
        for m in models:
            res = restore(
                obs, model=m, psf=psf.astype(np.float32), seed=0, device="cpu",
                progress=False, pixel_size_um=demo.PIXEL_SIZE_UM, microscope=given,
                samples=args.samples if m.startswith("pi-ddpm") else 1,
            )  # fmt: skip
            vals.append(psnr((np.asarray(res.mean, np.float64) - bg) / scale, gt))
        best = int(np.argmax(vals[1:])) + 1
        cells = [f"**{v:.2f}**" if i == best else f"{v:.2f}" for i, v in enumerate(vals)]
        print(f"| {spec} | {photons:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
