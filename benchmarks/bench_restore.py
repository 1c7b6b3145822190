"""Benchmark ``piddpm.restore``: seconds per megapixel and peak memory, per method/sampler.

Each configuration runs in its own subprocess (so peak resident memory, ``ru_maxrss``, is
that configuration's alone; ``tracemalloc`` adds the peak NumPy/Python allocation).
The same-process baseline for every row is the operator applied to the whole plane in
one call, without tiling (where it fits), so the table shows what tiling and blending cost.

Models: the bundled ``widefield`` model when installed, else random-weight ``tiny`` U-Nets
(timing only: they do not restore anything). Also writes the seam figure (a random tiny
U-Net over 96-px tiles: hard stitching vs blending, and the column-difference profile).

    python benchmarks/bench_restore.py            # 512^2 and 2048^2, a few minutes on 2 CPUs
    python benchmarks/bench_restore.py --full     # + 2048^2 x 10 stack, + more sampler steps
    python benchmarks/bench_restore.py --full --device cuda --batch-size 32   # on a GPU

On a GPU each configuration first restores a 256^2 image (CUDA start-up and cuDNN
autotuning are not counted) and the table adds the peak GPU memory.
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

HERE = Path(__file__).resolve().parent


def _make_models(folder: Path) -> dict[str, str]:
    """Random-weight tiny models (pi-ddpm, unet) unless bundled ones exist."""
    import torch

    from piddpm.models import list_models
    from piddpm.networks import build_unet, save_model

    bundled = {e.method: e.name for e in list_models()}
    out = {}
    for method, (cin, cout, cond) in {"pi-ddpm": (2, 2, True), "unet": (1, 1, False)}.items():
        if method in bundled:
            out[method] = bundled[method]
            continue
        torch.manual_seed(0)
        net = build_unet("tiny", cin, cout, conditioned=cond)
        cfg = {
            "format": "piddpm-model",
            "method": method,
            "target": None if method == "unet" else "residual",
            "schedule": None
            if method == "unet"
            else {"kind": "linear", "T": 200, "beta_start": 1e-4, "beta_end": 0.03},
        }
        (folder / method).mkdir(parents=True, exist_ok=True)
        save_model(folder / method / "model", net, cfg)
        out[method] = str(folder / method)
    return out


def _test_image(shape, seed=0):
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    gt = np.zeros(shape[-2:], np.float32)
    n = max(shape[-1] * shape[-2] // 400, 10)
    gt[rng.integers(0, shape[-2], n), rng.integers(0, shape[-1], n)] = 1.0
    plane = ndimage.gaussian_filter(gt, 2.0) * 2000 + 100
    plane = rng.poisson(plane).astype(np.float32)
    if len(shape) == 3:
        return np.broadcast_to(plane, shape).copy()
    return plane


def worker(spec: dict) -> dict:
    """Run one configuration (in a fresh process) and report time and memory."""
    import resource
    import tracemalloc

    import numpy as np
    import torch

    from piddpm.restore import restore
    from piddpm.tiling import crop_to, pad_to_multiple

    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    img = _test_image(tuple(spec["shape"]))
    psf = None
    y, x = np.mgrid[:15, :15] - 7
    psf = np.exp(-(x**2 + y**2) / (2 * 2.0**2)).astype(np.float32)
    psf /= psf.sum()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kwargs = dict(spec["kwargs"])
    if spec["method"] == "rl":
        kwargs.update(method="rl", psf=psf)
    device = spec.get("device", "cpu")
    cuda = device.startswith("cuda")
    if cuda:  # warm-up: CUDA context, model upload, cuDNN autotuning
        restore(_test_image((256, 256), seed=1), progress=False, device=device, **kwargs)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tracemalloc.start()
    t0 = time.perf_counter()
    res = restore(img, progress=False, device=device, residual=False, **kwargs)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    _, peak_py = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "seconds": seconds,
        "peak_rss_mb": rss / 1024,
        "rss_added_mb": (rss - base_rss) / 1024,
        "peak_numpy_mb": peak_py / 2**20,
        "steps": res.metadata.get("steps"),
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }
    if cuda:  # the no-tiling baseline below is a CPU measurement
        out["baseline_seconds"] = None
        return out
    # same-process baseline: the operator on the whole plane in one call (no tiles)
    plane = img if img.ndim == 2 else img[0]
    lo, hi = np.percentile(plane, [0.1, 99.9])
    t0 = time.perf_counter()
    if spec["method"] == "rl":
        from piddpm.baselines import richardson_lucy

        steps = res.metadata["steps"]
        n_iter = steps if isinstance(steps, int) else steps[0]
        richardson_lucy(
            torch.from_numpy((plane - lo) / (hi - lo)).clamp_min(0)[None, None],
            torch.from_numpy(psf),
            n_iter,
        )
    elif spec["method"] == "unet" and plane.size <= 2048 * 2048:
        from piddpm.models import load_entry, resolve_model

        net = load_entry(resolve_model(kwargs["model"]))
        with torch.no_grad():
            p, size = pad_to_multiple((2 * (plane - lo) / (hi - lo) - 1)[None, None], 8)
            crop_to(net(torch.from_numpy(np.ascontiguousarray(p, np.float32)), None), size)
    else:
        out["baseline_seconds"] = None
        return out
    per_plane = time.perf_counter() - t0
    out["baseline_seconds"] = per_plane * (img.shape[0] if img.ndim == 3 else 1)
    return out


def run_config(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def seam_figure(path: Path) -> None:
    """Hard stitching vs blending of a random tiny U-Net over 96-px tiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from scipy import ndimage

    from piddpm.networks import build_unet
    from piddpm.tiling import axis_starts, crop_to, pad_to_multiple, restore_tiled

    torch.manual_seed(0)
    net = build_unet("tiny", 1, 1, conditioned=False).eval()
    rng = np.random.default_rng(1)
    img = ndimage.gaussian_filter(rng.random((288, 288)), 4).astype(np.float32)
    img = (img - img.min()) / (img.max() - img.min())

    @torch.no_grad()
    def fn(b):
        p, s = pad_to_multiple(b, net.downsample_factor)
        return crop_to(net(torch.from_numpy(p), None), s)

    hard = restore_tiled(fn, img, 96, 0, 4)[0]
    blend = restore_tiled(fn, img, 96, 32, 4)[0]
    fig, ax = plt.subplots(1, 3, figsize=(13, 4.2))
    for a, im, title in (
        (ax[0], hard, "hard stitching (overlap 0)"),
        (ax[1], blend, "Hann blending (overlap 32)"),
    ):
        a.imshow(im, cmap="gray")
        a.set_title(title)
        a.axis("off")
    for name, im in (("stitched", hard), ("blended", blend)):
        d = np.abs(np.diff(im, axis=1)).max(axis=0)
        ax[2].plot(np.arange(len(d)) + 0.5, d, label=name)
    for s in axis_starts(288, 96, 0)[1:]:
        ax[2].axvline(s - 0.5, color="grey", lw=0.5, ls=":")
    ax[2].set_xlabel("column boundary (px); dotted: hard tile edges")
    ax[2].set_ylabel("max |column difference|")
    ax[2].legend()
    fig.suptitle("Seams of a tile-wise random tiny U-Net, 288 x 288 image, 96-px tiles")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--full", action="store_true", help="add the 2048^2 x PLANES stack and more sampler steps"
    )
    ap.add_argument("--out", default=str(HERE / "out"), help="folder for the seam figure (PNG)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--planes", type=int, default=10, help="planes of the --full 2048^2 stack")
    ap.add_argument(
        "--methods", default="rl,unet,pi-ddpm", help="comma-separated subset of rl,unet,pi-ddpm"
    )
    ap.add_argument(
        "--batch-size", type=int, default=4, help="tiles per network call (restore's batch_size)"
    )
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="bench_restore_"))
    models = _make_models(tmp)
    sizes = [(512, 512), (2048, 2048)] + ([(args.planes, 2048, 2048)] if args.full else [])
    configs = []
    for shape in sizes:
        big = len(shape) == 3 or shape[-1] >= 2048
        configs.append(("rl", "auto iterations", shape, {"tile": 256}))
        configs.append(("unet", "-", shape, {"model": models["unet"], "tile": 256}))
        ddim_steps = [5] if not args.full else [5, 10, 20]
        if big and not args.full:
            ddim_steps = []
        for steps in ddim_steps:
            configs.append(
                (
                    "pi-ddpm",
                    f"ddim {steps}",
                    shape,
                    {"model": models["pi-ddpm"], "steps": steps, "tile": 256},
                )
            )
        if not big:
            configs.append(
                (
                    "pi-ddpm",
                    "ddim 5, 4 samples",
                    shape,
                    {"model": models["pi-ddpm"], "steps": 5, "samples": 4, "tile": 256},
                )
            )
    print(
        f"piddpm restore benchmark, {args.device}"
        + (f" ({torch.cuda.get_device_name(args.device)})" if args.device != "cpu" else "")
        + f", torch {torch.__version__}, batch {args.batch_size}, "
        f"{os.cpu_count()} CPUs, threads {torch.get_num_threads()}; models: "
        f"{', '.join(f'{k}={Path(v).name}' for k, v in models.items())}"
    )
    print("baseline: the same operator on the whole plane in one call (no tiling)")
    head = (
        f"{'method':<8} {'setting':<18} {'shape':<14} {'s/MP':>8} {'base s/MP':>9} "
        f"{'peak RSS MB':>11} {'+RSS MB':>8} {'numpy MB':>8} {'GPU MB':>7}"
    )
    print(head)
    print("-" * len(head))
    wanted = {m.strip() for m in args.methods.split(",")}
    for method, setting, shape, kw in configs:
        if method not in wanted:
            continue
        if method != "rl":
            kw = {**kw, "batch_size": args.batch_size}
        r = run_config(
            {"method": method, "shape": list(shape), "kwargs": kw, "device": args.device}
        )
        mp = float(__import__("numpy").prod(shape)) / 1e6
        label = "x".join(str(s) for s in shape)
        if "error" in r:
            print(f"{method:<8} {setting:<18} {label:<14} error: {r['error']}")
            continue
        base = r.get("baseline_seconds")
        base_s = f"{base / mp:9.2f}" if base else f"{'-':>9}"
        if method == "rl":
            setting = f"auto ({r['steps']} it)" if not isinstance(r["steps"], list) else setting
        print(
            f"{method:<8} {setting:<18} {label:<14} {r['seconds'] / mp:8.2f} {base_s} "
            f"{r['peak_rss_mb']:11.0f} {r['rss_added_mb']:8.0f} {r['peak_numpy_mb']:8.0f} "
            + (f"{r['gpu_peak_mb']:7.0f}" if r.get("gpu_peak_mb") is not None else f"{'-':>7}")
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seam_figure(out / "seams.png")
    print(f"seam figure: {out / 'seams.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
