"""``piddpm models``: list the bundled models, print one model's card, or bundle a run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from piddpm import PiddpmError

DESCRIPTION = """\
Without NAME: list the bundled models (name, aliases, method, modality, one-line summary).
With NAME (a bundled name, an alias such as `widefield`, or a model folder / .safetensors
file): print its full model card and configuration summary.
`piddpm models bundle RUN --name NAME [...]`: bundle a training run as a model (see
`piddpm models bundle --help`).
"""

BUNDLE_DESCRIPTION = """\
Bundle a piddpm training run as a model in src/piddpm/models/NAME (or --dest): its EMA
weights, restore defaults (measured with --tune and/or given with --restore-defaults), the
registry keys (aliases, description, modality), a held-out evaluation against the raw
input and Richardson-Lucy, and a generated MODEL_CARD.md.
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "models",
        help="list bundled models, show a model card, or bundle a training run",
        description=DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "name",
        nargs="?",
        default=None,
        metavar="NAME",
        help="model name, alias or path whose card to print (default: list all); "
        "`bundle` bundles a run",
    )
    # `piddpm models bundle RUN ...`: the rest goes to the bundle parser
    p.add_argument("bundle_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def bundle_parser() -> argparse.ArgumentParser:
    """The options of ``piddpm models bundle`` (those of the former scripts/bundle_model.py)."""
    p = argparse.ArgumentParser(
        prog="piddpm models bundle", description=BUNDLE_DESCRIPTION, formatter_class=_HelpFormatter
    )
    p.add_argument("run_dir", type=Path, metavar="RUN", help="piddpm train output folder")
    p.add_argument("--name", required=True, help="model folder name (e.g. pi-ddpm-widefield)")
    p.add_argument("--alias", action="append", default=[], help="extra name (repeatable)")
    p.add_argument("--description", default=None, help="one-line summary (default: generated)")
    p.add_argument(
        "--note", action="append", default=[], help="a line for the card's training section"
    )
    p.add_argument(
        "--from-checkpoint",
        action="store_true",
        help="use the newest checkpoint's EMA weights instead of RUN/model.safetensors",
    )
    p.add_argument(
        "--restore-defaults",
        default=None,
        help="JSON object of restore defaults (sampler, steps, eta, eta_ddim, regulariser, "
        "lam, guidance, percentiles, tile, overlap); overrides --tune's",
    )
    p.add_argument("--tune", action="store_true", help="measure restore defaults (tune_defaults)")
    p.add_argument("--eval-n", type=int, default=16, help="held-out evaluation pairs (0: none)")
    p.add_argument("--dest", type=Path, default=None, help="models folder (default: the registry)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p


def run(args) -> int:
    if args.name == "bundle" and (args.bundle_args or not Path("bundle").exists()):
        return run_bundle(bundle_parser().parse_args(args.bundle_args))
    if args.bundle_args:
        raise PiddpmError(f"unexpected arguments after {args.name}: {' '.join(args.bundle_args)}")
    if args.name is None:
        return _list_models()
    return _show_model(args.name)


def run_bundle(args: argparse.Namespace) -> int:
    """Parse --restore-defaults, set the threads, call :func:`piddpm.models.bundle.bundle`."""
    import torch

    from piddpm.models.bundle import bundle

    try:
        defaults = json.loads(args.restore_defaults) if args.restore_defaults else None
    except json.JSONDecodeError as err:
        raise PiddpmError(f"--restore-defaults is not valid JSON: {err}") from None
    if defaults is not None and not isinstance(defaults, dict):
        raise PiddpmError("--restore-defaults must be a JSON object")
    torch.set_num_threads(args.threads)
    bundle(
        args.run_dir,
        args.name,
        aliases=tuple(args.alias),
        from_checkpoint=args.from_checkpoint,
        restore_defaults=defaults,
        tune=args.tune,
        eval_n=args.eval_n,
        dest_root=args.dest,
        overwrite=args.overwrite,
        description=args.description,
        notes=tuple(args.note),
    )
    return 0


def _list_models() -> int:
    from piddpm.models import MODELS_DIR, list_models

    entries = list_models()
    if not entries:
        print(
            f"No bundled models are installed (looked in {MODELS_DIR}).\n"
            "Use `piddpm restore --model PATH` with a model from `piddpm train`, or "
            "`piddpm restore --method rl --psf PSF.tif`."
        )
        return 0
    rows = []
    for e in entries:
        alias = f" ({', '.join(e.aliases)})" if e.aliases else ""
        rows.append((e.name + alias, e.method, e.modality or "-", e.summary))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    print("\n`piddpm models NAME` prints a model's card.")
    return 0


def _show_model(name: str) -> int:
    from piddpm.models import resolve_model

    e = resolve_model(name)
    print(f"model:    {e.name}" + (f" (aliases: {', '.join(e.aliases)})" if e.aliases else ""))
    print(f"method:   {e.method}")
    print(f"modality: {e.modality or 'not stated'}")
    print(f"weights:  {e.weights}")
    # what restore uses: the measured restore_defaults, else the training-time sampler
    defaults = e.restore_defaults or e.config.get("sampler")
    if isinstance(defaults, dict) and defaults:
        print("defaults: " + ", ".join(f"{k}={v}" for k, v in sorted(defaults.items())))
    print()
    print(e.card.rstrip() if e.card else "(this model has no MODEL_CARD.md)")
    return 0
