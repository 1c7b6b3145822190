"""Benchmark cases: the seeded synthetic test set and the real test split of the shared data.

A :class:`Case` is one observation with what is needed to score a restoration of it: the
PSF, and either a ground truth (synthetic), a reference image of the same field (real pairs)
or nothing (single real images, scored by no-reference resolution metrics).

Synthetic cases (``suite="synthetic"``) are rendered here with :mod:`piddpm.data` specimens
and microscopes drawn from ranges **wider** than training (NA 0.3-1.2, emission 420-600 nm,
pixels 0.7-1.3 x Nyquist by default). One part (``dataset`` ending ``-psfmodels``) takes its
PSFs from ``psfmodels`` (an independent vectorial implementation), so the test physics is
not this code's own. The acquisition follows :class:`piddpm.data.PairedDataset`: periodic
blur with a unit-sum kernel, ``photons`` at the brightest blurred pixel, Poisson noise plus
background and Gaussian read noise, in photo-electrons. The ground truth is kept in
*specimen units* (background 0, peak 1): a restoration ``y`` (photo-electrons) is scored as
``(y - background) / s`` with ``s`` photo-electrons per specimen unit.

Real cases (``suite="real"``) come from the folder described by ``MANIFEST.md``: only the
files of the **test** split are returned by :func:`real_cases` with ``split="test"``; the dev
split (``split="dev"``) is used only to tune Richardson-Lucy.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from piddpm import PiddpmError
from piddpm.evaluation.config import RealSuiteConfig, SyntheticSuiteConfig

__all__ = [
    "Case",
    "DEV_FILES_PATTERNS",
    "TEST_FILES_PATTERNS",
    "manifest_files",
    "no_reference_cases",
    "real_cases",
    "shared_data_dir",
    "synthetic_cases",
]

W2S_PAIRS = "w2s-via-nd-howard/avg1_avg400_8bit_fov081-100"
W2S_TRIPLET = "w2s-via-nd-howard/fov010_ch0_triplet"
GIGADB = "gigadb-hagen2021-via-nd-howard"

#: Regular expressions of the MANIFEST's test and dev files (relative paths).
TEST_FILES_PATTERNS = (
    rf"{W2S_TRIPLET}/.*_010_0\.tif",
    rf"{W2S_PAIRS}/(input_avg1|target_avg400)_(09[1-9]|100)_[0-2]\.tif",
    rf"{GIGADB}/(actin-60x-noise1|mito-60x-noise1|mito-60x-noise2|mito-confocal|nucleus)"
    r"-(low|high)snr-sample\.png",
)
DEV_FILES_PATTERNS = (
    rf"{W2S_PAIRS}/(input_avg1|target_avg400)_(08[1-9]|090)_[0-2]\.tif",
    rf"{GIGADB}/(actin-20x-noise1|mito-20x-noise1|membrane)-(low|high)snr-sample\.png",
    r"fmd-via-nd-howard/.*",
)

#: Modality of the GigaDB pairs (confocal only where the name says so; the nucleus images
#: are treated as widefield, which the source does not state).
GIGADB_MODALITY = {"mito-confocal": "confocal"}


@dataclass
class Case:
    """One benchmark image.

    Attributes
    ----------
    suite : {"synthetic", "real", "no-reference", "ablation"}
    dataset : str
        Group name used for the tables (e.g. ``"synthetic-widefield"``, ``"w2s-avg400"``).
    name : str
        Unique image name within the dataset.
    observed : ndarray (H, W) float32
        The observation (photo-electrons for synthetic, file grey values for real data).
    psf : ndarray (k, k) float32, unit sum
        The true PSF (synthetic) or the assumed one (real; see ``notes``).
    modality : {"widefield", "confocal"}
    reference : ndarray (H, W) float32 or None
        Ground truth in specimen units (synthetic) or the reference image (real pairs).
    reference_kind : str
        ``"ground truth"``, ``"SIM"``, ``"widefield 400-frame average"``, ``"high-SNR"`` or
        ``"none"``.
    background, scale : float
        Synthetic only: ``observed ~ Poisson(scale * A gt + background)``, so a restoration
        ``y`` is compared as ``(y - background) / scale``.
    pixel_size_um : float or None
    params : dict
        Microscope / camera settings (synthetic) for results.csv.
    files : list of str
        Source files (relative to the data folder) for real cases.
    notes : list of str
    """

    suite: str
    dataset: str
    name: str
    observed: np.ndarray
    psf: np.ndarray
    modality: str = "widefield"
    reference: np.ndarray | None = None
    reference_kind: str = "none"
    background: float = 0.0
    scale: float = 1.0
    pixel_size_um: float | None = None
    params: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def megapixels(self) -> float:
        return self.observed.shape[-2] * self.observed.shape[-1] / 1e6


# --------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------
def _ranges(cfg: SyntheticSuiteConfig, modality: str):
    from piddpm.data import MicroscopeRanges

    return MicroscopeRanges.create(
        confocal_probability=1.0 if modality == "confocal" else 0.0,
        na=tuple(cfg.na),
        em_wavelength_nm=tuple(cfg.em_wavelength_nm),
        pixel_nyquist_factor=tuple(cfg.pixel_nyquist_factor),
        photons=tuple(cfg.photons),
        ex_wavelength_nm=(405.0, 488.0),
    )


def psfmodels_kernel(micro, kernel_size: int) -> np.ndarray:
    """In-focus 2-D kernel of a microscope computed by ``psfmodels`` (vectorial model).

    Parameters
    ----------
    micro : piddpm.data.MicroscopeParams
        Uses modality, NA, refractive index, wavelengths (nm), pinhole (AU), pixel size (um).
    kernel_size : int
        Odd side in pixels.

    Returns
    -------
    ndarray (kernel_size, kernel_size) float32, unit sum.

    Raises
    ------
    ImportError
        If psfmodels is not installed (the caller skips this part with a note).
    """
    import psfmodels

    common = dict(
        dxy=float(micro.pixel_size_um),
        NA=float(micro.na),
        ni=float(micro.ri),
        ni0=float(micro.ri),
        ns=float(micro.ri),
        model="vectorial",
    )
    if micro.modality == "confocal":
        psf = psfmodels.confocal_psf(
            [0.0],
            kernel_size,
            pinhole_au=float(micro.pinhole_au),
            ex_wvl=micro.ex_wavelength_nm * 1e-3,
            em_wvl=micro.em_wavelength_nm * 1e-3,
            **common,
        )
    else:
        psf = psfmodels.make_psf([0.0], kernel_size, wvl=micro.em_wavelength_nm * 1e-3, **common)
    k = np.clip(np.asarray(psf, dtype=np.float64).reshape(kernel_size, kernel_size), 0, None)
    return (k / k.sum()).astype(np.float32)


def _acquire(gt: np.ndarray, kernel: np.ndarray, micro, seed_seq) -> tuple[np.ndarray, float]:
    """Periodic blur + camera noise (photo-electrons); returns (observed, scale)."""
    import torch

    from piddpm.acquisition import acquire

    gen = torch.Generator()
    gen.manual_seed(int(seed_seq.generate_state(1, dtype=np.uint64)[0]) & 0x7FFF_FFFF_FFFF_FFFF)
    gt64 = torch.from_numpy(gt.astype(np.float64))[None, None]
    k64 = torch.from_numpy(kernel.astype(np.float64))[None, None]
    shot = acquire(
        gt64,
        k64,
        photons=micro.photons,
        background=micro.background,
        read_noise=micro.read_noise,
        boundary="periodic",
        nonnegative=True,
        generator=gen,
    )
    observed = shot["observed"]
    scale = micro.photons / float(shot["blurred"].max())
    return observed[0, 0].numpy().astype(np.float32), float(scale)


def synthetic_cases(cfg: SyntheticSuiteConfig, split: str = "test", *, log=None) -> list[Case]:
    """The seeded synthetic cases (``split="test"``) or the RL-tuning dev set (``"dev"``).

    Test: ``images_per_group`` images per specimen x modality with this code's PSFs (kernels
    z-averaged as in training, random aberrations included), plus ``independent_images``
    per modality with in-focus ``psfmodels`` kernels (skipped with a note if psfmodels is
    absent). Dev: ``dev_images`` images from another seed, this code's PSFs, specimens and
    modalities cycled. Every image is a pure function of the seed and its position.
    """
    from piddpm.data import compute_kernels, render_specimen, sample_microscopes

    if split not in ("test", "dev"):
        raise PiddpmError(f"split {split!r} is unknown: expected 'test' or 'dev'")
    seed = cfg.seed if split == "test" else cfg.dev_seed
    jobs: list[tuple[str, str, str, int]] = []  # (dataset, specimen, modality, psf source)
    if split == "test":
        for modality in cfg.modalities:
            for spec in cfg.specimens:
                jobs += [(f"synthetic-{modality}", spec, modality, 0)] * cfg.images_per_group
        if cfg.independent_psf and cfg.independent_images > 0:
            try:
                import psfmodels  # noqa: F401

                for modality in cfg.modalities:
                    for i in range(cfg.independent_images):
                        spec = cfg.specimens[i % len(cfg.specimens)]
                        jobs.append((f"synthetic-{modality}-psfmodels", spec, modality, 1))
            except ImportError:
                if log:
                    log(
                        "note: psfmodels is not installed; the synthetic part with "
                        "independent (psfmodels) PSFs is skipped"
                    )
    else:
        for i in range(cfg.dev_images):
            modality = cfg.modalities[i % len(cfg.modalities)]
            spec = cfg.specimens[(i // len(cfg.modalities)) % len(cfg.specimens)]
            jobs.append((f"dev-synthetic-{modality}", spec, modality, 0))

    root = np.random.SeedSequence(seed)
    children = root.spawn(len(jobs))
    micros = []
    for (_, _, modality, source), ss in zip(jobs, children, strict=True):
        rng = np.random.default_rng(ss.spawn(1)[0])
        m = sample_microscopes(_ranges(cfg, modality), 1, rng)[0]
        if source == 1:  # in focus, no aberrations: what psfmodels computes
            m = m.replace(z_half_range_um=0.0, zernike_waves=())
        micros.append(m)
    kernels: list[np.ndarray | None] = [None] * len(jobs)
    own = [i for i, j in enumerate(jobs) if j[3] == 0]
    if own:
        k_own = compute_kernels([micros[i] for i in own], cfg.kernel_size).numpy()
        for i, k in zip(own, k_own, strict=True):
            kernels[i] = (k / k.sum()).astype(np.float32)
    for i, j in enumerate(jobs):
        if j[3] == 1:
            kernels[i] = psfmodels_kernel(micros[i], cfg.kernel_size)

    cases: list[Case] = []
    counters: dict[str, int] = {}
    for i, ((dataset, spec, modality, source), ss) in enumerate(zip(jobs, children, strict=True)):
        micro = micros[i]
        rng = np.random.default_rng(ss.spawn(2)[1])
        gt = render_specimen(spec, cfg.size, micro.pixel_size_um, generator=rng, haze=(0.0, 0.0))
        gt = np.clip(gt.astype(np.float32), 0, None)
        gt /= max(float(gt.max()), 1e-12)
        observed, scale = _acquire(gt, kernels[i], micro, ss.spawn(3)[2])
        n = counters.get(dataset + spec, 0)
        counters[dataset + spec] = n + 1
        params = {k: v for k, v in micro.as_dict().items() if not k.startswith("zernike_")}
        params["psf_source"] = "psfmodels (vectorial, in focus)" if source else "piddpm.optics"
        cases.append(
            Case(
                suite="synthetic" if split == "test" else "dev",
                dataset=dataset,
                name=f"{spec}-{n:02d}",
                observed=observed,
                psf=kernels[i],
                modality=modality,
                reference=gt,
                reference_kind="ground truth",
                background=float(micro.background),
                scale=scale,
                pixel_size_um=float(micro.pixel_size_um),
                params=params,
            )
        )
    return cases


# --------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------
def shared_data_dir() -> Path | None:
    """``$PIDDPM_SHARED_DATA``, else ``<repo>/../shared/data``; None if it does not exist."""
    env = os.environ.get("PIDDPM_SHARED_DATA")
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    p = Path(__file__).resolve().parents[4] / "shared" / "data"
    return p if p.is_dir() else None


def manifest_files(data_dir: Path) -> list[str]:
    """Relative paths of the files listed in ``data_dir/MANIFEST.md`` (backquoted entries)."""
    text = (Path(data_dir) / "MANIFEST.md").read_text(encoding="utf-8")
    return sorted(set(re.findall(r"^\s*-\s*`([^`]+\.(?:tif|tiff|png))`", text, re.MULTILINE)))


def split_of(relpath: str) -> str | None:
    """``"test"``, ``"dev"`` or None for a path relative to the data folder."""
    if any(re.fullmatch(p, relpath) for p in TEST_FILES_PATTERNS):
        return "test"
    if any(re.fullmatch(p, relpath) for p in DEV_FILES_PATTERNS):
        return "dev"
    return None


def _read(data_dir: Path, rel: str, split: str, opened: list[str] | None) -> np.ndarray:
    from piddpm.io import read_image

    got = split_of(rel)
    if split in ("test", "dev") and got != split:
        raise PiddpmError(f"{rel} is in the {got} split, not the {split} split (MANIFEST.md)")
    path = Path(data_dir) / rel
    if not path.is_file():
        raise PiddpmError(f"real benchmark file {path} is missing (see MANIFEST.md)")
    if opened is not None:
        opened.append(rel)
    return np.asarray(read_image(path).data, dtype=np.float32)


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Centred ``size x size`` crop (the whole image if it is smaller)."""
    h, w = img.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(img[..., y0 : y0 + ch, x0 : x0 + cw])


