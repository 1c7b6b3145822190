#!/usr/bin/env python
"""Deprecated: use ``piddpm models bundle RUN --name NAME ...`` (same options).

Kept so that old command lines and ``from bundle_model import score, synthetic_pairs``
(benchmarks/bench_heldout.py) still work; everything lives in :mod:`piddpm.models.bundle`.
"""

import sys

from piddpm.models.bundle import *  # noqa: F403 (the former functions of this script)


def main(argv: list[str] | None = None) -> int:
    print(
        "note: scripts/bundle_model.py is deprecated; use `piddpm models bundle`", file=sys.stderr
    )
    from piddpm.cli import main as cli

    return cli(["models", "bundle", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
