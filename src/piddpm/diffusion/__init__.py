"""Diffusion: noise schedules, DDPM / PI-DDPM objectives, samplers and guidance terms.

Schedules and samplers are independent of the network: a sampler only calls
``net(concat(r_t, x), gamma)``; this package imports neither :mod:`piddpm.networks` nor the
training code. Sampler settings: :class:`SamplerConfig`. See ``docs/diffusion.md`` for the mathematics.
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
    SAMPLER_STEPS,
    SampleResult,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    dpm_solver_sample,
    learned_clean_scale,
    run_sampler,
    sample,
)
from piddpm.diffusion.schedules import (
    Schedule,
    cosine_schedule,
    linear_schedule,
    schedule_from_config,
)
from piddpm.diffusion.settings import SamplerConfig, resolve_sampler_config

__all__ = [
    "PAPER_REFERENCE_PIXELS",
    "SAMPLER_STEPS",
    "SampleResult",
    "SamplerConfig",
    "Schedule",
    "cosine_schedule",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "dpm_solver_sample",
    "diffusion_loss",
    "known_direction",
    "learned_clean_scale",
    "linear_schedule",
    "physics_target",
    "q_sample",
    "regulariser_gradient",
    "resolve_sampler_config",
    "run_sampler",
    "sample",
    "sample_noise_levels",
    "schedule_from_config",
    "supervised_loss",
    "supervised_predict",
]
