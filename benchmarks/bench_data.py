"""Throughput of the synthetic training data (``piddpm.data``) beside the training step it feeds.

Run: ``/work/venv/bin/python benchmarks/bench_data.py [--samples 64] [--kernels 64]``

Measured in this process:

- ``PairedDataset`` samples per second (default mixture, default microscope ranges) at 128^2
  and 256^2, through a ``DataLoader`` (batch 8) with 0 and 2 workers, after one warm-up
  batch (worker start-up excluded);
- PSF bank build time, extrapolated to 1000 kernels, for widefield and confocal (default
  ranges: 9 z planes, 33 x 33 kernels, batched optics calls);
- per-specimen render time at 128^2 and 256^2 (default pixel range);
- baseline: one training step of the 'tiny' U-Net (batch 8, 128^2, fp32 Adam, PI-DDPM
  input/output channels) and the data rate it needs (8 / step time); the goal is >= 5x it.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


def _loader_rate(ds, workers: int, n: int) -> float:
    loader = torch.utils.data.DataLoader(
        ds, batch_size=8, num_workers=workers, shuffle=False, persistent_workers=False
    )
    it = iter(loader)
    next(it)  # warm-up: worker start, lazy imports
    t0 = time.perf_counter()
    count = 0
    for batch in it:
        count += batch["gt"].shape[0]
        if count >= n:
            break
    return count / (time.perf_counter() - t0)


def _train_step_time(repeats: int = 3) -> float | None:
    try:
        from piddpm.networks import build_unet
    except ImportError:
        return None
    net = build_unet("tiny")
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.randn(8, 2, 128, 128)
    gamma = torch.rand(8)
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        loss = net(x, gamma).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=64, help="samples timed per setting")
    parser.add_argument("--kernels", type=int, default=64, help="kernels built per bank timing")
    parser.add_argument("--no-train-step", action="store_true", help="skip the U-Net baseline")
    args = parser.parse_args(argv)

    from piddpm.data import (
        SPECIMENS,
        MicroscopeRanges,
        PairedDataset,
        PSFBank,
        render_specimen,
        sample_microscopes,
    )

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    # ---- PSF bank
    for name, prob in (("widefield", 0.0), ("confocal", 1.0)):
        ranges = MicroscopeRanges(confocal_probability=prob)
        t0 = time.perf_counter()
        PSFBank(ranges, args.kernels, seed=123, cache_dir=False)
        dt = time.perf_counter() - t0
        rows.append((f"PSF bank, {name}, 33x33, 9 z", f"{dt / args.kernels * 1000:.1f} s / 1000"))
    with tempfile.TemporaryDirectory() as tmp:
        PSFBank(n_kernels=args.kernels, seed=7, cache_dir=tmp)
        t0 = time.perf_counter()
        PSFBank(n_kernels=args.kernels, seed=7, cache_dir=tmp)
        dt = time.perf_counter() - t0
    rows.append((f"PSF bank, load {args.kernels} from cache", f"{dt * 1000:.1f} ms"))

    # ---- specimens
    rng = np.random.default_rng(0)
    pixels = [m.pixel_size_um for m in sample_microscopes(MicroscopeRanges(), 32, rng)]
    for size in (128, 256):
        for name in SPECIMENS:
            if name == "images":
                continue
            times = []
            for i, px in enumerate(pixels[:12]):
                g = np.random.default_rng(i)
                t0 = time.perf_counter()
                render_specimen(name, size, px, generator=g)
                times.append(time.perf_counter() - t0)
            rows.append((f"render {name} {size}^2", f"{np.median(times) * 1000:.1f} ms (median)"))

    # ---- dataset throughput
    bank = PSFBank(n_kernels=64, seed=0, cache_dir=False)
    rates = {}
    for size in (128, 256):
        ds = PairedDataset(size=size, length=10_000, bank=bank, seed=0)
        for workers in (0, 2):
            r = _loader_rate(ds, workers, args.samples)
            rates[(size, workers)] = r
            rows.append((f"PairedDataset {size}^2, {workers} workers", f"{r:.1f} samples/s"))

    # ---- baseline
    if not args.no_train_step:
        step = _train_step_time()
        if step is not None:
            need = 8 / step
            rows.append(("baseline: tiny U-Net train step, b8 128^2", f"{step:.2f} s"))
            rows.append(("  data rate it consumes", f"{need:.1f} samples/s"))
            best = max(rates[(128, 0)], rates[(128, 2)])
            rows.append(("  data / consumption at 128^2 (goal >= 5)", f"{best / need:.1f}x"))

    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  result")
    print("-" * (width + 24))
    for name, val in rows:
        print(f"{name:<{width}}  {val}")


if __name__ == "__main__":
    main()
