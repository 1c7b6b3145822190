"""Training throughput (images/s) of each network preset and method on one device.

Times the real training step of ``piddpm.training`` (the PI-DDPM / DDPM / U-Net loss, AdamW,
gradient clipping) on fixed random batches, so the number is the network's cost alone; the
simulation of training pairs is measured by ``bench_data.py``. Baseline: fp32 in the same
process; the table gives the bf16 + channels_last speed-up against it.

    python benchmarks/bench_training.py                          # CPU: tiny and small, 64^2
    python benchmarks/bench_training.py --device cuda --presets tiny,small,paper \\
        --patch 128 --batch 32
"""

from __future__ import annotations

import argparse
import time

import torch


def step_rate(preset: str, method: str, precision: str, args) -> float:
    """Images per second of ``args.steps`` timed steps after ``args.warmup`` untimed ones."""
    from piddpm.config import config_from_dict
    from piddpm.training import _autocast, _compute_loss, build_network, build_schedule

    dev = torch.device(args.device)
    channels_last = precision != "fp32"
    cfg = config_from_dict(
        {
            "method": method,
            "model": {"preset": preset},
            "patch_size": args.patch,
            "batch_size": args.batch,
            "precision": precision,
            "channels_last": channels_last,
            "steps": 1000,
        }
    )
    torch.manual_seed(0)
    net = build_network(cfg).to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    schedule = None if method == "unet" else build_schedule(cfg)
    g = torch.Generator().manual_seed(1)
    b, s = args.batch, args.patch
    psf = torch.rand(b, 1, 33, 33, generator=g)
    batch = {
        "gt": torch.rand(b, 1, s, s, generator=g),
        "observed": torch.rand(b, 1, s, s, generator=g),
        "observed_clean": torch.rand(b, 1, s, s, generator=g),
        "psf": psf / psf.sum(dim=(-2, -1), keepdim=True),
    }
    batch = {
        k: (
            v.to(dev).contiguous(memory_format=torch.channels_last)
            if channels_last and k != "psf"
            else v.to(dev)
        )
        for k, v in batch.items()
    }
    gen = torch.Generator(device=dev).manual_seed(2)

    def one_step():
        with _autocast(dev, precision):
            loss, _ = _compute_loss(net, cfg, batch, schedule, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    for _ in range(args.warmup):
        one_step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * b / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--methods", default="pi-ddpm,ddpm,unet")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        where = torch.cuda.get_device_name(args.device)
    else:
        where = f"CPU, {torch.get_num_threads()} threads"
    print(
        f"training throughput, {where}, torch {torch.__version__}; batch {args.batch} x "
        f"{args.patch}^2; {args.steps} timed steps after {args.warmup}; baseline fp32"
    )
    head = f"{'preset':<7} {'method':<8} {'fp32 img/s':>11} {'bf16+CL img/s':>14} {'speed-up':>9}"
    print(head)
    print("-" * len(head))
    for preset in args.presets.split(","):
        for method in args.methods.split(","):
            fp32 = step_rate(preset, method, "fp32", args)
            bf16 = step_rate(preset, method, "bf16", args)
            print(
                f"{preset:<7} {method:<8} {fp32:11.1f} {bf16:14.1f} {bf16 / fp32:8.2f}x", flush=True
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
