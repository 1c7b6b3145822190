"""``piddpm models``: list the bundled models, or print one model's card."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Without NAME: list the bundled models (name, aliases, method, modality, one-line summary).
With NAME (a bundled name, an alias such as `widefield`, or a model folder / .safetensors
file): print its full model card and configuration summary.
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "models",
        help="list bundled models or show a model card",
        description=DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "name",
        nargs="?",
        default=None,
        metavar="NAME",
        help="model name, alias or path whose card to print (default: list all)",
    )
    return p


def run(args) -> int:
    from piddpm.models import MODELS_DIR, list_models, resolve_model

    if args.name is None:
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

    e = resolve_model(args.name)
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
