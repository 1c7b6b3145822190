"""Speed and accuracy of ``piddpm.optics`` beside independent baselines in the same process.

Run: ``/work/venv/bin/python benchmarks/bench_optics.py [--threads 1] [--repeats 3]
[--device cpu|cuda] [--skip-bead]``

Prints three tables:

1. PSF generation time (best of ``--repeats``) for a 2-D kernel (129 x 129), 3-D PSFs
   (64^3 and 128 x 128 x 32) and batches of 256 2-D kernels (33 x 33 and 65 x 65, random
   microscopes from the paper's ranges), widefield and confocal, each beside ``psfmodels``
   (vectorial, C++) doing the same job in this process (batches: a loop over the same
   microscopes), with the ratio ``psfmodels / piddpm`` (> 1: piddpm faster).
2. The measured bead ``pyotf/psf_wl520nm_z300nm_x130nm_na0.85_n1.0.tif`` (520 nm, NA 0.85,
   air, 130 nm pixels, 300 nm steps; read from ``../shared/data`` or ``$PIDDPM_SHARED_DATA``):
   lateral (x, y) and axial FWHM after background subtraction, beside the model's (piddpm and
   psfmodels) on the same voxel grid. A benchmark figure, not a pass/fail bound: the bead
   has a finite size, the camera integrates over pixels and the real objective is aberrated.
3. FFT blur throughput of ``piddpm.acquisition.blur`` (megapixels / s) beside
   ``scipy.signal.fftconvolve``, and Richardson-Lucy (512 x 512, 31 x 31 PSF, 30 iterations)
   ``piddpm.baselines.richardson_lucy`` beside ``skimage.restoration.richardson_lucy``.

Torch runs with ``--threads`` intra-op threads (default 1: psfmodels and scikit-image are
single-threaded, and on a shared 2-core machine extra threads make timings erratic).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

BEAD = "pyotf/psf_wl520nm_z300nm_x130nm_na0.85_n1.0.tif"


def shared_data() -> Path:
    env = os.environ.get("PIDDPM_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (lazy initialisation, allocator)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def best_times_interleaved(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Best times of two functions timed alternately (after one warm-up call each)."""
    fn_a(), fn_b()
    best_a = best_b = float("inf")
    for _ in range(repeats):
        for fn, which in ((fn_a, "a"), (fn_b, "b")):
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if which == "a":
                best_a = min(best_a, dt)
            else:
                best_b = min(best_b, dt)
    return best_a, best_b


def fmt_time(t: float | None) -> str:
    if t is None:
        return "n/a"
    return f"{t * 1e3:9.1f} ms" if t < 10 else f"{t:9.2f} s "


def row(name: str, ours: float | None, base: float | None, note: str = "") -> None:
    ratio = f"{base / ours:7.1f}x" if ours and base else "    n/a"
    print(f"| {name:<42} | {fmt_time(ours)} | {fmt_time(base)} | {ratio} | {note}")


