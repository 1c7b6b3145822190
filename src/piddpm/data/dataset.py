"""On-the-fly paired training data: (ground truth, observation, PSF) for random microscopes.

Each item is a pure function of ``(seed, index)`` and of the PSF bank's state: a numpy
Generator and a torch Generator are derived from ``np.random.SeedSequence([seed, index])``,
so a DataLoader gives the same samples with any number of workers, and workers never share a
random stream.

The acquisition of one sample (physical units: photo-electrons, gain 1, offset 0)::

    j          ~ U{0 .. len(bank) - 1}               # microscope and kernel from the bank
    camera     ~ ranges (photons, background, read noise), redrawn per sample
    gt         = specimen rendered at the microscope's pixel size, peak 1
    blurred    = A gt                                # periodic convolution with kernel j
    s          = photons / max(blurred)
    gt_phys    = s gt + background                   # what an ideal (PSF-free) camera sees
    clean_phys = A gt_phys = s blurred + background  # (A preserves constants: unit-sum PSF)
    observed   = Poisson(clean_phys) + N(0, read_noise^2)

Normalisation convention (``docs/architecture.md``): one affine map ``v -> a v + b`` per
sample, computed from the noisy observation (min-max to [-1, 1], or restore's rule, the 0.1/99.9
percentiles to [-1, 1], :mod:`piddpm.normalisation`), applied to gt, observed and
observed_clean alike. With ``field_factor > 1`` the map is computed on a simulated field of
``field_factor**2`` times the patch area, and the item is a random window of it, exactly as
restore normalises a whole plane before cutting tiles. With ``field_factor == 1`` the blur is
periodic and the kernel has unit sum, so ``observed_clean == blur(gt, psf, "periodic")`` holds
in model units up to float error (with a field, it holds away from the patch border). The
ground truth may exceed [-1, 1] (blurring lowers peaks).
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from piddpm import PiddpmError
from piddpm.data.microscopes import MicroscopeRanges, sample_noise
from piddpm.data.psf_bank import PSFBank
from piddpm.data.specimens import SpecimenMixture

__all__ = ["Normalisation", "PairedDataset", "normalisation_map"]

Normalisation = Literal["minmax", "percentile"]

NORMALISATION_NOTE = (
    "one affine map v -> a*v + b per sample, computed from the noisy observation "
    "({method}: its {lo} and {hi} map to -1 and 1), applied to gt, observed and "
    "observed_clean alike; the blur is periodic with a unit-sum PSF, so "
    "observed_clean == blur(gt, psf, boundary='periodic') in these units. "
    "Physical units (photo-electrons) are recovered as (v - b) / a "
    "(params norm_scale = a, norm_offset = b)."
)


def normalisation_note(method: Normalisation = "minmax") -> str:
    """A sentence describing the normalisation convention (stored in dataset metadata)."""
    lo, hi = ("minimum", "maximum") if method == "minmax" else ("0.1th", "99.9th percentile")
    return NORMALISATION_NOTE.format(method=method, lo=lo, hi=hi)


def normalisation_map(
    observed: torch.Tensor, method: Normalisation = "minmax"
) -> tuple[float, float]:
    """The affine map ``(a, b)`` sending the observation's min / max (``minmax``) or its 0.1 /
    99.9 percentiles (``percentile``, restore's rule: :func:`piddpm.normalisation.intensity_range`)
    to -1 / 1."""
    from piddpm.normalisation import DEFAULT_PERCENTILES, affine_map, intensity_range

    if method == "minmax":
        percentiles = (0.0, 100.0)
    elif method == "percentile":
        percentiles = DEFAULT_PERCENTILES
    else:
        raise PiddpmError(f"normalisation {method!r} is unknown: expected 'minmax' or 'percentile'")
    lo, hi = intensity_range(observed, percentiles)
    return affine_map(lo, hi)


class PairedDataset(Dataset):
    """Synthetic (ground truth, observation) pairs through random microscopes, made on the fly.

    Parameters
    ----------
    size : int
        Image side in pixels (default 128).
    length : int
        Number of items (indices ``0 .. length - 1``; default 10,000).
    specimens : str, mapping or SpecimenMixture
        A specimen name, ``"mixture"`` (the default mixture), a spec string
        ``"filaments:0.3,natural:0.7"``, a ``{name: weight}`` mapping or a mixture object.
    ranges : MicroscopeRanges, optional
        Microscope and camera ranges (default: the paper's); used for the camera settings,
        and for the bank if ``bank`` is None.
    seed : int
        Base seed: item ``i`` is a function of ``(seed, i)``.
    bank : PSFBank, optional
        PSF bank to draw kernels from (default: ``PSFBank(ranges, n_kernels, seed=seed)``,
        cached on disk).
    n_kernels : int
        Bank size when the bank is built here (default 256).
    normalisation : {"minmax", "percentile"}
        How the per-sample affine map is computed from the noisy observation.
    images_dir : path, optional
        Folder for the ``natural`` / ``images`` specimens.
    kernel_size : int
        Kernel side when the bank is built here (default 33).
    psf_choice : {"random", "cycle"}
        Item ``i`` uses a random bank entry (default) or entry ``i % len(bank)`` (every
        microscope used once per ``len(bank)`` items; what ``piddpm simulate`` does).
    field_factor : int
        1 (default): the patch is the whole simulated image. ``k > 1``: a field of side
        ``k * size`` is simulated and normalised as a whole (as restore normalises a whole
        plane), and a random ``size x size`` window of it is the item, so dim,
        background-only and partly saturated patches occur as tiles of real planes do.

    Items
    -----
    dict with ``gt``, ``observed``, ``observed_clean`` (each ``(1, size, size)`` float32, model
    units), ``psf`` ``(1, k, k)`` float32 of unit sum, and ``params``: a dict of python floats
    (microscope: modality 0 widefield / 1 confocal, na, ri, wavelengths, pinhole, pixel size,
    z range, Zernike terms; camera: photons, background, read noise; ``norm_scale`` a,
    ``norm_offset`` b, ``photons_per_unit`` s, ``index``, ``psf_index``) plus ``specimen``
    (a string).
    """

    def __init__(
        self,
        size: int = 128,
        length: int = 10_000,
        specimens: str | SpecimenMixture | dict = "mixture",
        ranges: MicroscopeRanges | None = None,
        seed: int = 0,
        bank: PSFBank | None = None,
        *,
        n_kernels: int = 256,
        normalisation: Normalisation = "minmax",
        images_dir: str | os.PathLike | None = None,
        kernel_size: int = 33,
        psf_choice: Literal["random", "cycle"] = "random",
        field_factor: int = 1,
    ):
        self.size = int(size)
        self.length = int(length)
        if self.size < 8 or self.length < 0:
            raise PiddpmError(f"size {size} must be >= 8 pixels and length {length} >= 0")
        if normalisation not in ("minmax", "percentile"):
            raise PiddpmError(
                f"normalisation {normalisation!r} is unknown: expected 'minmax' or 'percentile'"
            )
        self.mixture = (
            specimens if isinstance(specimens, SpecimenMixture) else SpecimenMixture(specimens)
        )
        self.ranges = ranges if ranges is not None else MicroscopeRanges()
        self.seed = int(seed)
        self.normalisation = normalisation
        if psf_choice not in ("random", "cycle"):
            raise PiddpmError(f"psf_choice {psf_choice!r} is unknown: expected 'random' or 'cycle'")
        self.psf_choice = psf_choice
        self.images_dir = images_dir
        if isinstance(field_factor, bool) or int(field_factor) != field_factor or field_factor < 1:
            raise PiddpmError(f"field_factor must be a positive integer, got {field_factor!r}")
        self.field_factor = int(field_factor)
        if "images" in self.mixture.names and images_dir is None:
            raise PiddpmError("specimen 'images' needs images_dir (a folder of tif/png/jpg files)")
        self.bank = (
            bank
            if bank is not None
            else PSFBank(self.ranges, n_kernels, kernel_size=kernel_size, seed=self.seed)
        )
        if self.bank.kernel_size > self.size:
            raise PiddpmError(
                f"PSF kernel size {self.bank.kernel_size} exceeds the image size {self.size}"
            )

    def __len__(self) -> int:
        return self.length

    def generators(self, index: int) -> tuple[np.random.Generator, torch.Generator]:
        """The numpy and torch generators of item ``index`` (from SeedSequence([seed, index]))."""
        ss = np.random.SeedSequence([self.seed, int(index)])
        state = ss.generate_state(2, dtype=np.uint64)
        tgen = torch.Generator()
        tgen.manual_seed(int(state[1]) & 0x7FFF_FFFF_FFFF_FFFF)
        return np.random.default_rng(ss), tgen

    def __getitem__(self, index: int) -> dict:
        from piddpm.acquisition import acquire

        index = int(index)
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        index %= max(self.length, 1)
        rng, tgen = self.generators(index)
        j = int(rng.integers(len(self.bank)))  # drawn in both modes: same stream either way
        if self.psf_choice == "cycle":
            j = index % len(self.bank)
        kernel, micro = self.bank[j]
        micro = micro.replace(**sample_noise(self.ranges, rng))
        name = self.mixture.choose(rng)
        field = self.size * self.field_factor
        gt = self.mixture.render(
            field, micro.pixel_size_um, generator=rng, images_dir=self.images_dir, name=name
        )
        gt64 = torch.from_numpy(gt).to(torch.float64)[None, None]
        psf64 = kernel.to(torch.float64)[None, None]
        shot = acquire(
            gt64,
            psf64,
            photons=micro.photons,
            background=micro.background,
            read_noise=micro.read_noise,
            boundary="periodic",
            nonnegative=True,
            generator=tgen,
        )
        blurred, observed = shot["blurred"], shot["observed"]
        scale = micro.photons / float(blurred.max())
        a, b = normalisation_map(observed, self.normalisation)
        y0 = x0 = 0
        if self.field_factor > 1:  # the patch: a random window of the normalised field
            y0, x0 = (int(v) for v in rng.integers(0, field - self.size + 1, size=2))
        win = (..., slice(y0, y0 + self.size), slice(x0, x0 + self.size))
        gt_m = a * (scale * gt64[win] + micro.background) + b
        clean_m = a * (scale * blurred[win] + micro.background) + b
        obs_m = a * observed[win] + b
        params = micro.as_dict()
        params.update(
            norm_scale=a,
            norm_offset=b,
            photons_per_unit=scale,
            index=float(index),
            field_size=float(field),
            patch_y0=float(y0),
            patch_x0=float(x0),
            psf_index=float(j),
        )
        return {
            "gt": gt_m[0].to(torch.float32),
            "observed": obs_m[0].to(torch.float32),
            "observed_clean": clean_m[0].to(torch.float32),
            "psf": kernel[None].to(torch.float32).clone(),
            "params": params,
            "specimen": name,
        }
