"""``piddpm train``: train a PI-DDPM, DDPM or supervised U-Net from a YAML configuration."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from piddpm import PiddpmError

DESCRIPTION = """\
Train a network on simulated microscopy pairs as a YAML configuration describes
(see configs/ and docs/training.md). Writes OUT/config.json, OUT/log.csv, OUT/val.csv,
OUT/previews/, OUT/checkpoints/ and, at the end, OUT/model.safetensors + OUT/model.json.
Multi-GPU / multi-node: launch with `torchrun --nproc_per_node N -m piddpm train ...`.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a model from a YAML configuration",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML configuration file; None with --resume = OUT/config.json",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="total optimiser steps; None = the config's `steps` (with --resume: train up to "
        "this step); at or below the config's optimizer.warmup_steps, the warm-up is capped "
        "to steps // 2 (with a note)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder; None = the config's `out_dir`",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its newest checkpoint",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available), cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of data, noise and initialisation; None = the config's `seed`",
    )
    p.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="stop after this step with a checkpoint (continue later with --resume); "
        "None = run to --steps",
    )
    p.add_argument(
        "--max-time",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="wall-clock budget of this invocation (seconds, or with a suffix: 90s, 20m, 8h); "
        "when spent the run validates, checkpoints and exports its model; None = the "
        "config's `max_time_s`",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch; None = torch's choice (one per core); use 1 when "
        "several jobs share the machine",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default=None,
        help="arithmetic of the training step; None = the config's `precision` (bf16 only "
        "pays on GPUs and CPUs with bf16 units; elsewhere use fp32)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _duration(text: str) -> float:
    """Seconds from ``"600"``, ``"90s"``, ``"20m"`` or ``"8h"``."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    value, scale = text.strip().lower(), 1.0
    if value and value[-1] in units:
        value, scale = value[:-1], units[value[-1]]
    try:
        seconds = float(value) * scale
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise argparse.ArgumentTypeError(
            f"--max-time {text!r}: expected a positive duration such as 600, 90s, 20m or 8h"
        )
    return seconds


def run(args: argparse.Namespace) -> int:
    from piddpm.cli import set_threads
    from piddpm.training import load_run_config, train

    set_threads(args.threads)

    overrides = {}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.out is not None:
        overrides["out_dir"] = str(args.out)
    if args.max_time is not None:
        overrides["max_time_s"] = args.max_time
    if args.precision is not None:
        overrides["precision"] = args.precision
    config_path = args.config
    if config_path is None:
        if not args.resume:
            raise PiddpmError("--config is required (unless --resume continues a run in --out)")
        if args.out is None:
            raise PiddpmError("--resume without --config needs --out (the run to continue)")
        config_path = args.out / "config.json"
        if not config_path.is_file():
            raise PiddpmError(f"{args.out}: no config.json; is this a piddpm training run?")
    cfg, note = load_run_config(config_path, overrides)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if note and main_rank:
        print(note)
    result = train(
        cfg,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        stop_at_step=args.stop_at,
    )
    if not main_rank:
        return 0  # under torchrun only rank 0 reports
    if result.model_path is not None:
        metrics = ", ".join(
            f"{k} {v:.2f}" for k, v in result.val_metrics.items() if k.endswith("_db")
        )
        limit = " (time limit reached)" if result.stopped_by_time_limit else ""
        print(
            f"trained {result.step} steps{limit}; model: {result.model_path}"
            + (f" ({metrics})" if metrics else "")
        )
    else:
        print(f"stopped at step {result.step}; continue with --resume --out {result.out_dir}")
    return 0
