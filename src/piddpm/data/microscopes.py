"""Random microscopes: the parameter ranges of the simulated training data and their sampling.

Defaults follow the paper (Li et al. 2024, Methods "Simulated dataset generation") and its
reference code, corrected where the physics requires it (see ``docs/data.md``):

- NA ~ U(0.4, 1.0) in water (ri 1.33); optionally oil objectives (NA ~ U(1.2, 1.45), ri 1.515)
  with probability ``oil_probability`` (0 by default, as the paper).
- excitation ~ U(320, 400) nm, emission ~ U(450, 550) nm (the paper writes micrometres;
  nanometres is meant).
- confocal pinhole ~ U(0.1, 2) Airy units. The reference draws U(0.1, 1000) and uses it as
  *thousandths* of an Airy unit (1e-4 to 1 AU): almost every simulated confocal then has a
  near-ideal point pinhole (< 0.5 AU in half the draws), which real instruments avoid (too
  little light; 0.5-1.5 AU is usual). The paper's text says micrometres, which is no unit for
  a pinhole referred to the sample either. We draw the diameter in AU over the useful range.
- pixel size = U(0.5, 1.6) x lambda_em / (4 NA) (around Nyquist sampling of the emission
  OTF, whose cut-off is 2 NA / lambda), clamped to [0.02, 0.5] um. The reference draws
  40-60 nm pixels for every NA: 2-6x finer than Nyquist, which wastes the patch on blur.
- z: the 3-D PSF is averaged over planes within +-``z_half_range_um`` (U(0, 1) um; the
  reference averages over about +-1.9 um, which needs kernels larger than 33 px at high NA).
- aberrations: with probability 0.3, random Zernike terms Noll 5-11 (astigmatism, coma,
  trefoil, spherical) of total rms U(0, 0.075) waves (Marechal: 0.075 waves ~ Strehl 0.8).
- noise: photons at the brightest pixel log-uniform in 10-1000, background U(0, 0.1) x photons
  per pixel, read noise U(0, 2) electrons rms.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from piddpm import PiddpmError
from piddpm.choices import Modality

__all__ = [
    "FixedMicroscope",
    "MicroscopeJitter",
    "Modality",
    "MicroscopeParams",
    "MicroscopeRanges",
    "sample_microscope",
    "sample_microscopes",
    "sample_noise",
]


Range = tuple[float, float]


class MicroscopeRanges(BaseModel):
    """Ranges from which random microscopes are drawn (every bound configurable).

    Every ``(lo, hi)`` pair is sampled uniformly unless its docstring says otherwise;
    ``lo == hi`` fixes the value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    confocal_probability: float = Field(0.5, ge=0.0, le=1.0)
    """Probability that a microscope is confocal (else widefield)."""
    na: Range = (0.4, 1.0)
    """Numerical aperture of non-oil (water) objectives."""
    ri: float = Field(1.33, ge=1.0)
    """Immersion / sample refractive index of non-oil objectives (water)."""
    oil_probability: float = Field(0.0, ge=0.0, le=1.0)
    """Probability of an oil objective (NA from ``oil_na``, index ``oil_ri``)."""
    oil_na: Range = (1.2, 1.45)
    """Numerical aperture of oil objectives."""
    oil_ri: float = Field(1.515, ge=1.0)
    """Refractive index of immersion oil (and of the mounted sample)."""
    ex_wavelength_nm: Range = (320.0, 400.0)
    """Excitation wavelength (nm); used by confocal PSFs."""
    em_wavelength_nm: Range = (450.0, 550.0)
    """Emission wavelength (nm)."""
    pinhole_au: Range = (0.1, 2.0)
    """Confocal pinhole diameter in Airy units (1 AU = 1.22 lambda_em / NA)."""
    pixel_nyquist_factor: Range = (0.5, 1.6)
    """Pixel size as a multiple of the Nyquist pixel lambda_em / (4 NA)."""
    pixel_size_um_limits: Range = (0.02, 0.5)
    """Clamp of the pixel size (um)."""
    pixel_size_um: Range | None = None
    """Pixel size range (um), drawn uniformly instead of ``pixel_nyquist_factor`` (a fixed
    camera, as ``data.microscope`` gives); None: the Nyquist-relative draw."""
    z_half_range_um: Range = (0.0, 1.0)
    """Half-range of the z planes averaged into the 2-D kernel (um); quantised to 0.125 um so
    that PSFs can be computed in batches sharing a z grid."""
    aberration_probability: float = Field(0.3, ge=0.0, le=1.0)
    """Probability that a microscope has random aberrations."""
    aberration_rms_waves: Range = (0.0, 0.075)
    """Total rms wavefront error of the random aberrations (waves)."""
    aberration_noll: tuple[int, int] = (5, 11)
    """Noll indices (inclusive range) of the random Zernike terms."""
    photons: Range = (10.0, 1000.0)
    """Expected photons at the brightest pixel of the clean image; drawn log-uniformly."""
    background_fraction: Range = (0.0, 0.1)
    """Background photons per pixel, as a fraction of ``photons``."""
    read_noise: Range = (0.0, 2.0)
    """Camera read noise (electrons rms)."""

    @field_validator(
        "na",
        "oil_na",
        "ex_wavelength_nm",
        "em_wavelength_nm",
        "pinhole_au",
        "pixel_nyquist_factor",
        "pixel_size_um_limits",
        "pixel_size_um",
        "z_half_range_um",
        "aberration_rms_waves",
        "photons",
        "background_fraction",
        "read_noise",
        "aberration_noll",
    )
    @classmethod
    def _ordered(cls, v, info):
        if v is None and info.field_name == "pixel_size_um":
            return v
        lo, hi = v
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"{info.field_name} = {v}: expected finite (lo, hi) with lo <= hi")
        positive = {
            "na",
            "oil_na",
            "ex_wavelength_nm",
            "em_wavelength_nm",
            "pixel_nyquist_factor",
            "pixel_size_um_limits",
            "pixel_size_um",
            "photons",
        }
        if info.field_name in positive and lo <= 0:
            raise ValueError(f"{info.field_name} = {v}: expected positive values")
        if lo < 0:
            raise ValueError(f"{info.field_name} = {v}: expected non-negative values")
        if info.field_name == "aberration_noll" and lo < 1:
            raise ValueError(f"aberration_noll = {v}: Noll indices start at 1")
        return v

    @model_validator(mode="after")
    def _physical(self):
        if self.na[1] >= self.ri:
            raise ValueError(
                f"na up to {self.na[1]} must stay below the refractive index {self.ri}"
            )
        if self.oil_probability > 0 and self.oil_na[1] >= self.oil_ri:
            raise ValueError(
                f"oil_na up to {self.oil_na[1]} must stay below the oil index {self.oil_ri}"
            )
        return self

    @classmethod
    def create(cls, **kwargs) -> MicroscopeRanges:
        """Construct, turning validation errors into :class:`piddpm.PiddpmError`."""
        try:
            return cls(**kwargs)
        except Exception as err:  # pydantic.ValidationError
            raise PiddpmError(f"invalid microscope ranges: {err}") from err


