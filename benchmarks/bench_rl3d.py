"""3-D Richardson-Lucy (``rl-3d``): agreement with scikit-image, speed, and a measured bead
stack narrowed axially.

Run: ``python benchmarks/bench_rl3d.py [--threads 1] [--device cpu|cuda] [--skip-skimage]
[--large 1024] [--bead-steps 30] [--redlionfish PYTHON [--only-redlionfish] [--repeats 2]]``

Prints four tables (five with ``--redlionfish``):

1. Agreement: :func:`piddpm.baselines.richardson_lucy_3d` against
   ``skimage.restoration.richardson_lucy`` (n-D) on a 32 x 64 x 64 bead scene blurred by a
   computed widefield PSF, 10 iterations: largest difference relative to the maximum,
   ``m`` voxels from every border (the two differ only in their boundary treatment).
2. Speed, same process: 256^3 x 10 iterations (RedLionfish's benchmark: 5.9 s on a Xeon
   CPU, 3.3 s on an A100) and 64 x 512 x 512 x 20 iterations as the whole
   ``piddpm restore --method rl-3d`` command (a subprocess, reading and writing TIFF) beside
   scikit-image's n-D RL in this process; and ``--large N``: N x N x 35 x 10 iterations,
   with the time per iteration scaled to Deconwolf's 2048 x 2048 x 35 x 50 benchmark
   (37 s on an RTX 3090, 1,079 s on a 4-core CPU), stated as an extrapolation.
3. The measured bead field ``psf-extractor/sample_zstack_stacked_ZYX.tif`` (200 nm beads,
   NA 0.95 air, 520 nm, 108 x 108 x 300 nm voxels; from ``../shared/data`` or
   ``$PIDDPM_SHARED_DATA``) restored with ``rl-3d`` and the computed PSF: median lateral
   and axial FWHM of the isolated beads before and after.
4. ``--redlionfish PYTHON``: side by side with RedLionfish's CPU path
   (``RedLionfishDeconv.doRLDeconvolutionFromNpArrays(..., method="cpu")``, pip package
   ``redlionfish``), which runs under ``PYTHON``, an interpreter of a separate virtual
   environment (RedLionfish is not a dependency of piddpm): 256^3 x 10 iterations with the
   computed 31^3 PSF, both on one thread, timed alternately (a subprocess per RedLionfish run,
   timing only the deconvolution call; best of ``--repeats``), and the agreement of the two
   results ``m`` voxels from every border. ``--only-redlionfish`` skips the other tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BEADS = "psf-extractor/sample_zstack_stacked_ZYX.tif"


def shared_data() -> Path:
    env = os.environ.get("PIDDPM_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def scene(shape, n_beads, psf, seed=0):
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, np.float32)
    gt[tuple(rng.integers(0, shape, (n_beads, 3)).T)] = 100.0
    return (fftconvolve(gt, psf, mode="same") + 1.0).clip(0).astype(np.float32)


def gaussian_psf(shape=(9, 7, 7), sigma=(1.5, 1.0, 1.0)) -> np.ndarray:
    axes = [np.exp(-((np.arange(n) - n // 2) ** 2) / (2 * s * s))
            for n, s in zip(shape, sigma, strict=True)]  # fmt: skip
    psf = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (psf / psf.sum()).astype(np.float32)


def agreement(device) -> None:
    from skimage.restoration import richardson_lucy as sk_rl

    from piddpm.baselines import richardson_lucy_3d
    from piddpm.optics.kernels import make_psf_3d

    psfs = {
        "Gaussian 9 x 7 x 7": gaussian_psf(),
        "widefield NA 0.8, 15^3": make_psf_3d(
            na=0.8, em_nm=520, pixel_um=0.1, z_step_um=0.2, n_z=15, size=15
        ),
    }
    margins = (0, 4, 8, 12, 16, 20)
    print("\n## rl-3d vs scikit-image n-D RL (48 x 96 x 96 beads, 10 iterations)")
    print("max |piddpm - skimage| / max |skimage|, m voxels from every border")
    print("| PSF | " + " | ".join(f"m = {m}" for m in margins) + " |")
    print("|---|" + "---|" * len(margins))
    for name, psf in psfs.items():
        data = scene((48, 96, 96), 150, psf)
        ref = sk_rl(data, psf, num_iter=10, clip=False)
        ours = richardson_lucy_3d(data, psf, 10, device=device)
        errs = []
        for m in margins:
            inner = (slice(m, 48 - m), slice(m, 96 - m), slice(m, 96 - m))
            errs.append(np.abs(ours[inner] - ref[inner]).max() / np.abs(ref[inner]).max())
        print(f"| {name} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")


def speed(device, skip_skimage: bool, large: int) -> None:
    from skimage.restoration import richardson_lucy as sk_rl

    from piddpm.baselines import richardson_lucy_3d
    from piddpm.optics.kernels import make_psf_3d

    print("\n## rl-3d speed (same process; best of 1)")
    print("| job | piddpm | scikit-image n-D | ratio | anchor |")
    print("|---|---|---|---|---|")
    psf = make_psf_3d(na=1.0, em_nm=520, pixel_um=0.1, z_step_um=0.2, n_z=31, size=31)
    vol = scene((256, 256, 256), 2000, psf)
    richardson_lucy_3d(vol[:32, :64, :64], psf[:15, :15, :15], 1, device=device)  # warm-up
    _, t = timed(lambda: richardson_lucy_3d(vol, psf, 10, device=device))
    b = None if skip_skimage else timed(lambda: sk_rl(vol, psf, num_iter=10, clip=False))[1]
    ratio = f"{b / t:.1f}x" if b else "n/a"
    print(f"| 256^3 x 10 it., PSF 31^3 | {t:.1f} s | {b and f'{b:.1f} s'} | {ratio} | "
          "RedLionfish 5.9 s (Xeon CPU), 3.3 s (A100) |")  # fmt: skip
    stack = scene((64, 512, 512), 3000, psf)
    with tempfile.TemporaryDirectory() as tmp:
        import tifffile

        src, psf_file, out = Path(tmp, "s.tif"), Path(tmp, "psf.tif"), Path(tmp, "o.tif")
        tifffile.imwrite(src, stack)
        tifffile.imwrite(psf_file, psf)
        cmd = [sys.executable, "-m", "piddpm", "restore", str(src), "--axes", "ZYX",
               "--method", "rl-3d", "--psf", str(psf_file), "--steps", "20", "-o", str(out),
               "--no-progress", "--device", str(device)]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
        _, t = timed(lambda: subprocess.run(cmd, check=True, capture_output=True, env=env))
    b = None if skip_skimage else timed(lambda: sk_rl(stack, psf, num_iter=20, clip=False))[1]
    ratio = f"{b / t:.1f}x" if b else "n/a"
    print(f"| 64 x 512 x 512 x 20 it., whole `piddpm restore` | {t:.1f} s | "
          f"{b and f'{b:.1f} s'} | {ratio} | issue: skimage ~25 s here |")  # fmt: skip
    if large:
        big = scene((35, large, large), 20000, psf)
        _, t = timed(lambda: richardson_lucy_3d(big, psf, 10, device=device))
        est = t / 10 * 50 * (2048 / large) ** 2
        print(f"| {large} x {large} x 35 x 10 it. (measured) | {t:.1f} s | | | "
              f"-> 2048^2 x 35 x 50 it. ~{est:.0f} s (extrapolated); Deconwolf 1,079 s "
              "(4-core CPU), 37 s (RTX 3090) |")  # fmt: skip


# Runs under RedLionfish's interpreter: argv = volume.npy psf.npy out.npy iterations.
RLF_WORKER = r"""
import json, sys, time
from importlib.metadata import version
import numpy as np, scipy, scipy.fft
from RedLionfishDeconv import doRLDeconvolutionFromNpArrays
vol, psf = np.load(sys.argv[1]), np.load(sys.argv[2])
t0 = time.perf_counter()
out = doRLDeconvolutionFromNpArrays(vol, psf, niter=int(sys.argv[4]), method="cpu")
t = time.perf_counter() - t0
if out is None:
    sys.exit("RedLionfish's CPU path returned None (it logs the error at INFO level)")
