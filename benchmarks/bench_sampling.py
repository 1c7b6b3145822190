"""Benchmark the samplers of a trained (PI-)DDPM model on held-out synthetic data.

Usage::

    python benchmarks/bench_sampling.py --restore pi-ddpm-widefield [--n-images 16]
                                              [--settings ddim:20,ddim:10,dpm-solver++:10]
    python benchmarks/bench_sampling.py --presets        # network presets: params, CPU times
    python benchmarks/bench_sampling.py MODEL [--n-images 4] [--size 256] [--seed 987654]
                                              [--quick] [--autocast]

``MODEL`` is a model written by :func:`piddpm.networks.save_model` (stem, ``.json`` or
``.safetensors``), e.g. the output of ``piddpm train``. Pairs come from
``piddpm.data.PairedDataset`` with a seed not used in training. For each sampler setting
the table gives PSNR / MS-SSIM / NRMSE against the ground truth (mean over images) and the
seconds per image; the observation itself and Richardson-Lucy (when available) are the
same-run baselines. Settings: DDPM-200 (the paper's linear schedule) and DDIM 10/20/50, each
unguided, with the learned gradient (PI-DDPM models), with known-PSF guidance, and both.

``--restore MODEL`` compares samplers the way users run them: ``piddpm.restore`` with the
model's restore defaults, only the sampler and its steps changed, on the held-out pairs of
the model cards (:func:`piddpm.models.tuning.synthetic_pairs`, seed
:data:`piddpm.models.tuning.EVAL_SEED`, 128^2), plus the network passes per tile and the
seconds per megapixel of a 1024^2 plane against the U-Net's in the same process.
"""

from __future__ import annotations

import argparse
import math
import time

import torch


def _metrics(pred: torch.Tensor, gt: torch.Tensor) -> tuple[float, float, float]:
    """PSNR (data range of gt), MS-SSIM, NRMSE for (B, 1, H, W) tensors; means over B."""
    from piddpm.metrics import ms_ssim, nrmse, psnr

    p = float(torch.as_tensor(psnr(pred, gt)).float().mean())
    m = (
        float(torch.as_tensor(ms_ssim(pred, gt)).float().mean())
        if min(gt.shape[-2:]) > 160
        else math.nan
    )
    n = float(torch.as_tensor(nrmse(pred, gt)).float().mean())
    return p, m, n


def bench_presets(autocast: bool) -> None:
    """Parameter count, forward time (1 x 256^2) and training-step time (8 x 64^2, 8 x 128^2)."""
    import contextlib

    from piddpm.networks import PRESETS, build_unet

    def timed(fn, reps):
        fn()  # warm-up
        best = math.inf
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    ctx = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if autocast
        else contextlib.nullcontext
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, autocast bf16={autocast}; best of 3"
    )
    print("| preset | params | fwd 1x256^2 s | train step 8x64^2 s | train step 8x128^2 s |")
    print("|---|---|---|---|---|")
    for name in PRESETS:
        torch.manual_seed(0)
        net = build_unet(name)
        opt = torch.optim.Adam(net.parameters(), 1e-4)

        def fwd(net=net):
            with torch.no_grad(), ctx():
                net(torch.randn(1, 2, 256, 256), torch.tensor([0.5]))

        def step(size, net=net, opt=opt):
            def run():
                with ctx():
                    loss = net(torch.randn(8, 2, size, size), torch.rand(8)).float().square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

            return run

        reps = 1 if name == "paper" else 3
        cols = [timed(fwd, reps), timed(step(64), reps)]
        cols.append(timed(step(128), reps) if name != "paper" else math.nan)
        print(
            f"| {name} | {net.num_parameters() / 1e6:.2f} M | "
            + " | ".join(f"{c:.3f}" for c in cols)
            + " |",
            flush=True,
        )