@dataclass(frozen=True)
class MicroscopeParams:
    """One drawn microscope (optics, sampling and camera); travels with each sample.

    Attributes
    ----------
    modality : "widefield" or "confocal"
    na, ri : float
    ex_wavelength_nm, em_wavelength_nm : float
    pinhole_au : float
        Confocal pinhole diameter (Airy units); 0 and unused for widefield.
    pixel_size_um : float
    z_half_range_um : float
        The 2-D kernel averages z planes within +- this (um); 0: in focus only.
    zernike_waves : tuple of float
        Waves rms of Noll terms 1..J (``zernike_waves[j - 1]`` is Noll ``j``); empty if none.
    photons : float
        Expected photons at the brightest pixel of the clean (blurred) image.
    background : float
        Expected background photons per pixel.
    read_noise : float
        Read noise, electrons rms.
    """

    modality: Modality
    na: float
    ri: float
    ex_wavelength_nm: float
    em_wavelength_nm: float
    pinhole_au: float
    pixel_size_um: float
    z_half_range_um: float
    zernike_waves: tuple[float, ...]
    photons: float
    background: float
    read_noise: float

    @property
    def aberration_rms_waves(self) -> float:
        """Total rms wavefront error (waves) of the Zernike terms (orthonormal: root sum sq)."""
        return float(math.sqrt(sum(w * w for w in self.zernike_waves)))

    def as_dict(self, n_zernike: int = 11) -> dict[str, float]:
        """Flat dict of python floats (collate-friendly): ``modality`` is 0 (widefield) or 1
        (confocal); Zernike terms as ``zernike_1 .. zernike_{n_zernike}``."""
        out = {
            "modality": 0.0 if self.modality == "widefield" else 1.0,
            "na": self.na,
            "ri": self.ri,
            "ex_wavelength_nm": self.ex_wavelength_nm,
            "em_wavelength_nm": self.em_wavelength_nm,
            "pinhole_au": self.pinhole_au,
            "pixel_size_um": self.pixel_size_um,
            "z_half_range_um": self.z_half_range_um,
            "photons": self.photons,
            "background": self.background,
            "read_noise": self.read_noise,
            "aberration_rms_waves": self.aberration_rms_waves,
        }
        z = list(self.zernike_waves) + [0.0] * max(0, n_zernike - len(self.zernike_waves))
        for j in range(n_zernike):
            out[f"zernike_{j + 1}"] = float(z[j])
        return {k: float(v) for k, v in out.items()}

    def replace(self, **changes) -> MicroscopeParams:
        return dataclasses.replace(self, **changes)