np.save(sys.argv[3], out)
print(json.dumps({"seconds": t, "redlionfish": version("redlionfish"), "numpy": np.__version__,
                  "scipy": scipy.__version__, "fft_workers": scipy.fft.get_workers()}))
"""


def rlf_emulation(vol: np.ndarray, psf: np.ndarray, niter: int, fixed: bool = False):
    """RedLionfish's CPU iteration (``RLDeconv3DScipy.doRLDeconvolution_DL2_4``) restated:
    periodic FFT convolutions on the stack's grid, the estimate started from the data, the
    PSF zero-padded to the stack centred at ``(n - k) // 2 + k // 2`` and moved by ``-n // 2``
    (``circulify3D``), its adjoint ``np.flip`` of that. Returns the result and the offsets of
    the forward and adjoint PSF centres from the origin (0 is centred).

    ``fixed``: the same periodic iteration with the PSF centred (forward and adjoint) and
    the estimate started from the data's mean, as piddpm and scikit-image do, so that only
    the boundary model differs from piddpm."""
    import scipy.fft as sfft

    n, k = vol.shape, psf.shape

    def wrap(i, a):
        return (i + a // 2) % a - a // 2

    fwd = tuple(wrap((a - b) // 2 + b // 2 - a // 2, a) for a, b in zip(n, k, strict=True))
    if fixed:
        fwd = (0, 0, 0)
    adj = tuple(wrap(a - 1 - f % a, a) for a, f in zip(n, fwd, strict=True))
    kern = np.zeros(n, np.float32)
    kern[: k[0], : k[1], : k[2]] = psf / psf.sum()
    kern = np.roll(kern, tuple(f - b // 2 for f, b in zip(fwd, k, strict=True)), (0, 1, 2))
    flipped = np.roll(np.flip(kern), (1, 1, 1), (0, 1, 2)) if fixed else np.flip(kern)
    otf, otf_adj = sfft.rfftn(kern), sfft.rfftn(flipped)
    x = np.full_like(vol, vol.mean()) if fixed else vol.astype(np.float32)
    for _ in range(niter):
        u = sfft.irfftn(sfft.rfftn(x) * otf, n)
        x = x * sfft.irfftn(sfft.rfftn(vol / np.where(u == 0, 1e-14, u)) * otf_adj, n)
    return x, fwd, (0, 0, 0) if fixed else adj


def redlionfish(device, python: str, repeats: int) -> None:
    from piddpm.baselines import richardson_lucy_3d
    from piddpm.optics.kernels import make_psf_3d

    psf = make_psf_3d(na=1.0, em_nm=520, pixel_um=0.1, z_step_um=0.2, n_z=31, size=31)
    vol = scene((256, 256, 256), 2000, psf)
    niter = 10
    print(f"\n## Side by side with RedLionfish (CPU), 256^3 x {niter} it., PSF 31^3")
    if torch.get_num_threads() != 1:
        print(f"note: piddpm runs on {torch.get_num_threads()} torch threads (--threads)")
    richardson_lucy_3d(vol[:32, :64, :64], psf[:15, :15, :15], 1, device=device)  # warm-up
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", NUMEXPR_NUM_THREADS="1")  # fmt: skip
    ours_t, theirs_t, info = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        files = [str(Path(tmp, f)) for f in ("vol.npy", "psf.npy", "out.npy")]
        np.save(files[0], vol)
        np.save(files[1], psf)
        for _ in range(repeats):
            cmd = [python, "-c", RLF_WORKER, *files, str(niter)]
            run = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if run.returncode:
                print(f"RedLionfish failed under {python}: {run.stderr.strip()[-500:]}")
                return
            info = json.loads(run.stdout.strip().splitlines()[-1])
            theirs_t.append(info["seconds"])
            ours, t = timed(lambda: richardson_lucy_3d(vol, psf, niter, device=device))
            ours_t.append(t)
        theirs = np.load(files[2])
    print(f"RedLionfish {info['redlionfish']} (numpy {info['numpy']}, scipy {info['scipy']}; "
          f"CPU path = scipy.fft (pocketfft) on {info['fft_workers']} worker(s) + NumPy); "
          f"piddpm on {torch.get_num_threads()} torch thread(s), device {device}")  # fmt: skip
    print(f"| job | piddpm | RedLionfish CPU | ratio | (best of {repeats}, alternated) |")
    print("|---|---|---|---|---|")
    t, b = min(ours_t), min(theirs_t)
    print(f"| 256^3 x {niter} it., PSF 31^3 | {t:.1f} s | {b:.1f} s | {b / t:.1f}x | "
          f"all runs: piddpm {', '.join(f'{v:.1f}' for v in ours_t)} s; "
          f"RedLionfish {', '.join(f'{v:.1f}' for v in theirs_t)} s |")  # fmt: skip
    emu, fwd, adj = rlf_emulation(vol, psf, niter)
    periodic = rlf_emulation(vol, psf, niter, fixed=True)[0]
    ours = np.asarray(ours)
    margins = (0, 16, 32, 48, 64, 96)
    print(f"\nmax |a - b| / max |b|, m voxels from every border (RedLionfish's forward PSF "
          f"centred at {fwd}, its adjoint at {adj} voxels)")  # fmt: skip
    print("| a vs b | " + " | ".join(f"m = {m}" for m in margins) + " |")
    print("|---|" + "---|" * len(margins))
    rows = {"piddpm vs RedLionfish": (ours, theirs),
            "RedLionfish vs its iteration restated in NumPy": (theirs, emu),
            "piddpm vs that iteration with the PSF centred and a constant start": (ours, periodic)}  # fmt: skip
    for name, (a, ref) in rows.items():
        errs = []
        for m in margins:
            inner = tuple(slice(m, s - m) for s in vol.shape)
            errs.append(np.abs(a[inner] - ref[inner]).max() / np.abs(ref[inner]).max())
        print(f"| {name} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")


def isolated_beads(stack: np.ndarray, half: int = 12, min_sep: int = 14, max_n: int = 40):
    """Centres (z, y, x) of bright isolated beads, away from the XY borders."""
    from scipy import ndimage

    smooth = ndimage.uniform_filter(stack.astype(np.float64), 3)
    bg = np.median(smooth)
    peaks = (smooth == ndimage.maximum_filter(smooth, size=(5, 9, 9))) & (
        smooth > bg + 0.3 * (smooth.max() - bg)
    )
    pts = np.argwhere(peaks)
    keep = []
    for p in pts:
        if not (half <= p[1] < stack.shape[1] - half and half <= p[2] < stack.shape[2] - half):
            continue
        d = np.abs(pts[:, 1:] - p[1:]).max(axis=1)
        if ((d < min_sep) & (d > 0)).any():
            continue
        keep.append(tuple(int(v) for v in p))
    return keep[:max_n]


def bead_fwhm(stack: np.ndarray, centres, half: int = 12) -> np.ndarray:
    """Per bead (x, y, z) FWHM in voxels, after subtracting the crop's border median."""
    from piddpm.optics import psf_fwhm_um

    rows = []
    for _, y, x in centres:
        crop = stack[:, y - half : y + half + 1, x - half : x + half + 1].astype(np.float64)
        rim = np.concatenate([crop[:, :2].ravel(), crop[:, -2:].ravel(),
                              crop[:, :, :2].ravel(), crop[:, :, -2:].ravel()])  # fmt: skip
        w = psf_fwhm_um(crop - np.median(rim), 1.0, 1.0)
        rows.append((w["x_um"], w["y_um"], w["z_um"]))
    return np.array(rows)


