"""Timings of piddpm.metrics at 256^2 and 512^2 beside scikit-image / pytorch_msssim.

Run: ``/work/venv/bin/python benchmarks/bench_metrics.py [--repeats 5] [--sizes 256 512]
[--threads 1]`` (one thread gives steadier numbers on a shared machine).

Each time is the best of ``--repeats`` interleaved runs on one float64 image pair (pytorch_msssim on
float32 tensors, its usual use), measured in this process. ``ratio`` = piddpm / baseline
(< 1: piddpm faster). piddpm computes in float64 throughout (see docs/metrics.md).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from scipy.ndimage import gaussian_filter


def best_times(fns, repeats: int) -> list[float]:
    """Best-of-``repeats`` wall time of each function, runs interleaved so that a busy
    machine slows all of them alike."""
    for fn in fns:
        fn()  # warm-up (allocations, lazy imports)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="runs per timing (best kept)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image side, px")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    import pytorch_msssim
    import skimage.metrics as skm

    from piddpm import metrics as M

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| metric | size | piddpm (ms) | baseline | baseline (ms) | ratio |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        bench_size(n, args.repeats, M, skm, pytorch_msssim)


def bench_size(n: int, repeats: int, M, skm, pytorch_msssim) -> None:
    """Print the table rows for one image size (the lambdas close over this call's data)."""
    rng = np.random.default_rng(0)
    ref = gaussian_filter(rng.random((n, n)), 2.0)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    pred = ref + rng.normal(0, 0.05, ref.shape)
    pred2 = ref + rng.normal(0, 0.05, ref.shape)
    std = np.full_like(ref, 0.05)
    tp = torch.from_numpy(pred).float()[None, None]
    tr = torch.from_numpy(ref).float()[None, None]
    rows = [
        (
            "psnr",
            lambda: M.psnr(pred, ref, data_range=1.0),
            "skimage",
            lambda: skm.peak_signal_noise_ratio(ref, pred, data_range=1.0),
        ),
        (
            "nrmse",
            lambda: M.nrmse(pred, ref),
            "skimage",
            lambda: skm.normalized_root_mse(ref, pred, normalization="min-max"),
        ),
        (
            "ssim",
            lambda: M.ssim(pred, ref, data_range=1.0),
            "skimage",
            lambda: skm.structural_similarity(
                ref,
                pred,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            ),
        ),
        (
            "ssim",
            lambda: M.ssim(pred, ref, data_range=1.0),
            "pytorch_msssim f32",
            lambda: pytorch_msssim.ssim(tp, tr, data_range=1.0),
        ),
        (
            "ms_ssim",
            lambda: M.ms_ssim(pred, ref, data_range=1.0),
            "pytorch_msssim f32",
            lambda: pytorch_msssim.ms_ssim(tp, tr, data_range=1.0),
        ),
        ("frc_resolution (2 img)", lambda: M.frc_resolution(pred, pred2), None, None),
        ("frc_resolution (1 img)", lambda: M.frc_resolution(pred), None, None),
        ("decorrelation_resolution", lambda: M.decorrelation_resolution(pred), None, None),
        ("hallucination_score", lambda: M.hallucination_score(pred, ref), None, None),
        (
            "uncertainty_calibration",
            lambda: M.uncertainty_calibration(pred, std, ref),
            None,
            None,
        ),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, ours, base_name, base in rows:
            if base is None:
                t_ours = best_times([ours], repeats)[0] * 1e3
                print(f"| {name} | {n}^2 | {t_ours:.1f} | none | - | - |")
                continue
            t_ours, t_base = (t * 1e3 for t in best_times([ours, base], repeats))
            print(
                f"| {name} | {n}^2 | {t_ours:.1f} | {base_name} | {t_base:.1f} "
                f"| {t_ours / t_base:.2f} |"
            )


if __name__ == "__main__":
    main()
