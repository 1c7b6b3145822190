"""Fit and store the posterior-std factor of a diffusion model (``restore_defaults.std_scale``).

    python scripts/calibrate_spread.py MODEL_DIR [--pairs 16] [--samples 4] [--dry-run]

Prints the 1/2/3-sigma coverage on synthetic dev pairs (fit) and on held-out test pairs,
before and after; writes the factor into MODEL_DIR/model.json unless --dry-run.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="model folder (or bundled name with --dry-run)")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dry-run", action="store_true", help="measure only; do not write")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from piddpm.evaluation.calibration import calibrate_spread, store_std_scale

    result = calibrate_spread(args.model, pairs=args.pairs, size=args.size, samples=args.samples)
    print(json.dumps(result, indent=1))
    if not args.dry_run:
        print("written:", store_std_scale(args.model, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
