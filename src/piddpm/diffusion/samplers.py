"""Samplers for (PI-)DDPM: ancestral DDPM (Algorithm 2) and DDIM, with physics guidance.

Both return :class:`SampleResult` ``(mean, std, samples)`` over ``num_samples`` independent
samples per image, drawn as one batch of ``images x samples``. The derivations (DDIM physics
step, known-PSF guidance) are in ``docs/diffusion.md``.

Conventions (``MATH.md``): the chain runs on ``r`` (``target="residual"``: ``r = y - x``;
``"direct"``: ``r = y``), steps ``t = T..1``, ``gamma_0 = 1``; the network is called as
``net(concat(r_t, x), gamma_t)`` and returns ``eps_hat`` (first C channels) and, for
PI-DDPM, ``g_hat`` (next C channels).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Literal

import torch

from piddpm import PiddpmError
from piddpm.diffusion.guidance import (
    PAPER_REFERENCE_PIXELS,
    Guidance,
    Likelihood,
    Regulariser,
    known_step,
    paper_norm,
    regulariser_gradient,
    unit_rms,
)
from piddpm.diffusion.objectives import Target
from piddpm.diffusion.schedules import Schedule, linear_schedule

#: How the learned physics gradient is scaled before it is applied: ``per-image`` divides it
#: by its rms over the image (tile) it was computed on, as training normalises its target per
#: patch; ``none`` uses the network's output as it is (it was trained to have unit rms), so
#: the step at a pixel does not depend on the rest of the tile (tile-invariant restore).
GuidanceNorm = Literal["per-image", "none"]

__all__ = [
    "GuidanceNorm",
    "SampleResult",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "learned_clean_scale",
]


@dataclass
class SampleResult:
    """Output of a sampler.

    Attributes
    ----------
    mean : Tensor (B, C, H, W)
        Per-pixel mean over the samples (the restoration), model units.
    std : Tensor (B, C, H, W)
        Per-pixel standard deviation over the samples (Bessel-corrected; zeros when
        ``num_samples == 1``).
    samples : Tensor (B, N, C, H, W)
        The individual restorations.
    """

    mean: torch.Tensor
    std: torch.Tensor
    samples: torch.Tensor


#: Fraction of the ancestral sampler's nominal learned push that DDIM applies (measured on an
#: overfitted tiny PI-DDPM: 1.0 overshoots at <= 50 steps, 0.3 is best and stable from 5 to
#: 100 steps; see ``docs/diffusion.md``).
DDIM_LEARNED_DAMPING = 0.3


def learned_clean_scale(eta: float) -> float:
    """The DDIM clean-space scale ``kappa`` of the learned gradient for a given ``eta``.

    In Algorithm 2 on the paper's test schedule (linear, T = 200, 1e-4..3e-2), step ``t``
    subtracts ``sigma_t * eta * sqrt(gamma_t) * g_hat / ||g_hat||`` from ``r_{t-1}``; read as a
    shift of the clean estimate implied by ``r_{t-1}`` it is
    ``eta * sigma_t * sqrt(alpha_t) / 128`` times the unit-rms direction (at 128 x 128). DDIM
    spreads ``kappa * gamma_t * d(gamma)``, whose integral is ``kappa (1 - gamma_T^2) / 2``, so
    ``kappa = DDIM_LEARNED_DAMPING * eta * sum_t sigma_t sqrt(alpha_t) / (128 (1 - gamma_T^2) / 2)``
    (the damping because the ancestral chain undoes much of its nominal push with fresh noise).
    """
    ref = linear_schedule(200, 1e-4, 3e-2)
    total = (ref.posterior_variance.sqrt() * ref.alphas.sqrt()).sum().item() / 128.0
    return DDIM_LEARNED_DAMPING * float(eta) * total / ((1.0 - ref.gammas[-1].item() ** 2) / 2)


# ---------------------------------------------------------------------------------------------
# shared machinery


@dataclass
class _Setup:
    x: torch.Tensor  # (B*N, C, Hp, Wp) observation, padded
    pad: object
    batch: int
    num_samples: int
    channels: int
    use_learned: bool
    use_known: bool
    operator: object | None
    generator: torch.Generator | None
    factor: int
    noise: object = None


def _resolve_guidance(guidance: str, out_channels: int | None, c: int) -> tuple[bool, bool]:
    if guidance not in ("auto", "learned", "known", "both", "none"):
        raise PiddpmError(
            f"guidance must be 'auto', 'learned', 'known', 'both' or 'none', got {guidance!r}"
        )
    if guidance == "auto":
        guidance = "learned" if (out_channels or 0) >= 2 * c else "none"
    learned = guidance in ("learned", "both")
    if learned and out_channels is not None and out_channels < 2 * c:
        raise PiddpmError(
            f"guidance={guidance!r} needs a PI-DDPM network with {2 * c} output channels (eps_hat, "
            f"g_hat); this one has {out_channels}: use guidance='none' or 'known'"
        )
    return learned, guidance in ("known", "both")


def _check_noise_options(noise, guidance_norm) -> None:
    if noise is not None and not callable(noise):
        raise PiddpmError(
            f"noise must be callable (key, shape, device, dtype) -> Tensor, got {noise!r}"
        )
    if guidance_norm not in ("per-image", "none"):
        raise PiddpmError(f"guidance_norm must be 'per-image' or 'none', got {guidance_norm!r}")


def _setup(net, observed, psf, guidance, num_samples, generator, noise=None) -> _Setup:
    from piddpm.networks.unet import pad_to_multiple

    if not torch.is_tensor(observed) or observed.ndim != 4:
        raise PiddpmError(
            f"observed must be a tensor (B, C, H, W), got {getattr(observed, 'shape', type(observed))}"
        )
    if not isinstance(num_samples, int) or num_samples < 1:
        raise PiddpmError(f"num_samples must be a positive int, got {num_samples!r}")
    b, c = observed.shape[:2]
    in_ch = getattr(net, "in_channels", None)
    if in_ch is not None and in_ch != 2 * c:
        raise PiddpmError(
            f"network takes {in_ch} input channels; concat(r_t, x) of {tuple(observed.shape)} has {2 * c}"
        )
    use_learned, use_known = _resolve_guidance(guidance, getattr(net, "out_channels", None), c)
    factor = getattr(net, "downsample_factor", 1)
    x, pad = pad_to_multiple(observed, factor)
    x = x.repeat_interleave(num_samples, dim=0)
    op = None
    if use_known:
        if psf is None:
            raise PiddpmError("known-PSF guidance needs psf (B, 1, kh, kw) or (1, 1, kh, kw)")
        from piddpm.acquisition import BlurOperator

        psf = torch.as_tensor(psf, dtype=x.dtype, device=x.device)
        if psf.ndim == 2:
            psf = psf[None, None]
        if psf.ndim != 4 or psf.shape[0] not in (1, b):
            raise PiddpmError(
                f"psf must be (B, 1, kh, kw) with B = {b} or (1, 1, kh, kw), got {tuple(psf.shape)}"
            )
        if psf.shape[0] == b and num_samples > 1:
            psf = psf.repeat_interleave(num_samples, dim=0)
        op = BlurOperator(psf, image_shape=tuple(x.shape[-2:]), boundary="periodic")
    return _Setup(x, pad, b, num_samples, c, use_learned, use_known, op, generator, factor, noise)


def _draw(setup: _Setup, key: int, like: torch.Tensor) -> torch.Tensor:
    """Draw ``key`` of the sampler's noise: from ``noise`` (position-addressed, e.g.
    :class:`piddpm.diffusion.noise.TileNoise`) when given, else from ``generator``."""
    if setup.noise is not None:
        return setup.noise(key, like.shape, like.device, like.dtype)
    return _randn(like.shape, like, setup.generator)


def _initial(setup: _Setup, initial_noise: torch.Tensor | None) -> torch.Tensor:
    x = setup.x
    if initial_noise is None:
        return _draw(setup, 0, x)
    from piddpm.networks.unet import pad_to_multiple

    z = torch.as_tensor(initial_noise).to(device=x.device, dtype=x.dtype)
    b, n, c = setup.batch, setup.num_samples, setup.channels
    if z.ndim == 4 and n == 1:
        z = z[:, None]
    if z.ndim != 5 or z.shape[:3] != (b, n, c):
        raise PiddpmError(
            f"initial_noise must have shape ({b}, {n}, {c}, H, W) (or (B, C, H, W) for one sample), got {tuple(z.shape)}"
        )
    z = z.reshape(b * n, c, *z.shape[-2:])
    if z.shape[-2:] != x.shape[-2:]:
        z, _ = pad_to_multiple(z, setup.factor)
        if z.shape[-2:] != x.shape[-2:]:
            raise PiddpmError(
                f"initial_noise spatial size {tuple(initial_noise.shape[-2:])} differs from the observation's"
            )
    return z


def _randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev, dtype=like.dtype).to(like.device)


def _predict(net, r, x, gamma: float, c: int, autocast: bool, need_g: bool = False):
    g = torch.full((r.shape[0],), gamma, dtype=r.dtype, device=r.device)
    ctx = (
        torch.autocast(r.device.type, dtype=torch.bfloat16)
        if autocast
        else contextlib.nullcontext()
    )
    with ctx:
        out = net(torch.cat([r, x], dim=1), g)
    out = out.to(r.dtype)
    if out.shape[1] < c:
        raise PiddpmError(f"network output has {out.shape[1]} channels, expected at least {c}")
    if need_g and out.shape[1] < 2 * c:
        raise PiddpmError(
            f"learned guidance needs {2 * c} network output channels, got {out.shape[1]}"
        )
    return out[:, :c], (out[:, c : 2 * c] if out.shape[1] >= 2 * c else None)


def _finish(setup: _Setup, r0: torch.Tensor, target: str) -> SampleResult:
    from piddpm.networks.unet import crop_padding

    y = setup.x + r0 if target == "residual" else r0
    y = crop_padding(y, setup.pad)
    samples = y.reshape(setup.batch, setup.num_samples, *y.shape[1:])
    mean = samples.mean(dim=1)
    std = samples.std(dim=1) if setup.num_samples > 1 else torch.zeros_like(mean)
    return SampleResult(mean=mean, std=std, samples=samples)


def _check_common(schedule, target, regulariser, lam, eta, zeta):
    if not isinstance(schedule, Schedule):
        raise PiddpmError(f"schedule must be a piddpm Schedule, got {type(schedule).__name__}")
    if target not in ("residual", "direct"):
        raise PiddpmError(f"target must be 'residual' or 'direct', got {target!r}")
    if regulariser not in (None, "l1", "l2"):
        raise PiddpmError(f"regulariser must be 'l1', 'l2' or None, got {regulariser!r}")
    for name, v in (("lam", lam), ("eta", eta), ("zeta", zeta)):
        if not (math.isfinite(v) and v >= 0):
            raise PiddpmError(f"{name} must be a finite number >= 0, got {v!r}")


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


def _y0(setup: _Setup, r0_hat: torch.Tensor, target: str) -> torch.Tensor:
    return setup.x + r0_hat if target == "residual" else r0_hat


# ---------------------------------------------------------------------------------------------
# ancestral DDPM


@torch.no_grad()
def ddpm_sample(
    net: torch.nn.Module,
    observed: torch.Tensor,
    schedule: Schedule,
    *,
    regulariser: Regulariser | None = "l1",
    lam: float = 0.015,
    eta: float = 10.0,
    guidance: Guidance = "auto",
    psf: torch.Tensor | None = None,
    zeta: float = 1.0,
    likelihood: Likelihood = "gaussian",
    background: float = 0.0,
    target: Target = "residual",
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    initial_noise: torch.Tensor | None = None,
    progress: bool = False,
    autocast: bool = False,
    noise=None,
    guidance_norm: GuidanceNorm = "per-image",
) -> SampleResult:
    """Ancestral PI-DDPM sampling, Algorithm 2 of the paper (``MATH.md``), over all T steps.

    For ``t = T..1``, ``z ~ N(0, I)`` (``z = 0`` at ``t = 1``)::

        mu      = (r_t - beta_t / sqrt(1 - gamma_t) * eps_hat) / sqrt(alpha_t)
        sigma_t = sqrt((1 - gamma_{t-1}) beta_t / (1 - gamma_t))
        r_{t-1} = mu + sigma_t z - sigma_t lam dR(r_t) - sigma_t nu_t g_hat
                  - sqrt(gamma_{t-1}) zeta (sqrt(gamma_{t-1}) - sqrt(gamma_t)) d_known

    with ``nu_t g_hat = eta sqrt(gamma_t) g_hat / paper_norm(g_hat)`` (the paper's
    ``||g_hat||_2`` at 128 x 128, size-independent) and ``d_known`` the residual-normalised
    data-consistency direction at ``y0_hat`` (:func:`piddpm.diffusion.guidance.known_direction`;
    a shift of the implied clean image by ``zeta * d(sqrt(gamma))`` per step, see
    ``docs/diffusion.md``).

    Parameters
    ----------
    net : module
        ``net(concat(r_t, x), gamma) -> (B, C or 2C, H, W)``; any image size (padded
        internally to ``net.downsample_factor``).
    observed : Tensor (B, C, H, W)
        Observations ``x``, model units.
    schedule : Schedule
        Sampling schedule (paper: ``linear_schedule(200, 1e-4, 3e-2)``); a network trained on
        continuous noise levels accepts any.
    regulariser : {"l1", "l2", None}
        Sampling regulariser ``R`` on the chain variable; ``lam`` its weight (paper 0.015, L1).
    eta : float
        Weight of the learned physics gradient (paper: 10 best).
    guidance : {"auto", "learned", "known", "both", "none"}
        "auto": "learned" for a 2C-output network, else "none"; "known" needs ``psf``.
    psf : Tensor (B, 1, kh, kw) or (1, 1, kh, kw), optional
        PSF of each image (known-PSF guidance, periodic boundary; an image padded to the
        network's multiple is compared with its reflect-padded observation).
    zeta : float
        Budget of the known-PSF correction (clean-image units per unit of sqrt(gamma)).
    likelihood, background : see :func:`known_direction`.
    target : {"residual", "direct"}
        What the network was trained to diffuse (must match training).
    num_samples : int
        Independent samples per image (mean and std are over these).
    generator : torch.Generator, optional
        Source of ``r_T`` and of every ``z``.
    initial_noise : Tensor (B, N, C, H, W) or (B, C, H, W), optional
        ``r_T`` instead of a draw from ``generator``.
    progress : bool
        tqdm progress bar over steps.
    autocast : bool
        Run the network under bf16 autocast (about 2x faster on CPUs with bf16 support).
    noise : callable, optional
        ``noise(key, shape, device, dtype) -> Tensor``: the sampler's random draws by key
        (0 for ``r_T``, then one key per stochastic step), e.g. a
        :class:`piddpm.diffusion.noise.TileNoise` that crops one noise field per plane, so
        that overlapping tiles share their noise. Default: draws from ``generator``.
    guidance_norm : {"per-image", "none"}
        ``per-image`` (default) rescales the learned gradient to unit rms over each image;
        ``none`` uses it as the network gives it (:data:`GuidanceNorm`).

    Returns
    -------
    SampleResult
    """
    _check_common(schedule, target, regulariser, lam, eta, zeta)
    _check_noise_options(noise, guidance_norm)
    s = _setup(net, observed, psf, guidance, num_samples, generator, noise)
    r = _initial(s, initial_noise)
    sg = schedule.sqrt_gammas.tolist()
    sgp = schedule.gammas_prev.sqrt().tolist()
    for i in _progress(range(schedule.T - 1, -1, -1), progress, "DDPM"):
        gamma = schedule.gammas[i].item()
        eps_hat, g_hat = _predict(net, r, s.x, gamma, s.channels, autocast, s.use_learned)
        sigma = schedule.posterior_variance[i].sqrt().item()
        r_next = (r - schedule.eps_coef[i].item() * eps_hat) * schedule.sqrt_recip_alphas[i].item()
        if i > 0:
            r_next = r_next + sigma * _draw(s, schedule.T - i, r)
        if regulariser is not None and lam > 0:
            r_next = r_next - sigma * lam * regulariser_gradient(r, regulariser)
        if s.use_learned and eta > 0:
            scale = (
                paper_norm(g_hat).clamp_min(1e-12)
                if guidance_norm == "per-image"
                else math.sqrt(PAPER_REFERENCE_PIXELS)
            )
            r_next = r_next - sigma * eta * sg[i] * g_hat / scale
        if s.use_known and zeta > 0:
            r0_hat = (r - schedule.sqrt_one_minus_gammas[i].item() * eps_hat) / sg[i]
            step = zeta * (sgp[i] ** 2 - sg[i] ** 2)
            corr = known_step(
                _y0(s, r0_hat, target),
                s.x,
                s.operator,
                step,
                likelihood=likelihood,
                background=background,
            )
            r_next = r_next - sgp[i] * corr
        r = r_next
    return _finish(s, r, target)


# ---------------------------------------------------------------------------------------------
# DDIM


def ddim_timesteps(T: int, num_steps: int) -> list[int]:  # noqa: N803
    """Decreasing 0-based step indices ``i = t - 1`` from ``T - 1`` to 0, about evenly spaced.

    The sampler jumps ``t_k -> t_{k+1}`` along these and finally to ``t = 0``
    (``gamma_0 = 1``), so it calls the network ``len(result)`` times.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise PiddpmError(f"num_steps must be a positive int, got {num_steps!r}")
    n = min(num_steps, T)
    idx = torch.linspace(T - 1, 0, n, dtype=torch.float64).round().long().tolist()
    return list(dict.fromkeys(idx))


@torch.no_grad()
def ddim_sample(
    net: torch.nn.Module,
    observed: torch.Tensor,
    schedule: Schedule,
    *,
    num_steps: int = 20,
    eta_ddim: float = 0.0,
    max_jump_weight: float = 0.1,
    regulariser: Regulariser | None = "l1",
    lam: float = 0.015,
    eta: float = 10.0,
    guidance: Guidance = "auto",
    psf: torch.Tensor | None = None,
    zeta: float = 1.0,
    likelihood: Likelihood = "gaussian",
    background: float = 0.0,
    target: Target = "residual",
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    initial_noise: torch.Tensor | None = None,
    progress: bool = False,
    autocast: bool = False,
    noise=None,
    guidance_norm: GuidanceNorm = "per-image",
) -> SampleResult:
    """DDIM sampling (Song et al. 2021) on ``num_steps`` of ``schedule``, with PI-DDPM terms.

    For each jump ``t -> s`` (``s`` the next step, finally ``s = 0``)::

        r0_hat = (r_t - sqrt(1 - gamma_t) eps_hat) / sqrt(gamma_t)
        w      = sqrt(gamma_s) - sqrt(gamma_t)                     # > 0
        r0_hat <- r0_hat - w * (lam dR(r0_hat) + kappa(eta) unit_rms(g_hat) + zeta d_known)
        sigma  = eta_ddim sqrt((1 - gamma_s) / (1 - gamma_t)) sqrt(1 - gamma_t / gamma_s)
        r_s    = sqrt(gamma_s) r0_hat + sqrt(1 - gamma_s - sigma^2) eps_hat + sigma z

    The corrections act on the clean estimate with a weight ``w`` that integrates to
    ``1 - sqrt(gamma_T)`` over any sub-sequence of steps, so their total does not depend on
    ``num_steps`` (derivation in ``docs/diffusion.md``); ``kappa(eta)`` is
    :func:`learned_clean_scale`, matching the ancestral sampler's nominal push.

    Parameters
    ----------
    num_steps : int
        Network evaluations (<= T).
    eta_ddim : float
        0: deterministic given ``r_T``; 1: the ancestral posterior noise.
    Other parameters and the result as :func:`ddpm_sample`.
    """
    _check_common(schedule, target, regulariser, lam, eta, zeta)
    if not (math.isfinite(eta_ddim) and eta_ddim >= 0):
        raise PiddpmError(f"eta_ddim must be >= 0, got {eta_ddim!r}")
    _check_noise_options(noise, guidance_norm)
    s = _setup(net, observed, psf, guidance, num_samples, generator, noise)
    r = _initial(s, initial_noise)
    steps = ddim_timesteps(schedule.T, num_steps)
    kappa = learned_clean_scale(eta) if s.use_learned else 0.0
    for k in _progress(range(len(steps)), progress, "DDIM"):
        i = steps[k]
        g_t = schedule.gammas[i].item()
        g_s = schedule.gammas[steps[k + 1]].item() if k + 1 < len(steps) else 1.0
        eps_hat, g_hat = _predict(net, r, s.x, g_t, s.channels, autocast, s.use_learned)
        r0_hat = (r - math.sqrt(1 - g_t) * eps_hat) / math.sqrt(g_t)
        w = min(g_s - g_t, max_jump_weight)
        correction = torch.zeros_like(r0_hat)
        if regulariser is not None and lam > 0:
            correction = correction + w * lam * regulariser_gradient(r0_hat, regulariser)
        if s.use_learned and kappa > 0:
            g_unit = unit_rms(g_hat) if guidance_norm == "per-image" else g_hat
            correction = correction + g_t * w * kappa * g_unit
        if s.use_known and zeta > 0:
            y0_hat = _y0(s, r0_hat, target)
            correction = correction + known_step(
                y0_hat, s.x, s.operator, w * zeta, likelihood=likelihood, background=background
            )
        r0_hat = r0_hat - correction
        sigma = eta_ddim * math.sqrt((1 - g_s) / (1 - g_t) * (1 - g_t / g_s))
        r = math.sqrt(g_s) * r0_hat + math.sqrt(max(1 - g_s - sigma**2, 0.0)) * eps_hat
        if sigma > 0:
            r = r + sigma * _draw(s, k + 1, r)
    return _finish(s, r, target)