def assumed_psf(cfg: RealSuiteConfig, modality: str) -> tuple[np.ndarray, float, str]:
    """The PSF assumed for real images without recorded optics: (kernel, pixel_um, note)."""
    import warnings

    from piddpm.optics import make_psf

    pixel_um = cfg.psf_nyquist_factor * cfg.em_wavelength_nm * 1e-3 / (4.0 * cfg.na)
    with warnings.catch_warnings():  # the confocal excitation PSF is finer than Nyquist
        warnings.simplefilter("ignore", UserWarning)
        k = make_psf(
            modality=modality,
            na=cfg.na,
            em_nm=cfg.em_wavelength_nm,
            ex_nm=cfg.ex_wavelength_nm,
            pinhole_au=cfg.pinhole_au,
            pixel_um=pixel_um,
            size=21,
        )
    note = (
        f"assumed {modality} PSF: NA {cfg.na}, emission {cfg.em_wavelength_nm:g} nm, pixel "
        f"{cfg.psf_nyquist_factor:g} x Nyquist ({pixel_um * 1e3:.0f} nm); the files record "
        "no optics"
    )
    return k, pixel_um, note


def real_cases(
    cfg: RealSuiteConfig, data_dir: Path, split: str = "test", *, opened: list[str] | None = None
) -> list[Case]:
    """Real paired cases of one split (``"test"`` for reporting, ``"dev"`` for tuning).

    Test: the W2S FOV 010 widefield -> SIM triplet (``w2s-sim``), the W2S avg1 -> avg400
    pairs of ``w2s_fovs`` x ``w2s_channels`` (``w2s-avg400``) and the GigaDB pairs
    (``gigadb``), large images centre-cropped to ``crop``. Dev: W2S ``w2s_dev_fovs`` and
    ``gigadb_dev``, at most ``dev_pairs`` per family. Every file read is checked against
    the split's patterns (a test run can never open a dev file) and appended to ``opened``.
    """
    if split not in ("test", "dev"):
        raise PiddpmError(f"split {split!r} is unknown: expected 'test' or 'dev'")
    data_dir = Path(data_dir)
    cases: list[Case] = []
    psf_wf, pixel_um, note_wf = assumed_psf(cfg, "widefield")

    def add(dataset, name, obs_rel, ref_rel, ref_kind, modality="widefield"):
        obs = centre_crop(_read(data_dir, obs_rel, split, opened), cfg.crop)
        ref = centre_crop(_read(data_dir, ref_rel, split, opened), cfg.crop)
        if modality == "widefield":
            psf, note = psf_wf, note_wf
        else:
            psf, _, note = assumed_psf(cfg, modality)
        cases.append(
            Case(
                suite="real" if split == "test" else "dev",
                dataset=dataset,
                name=name,
                observed=obs,
                psf=psf,
                modality=modality,
                reference=ref,
                reference_kind=ref_kind,
                pixel_size_um=None,
                files=[obs_rel, ref_rel],
                notes=[note],
            )
        )

    if split == "test":
        if cfg.triplet:
            add(
                "w2s-sim",
                "fov010-ch0",
                f"{W2S_TRIPLET}/input_avg1_010_0.tif",
                f"{W2S_TRIPLET}/sim_sim_010_0.tif",
                "SIM",
            )
        fovs, gig = cfg.w2s_fovs, cfg.gigadb
    else:
        fovs, gig = cfg.w2s_dev_fovs, cfg.gigadb_dev
    w2s = [(f, c) for f in fovs for c in cfg.w2s_channels]
    if split == "dev":
        w2s = w2s[: cfg.dev_pairs]
        gig = gig[: cfg.dev_pairs]
    for fov, ch in w2s:
        add(
            "w2s-avg400" if split == "test" else "dev-w2s",
            f"fov{fov:03d}-ch{ch}",
            f"{W2S_PAIRS}/input_avg1_{fov:03d}_{ch}.tif",
            f"{W2S_PAIRS}/target_avg400_{fov:03d}_{ch}.tif",
            "widefield 400-frame average",
        )
    for name in gig:
        add(
            "gigadb" if split == "test" else "dev-gigadb",
            name,
            f"{GIGADB}/{name}-lowsnr-sample.png",
            f"{GIGADB}/{name}-highsnr-sample.png",
            "high-SNR " + GIGADB_MODALITY.get(name, "widefield"),
            modality=GIGADB_MODALITY.get(name, "widefield"),
        )
    return cases


def no_reference_cases(cfg: RealSuiteConfig, data_dir: Path) -> list[Case]:
    """Single real images (no partner): scored by FRC / decorrelation resolution only."""
    from piddpm.io import read_image

    cases = []
    for rel in cfg.no_reference:
        path = Path(data_dir) / rel
        if not path.is_file():
            raise PiddpmError(f"no-reference image {path} is missing (see MANIFEST.md)")
        img = read_image(path)
        data = np.asarray(img.data, dtype=np.float32)
        if data.ndim != 2:
            raise PiddpmError(f"no-reference image {path} has shape {data.shape}; expected 2-D")
        modality = "confocal" if ("xist" in rel or "celegans" in rel) else "widefield"
        psf, _, note = assumed_psf(cfg, modality)
        pix = img.pixel_size_um[-1] if img.pixel_size_um else None
        cases.append(
            Case(
                suite="no-reference",
                dataset="single-images",
                name=Path(rel).stem,
                observed=centre_crop(data, cfg.crop),
                psf=psf,
                modality=modality,
                pixel_size_um=None if pix is None else float(pix),
                files=[rel],
                notes=[note],
            )
        )
    return cases
