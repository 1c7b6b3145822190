"""Classical restoration baselines (no learning): Richardson-Lucy deconvolution."""

from piddpm.baselines.richardson_lucy import richardson_lucy

__all__ = ["richardson_lucy"]
