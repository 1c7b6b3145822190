"""Classical restoration baselines (no learning): Richardson-Lucy deconvolution and its
automatic iteration rule, and 3-D Richardson-Lucy for z-stacks."""

from piddpm.baselines.richardson_lucy import richardson_lucy
from piddpm.baselines.rl3d import richardson_lucy_3d
from piddpm.baselines.stopping import RL_MAX_ITER, RL_TAU, noise_sigma, rl_iterations

__all__ = [
    "RL_MAX_ITER",
    "RL_TAU",
    "noise_sigma",
    "richardson_lucy",
    "richardson_lucy_3d",
    "rl_iterations",
]
