"""Out-of-core restore (``piddpm.restore.stream``): peak memory and speed against image size.

Run: ``python benchmarks/bench_scale.py [--sizes 1024 2048 4096] [--memory-sizes 1024 2048]
[--method rl|unet] [--steps 10] [--chunk 1024] [--planes Z] [--workdir DIR]``

For each size ``N`` a synthetic ``N x N`` uint16 plane (blurred beads with shot noise) is
written to an OME-Zarr store chunk by chunk (never whole in memory), then restored in a
fresh Python subprocess, which reports its wall time and its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the whole process: Python, torch, buffers):

- **stream**: ``restore_to_zarr`` (RL with ``--steps`` iterations, or the U-Net with
  ``--method unet``), OME-Zarr in and out, output chunk ``--chunk``;
- **memory**: ``read_image`` + ``restore`` + ``write_zarr``, the in-memory path (only for
  ``--memory-sizes``).

Printed: a Markdown table (size, megapixels, path, seconds, s/MPix, peak RSS MB). The numbers
in ``docs/scale.md`` were measured with this script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np
src, out, path, method, steps, chunk = sys.argv[1:7]
kw = dict(device="cpu", progress=False)
if method == "rl":
    y, x = np.mgrid[:15, :15] - 7
    psf = np.exp(-(x**2 + y**2) / (2 * 1.6**2)); psf = (psf / psf.sum()).astype(np.float32)
    kw.update(method="rl", psf=psf, steps=int(steps))
else:
    kw.update(model="unet-widefield")
t0 = time.perf_counter()
if path == "stream":
    from piddpm.restore.stream import restore_to_zarr
    restore_to_zarr(src, out, chunk=int(chunk), **kw)
else:
    from piddpm.io import read_image, write_zarr
    from piddpm.restore import restore
    img = read_image(src)
    res = restore(img, **kw)
    write_zarr(out, res.mean, axes=img.axes, pixel_size_um=img.pixel_size_um)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_input(path: Path, size: int, chunk: int = 1024, seed: int = 0, planes: int = 0) -> Path:
    """A ``size x size`` uint16 OME-Zarr of blurred beads with Poisson noise, block by block
    (a ``planes x size x size`` ZYX stack when ``planes`` > 0)."""
    import zarr
    from scipy.ndimage import gaussian_filter

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    lead = (planes,) if planes else ()
    arr = root.create_array(
        "0", shape=lead + (size, size), dtype="uint16", chunks=(1,) * len(lead) + (chunk, chunk)
    )
    rng = np.random.default_rng(seed)
    for idx, y0 in ((i, y) for i in np.ndindex(*lead) for y in range(0, size, chunk)):
        for x0 in range(0, size, chunk):
            h, w = min(chunk, size - y0), min(chunk, size - x0)
            block = np.zeros((h, w), np.float32)
            n = h * w // 300
            block[rng.integers(0, h, n), rng.integers(0, w, n)] = rng.uniform(200, 800, n)
            block = gaussian_filter(block, 1.6) * 20 + 100
            arr[idx + (slice(y0, y0 + h), slice(x0, x0 + w))] = rng.poisson(block).clip(0, 65535)
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"[-arr.ndim :]
            ],
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [0.3, 0.1, 0.1][-arr.ndim :]}
                    ],
                }
            ],
        }
    ]
    return path


def measure(src: Path, out: Path, path: str, method: str, steps: int, chunk: int) -> dict:
    """Restore ``src`` in a fresh subprocess; its wall time and peak RSS."""
    cmd = [sys.executable, "-c", CHILD, str(src), str(out), path, method, str(steps), str(chunk)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--memory-sizes", type=int, nargs="*", default=[1024, 2048])
    ap.add_argument("--method", choices=["rl", "unet"], default="rl")
    ap.add_argument("--steps", type=int, default=10, help="RL iterations")
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--planes", type=int, default=0, help="a Z stack of this many planes")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    print("| size | MPix | path | seconds | s/MPix | peak RSS (MB) |")
    print("|---:|---:|---|---:|---:|---:|")
    for size in sorted(set(args.sizes) | set(args.memory_sizes)):
        src = make_input(work / f"in_{size}.zarr", size, planes=args.planes)
        mpix = size * size * max(args.planes, 1) / 1e6
        paths = [
            p
            for p, sizes in (("stream", args.sizes), ("memory", args.memory_sizes))
            if size in sizes
        ]
        for path in paths:
            out = work / f"out_{size}_{path}.zarr"
            r = measure(src, out, path, args.method, args.steps, args.chunk)
            print(
                f"| {size}{f' x {args.planes}' if args.planes else ''} | {mpix:.1f} | {path} | {r['seconds']:.1f} | "
                f"{r['seconds'] / mpix:.2f} | {r['peak_rss_mb']:.0f} |",
                flush=True,
            )
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        import shutil

        shutil.rmtree(src, ignore_errors=True)


if __name__ == "__main__":
    main()
