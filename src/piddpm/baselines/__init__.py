"""Classical restoration baselines (no learning): Richardson-Lucy deconvolution and its
automatic iteration rule."""

from piddpm.baselines.richardson_lucy import richardson_lucy
from piddpm.baselines.stopping import RL_MAX_ITER, RL_TAU, noise_sigma, rl_iterations

__all__ = ["RL_MAX_ITER", "RL_TAU", "noise_sigma", "richardson_lucy", "rl_iterations"]
