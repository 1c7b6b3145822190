"""Noise schedules for (PI-)DDPM: the coefficients of the forward process, computed once.

Index convention (see ``docs/diffusion.md`` and ``MATH.md``): the diffusion steps are
``t = 1..T`` and ``gamma_0 = 1`` (no noise). Every per-step buffer of a :class:`Schedule` has
length ``T`` and is indexed by ``i = t - 1``: ``schedule.betas[0]`` is ``beta_1``,
``schedule.gammas[T - 1]`` is ``gamma_T``; ``schedule.gammas_prev[i]`` is ``gamma_{t-1}``
(so ``gammas_prev[0] == 1``). ``gamma`` is the cumulative product often written alpha-bar.

All buffers are float64 on the CPU; :meth:`Schedule.at` gathers and casts them to the
dtype/device of the tensor they are used with, only when used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from piddpm import PiddpmError

ScheduleKind = Literal["linear", "cosine", "custom"]

__all__ = [
    "Schedule",
    "ScheduleKind",
    "cosine_schedule",
    "linear_schedule",
    "schedule_from_config",
]


@dataclass(frozen=True, eq=False)
class Schedule:
    """The coefficients of a discrete diffusion schedule (float64, length ``T`` each).

    Build one with :func:`linear_schedule`, :func:`cosine_schedule` or
    :meth:`Schedule.from_betas`. Entry ``i`` refers to step ``t = i + 1``.

    Attributes
    ----------
    betas : Tensor (T,)
        ``beta_t``, the per-step noise variance, in (0, 1).
    alphas : Tensor (T,)
        ``alpha_t = 1 - beta_t``.
    gammas : Tensor (T,)
        ``gamma_t = prod_{s <= t} alpha_s`` (alpha-bar); ``r_t = sqrt(gamma_t) r0 +
        sqrt(1 - gamma_t) eps``.
    gammas_prev : Tensor (T,)
        ``gamma_{t-1}``, with ``gamma_0 = 1``.
    sqrt_gammas, sqrt_one_minus_gammas, sqrt_recip_alphas : Tensor (T,)
        ``sqrt(gamma_t)``, ``sqrt(1 - gamma_t)``, ``1 / sqrt(alpha_t)``.
    eps_coef : Tensor (T,)
        ``beta_t / sqrt(1 - gamma_t)`` (Algorithm 2's noise coefficient).
    posterior_variance : Tensor (T,)
        ``(1 - gamma_{t-1}) beta_t / (1 - gamma_t)``, the variance of
        ``q(r_{t-1} | r_t, r_0)``; zero at ``t = 1``.
    posterior_mean_coef_r0, posterior_mean_coef_rt : Tensor (T,)
        ``sqrt(gamma_{t-1}) beta_t / (1 - gamma_t)`` and
        ``sqrt(alpha_t) (1 - gamma_{t-1}) / (1 - gamma_t)``: the posterior mean is
        ``coef_r0 * r_0 + coef_rt * r_t``.
    config : dict
        JSON-serialisable description (``kind``, ``T`` and the constructor arguments), so the
        schedule can be rebuilt with :func:`schedule_from_config`.
    """

    betas: torch.Tensor
    config: dict[str, Any] = field(default_factory=dict)
    alphas: torch.Tensor = field(init=False)
    gammas: torch.Tensor = field(init=False)
    gammas_prev: torch.Tensor = field(init=False)
    sqrt_gammas: torch.Tensor = field(init=False)
    sqrt_one_minus_gammas: torch.Tensor = field(init=False)
    sqrt_recip_alphas: torch.Tensor = field(init=False)
    eps_coef: torch.Tensor = field(init=False)
    posterior_variance: torch.Tensor = field(init=False)
    posterior_mean_coef_r0: torch.Tensor = field(init=False)
    posterior_mean_coef_rt: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64).detach().cpu().clone()
        if betas.ndim != 1 or betas.numel() < 1:
            raise PiddpmError(
                f"schedule betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}"
            )
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
            raise PiddpmError(
                f"schedule betas must lie in (0, 1); got min {betas.min().item():.3g}, max {betas.max().item():.3g}"
            )
        alphas = 1.0 - betas
        gammas = torch.cumprod(alphas, dim=0)
        gammas_prev = torch.cat([torch.ones(1, dtype=torch.float64), gammas[:-1]])
        set_ = object.__setattr__
        set_(self, "betas", betas)
        set_(self, "alphas", alphas)
        set_(self, "gammas", gammas)
        set_(self, "gammas_prev", gammas_prev)
        set_(self, "sqrt_gammas", gammas.sqrt())
        set_(self, "sqrt_one_minus_gammas", (1.0 - gammas).sqrt())
        set_(self, "sqrt_recip_alphas", alphas.rsqrt())
        set_(self, "eps_coef", betas / (1.0 - gammas).sqrt())
        set_(self, "posterior_variance", (1.0 - gammas_prev) * betas / (1.0 - gammas))
        set_(self, "posterior_mean_coef_r0", gammas_prev.sqrt() * betas / (1.0 - gammas))
        set_(self, "posterior_mean_coef_rt", alphas.sqrt() * (1.0 - gammas_prev) / (1.0 - gammas))
        if not self.config:
            set_(self, "config", {"kind": "custom", "T": int(betas.numel())})

    @classmethod
    def from_betas(cls, betas: torch.Tensor | list[float]) -> Schedule:
        """A schedule from explicit ``beta_1..beta_T`` (each in (0, 1))."""
        b = torch.as_tensor(betas, dtype=torch.float64)
        return cls(b, {"kind": "custom", "T": int(b.numel()), "betas": b.tolist()})

    @property
    def T(self) -> int:  # noqa: N802 (the paper's symbol)
        """Number of diffusion steps."""
        return int(self.betas.numel())

    def at(self, name: str, index: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """Gather buffer ``name`` at 0-based ``index`` (``i = t - 1``), shaped to broadcast.

        Parameters
        ----------
        name : str
            A buffer name, e.g. ``"gammas"`` or ``"posterior_variance"``.
        index : int or LongTensor (B,)
            0-based step indices.
        like : Tensor (B, C, H, W)
            Result gets its dtype and device, and shape ``(B, 1, 1, 1)`` (or ``(1, 1, 1, 1)``
            for an int index).
        """
        buf = getattr(self, name)
        idx = torch.as_tensor(index, dtype=torch.long).reshape(-1).cpu()
        if (idx < 0).any() or (idx >= self.T).any():
            raise PiddpmError(
                f"schedule index {idx.tolist()} out of range 0..{self.T - 1} (i = t - 1)"
            )
        vals = buf[idx]
        shape = (-1,) + (1,) * (like.ndim - 1)
        return vals.to(dtype=like.dtype, device=like.device).reshape(shape)

    def __repr__(self) -> str:
        return (
            f"Schedule(kind={self.config.get('kind')!r}, T={self.T}, "
            f"gamma_1={self.gammas[0].item():.6g}, gamma_T={self.gammas[-1].item():.4g})"
        )


def linear_schedule(T: int = 200, beta_start: float = 1e-4, beta_end: float = 3e-2) -> Schedule:  # noqa: N803
    """Linearly spaced betas (Ho et al. 2020).

    The defaults are the PI-DDPM paper's test-time schedule (T = 200, 1e-4 .. 3e-2);
    Ho et al. use T = 1000, 1e-4 .. 2e-2.

    Parameters
    ----------
    T : int
        Number of steps (>= 1).
    beta_start, beta_end : float
        ``beta_1`` and ``beta_T``, both in (0, 1).

    Returns
    -------
    Schedule
    """
    _check_T(T)
    if not (0 < beta_start < 1 and 0 < beta_end < 1):
        raise PiddpmError(
            f"linear schedule betas must be in (0, 1), got beta_start={beta_start}, beta_end={beta_end}"
        )
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return Schedule(
        betas,
        {
            "kind": "linear",
            "T": int(T),
            "beta_start": float(beta_start),
            "beta_end": float(beta_end),
        },
    )


def cosine_schedule(T: int = 2000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:  # noqa: N803
    """The cosine schedule of Nichol & Dhariwal (2021, "Improved DDPM", Eq. 17).

    ``gamma(t) = f(t) / f(0)`` with ``f(t) = cos(((t / T + s) / (1 + s)) * pi / 2)^2``, and
    ``beta_t = min(1 - gamma(t) / gamma(t - 1), max_beta)``. So ``gamma_0 = 1`` and, up to the
    clipping of the last beta, ``gamma_T = 0`` (clipping at ``max_beta`` keeps it positive).
    The PI-DDPM reference trains with T = 2000.

    Parameters
    ----------
    T : int
        Number of steps (>= 1).
    s : float
        Offset that keeps ``beta_1`` from vanishing (0.008 in the paper).
    max_beta : float
        Upper clip of the betas, in (0, 1).
    """
    _check_T(T)
    if not (s > 0 and 0 < max_beta < 1):
        raise PiddpmError(
            f"cosine schedule needs s > 0 and max_beta in (0, 1), got s={s}, max_beta={max_beta}"
        )
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    gamma = f / f[0]
    betas = (1 - gamma[1:] / gamma[:-1]).clamp(min=1e-12, max=max_beta)
    return Schedule(
        betas, {"kind": "cosine", "T": int(T), "s": float(s), "max_beta": float(max_beta)}
    )


def schedule_from_config(config: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from :attr:`Schedule.config` (e.g. read from a model's JSON)."""
    kind = config.get("kind")
    try:
        if kind == "linear":
            return linear_schedule(
                int(config["T"]), float(config["beta_start"]), float(config["beta_end"])
            )
        if kind == "cosine":
            return cosine_schedule(
                int(config["T"]),
                float(config.get("s", 0.008)),
                float(config.get("max_beta", 0.999)),
            )
        if kind == "custom" and "betas" in config:
            return Schedule.from_betas(config["betas"])
    except KeyError as exc:
        raise PiddpmError(f"schedule config {config!r} lacks key {exc}") from None
    raise PiddpmError(
        f"schedule config {config!r}: expected kind 'linear', 'cosine' or 'custom' with betas"
    )


def _check_T(T: int) -> None:  # noqa: N803
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise PiddpmError(f"schedule T must be a positive int, got {T!r}")
