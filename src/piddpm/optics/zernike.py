"""Zernike polynomials in Noll's ordering, normalised to unit rms over the unit disc.

Convention (Noll 1976, J. Opt. Soc. Am. 66, 207): index ``j = 1, 2, 3, ...`` maps to the
radial order ``n`` and azimuthal frequency ``m``; even ``j`` carry ``cos(m phi)``, odd ``j``
carry ``sin(m phi)`` (for ``m != 0``). Each polynomial is normalised so that its mean square
over the unit disc is 1, so a coefficient is directly the rms wavefront error it adds:

    Z_j(rho, phi) = sqrt(n + 1) R_n^0(rho)                    (m = 0)
    Z_j(rho, phi) = sqrt(2 (n + 1)) R_n^m(rho) cos(m phi)     (m != 0, j even)
    Z_j(rho, phi) = sqrt(2 (n + 1)) R_n^m(rho) sin(m phi)     (m != 0, j odd)

Examples: ``Z_1 = 1`` (piston), ``Z_2 = 2 rho cos phi`` (tip), ``Z_4 = sqrt(3) (2 rho^2 - 1)``
(defocus), ``Z_11 = sqrt(5) (6 rho^4 - 6 rho^2 + 1)`` (primary spherical).
"""

from __future__ import annotations

import math

import torch

from piddpm import PiddpmError

__all__ = ["noll_to_nm", "zernike", "zernike_phase_waves"]


def noll_to_nm(j: int) -> tuple[int, int]:
    """Radial order ``n`` and signed azimuthal frequency ``m`` of Noll index ``j``.

    Parameters
    ----------
    j : int
        Noll index, ``j >= 1``.

    Returns
    -------
    (n, m) : tuple of int
        ``m >= 0`` for cosine terms (even ``j``) and ``m = 0``; ``m < 0`` for sine terms.
    """
    if isinstance(j, bool) or int(j) != j or j < 1:
        raise PiddpmError(f"Noll index {j!r} is invalid: expected an integer >= 1")
    j = int(j)
    n = 0
    while (n + 1) * (n + 2) // 2 < j:
        n += 1
    k = j - n * (n + 1) // 2 - 1  # 0 .. n
    # |m| runs 0, 2, 2, 4, 4, ... (n even) or 1, 1, 3, 3, ... (n odd)
    m_abs = 2 * ((k + 1) // 2) if n % 2 == 0 else 2 * (k // 2) + 1
    if m_abs == 0:
        return n, 0
    return n, (m_abs if j % 2 == 0 else -m_abs)


def _radial(n: int, m: int, rho: torch.Tensor) -> torch.Tensor:
    """Zernike radial polynomial ``R_n^|m|(rho)`` (explicit factorial sum)."""
    m = abs(m)
    out = torch.zeros_like(rho)
    for s in range((n - m) // 2 + 1):
        coef = (
            (-1) ** s
            * math.factorial(n - s)
            / (
                math.factorial(s)
                * math.factorial((n + m) // 2 - s)
                * math.factorial((n - m) // 2 - s)
            )
        )
        out = out + coef * rho ** (n - 2 * s)
    return out


def zernike(j: int, rho: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Noll-normalised Zernike polynomial ``Z_j`` evaluated at polar pupil coordinates.

    Parameters
    ----------
    j : int
        Noll index (``>= 1``).
    rho : Tensor, any shape
        Normalised pupil radius (1 at the edge of the aperture, i.e. at ``NA``).
        Values outside ``[0, 1]`` are evaluated by the polynomial, not masked.
    phi : Tensor, broadcastable to ``rho``
        Pupil azimuth in radians, measured from the +x axis towards +y.

    Returns
    -------
    Tensor
        ``Z_j(rho, phi)`` with unit rms over the unit disc.
    """
    n, m = noll_to_nm(j)
    radial = _radial(n, m, rho)
    if m == 0:
        return math.sqrt(n + 1) * radial
    ang = torch.cos(m * phi) if m > 0 else torch.sin(-m * phi)
    return math.sqrt(2 * (n + 1)) * radial * ang


def zernike_phase_waves(
    coefficients: torch.Tensor, rho: torch.Tensor, phi: torch.Tensor
) -> torch.Tensor:
    """Wavefront ``W = sum_j c_j Z_j(rho, phi)`` in waves, for a batch of coefficient vectors.

    Parameters
    ----------
    coefficients : Tensor ``(B, J)``
        Coefficients in waves rms for Noll indices ``1 .. J``.
    rho, phi : Tensor ``(K, K)``
        Pupil coordinates (see :func:`zernike`).

    Returns
    -------
    Tensor ``(B, K, K)``
        Wavefront in waves (multiply by ``2 pi`` for the phase in radians).
    """
    b, n_terms = coefficients.shape
    out = torch.zeros((b, *rho.shape), dtype=rho.dtype, device=rho.device)
    for idx in range(n_terms):
        c = coefficients[:, idx]
        if not bool(torch.any(c != 0)):
            continue
        out = out + c[:, None, None] * zernike(idx + 1, rho, phi)[None]
    return out