def psf_speed(repeats: int, device: str) -> None:
    from piddpm.optics import confocal_psf, widefield_psf, z_positions_um

    try:
        import psfmodels
    except ImportError:
        psfmodels = None
    print("\n## PSF generation (best of", repeats, "runs; psfmodels = same job, same process)")
    print(f"| {'job':<42} | {'piddpm':>12} | {'psfmodels':>12} | {'ratio':>8} | notes")
    print(f"|{'-' * 44}|{'-' * 14}|{'-' * 14}|{'-' * 10}|------")
    kw = dict(NA=0.9, wvl=0.52, ni=1.33, ni0=1.33, ns=1.33, model="vectorial")

    def pm(fn):
        return None if psfmodels is None else best_time(fn, repeats)

    t = best_time(lambda: widefield_psf(0.9, 520, 0.05, 129, device=device), repeats)
    b = pm(lambda: psfmodels.make_psf(1, 129, dxy=0.05, dz=0.1, **kw))
    row("widefield 2-D kernel 129 x 129", t, b, "NA 0.9 water, 50 nm px")
    for nz, nxy, dz in ((64, 64, 0.05), (32, 128, 0.1)):
        z = z_positions_um(nz, dz)
        t = best_time(
            lambda z=z, nxy=nxy: widefield_psf(0.9, 520, 0.05, nxy, z_um=z, device=device), repeats
        )
        b = pm(lambda nz=nz, nxy=nxy, dz=dz: psfmodels.make_psf(nz, nxy, dxy=0.05, dz=dz, **kw))
        row(f"widefield 3-D {nxy} x {nxy} x {nz}", t, b, f"dz {dz} um")
    z64 = z_positions_um(64, 0.05)
    t = best_time(
        lambda: confocal_psf(0.9, 488, 520, 1.0, 0.05, 64, z_um=z64, device=device), repeats
    )
    b = pm(
        lambda: psfmodels.confocal_psf(
            64, 64, dxy=0.05, dz=0.05, NA=0.9, ex_wvl=0.488, em_wvl=0.52, pinhole_au=1.0,
            ni=1.33, ni0=1.33, ns=1.33,
        )
    )  # fmt: skip
    row("confocal 3-D 64^3, 1 AU", t, b, "ex 488 / em 520")

    gen = torch.Generator().manual_seed(0)
    n = 256
    na = 0.4 + 0.6 * torch.rand(n, generator=gen)
    em = 450 + 100 * torch.rand(n, generator=gen)
    ex = 320 + 80 * torch.rand(n, generator=gen)
    px = 0.04 + 0.02 * torch.rand(n, generator=gen)
    pin = 1.0 * torch.rand(n, generator=gen)
    n_loop = 32  # psfmodels loop over the first 32 microscopes, scaled to 256
    for k in (33, 65):
        t = best_time(lambda k=k: widefield_psf(na, em, px, k, device=device), repeats)
        b = None
        if psfmodels is not None:

            def loop(k=k):
                for i in range(n_loop):
                    psfmodels.make_psf(
                        1, k, dxy=float(px[i]), dz=0.1, NA=float(na[i]), wvl=float(em[i]) * 1e-3,
                        ni=1.33, ni0=1.33, ns=1.33, model="vectorial",
                    )  # fmt: skip

            b = best_time(loop, 1) * n / n_loop
        row(f"widefield batch of 256 kernels {k} x {k}", t, b, f"{t / n * 1e3:.3f} ms/kernel")
        t = best_time(lambda k=k: confocal_psf(na, ex, em, pin, px, k, device=device), repeats)
        b = None
        if psfmodels is not None:

            def loop_c(k=k):
                for i in range(n_loop // 4):
                    psfmodels.confocal_psf(
                        1, k, dxy=float(px[i]), NA=float(na[i]), ex_wvl=float(ex[i]) * 1e-3,
                        em_wvl=float(em[i]) * 1e-3, pinhole_au=float(pin[i]),
                        ni=1.33, ni0=1.33, ns=1.33,
                    )  # fmt: skip

            b = best_time(loop_c, 1) * n / (n_loop // 4)
        row(f"confocal batch of 256 kernels {k} x {k}", t, b, f"{t / n * 1e3:.3f} ms/kernel")
    print("(batch: NA 0.4-1.0, em 450-550 nm, ex 320-400 nm, pinhole 0-1 AU, px 40-60 nm;")
    print(f" psfmodels looped over {n_loop} widefield / {n_loop // 4} confocal, scaled to 256)")


def bead_comparison() -> None:
    import tifffile

    from piddpm.optics import psf_fwhm_um, widefield_psf, z_positions_um

    path = shared_data() / BEAD
    print("\n## Measured bead vs model (520 nm, NA 0.85, air, 130 nm px, 300 nm z)")
    if not path.exists():
        print(f"skipped: {path} not found (set PIDDPM_SHARED_DATA)")
        return
    stack = tifffile.imread(path).astype(np.float64)  # (Z, Y, X)
    # background: median of the outer frame of every plane
    frame = np.concatenate([stack[:, :8].ravel(), stack[:, -8:].ravel(),
                            stack[:, :, :8].ravel(), stack[:, :, -8:].ravel()])  # fmt: skip
    bead = stack - np.median(frame)
    # locate the bead: brightest voxel of a 3 x 3 x 3 box-smoothed copy (robust to hot pixels)
    from scipy.ndimage import uniform_filter

    iz, iy, ix = np.unravel_index(np.argmax(uniform_filter(bead, 3)), bead.shape)
    half = 16
    crop = bead[:, iy - half : iy + half + 1, ix - half : ix + half + 1]
    measured = psf_fwhm_um(crop, 0.13, 0.3)
    nz = stack.shape[0]
    z = z_positions_um(nz, 0.3)
    model = psf_fwhm_um(
        widefield_psf(0.85, 520, 0.13, 33, ri=1.0, z_um=z, dtype=torch.float64).numpy(), 0.13, 0.3
    )
    rows = [("measured bead (background-subtracted)", measured), ("piddpm vectorial", model)]
    try:
        import psfmodels

        ref = psfmodels.make_psf(
            nz, 33, dxy=0.13, dz=0.3, NA=0.85, wvl=0.52, ni=1.0, ni0=1.0, ns=1.0,
            model="vectorial",
        )  # fmt: skip
        rows.append(("psfmodels vectorial (3x pixel oversampling)", psf_fwhm_um(ref, 0.13, 0.3)))
    except ImportError:
        pass
    print(f"| {'PSF':<44} | FWHM x (nm) | FWHM y (nm) | FWHM z (nm) | z / measured")
    print(f"|{'-' * 46}|-------------|-------------|-------------|------------")
    for name, w in rows:
        print(
            f"| {name:<44} | {w['x_um'] * 1e3:11.0f} | {w['y_um'] * 1e3:11.0f} | "
            f"{w['z_um'] * 1e3:11.0f} | {w['z_um'] / measured['z_um']:10.2f}"
        )
    print(f"(bead peak at z={iz}, y={iy}, x={ix}; lateral model/measured "
          f"{0.5 * (model['x_um'] + model['y_um']) / (0.5 * (measured['x_um'] + measured['y_um'])):.2f})")  # fmt: skip


def blur_and_rl(repeats: int) -> None:
    from scipy.signal import fftconvolve

    from piddpm.optics import widefield_psf

    print("\n## Blur throughput and Richardson-Lucy (same process)")
    print(f"| {'job':<42} | {'piddpm':>12} | {'baseline':>12} | {'ratio':>8} | notes")
    print(f"|{'-' * 44}|{'-' * 14}|{'-' * 14}|{'-' * 10}|------")
    psf = widefield_psf(0.9, 520, 0.05, 31)[0]
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((8, 1, 512, 512), dtype=np.float32))
    mpix = images.numel() / 1e6
    try:
        from piddpm.acquisition import blur

        t = best_time(lambda: blur(images, psf[None, None]), repeats)
    except ImportError:
        t = None
    np_img, np_psf = images.numpy(), psf.numpy()
    b = best_time(lambda: [fftconvolve(im[0], np_psf, mode="same") for im in np_img], repeats)
    note = "scipy fftconvolve; " + (
        f"{mpix / t:.0f} vs {mpix / b:.0f} MP/s" if t else f"baseline {mpix / b:.0f} MP/s"
    )
    row("blur 8 x 512^2, 31 x 31 PSF (zero boundary)", t, b, note)

    rl_vs_skimage(np_img, np_psf, psf, repeats)


def rl_vs_skimage(np_img: np.ndarray, np_psf: np.ndarray, psf: torch.Tensor, repeats: int) -> None:
    """Richardson-Lucy 512^2 x 30 iterations: piddpm (defaults) vs scikit-image, same
    process, same data; plus the interior agreement and a batch of 8 planes."""
    from scipy.signal import fftconvolve
    from skimage.restoration import richardson_lucy as sk_rl

    from piddpm.baselines import richardson_lucy

    img = fftconvolve(np_img[0, 0], np_psf, mode="same").astype(np.float32) + 0.01
    # interleaved (piddpm, scikit-image, piddpm, ...), best of each: a shared machine's
    # load then weighs on both alike
    t, b = best_times_interleaved(
        lambda: richardson_lucy(torch.from_numpy(img), psf, 30),
        lambda: sk_rl(img, np_psf, num_iter=30, clip=False),
        max(repeats, 5),
    )
    ours = richardson_lucy(torch.from_numpy(img), psf, 30).numpy()
    ref = sk_rl(img, np_psf, num_iter=30, clip=False)
    inner = (slice(48, -48),) * 2
    err = np.abs(ours[inner] - ref[inner]).max() / np.abs(ref[inner]).max()
    row("Richardson-Lucy 512^2, 30 iterations", t, b, f"float32; 48 px in: max rel diff {err:.1e}")
    stack = np.stack([img] * 8)
    t8 = best_time(lambda: richardson_lucy(torch.from_numpy(stack)[:, None], psf, 30), repeats)
    row("RL 8 planes 512^2 x 30 (one batched call)", t8, 8 * b, "baseline: 8 x skimage")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per job (best kept)")
    parser.add_argument("--device", default="cpu", help="torch device for piddpm (cpu, cuda)")
    parser.add_argument("--skip-bead", action="store_true", help="skip the measured-bead table")
    parser.add_argument("--rl-only", action="store_true", help="only the blur / RL table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}")
    if not args.rl_only:
        psf_speed(args.repeats, args.device)
    if not args.skip_bead and not args.rl_only:
        bead_comparison()
    blur_and_rl(args.repeats)


if __name__ == "__main__":
    main()
