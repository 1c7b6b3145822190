"""``piddpm export bmz MODEL -o NAME.zip``: write a model as a BioImage Model Zoo package."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Write MODEL (a bundled name or alias, or a model / training-run folder) as a BioImage Model
Zoo package (.zip, spec 0.5): pytorch_state_dict weights (and TorchScript for the U-Net),
test input and output, a cover, documentation from the model card, the PI-DDPM citation.
Diffusion models run a deterministic DDIM sampler inside the package (fixed seed and steps,
no posterior samples). Check it with `bioimageio test NAME.zip` (pip install "piddpm[bmz]");
restore with it with `piddpm restore IN -o OUT --model NAME.zip`. See docs/bioimageio.md.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export a model to another ecosystem (bmz: a BioImage Model Zoo package)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", choices=["bmz"], help="what to write: bmz (BioImage Model Zoo)")
    p.add_argument("model", metavar="MODEL", help="bundled model name or alias, or a model folder")
    p.add_argument("-o", "--output", required=True, type=Path, help="the .zip to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument(
        "--test-size", type=int, default=64, help="side of the package's test image (pixels)"
    )
    p.add_argument(
        "--no-torchscript", action="store_true", help="do not add TorchScript weights (U-Net)"
    )
    return p


def run(args) -> int:
    from piddpm.export import export_bmz

    result = export_bmz(
        args.model,
        args.output,
        overwrite=args.overwrite,
        test_size=args.test_size,
        torchscript=not args.no_torchscript,
    )
    print(f"wrote {result.path} (weights: {', '.join(result.formats)})")
    for note in result.notes:
        print(f"note: {note}")
    return 0