def bead_stack(device, steps: int) -> None:
    import tifffile

    from piddpm.restore import restore

    path = shared_data() / BEADS
    print(f"\n## Measured bead field (psf-extractor, NA 0.95 air, 520 nm), rl-3d {steps} it.")
    if not path.exists():
        print(f"skipped: {path} not found (set PIDDPM_SHARED_DATA)")
        return
    raw = tifffile.imread(path).astype(np.float32)
    micro = dict(modality="widefield", na=0.95, em_nm=520, pixel_um=0.108, ri=1.0)
    res, t = timed(lambda: restore(raw, method="rl-3d", microscope=micro, z_step_um=0.3,
                                   steps=steps, axes="ZYX", device=str(device)))  # fmt: skip
    out = np.asarray(res.mean)
    centres = isolated_beads(raw)
    before, after = bead_fwhm(raw, centres), bead_fwhm(out, centres)
    ok = np.isfinite(before).all(axis=1) & np.isfinite(after).all(axis=1)
    before, after = before[ok], after[ok]
    scale = np.array([108, 108, 300])
    print(f"{ok.sum()} isolated beads; PSF {res.metadata['psf_shape']}; {t:.0f} s")
    print("| FWHM (median over beads) | x (nm) | y (nm) | z (nm) |")
    print("|---|---|---|---|")
    for name, w in (("raw stack", before), ("rl-3d", after)):
        med = np.median(w, axis=0) * scale
        print(f"| {name} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} |")
    ratio = np.median(after[:, 2] / before[:, 2])
    print(f"(axial FWHM after / before, median over beads: {ratio:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--skip-skimage", action="store_true", help="no scikit-image timings")
    parser.add_argument("--skip-speed", action="store_true", help="no speed table")
    parser.add_argument("--large", type=int, default=1024, help="N of N x N x 35 (0: none)")
    parser.add_argument("--bead-steps", type=int, default=30, help="RL iterations on beads")
    parser.add_argument("--redlionfish", metavar="PYTHON",
                        help="interpreter of a venv with `pip install redlionfish`: compare")  # fmt: skip
    parser.add_argument("--only-redlionfish", action="store_true",
                        help="only the RedLionfish comparison (needs --redlionfish)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=2, help="RedLionfish comparison runs")
    args = parser.parse_args()
    if args.only_redlionfish and not args.redlionfish:
        parser.error("--only-redlionfish needs --redlionfish PYTHON")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}")
    if not args.only_redlionfish:
        agreement(device)
        if not args.skip_speed:
            speed(device, args.skip_skimage, args.large)
        bead_stack(device, args.bead_steps)
    if args.redlionfish:
        redlionfish(device, args.redlionfish, max(args.repeats, 1))


if __name__ == "__main__":
    main()
