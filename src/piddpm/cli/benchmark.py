"""``piddpm benchmark``: reproduce the paper's evidence (Table 1, Fig. 2-5) for this code."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Run the evaluation harness (docs/evaluation.md): a seeded synthetic test set with known
ground truth (microscopes wider than training, one part with psfmodels PSFs) and/or the
TEST split of the shared real data (W2S, GigaDB, single images), for Richardson-Lucy
(iterations tuned on dev data) and every trained model found (U-Net, DDPM, PI-DDPM with
learned or known-PSF guidance), plus PI-DDPM sampler ablations when a PI-DDPM model exists.
Writes OUT/results.csv (one row per image x method x setting), OUT/report.md (tables,
comparisons stated from the numbers) and OUT/figures/*.png.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "benchmark",
        help="evaluate RL and trained models on synthetic and real test data",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "-o", "--out", type=Path, required=True,
        help="output folder (created); results.csv, report.md and figures/ go there",
    )  # fmt: skip
    p.add_argument(
        "--suite", choices=("synthetic", "real", "all"), default=None,
        help="which suite to run (default: the config's, 'all')",
    )  # fmt: skip
    p.add_argument(
        "--quick", action="store_true",
        help="small subset (few images, 128 px synthetic / 256 px real crops, DDIM 10 steps, "
        "2 samples): minutes on a CPU",
    )  # fmt: skip
    p.add_argument(
        "--config", type=Path, default=None,
        help="YAML benchmark configuration over the defaults (see docs/evaluation.md)",
    )  # fmt: skip
    p.add_argument(
        "--model-dir", type=Path, default=None,
        help="folder holding trained models (model.json + model.safetensors, as written by "
        "piddpm train), itself a model or with models in sub-folders",
    )  # fmt: skip
    p.add_argument(
        "--models", default=None,
        help="explicit models as name=path,name2=path2 (folders or .safetensors files)",
    )  # fmt: skip
    p.add_argument(
        "--no-bundled", action="store_true", help="ignore the bundled models",
    )  # fmt: skip
    p.add_argument(
        "--data-dir", type=Path, default=None,
        help="shared real data folder (default: $PIDDPM_SHARED_DATA, else ../shared/data)",
    )  # fmt: skip
    p.add_argument(
        "--methods", default=None,
        help="comma-separated subset of input,rl,unet,ddpm,pi-ddpm,pi-ddpm-known "
        "(default: all for which a model exists)",
    )  # fmt: skip
    p.add_argument("--device", default=None, help="torch device (default: the config's, cpu)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampling noise (default 0)")
    p.add_argument("--quiet", action="store_true", help="print only the final summary")
    return p


def run(args) -> int:
    from piddpm import PiddpmError
    from piddpm.evaluation import load_config, parse_models_arg, run_benchmark

    cfg = load_config(args.config, quick=args.quick)
    update = {}
    if args.quick:
        update["quick"] = True
    if args.suite:
        update["suite"] = args.suite
    if args.device:
        update["device"] = args.device
    if args.seed is not None:
        update["seed"] = args.seed
    if args.methods:
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        from piddpm.choices import options
        from piddpm.evaluation.config import MethodName

        known = options(MethodName)
        bad = [m for m in names if m not in known]
        if bad:
            raise PiddpmError(f"--methods {', '.join(bad)}: unknown; expected {', '.join(known)}")
        update["methods"] = names
    if update:
        cfg = cfg.model_validate({**cfg.model_dump(), **update})
    log = (lambda *_: None) if args.quiet else (lambda msg: print(msg, flush=True))
    res = run_benchmark(
        cfg,
        args.out,
        model_dir=args.model_dir,
        models=parse_models_arg(args.models),
        bundled=not args.no_bundled,
        data_dir=args.data_dir,
        log=log,
    )
    print(
        f"benchmark: {len(res.rows)} results in {res.seconds / 60:.1f} min -> "
        f"{Path(args.out) / 'report.md'}"
    )
    return 0
