"""Command-line interface: ``piddpm COMMAND ...``.

Each command lives in its own module ``piddpm.cli.<name>`` that defines
``add_parser(subparsers)`` (options only, no heavy imports) and ``run(args) -> int``.
The CLI is a thin layer over the Python API; user errors (:class:`piddpm.PiddpmError`)
are printed as one clear line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from piddpm import PiddpmError, __version__

#: Commands in the order ``--help`` lists them. A module that does not exist yet is skipped.
COMMANDS = [
    "demo",
    "psf",
    "acquire",
    "simulate",
    "train",
    "fit",
    "restore",
    "models",
    "export",
    "benchmark",
]


def set_threads(threads: int | None) -> None:
    """Apply a command's ``--threads`` (torch CPU threads; None: torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise PiddpmError(f"--threads must be >= 1 (got {threads})")
    import torch

    torch.set_num_threads(threads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="piddpm",
        description="Restore fluorescence microscopy images with physics-informed diffusion models.",
    )
    parser.add_argument("--version", action="version", version=f"piddpm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"piddpm.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"piddpm.cli.{name}":
                continue
            raise
        sub_parser = module.add_parser(sub)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    warnings.simplefilter("default")
    try:
        return int(args._run(args) or 0)
    except PiddpmError as err:
        print(f"piddpm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"piddpm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
