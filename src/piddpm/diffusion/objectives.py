"""Training objectives: DDPM and PI-DDPM losses (Algorithm 1) and the supervised U-Net loss.

Notation of ``MATH.md``: ``x`` observation, ``y0`` ground truth, ``x_clean = A y0``. With
``target="residual"`` (default, as the reference) the diffused variable is ``r0 = y0 - x``;
with ``target="direct"`` it is ``y0`` itself. Either way the noisy image is
``y_t = sqrt(gamma) y0 + sqrt(1 - gamma) eps`` and the network sees ``concat(r_t, x)``.

Physics target (``docs/diffusion.md``): ``g = 2 A^T (A y_t - sqrt(gamma) x_clean)`` by
default (``physics_reference="matched"``: the misfit compared at the signal scale of
``y_t``), divided per image by its root-mean-square, so the network learns a unit-rms field
whose direction is the data-consistency gradient; the samplers use only that direction.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812

from piddpm import PiddpmError
from piddpm.choices import DiffusionMethod, options
from piddpm.diffusion.guidance import physics_target, rms
from piddpm.diffusion.schedules import Schedule

Target = Literal["residual", "direct"]
PhysicsNorm = Literal["rms", "none"]
PhysicsReference = Literal["unscaled", "matched"]
SupervisedKind = Literal["mse", "l1"]

__all__ = [
    "PhysicsNorm",
    "SupervisedKind",
    "Target",
    "diffusion_loss",
    "physics_target",
    "q_sample",
    "sample_noise_levels",
    "supervised_loss",
    "supervised_predict",
]


def _randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev, dtype=like.dtype).to(like.device)


def sample_noise_levels(
    batch: int,
    schedule: Schedule,
    *,
    generator: torch.Generator | None = None,
    like: torch.Tensor | None = None,
) -> torch.Tensor:
    """Continuous noise levels (SR3/WaveGrad): ``t ~ U{1..T}``, ``gamma ~ U(gamma_t, gamma_{t-1})``.

    Returns
    -------
    Tensor (batch,) float64 on ``like``'s device (CPU by default), values in
    ``[gamma_T, 1)``.
    """
    like = like if like is not None else torch.zeros(())
    dev = generator.device if generator is not None else like.device
    idx = torch.randint(0, schedule.T, (batch,), generator=generator, device=dev).cpu()
    lo, hi = schedule.gammas[idx], schedule.gammas_prev[idx]
    u = torch.rand((batch,), generator=generator, device=dev, dtype=torch.float64).cpu()
    return (lo + u * (hi - lo)).to(like.device)


def q_sample(r0: torch.Tensor, gamma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Forward noising ``r_t = sqrt(gamma) r0 + sqrt(1 - gamma) eps``; ``gamma (B,)``."""
    g = gamma.to(device=r0.device, dtype=torch.float64).reshape(-1, *([1] * (r0.ndim - 1)))
    return (g.sqrt().to(r0.dtype) * r0) + ((1 - g).sqrt().to(r0.dtype) * eps)


def _check_images(**tensors: torch.Tensor) -> None:
    ref_name, ref = next(iter(tensors.items()))
    for name, t in tensors.items():
        if not torch.is_tensor(t) or t.ndim != 4:
            raise PiddpmError(
                f"{name} must be a tensor (B, C, H, W), got {getattr(t, 'shape', type(t))}"
            )
        if t.shape != ref.shape:
            raise PiddpmError(
                f"{name} has shape {tuple(t.shape)}, but {ref_name} has {tuple(ref.shape)}"
            )


