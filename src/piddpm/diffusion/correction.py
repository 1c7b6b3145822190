"""The PI-DDPM correction of a sampling step, written once for every sampler.

Three terms pull a sample towards the data (derivations in ``docs/diffusion.md``):

- the **regulariser** ``lam dR(v)`` (L1, smoothed, or L2);
- the **learned physics gradient** ``g_hat`` of a PI-DDPM network, weighted by ``eta``;
- the **known-PSF** data-consistency step at the implied clean image (``zeta``).

:class:`PhysicsCorrection` holds the settings and the observation's blur operator and gives
each sampler the correction in the form it applies: on the clean estimate ``r0_hat``
(:meth:`PhysicsCorrection.clean`, DDIM and DPM-Solver++) or on the ancestral chain variable
(:meth:`PhysicsCorrection.ancestral`, Algorithm 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from piddpm.choices import GuidanceNorm, Regulariser
from piddpm.diffusion.guidance import (
    PAPER_REFERENCE_PIXELS,
    Likelihood,
    known_step,
    paper_norm,
    regulariser_gradient,
    unit_rms,
)
from piddpm.diffusion.schedules import linear_schedule

__all__ = ["DDIM_LEARNED_DAMPING", "PhysicsCorrection", "learned_clean_scale"]

#: Fraction of the ancestral sampler's nominal learned push that the clean-space samplers
#: apply (measured on an overfitted tiny PI-DDPM: 1.0 overshoots at <= 50 steps, 0.3 is best
#: and stable from 5 to 100 steps; see ``docs/diffusion.md``).
DDIM_LEARNED_DAMPING = 0.3


def learned_clean_scale(eta: float) -> float:
    """The clean-space scale ``kappa`` of the learned gradient for a given ``eta``.

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


@dataclass
class PhysicsCorrection:
    """Settings and operator of the PI-DDPM correction for one sampling run.

    Attributes
    ----------
    regulariser : {"l1", "l2"} or None
    lam : float
        Regulariser weight.
    eta : float
        Weight of the learned gradient (0 or ``use_learned`` False: off).
    zeta : float
        Budget of the known-PSF correction (0 or no operator: off).
    use_learned : bool
        Whether the network's ``g_hat`` is applied.
    operator : BlurOperator or None
        ``A`` of the observation (periodic boundary), for the known-PSF term.
    observed : Tensor (B*N, C, H, W)
        The (padded, repeated) observation ``x``.
    target : {"residual", "direct"}
        What the chain diffuses: ``y0 = x + r0`` or ``y0 = r0``.
    guidance_norm : {"per-image", "none"}
        Rescale ``g_hat`` to unit rms per image, or use it as given.
    likelihood, background :
        Of the known-PSF step (:func:`piddpm.diffusion.guidance.known_direction`).
    """

    regulariser: Regulariser | None
    lam: float
    eta: float
    zeta: float
    use_learned: bool
    operator: object | None
    observed: torch.Tensor
    target: str = "residual"
    guidance_norm: GuidanceNorm = "per-image"
    likelihood: Likelihood = "gaussian"
    background: float = 0.0

    @cached_property
    def kappa(self) -> float:
        """:func:`learned_clean_scale` of ``eta`` (0 without learned guidance)."""
        return learned_clean_scale(self.eta) if self.use_learned else 0.0

    @property
    def uses_regulariser(self) -> bool:
        return self.regulariser is not None and self.lam > 0

    @property
    def uses_known(self) -> bool:
        return self.operator is not None and self.zeta > 0

    def clean_image(self, r0_hat: torch.Tensor) -> torch.Tensor:
        """``y0_hat``, the restored image that a clean chain estimate stands for."""
        return self.observed + r0_hat if self.target == "residual" else r0_hat

    def _known(self, r0_hat: torch.Tensor, step: float) -> torch.Tensor:
        return known_step(
            self.clean_image(r0_hat),
            self.observed,
            self.operator,
            step,
            likelihood=self.likelihood,
            background=self.background,
        )

    def clean(
        self, r0_hat: torch.Tensor, g_hat: torch.Tensor | None, gamma_t: float, weight: float
    ) -> torch.Tensor:
        """The correction of a clean estimate over one jump (subtract it from ``r0_hat``).

        ``weight * (lam dR(r0_hat) + gamma_t kappa(eta) unit(g_hat)) + known step of size
        weight * zeta``, with ``weight`` the jump's share of the schedule (``gamma_s -
        gamma_t``, capped), so the total over a run does not depend on the number of steps.
        """
        correction = torch.zeros_like(r0_hat)
        if self.uses_regulariser:
            correction = correction + weight * self.lam * regulariser_gradient(
                r0_hat, self.regulariser
            )
        if self.use_learned and self.kappa > 0:
            g_unit = unit_rms(g_hat) if self.guidance_norm == "per-image" else g_hat
            correction = correction + gamma_t * weight * self.kappa * g_unit
        if self.uses_known:
            correction = correction + self._known(r0_hat, weight * self.zeta)
        return correction

    def ancestral(
        self,
        r_next: torch.Tensor,
        r: torch.Tensor,
        r0_hat: torch.Tensor | None,
        g_hat: torch.Tensor | None,
        *,
        sigma: float,
        sqrt_gamma: float,
        sqrt_gamma_prev: float,
    ) -> torch.Tensor:
        """Algorithm 2's corrected ``r_{t-1}`` from the uncorrected ``r_next``.

        ``r_next - sigma lam dR(r_t) - sigma eta sqrt(gamma_t) g_hat / ||g_hat|| -
        sqrt(gamma_{t-1}) * known step of size zeta (gamma_{t-1} - gamma_t)``.
        """
        if self.uses_regulariser:
            r_next = r_next - sigma * self.lam * regulariser_gradient(r, self.regulariser)
        if self.use_learned and self.eta > 0:
            scale = (
                paper_norm(g_hat).clamp_min(1e-12)
                if self.guidance_norm == "per-image"
                else math.sqrt(PAPER_REFERENCE_PIXELS)
            )
            r_next = r_next - sigma * self.eta * sqrt_gamma * g_hat / scale
        if self.uses_known:
            step = self.zeta * (sqrt_gamma_prev**2 - sqrt_gamma**2)
            r_next = r_next - sqrt_gamma_prev * self._known(r0_hat, step)
        return r_next