def _u(rng: np.random.Generator, r: Range, n: int) -> np.ndarray:
    return rng.uniform(r[0], r[1], n) if r[1] > r[0] else np.full(n, float(r[0]))


def _logu(rng: np.random.Generator, r: Range, n: int) -> np.ndarray:
    if r[1] > r[0]:
        return np.exp(rng.uniform(math.log(r[0]), math.log(r[1]), n))
    return np.full(n, float(r[0]))


def sample_noise(
    ranges: MicroscopeRanges, rng: np.random.Generator, n: int | None = None
) -> dict[str, float] | dict[str, np.ndarray]:
    """Draw camera settings: ``photons`` (log-uniform), ``background`` (photons per pixel) and
    ``read_noise`` (electrons rms). Floats, or arrays of length ``n``."""
    k = 1 if n is None else int(n)
    photons = _logu(rng, ranges.photons, k)
    background = _u(rng, ranges.background_fraction, k) * photons
    read = _u(rng, ranges.read_noise, k)
    if n is None:
        return {"photons": float(photons[0]), "background": float(background[0]),
                "read_noise": float(read[0])}  # fmt: skip
    return {"photons": photons, "background": background, "read_noise": read}


def sample_microscopes(
    ranges: MicroscopeRanges, n: int, rng: np.random.Generator
) -> list[MicroscopeParams]:
    """Draw ``n`` random microscopes (vectorised; a fixed sequence of draws from ``rng``).

    Parameters
    ----------
    ranges : MicroscopeRanges
    n : int
        Number of microscopes.
    rng : numpy.random.Generator

    Returns
    -------
    list of MicroscopeParams
    """
    if not isinstance(ranges, MicroscopeRanges):
        raise PiddpmError(f"ranges must be a MicroscopeRanges, got {type(ranges).__name__}")
    n = int(n)
    if n < 0:
        raise PiddpmError(f"number of microscopes {n} must be >= 0")
    confocal = rng.random(n) < ranges.confocal_probability
    oil = rng.random(n) < ranges.oil_probability
    na = np.where(oil, _u(rng, ranges.oil_na, n), _u(rng, ranges.na, n))
    ri = np.where(oil, ranges.oil_ri, ranges.ri)
    ex = _u(rng, ranges.ex_wavelength_nm, n)
    em = _u(rng, ranges.em_wavelength_nm, n)
    pinhole = np.where(confocal, _u(rng, ranges.pinhole_au, n), 0.0)
    nyquist_um = em * 1e-3 / (4.0 * na)
    pixel = np.clip(
        _u(rng, ranges.pixel_nyquist_factor, n) * nyquist_um, *ranges.pixel_size_um_limits
    )
    if ranges.pixel_size_um is not None:  # a fixed camera (drawn after, so the
        pixel = _u(rng, ranges.pixel_size_um, n)  # Nyquist draws keep their sequence)
    zq = 0.125
    z_half = np.round(_u(rng, ranges.z_half_range_um, n) / zq) * zq
    j0, j1 = ranges.aberration_noll
    aberrated = rng.random(n) < ranges.aberration_probability
    coef = rng.standard_normal((n, j1 - j0 + 1))
    coef *= (_u(rng, ranges.aberration_rms_waves, n) / np.linalg.norm(coef, axis=1))[:, None]
    noise = sample_noise(ranges, rng, n)
    out = []
    for i in range(n):
        zern: tuple[float, ...] = ()
        if aberrated[i]:
            zern = (0.0,) * (j0 - 1) + tuple(float(c) for c in coef[i])
        out.append(
            MicroscopeParams(
                modality="confocal" if confocal[i] else "widefield",
                na=float(na[i]),
                ri=float(ri[i]),
                ex_wavelength_nm=float(ex[i]),
                em_wavelength_nm=float(em[i]),
                pinhole_au=float(pinhole[i]),
                pixel_size_um=float(pixel[i]),
                z_half_range_um=float(z_half[i]),
                zernike_waves=zern,
                photons=float(noise["photons"][i]),
                background=float(noise["background"][i]),
                read_noise=float(noise["read_noise"][i]),
            )
        )
    return out


def sample_microscope(ranges: MicroscopeRanges, rng: np.random.Generator) -> MicroscopeParams:
    """Draw one random microscope (``sample_microscopes(ranges, 1, rng)[0]``)."""
    return sample_microscopes(ranges, 1, rng)[0]