def diffusion_loss(
    net: torch.nn.Module,
    gt: torch.Tensor,
    observed: torch.Tensor,
    observed_clean: torch.Tensor | None,
    psf: torch.Tensor | None,
    schedule: Schedule,
    *,
    method: DiffusionMethod = "pi-ddpm",
    physics_weight: float = 0.01,
    target: Target = "residual",
    physics_norm: PhysicsNorm = "rms",
    physics_reference: PhysicsReference = "matched",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One Monte-Carlo estimate of the DDPM or PI-DDPM training loss (Algorithm 1).

    Parameters
    ----------
    net : module
        ``net(concat(r_t, x), gamma) -> (B, k*C, H, W)`` with ``k = 2`` (``eps_hat, g_hat``)
        for PI-DDPM and ``k >= 1`` for DDPM (only the first ``C`` channels are used).
    gt, observed, observed_clean : Tensor (B, C, H, W)
        ``y0``, ``x`` and ``x_clean = A y0`` in model units (``observed_clean`` and ``psf``
        may be None for ``method="ddpm"``).
    psf : Tensor (B, 1, kh, kw) or (1, 1, kh, kw)
        Each sample's PSF (unit sum).
    schedule : Schedule
        Training schedule; ``t ~ U{1..T}``, ``gamma ~ U(gamma_t, gamma_{t-1})``.
    method : {"pi-ddpm", "ddpm"}
    physics_weight : float
        ``w`` of ``||eps - eps_hat||^2 + w ||g - g_hat||^2`` (reference 0.01).
    target : {"residual", "direct"}
        Diffuse ``r0 = y0 - x`` (default) or ``y0``.
    physics_norm : {"rms", "none"}
        ``g`` divided per image by its rms (default; use the same at sampling) or raw.
    physics_reference : {"unscaled", "matched"}
        ``"matched"`` (default): ``g = 2 A^T (A y_t - sqrt(gamma) x_clean)``, the gradient of
        the misfit at the signal scale of ``y_t``; ``"unscaled"`` (``MATH.md`` read literally):
        ``g = 2 A^T (A y_t - x_clean)``, dominated at high noise by the brightness term
        ``2 (sqrt(gamma) - 1) A^T x_clean``, which made learned guidance push samples towards
        full brightness (measured; see ``docs/diffusion.md``). The reference code also
        rescales ``A y_t`` to the observation's range before comparing.
    generator : torch.Generator, optional
        Source of ``t``, ``gamma`` and ``eps`` (reproducible training).

    Returns
    -------
    loss : scalar Tensor (with graph)
    logs : dict of float
        ``loss``, ``loss_eps``, ``loss_phys`` (0 for DDPM), ``gamma_mean``.
    """
    if method not in options(DiffusionMethod):
        raise PiddpmError(f"method must be 'pi-ddpm' or 'ddpm', got {method!r}")
    if target not in ("residual", "direct"):
        raise PiddpmError(f"target must be 'residual' or 'direct', got {target!r}")
    if physics_norm not in ("rms", "none"):
        raise PiddpmError(f"physics_norm must be 'rms' or 'none', got {physics_norm!r}")
    if method == "pi-ddpm":
        if observed_clean is None or psf is None:
            raise PiddpmError("method='pi-ddpm' needs observed_clean and psf (the physics target)")
        _check_images(gt=gt, observed=observed, observed_clean=observed_clean)
    else:
        _check_images(gt=gt, observed=observed)
    b, c = gt.shape[:2]
    gamma = sample_noise_levels(b, schedule, generator=generator, like=gt)
    eps = _randn(gt.shape, gt, generator)
    r0 = gt - observed if target == "residual" else gt
    r_t = q_sample(r0, gamma, eps)
    out = net(torch.cat([r_t, observed], dim=1), gamma.to(gt.dtype))
    if out.shape[1] < c or out.shape[-2:] != gt.shape[-2:]:
        raise PiddpmError(
            f"network output {tuple(out.shape)} does not fit images {tuple(gt.shape)}"
        )
    eps_hat = out[:, :c].to(gt.dtype)
    loss_eps = F.mse_loss(eps_hat, eps)
    loss = loss_eps
    loss_phys = torch.zeros((), device=gt.device)
    if method == "pi-ddpm":
        if out.shape[1] < 2 * c:
            raise PiddpmError(
                f"PI-DDPM needs a network with {2 * c} output channels (eps_hat, g_hat); this one has {out.shape[1]}"
            )
        with torch.no_grad():
            sg = gamma.to(gt.dtype).sqrt().reshape(-1, 1, 1, 1)
            y_t = r_t + sg * observed if target == "residual" else r_t
            if physics_reference == "matched":
                g = physics_target(y_t, sg * observed_clean, psf)
            elif physics_reference == "unscaled":
                g = physics_target(y_t, observed_clean, psf)
            else:
                raise PiddpmError(
                    f"physics_reference must be 'unscaled' or 'matched', got {physics_reference!r}"
                )
            if physics_norm == "rms":
                g = g / rms(g).clamp_min(1e-12)
        loss_phys = F.mse_loss(out[:, c : 2 * c].to(gt.dtype), g)
        loss = loss_eps + physics_weight * loss_phys
    logs = {
        "loss": float(loss.detach()),
        "loss_eps": float(loss_eps.detach()),
        "loss_phys": float(loss_phys.detach()),
        "gamma_mean": float(gamma.mean()),
    }
    return loss, logs


def supervised_predict(
    net: torch.nn.Module, observed: torch.Tensor, *, target: Target = "direct"
) -> torch.Tensor:
    """The supervised U-Net baseline's restoration: ``net(x)`` (direct) or ``x + net(x)`` (residual)."""
    out = net(observed, None)
    if target == "direct":
        return out
    if target == "residual":
        return observed + out
    raise PiddpmError(f"target must be 'residual' or 'direct', got {target!r}")


def supervised_loss(
    net: torch.nn.Module,
    gt: torch.Tensor,
    observed: torch.Tensor,
    kind: SupervisedKind = "mse",
    *,
    target: Target = "direct",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of the supervised U-Net baseline (``conditioned=False``, 1 -> 1 channel).

    The network predicts the restored image directly (``target="direct"``, default, so a
    trained baseline restores with ``net(x, None)``) or the residual ``y0 - x``
    (``target="residual"``; restore with :func:`supervised_predict`).

    Parameters
    ----------
    gt, observed : Tensor (B, C, H, W)
        Model units.
    kind : {"mse", "l1"}

    Returns
    -------
    loss : scalar Tensor
    logs : dict of float (``loss``)
    """
    _check_images(gt=gt, observed=observed)
    pred = supervised_predict(net, observed, target=target)
    if kind == "mse":
        loss = F.mse_loss(pred, gt)
    elif kind == "l1":
        loss = F.l1_loss(pred, gt)
    else:
        raise PiddpmError(f"supervised loss kind must be 'mse' or 'l1', got {kind!r}")
    return loss, {"loss": float(loss.detach())}
