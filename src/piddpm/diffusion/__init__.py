"""Diffusion: noise schedules, DDPM / PI-DDPM objectives, samplers and guidance terms.

Schedules and samplers are independent of the network: a sampler only calls
``net(concat(r_t, x), gamma)``. See ``docs/diffusion.md`` for the mathematics.
"""

from piddpm.diffusion.guidance import (
    PAPER_REFERENCE_PIXELS,
    known_direction,
    physics_target,
    regulariser_gradient,
)
from piddpm.diffusion.objectives import (
    diffusion_loss,
    q_sample,
    sample_noise_levels,
    supervised_loss,
    supervised_predict,
)
from piddpm.diffusion.samplers import (
    SampleResult,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    learned_clean_scale,
)
from piddpm.diffusion.schedules import (
    Schedule,
    cosine_schedule,
    linear_schedule,
    schedule_from_config,
)

__all__ = [
    "PAPER_REFERENCE_PIXELS",
    "SampleResult",
    "Schedule",
    "cosine_schedule",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "diffusion_loss",
    "known_direction",
    "learned_clean_scale",
    "linear_schedule",
    "physics_target",
    "q_sample",
    "regulariser_gradient",
    "sample_noise_levels",
    "schedule_from_config",
    "supervised_loss",
    "supervised_predict",
]