def _parse_settings(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        name, _, steps = item.strip().partition(":")
        out.append((name, int(steps)))
    return out


def bench_restore_settings(model: str, settings, n_images: int, unet: str, mpx_side: int) -> None:
    """PSNR on the cards' held-out pairs and cost per megapixel for each sampler setting."""
    import numpy as np

    from piddpm.diffusion.samplers import make_stepper
    from piddpm.diffusion.settings import resolve_sampler_config
    from piddpm.models import resolve_model
    from piddpm.models.tuning import EVAL_SEED, restore_pairs, score, synthetic_pairs
    from piddpm.restore import restore
    from piddpm.restore.settings import schedule_for

    entry = resolve_model(model)
    folder = entry.config_path.parent
    pairs = synthetic_pairs(folder, n=n_images, seed=EVAL_SEED, size=128)
    defaults = dict(entry.restore_defaults)
    schedule = schedule_for(entry)
    rng = np.random.default_rng(0)
    big = rng.poisson(50.0, size=(mpx_side, mpx_side)).astype(np.float32)
    mpx = mpx_side * mpx_side / 1e6

    def per_mpx(**kw) -> float:
        t0 = time.perf_counter()
        restore(big, progress=False, device="cpu", **kw)
        return (time.perf_counter() - t0) / mpx

    t_unet = per_mpx(model=unet)
    rl = restore_pairs(folder, pairs, defaults, method="rl")
    psnr_rl = float(np.mean([score(e, p["gt"])["psnr_db"] for e, p in zip(rl, pairs, strict=True)]))
    rows = []
    for name, steps in settings:
        trial = dict(defaults, sampler=name, steps=steps)
        cfg = resolve_sampler_config({"sampler": name, "steps": steps}, defaults)
        passes = len(_timesteps(make_stepper(cfg, schedule.T), schedule))
        t0 = time.perf_counter()
        ests = restore_pairs(folder, pairs, trial)
        sec = (time.perf_counter() - t0) / len(pairs)
        vals = [score(e, p["gt"])["psnr_db"] for e, p in zip(ests, pairs, strict=True)]
        t_mpx = per_mpx(model=model, sampler=name, steps=steps)
        rows.append(
            (
                f"{name} {steps}",
                passes,
                float(np.mean(vals)),
                float(np.std(vals)),
                sec,
                t_mpx,
                t_mpx / t_unet,
            )
        )
        print(f"  done {name} {steps}", flush=True)
    print(
        f"\nmodel {entry.name}: {len(pairs)} held-out pairs 128^2 (seed {EVAL_SEED}), restore "
        f"defaults except sampler/steps; cost on a {mpx_side}^2 plane, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"Richardson-Lucy (true PSF, automatic stop): {psnr_rl:.2f} dB; "
        f"U-Net {unet}: {t_unet:.2f} s/Mpx"
    )
    print(
        "| sampler, steps | network passes per tile | PSNR dB | +- | s / image (128^2) | "
        "s / Mpx | x U-Net |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, passes, p, sd, sec, t_mpx, ratio in rows:
        print(f"| {name} | {passes} | {p:.2f} | {sd:.2f} | {sec:.2f} | {t_mpx:.1f} | {ratio:.1f} |")


def _timesteps(stepper, schedule) -> list[int]:
    stepper.set_timesteps(schedule)
    return stepper.timesteps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("model", nargs="?", help="model stem / .json / .safetensors")
    ap.add_argument("--presets", action="store_true", help="time the network presets instead")
    ap.add_argument("--n-images", type=int, default=4, help="held-out images (default 4)")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    ap.add_argument(
        "--seed", type=int, default=987654, help="dataset seed, unused in training (default 987654)"
    )
    ap.add_argument("--quick", action="store_true", help="DDIM-10/20 only, no DDPM-200")
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast for the network")
    ap.add_argument("--restore", metavar="MODEL", help="compare samplers through piddpm.restore")
    ap.add_argument(
        "--settings",
        default="ddim:20,ddim:15,ddim:10,dpm-solver++:20,dpm-solver++:15,dpm-solver++:10",
        help="--restore: sampler:steps list",
    )
    ap.add_argument("--unet", default="unet-widefield", help="--restore: the U-Net baseline")
    ap.add_argument("--mpx-side", type=int, default=1024, help="--restore: plane side for s/Mpx")
    args = ap.parse_args(argv)
    if args.restore:
        bench_restore_settings(
            args.restore, _parse_settings(args.settings), args.n_images, args.unet, args.mpx_side
        )
        return 0
    if args.presets:
        bench_presets(args.autocast)
        return 0
    if not args.model:
        ap.error("give a MODEL or --presets")

    from piddpm.data import PairedDataset
    from piddpm.diffusion import ddim_sample, ddpm_sample, linear_schedule
    from piddpm.networks import load_model

    torch.manual_seed(0)
    net, info = load_model(args.model)
    inner = info.get("config", info) if isinstance(info.get("config"), dict) else info
    method = inner.get(
        "method", "pi-ddpm" if net.out_channels >= 2 * (net.in_channels // 2) else "ddpm"
    )
    target = inner.get("target") or "residual"
    ds = PairedDataset(size=args.size, length=args.n_images, seed=args.seed)
    items = [ds[i] for i in range(args.n_images)]
    gt, obs, psf = (torch.stack([it[k] for it in items]) for k in ("gt", "observed", "psf"))
    n = gt.shape[0]
    rows = []

    def add(name, fn):
        t0 = time.perf_counter()
        pred = fn()
        dt = (time.perf_counter() - t0) / n
        rows.append((name, *_metrics(pred.float(), gt), dt))
        print(f"  done {name} ({dt:.1f} s/image)", flush=True)

    add("observation (baseline)", lambda: obs)
    try:
        from piddpm.baselines import richardson_lucy

        add(
            "Richardson-Lucy 30, known PSF",
            lambda: richardson_lucy(obs + 1.0, psf, 30, boundary="periodic") - 1.0,
        )
    except (ImportError, TypeError) as exc:  # optional baseline
        print(f"  (Richardson-Lucy skipped: {exc})")
    if method == "unet":
        add("U-Net", lambda: net(obs, None))
    else:
        guides = ["none", "known"] + (["learned", "both"] if method == "pi-ddpm" else [])
        common = dict(target=target, psf=psf, autocast=args.autocast)
        if not args.quick:
            for g in guides:
                add(
                    f"DDPM-200 {g}",
                    lambda g=g: (
                        ddpm_sample(
                            net,
                            obs,
                            linear_schedule(200),
                            guidance=g,
                            generator=torch.Generator().manual_seed(1),
                            **common,
                        ).mean
                    ),
                )
        for steps in (10, 20) if args.quick else (10, 20, 50):
            for g in guides:
                add(
                    f"DDIM-{steps} {g}",
                    lambda g=g, steps=steps: (
                        ddim_sample(
                            net,
                            obs,
                            linear_schedule(200),
                            num_steps=steps,
                            guidance=g,
                            generator=torch.Generator().manual_seed(1),
                            **common,
                        ).mean
                    ),
                )
    print(
        f"\nmodel {args.model} ({method}, target {target}); {n} held-out images {args.size}^2, seed {args.seed}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, autocast={args.autocast}"
    )
    print(f"| {'setting':32s} | PSNR dB | MS-SSIM | NRMSE | s / image |")
    print("|" + "-" * 34 + "|---------|---------|-------|-----------|")
    for name, p, m, nr, dt in rows:
        print(f"| {name:32s} | {p:7.2f} | {m:7.4f} | {nr:5.3f} | {dt:9.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
