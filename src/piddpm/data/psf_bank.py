"""A bank of 2-D PSF kernels for random microscopes, computed in batches and cached to disk.

Computing a vectorial 3-D PSF costs tens of milliseconds, far more than rendering a specimen,
so training samples draw their kernel from a bank of ``n_kernels`` precomputed kernels (the
paper used 30,000 PSFs for 1.2 M images). The bank is a pure function of its settings
(ranges, size, kernel size, projection, seed) and of the optics code; it is cached under
``~/.cache/piddpm/psf_bank`` (or ``$PIDDPM_CACHE_DIR/psf_bank``, or a given folder) as
``<key>.safetensors`` (the kernels) + ``<key>.json`` (the parameters), the key hashing all of
these, so a changed setting or a changed optics implementation never reuses stale kernels.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from piddpm import PiddpmError, __version__
from piddpm.data.microscopes import MicroscopeParams, MicroscopeRanges, sample_microscopes

__all__ = ["PSFBank", "Projection", "compute_kernels", "default_cache_dir"]

Projection = Literal["mean", "focus", "max"]

#: Bumped whenever the bank's content for given settings changes.
BANK_FORMAT = 1


def default_cache_dir() -> Path:
    """``$PIDDPM_CACHE_DIR/psf_bank`` if set, else ``~/.cache/piddpm/psf_bank``."""
    base = os.environ.get("PIDDPM_CACHE_DIR")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "piddpm"
    return root / "psf_bank"


def _optics_fingerprint() -> str:
    """Hash of the optics source code: kernels computed by other code are not reused."""
    import piddpm.optics as optics

    h = hashlib.sha256()
    for path in sorted(Path(optics.__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def compute_kernels(
    params: Sequence[MicroscopeParams],
    kernel_size: int = 33,
    *,
    projection: Projection = "mean",
    n_z: int = 9,
    batch_size: int = 64,
) -> torch.Tensor:
    """Compute 2-D unit-sum kernels ``(N, k, k)`` float32 for a list of microscopes.

    Microscopes are grouped by modality and z grid (``n_z`` planes evenly spaced over
    ``+-z_half_range_um``; one in-focus plane when the half-range is 0) and each group is
    computed with batched :func:`piddpm.optics.widefield_psf` / :func:`confocal_psf` calls of
    up to ``batch_size`` microscopes, then projected with :func:`piddpm.optics.project_psf`.
    Aliasing warnings (pixels coarser than Nyquist, which the default ranges allow on
    purpose) are silenced.
    """
    from piddpm.optics import confocal_psf, project_psf, widefield_psf

    if kernel_size < 3 or kernel_size % 2 == 0:
        raise PiddpmError(f"kernel_size {kernel_size} must be an odd number >= 3 (pixels)")
    if projection not in ("mean", "focus", "max"):
        raise PiddpmError(f"projection {projection!r} is unknown: expected mean, focus or max")
    out = torch.zeros(len(params), kernel_size, kernel_size, dtype=torch.float32)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.modality, round(p.z_half_range_um, 6)), []).append(i)
    n_terms = max([len(p.zernike_waves) for p in params] + [0])
    for (modality, z_half), idx in sorted(groups.items()):
        z_um = None if z_half == 0 or n_z == 1 else torch.linspace(-z_half, z_half, n_z)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            ps = [params[i] for i in chunk]

            def col(name, ps=ps):
                return torch.tensor([getattr(p, name) for p in ps], dtype=torch.float64)

            zern = None
            if n_terms:
                zern = torch.zeros(len(ps), n_terms, dtype=torch.float64)
                for r, p in enumerate(ps):
                    zern[r, : len(p.zernike_waves)] = torch.tensor(p.zernike_waves)
            common = dict(ri=col("ri"), z_um=z_um, zernike_waves=zern, dtype=torch.float64)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*coarser than the Nyquist.*")
                if modality == "widefield":
                    psf3d = widefield_psf(
                        col("na"), col("em_wavelength_nm"), col("pixel_size_um"), kernel_size,
                        **common,
                    )  # fmt: skip
                else:
                    psf3d = confocal_psf(
                        col("na"), col("ex_wavelength_nm"), col("em_wavelength_nm"),
                        col("pinhole_au"), col("pixel_size_um"), kernel_size, **common,
                    )  # fmt: skip
            mode = projection if z_um is not None else "focus"
            k2d = project_psf(psf3d, mode=mode)
            out[chunk] = k2d.to(torch.float32)
    return out / out.sum(dim=(-2, -1), keepdim=True)


class PSFBank:
    """A fixed-size bank of random microscopes and their 2-D PSF kernels.

    Parameters
    ----------
    ranges : MicroscopeRanges, optional
        Where the microscopes are drawn from (default: the paper's ranges).
    n_kernels : int
        Number of kernels (default 256).
    kernel_size : int
        Odd kernel side in pixels (default 33: at pixel sizes near Nyquist the in-focus
        PSF's FWHM is ~2 px and +-1 um of defocus at NA 1 spreads it over ~18 px).
    projection : {"mean", "focus", "max"}
        How the 3-D PSF becomes a 2-D kernel (default "mean" over the z range, as the paper).
    n_z : int
        Number of z planes over ``+-z_half_range_um`` (default 9).
    seed : int
        The bank is a deterministic function of the seed and the settings.
    cache_dir : path, None or False
        Folder for the disk cache (None: :func:`default_cache_dir`; False: no cache).
    batch_size : int
        Microscopes per batched optics call.

    Attributes
    ----------
    params : list of MicroscopeParams
        The microscopes (their camera settings are redrawn per sample by the dataset).
    kernels : Tensor (N, k, k) float32
        Unit-sum kernels, centre pixel ``k // 2``.
    """

    def __init__(
        self,
        ranges: MicroscopeRanges | None = None,
        n_kernels: int = 256,
        *,
        kernel_size: int = 33,
        projection: Projection = "mean",
        n_z: int = 9,
        seed: int = 0,
        cache_dir: str | os.PathLike | None | Literal[False] = None,
        batch_size: int = 64,
    ):
        if int(n_kernels) < 1:
            raise PiddpmError(f"n_kernels {n_kernels} must be >= 1")
        self.ranges = ranges if ranges is not None else MicroscopeRanges()
        self.n_kernels = int(n_kernels)
        self.kernel_size = int(kernel_size)
        self.projection = projection
        self.n_z = int(n_z)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.cache_dir = None if cache_dir is False else Path(cache_dir or default_cache_dir())
        self.refreshes = 0
        self.loaded_from_cache = False
        self.params, self.kernels = self._load_or_build()

    # ----------------------------------------------------------------- identity / cache
    def settings(self) -> dict:
        """The settings that determine the bank's content (hashed into the cache key)."""
        return {
            "format": BANK_FORMAT,
            "piddpm": __version__,
            "optics": _optics_fingerprint(),
            "ranges": self.ranges.model_dump(mode="json"),
            "n_kernels": self.n_kernels,
            "kernel_size": self.kernel_size,
            "projection": self.projection,
            "n_z": self.n_z,
            "seed": self.seed,
        }

    @property
    def key(self) -> str:
        blob = json.dumps(self.settings(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def _paths(self) -> tuple[Path, Path] | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.key}.safetensors", self.cache_dir / f"{self.key}.json"

    def _draw(self) -> list[MicroscopeParams]:
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(1,)))
        return sample_microscopes(self.ranges, self.n_kernels, rng)

    def _load_or_build(self):
        params = self._draw()
        paths = self._paths()
        if paths is not None and paths[0].is_file() and paths[1].is_file():
            try:
                from safetensors.torch import load_file

                kernels = load_file(str(paths[0]))["kernels"]
                meta = json.loads(paths[1].read_text())
                ok = (
                    tuple(kernels.shape) == (self.n_kernels, self.kernel_size, self.kernel_size)
                    and meta.get("settings") == json.loads(json.dumps(self.settings()))
                    and meta.get("params") == [p.as_dict() for p in params]
                )
                if ok:
                    self.loaded_from_cache = True
                    return params, kernels
            except Exception:  # noqa: BLE001 - a corrupt cache entry is rebuilt
                pass
        kernels = compute_kernels(
            params, self.kernel_size, projection=self.projection, n_z=self.n_z,
            batch_size=self.batch_size,
        )  # fmt: skip
        if paths is not None:
            self._save(paths, params, kernels)
        return params, kernels

    def _save(self, paths, params, kernels) -> None:
        from safetensors.torch import save_file

        try:
            paths[0].parent.mkdir(parents=True, exist_ok=True)
            tmp = paths[0].with_name(f".{paths[0].name}.{os.getpid()}.tmp")
            save_file({"kernels": kernels.contiguous()}, str(tmp))
            meta = {"settings": self.settings(), "params": [p.as_dict() for p in params]}
            tmpj = paths[1].with_name(f".{paths[1].name}.{os.getpid()}.tmp")
            tmpj.write_text(json.dumps(meta))
            os.replace(tmpj, paths[1])
            os.replace(tmp, paths[0])
        except OSError as err:  # a read-only cache is not fatal
            warnings.warn(f"could not write PSF bank cache {paths[0]}: {err}", stacklevel=3)

    # ----------------------------------------------------------------------- access
    def __len__(self) -> int:
        return self.n_kernels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, MicroscopeParams]:
        """``(kernel (k, k), params)`` of entry ``index``."""
        return self.kernels[index], self.params[index]

    def __repr__(self) -> str:
        return (
            f"PSFBank(n_kernels={self.n_kernels}, kernel_size={self.kernel_size}, "
            f"projection={self.projection!r}, seed={self.seed}, refreshes={self.refreshes})"
        )

    def refresh(self, fraction: float, rng: np.random.Generator) -> np.ndarray:
        """Replace a random ``fraction`` of the entries by newly drawn microscopes.

        Call it between epochs to see more microscopes over a long training run. It changes
        this object only (not the disk cache); DataLoader workers hold copies of the dataset,
        so refresh before the workers start (``persistent_workers=False`` re-copies the
        dataset each epoch). Returns the replaced indices.
        """
        if not 0.0 <= fraction <= 1.0:
            raise PiddpmError(f"refresh fraction {fraction} must lie in [0, 1]")
        n = int(round(fraction * self.n_kernels))
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        idx = np.sort(rng.choice(self.n_kernels, size=n, replace=False))
        new = sample_microscopes(self.ranges, n, rng)
        kernels = compute_kernels(
            new, self.kernel_size, projection=self.projection, n_z=self.n_z,
            batch_size=self.batch_size,
        )  # fmt: skip
        self.kernels = self.kernels.clone()
        self.kernels[torch.from_numpy(idx)] = kernels
        for j, p in zip(idx.tolist(), new, strict=True):
            self.params[j] = p
        self.refreshes += 1
        return idx