class MicroscopeJitter(BaseModel):
    """Small random deviations around a :class:`FixedMicroscope`, so that a model trained for
    it stays robust when the real instrument is not exactly what was typed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    na_fraction: float = Field(0.02, ge=0.0, le=0.2)
    """NA drawn uniformly in ``na * (1 +- na_fraction)`` (kept below the refractive index)."""
    wavelength_nm: float = Field(10.0, ge=0.0, le=100.0)
    """Emission (and excitation) wavelengths drawn in ``+- wavelength_nm``."""
    pixel_fraction: float = Field(0.02, ge=0.0, le=0.2)
    """Pixel size drawn in ``pixel_size_um * (1 +- pixel_fraction)`` (calibration error)."""
    pinhole_fraction: float = Field(0.1, ge=0.0, le=0.5)
    """Confocal pinhole drawn in ``pinhole_au * (1 +- pinhole_fraction)``."""
    z_half_range_um: float = Field(0.3, ge=0.0, le=2.0)
    """Specimen depth: the 2-D kernel averages z planes within +- U(0, this) um (defocus)."""
    aberration_probability: float = Field(0.5, ge=0.0, le=1.0)
    """Probability of random wavefront error on a kernel."""
    aberration_rms_waves: float = Field(0.05, ge=0.0, le=0.2)
    """Total rms (waves) of random Zernike terms Noll 4-11: defocus, astigmatism, coma,
    trefoil and primary spherical aberration (0.05 waves: Strehl ~0.9)."""


class FixedMicroscope(BaseModel):
    """One known microscope (the user's), as an alternative to the random training ranges.

    ``range_fields()`` turns it, with its :class:`MicroscopeJitter`, into
    :class:`MicroscopeRanges` fields; the camera ranges (photons, background, read noise)
    stay separate (``data.ranges``, or fitted from images by ``piddpm fit``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality: Modality
    na: float = Field(gt=0.0, le=1.7)
    """Numerical aperture of the objective."""
    ri: float = Field(1.33, ge=1.0, le=1.8)
    """Refractive index of the immersion medium (and of the mounted sample)."""
    em_wavelength_nm: float = Field(gt=200.0, lt=2000.0)
    """Emission wavelength (nm)."""
    ex_wavelength_nm: float | None = Field(None, gt=200.0, lt=2000.0)
    """Excitation wavelength (nm; confocal); None: 30 nm below the emission."""
    pinhole_au: float = Field(1.0, gt=0.0, le=10.0)
    """Confocal pinhole diameter (Airy units); unused for widefield."""
    pixel_size_um: float = Field(gt=0.0, le=5.0)
    """Pixel size in the sample plane (um)."""
    jitter: MicroscopeJitter = Field(default_factory=MicroscopeJitter)

    @model_validator(mode="after")
    def _na_below_ri(self):
        if self.na >= self.ri:
            raise ValueError(f"na {self.na} must be below the refractive index ri {self.ri}")
        return self

    @property
    def excitation_nm(self) -> float:
        return self.ex_wavelength_nm if self.ex_wavelength_nm is not None else (
            self.em_wavelength_nm - 30.0
        )

    def range_fields(self) -> dict:
        """:class:`MicroscopeRanges` keyword arguments for this microscope and its jitter
        (all but the camera ranges and ``confocal_probability``)."""
        j = self.jitter
        na = (self.na * (1 - j.na_fraction), min(self.na * (1 + j.na_fraction), self.ri - 1e-3))
        em = (self.em_wavelength_nm - j.wavelength_nm, self.em_wavelength_nm + j.wavelength_nm)
        ex = (self.excitation_nm - j.wavelength_nm, self.excitation_nm + j.wavelength_nm)
        px = (self.pixel_size_um * (1 - j.pixel_fraction),
              self.pixel_size_um * (1 + j.pixel_fraction))  # fmt: skip
        # the pixel size relative to Nyquist, as restore compares it with an image's
        nyquist = (px[0] / (em[1] * 1e-3 / (4 * na[0])), px[1] / (em[0] * 1e-3 / (4 * na[1])))
        return {
            "na": na,
            "ri": self.ri,
            "oil_probability": 0.0,
            "ex_wavelength_nm": ex,
            "em_wavelength_nm": em,
            "pinhole_au": (self.pinhole_au * (1 - j.pinhole_fraction),
                           self.pinhole_au * (1 + j.pinhole_fraction)),  # fmt: skip
            "pixel_nyquist_factor": nyquist,
            "pixel_size_um": px,
            "pixel_size_um_limits": (min(0.02, px[0]), max(0.5, px[1])),
            "z_half_range_um": (0.0, j.z_half_range_um),
            "aberration_probability": j.aberration_probability,
            "aberration_rms_waves": (0.0, j.aberration_rms_waves),
            "aberration_noll": (4, 11),
        }
