"""The demo: simulate a specimen, image it through two microscopes, restore, compare.

:func:`run_demo` is what ``piddpm demo`` runs (see ``docs/demo.md``):

1. render a built-in specimen (default ``filaments+puncta``) on a ``size x size`` grid of
   :data:`PIXEL_SIZE_UM` pixels, seeded;
2. image it through the simulated widefield and confocal microscopes of :data:`MICROSCOPES`
   (PSFs from :mod:`piddpm.optics`) and a camera (:data:`CAMERA`: Poisson shot noise,
   background, read noise; :func:`piddpm.acquisition.acquire`);
3. restore each observation with Richardson-Lucy (automatic stopping rule, known PSF and
   background) and, when bundled models are installed (:func:`piddpm.models.list_models`),
   with the bundled U-Net, DDPM and PI-DDPM through :func:`piddpm.restore.restore`
   (PI-DDPM: several posterior samples, whose per-pixel standard deviation is the
   uncertainty map);
4. write TIFFs, one PNG figure per microscope and a metrics table into the output folder.

Nothing is downloaded: the specimens are generated, the PSFs computed, the models bundled.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from piddpm import PiddpmError, __version__
from piddpm.choices import Method, options

__all__ = [
    "CAMERA",
    "DEFAULT_SPECIMEN",
    "DEFAULT_SIZE",
    "METHOD_LABELS",
    "MICROSCOPES",
    "MIN_SIZE",
    "PIXEL_SIZE_UM",
    "DemoResult",
    "Microscope",
    "check_output_dir",
    "demo_psf",
    "format_table",
    "image_with_camera",
    "ms_ssim_settings",
    "render_demo_specimen",
    "run_demo",
    "select_models",
]

#: Default specimen: microtubule-like filaments plus diffraction-limited puncta (vesicles).
DEFAULT_SPECIMEN = "filaments+puncta"
#: Default image side, pixels.
DEFAULT_SIZE = 256
#: Smallest accepted image side, pixels (the PSF kernel and MS-SSIM must fit).
MIN_SIZE = 48
#: Largest accepted image side, pixels (the demo is meant to run in minutes on a CPU).
MAX_SIZE = 2048
#: Pixel size in the sample, micrometres: 0.85 x the widefield Nyquist pixel
#: lambda_em / (4 NA) = 0.130 um, and finer than the confocal one (0.122 um at 488 nm).
PIXEL_SIZE_UM = 0.11
#: PSF kernel half-width in Airy units (the kernel covers +-3 AU: the first 4 dark rings).
KERNEL_HALF_WIDTH_AU = 3.0


@dataclass(frozen=True)
class Microscope:
    """One simulated microscope.

    Attributes
    ----------
    modality : {"widefield", "confocal"}
    na : float
        Numerical aperture of the objective.
    ri : float
        Refractive index of the immersion medium and the sample (1.33: water).
    em_wavelength_nm : float
        Emission (detection) wavelength, nm.
    ex_wavelength_nm : float or None
        Excitation wavelength, nm (confocal only).
    pinhole_au : float or None
        Confocal pinhole diameter in Airy units (1 AU = 1.22 lambda_em / NA).
    description : str
        One line for the figure and the docs.
    """

    modality: str
    na: float
    ri: float
    em_wavelength_nm: float
    ex_wavelength_nm: float | None = None
    pinhole_au: float | None = None
    description: str = ""


#: The two microscopes: a water-immersion NA 1.0 objective, GFP-like emission (520 nm),
#: and for the confocal a 488 nm laser and a 1 Airy-unit pinhole. NA <= 1.0 in water is
#: the range the bundled models were trained on (``piddpm.data.MicroscopeRanges``).
MICROSCOPES: dict[str, Microscope] = {
    "widefield": Microscope(
        "widefield", na=1.0, ri=1.33, em_wavelength_nm=520.0,
        description="widefield, NA 1.0 water, em 520 nm",
    ),
    "confocal": Microscope(
        "confocal", na=1.0, ri=1.33, em_wavelength_nm=520.0, ex_wavelength_nm=488.0,
        pinhole_au=1.0, description="confocal, NA 1.0 water, ex 488 / em 520 nm, pinhole 1 AU",
    ),
}  # fmt: skip

#: Camera model (gain 1: values are photo-electrons): expected photons at the brightest
#: pixel of the blurred specimen, uniform background (photons per pixel) and Gaussian read
#: noise (electrons rms, a typical sCMOS).
CAMERA: dict[str, float] = {"photons": 200.0, "background": 10.0, "read_noise": 1.5}

#: Methods in figure / table order: key -> label.
METHOD_LABELS: dict[str, str] = {
    "input": "input",
    "rl": "RL",
    "unet": "U-Net",
    "ddpm": "DDPM",
    "pi-ddpm": "PI-DDPM",
    "rl-best": "RL, best count (oracle)",
}
#: Methods listed in the metrics but not in the figure or the headline: they use the ground
#: truth (a reference for the automatic methods, impossible on real data).
ORACLE_METHODS = ("rl-best",)
#: Posterior samples of PI-DDPM (the uncertainty map) and DDIM steps: normal / --fast.
PI_DDPM_SAMPLES = {False: 4, True: 2}
DDIM_STEPS_FAST = 10

_MODEL_METHODS = tuple(reversed(options(Method)))  # table order: unet, ddpm, pi-ddpm
_SKIP_SPECIMENS = ("images",)  # needs a user's folder: not a built-in specimen


@dataclass
class DemoResult:
    """What :func:`run_demo` returns.

    Attributes
    ----------
    out_dir : Path
        The output folder.
    files : list of Path
        Every file written, in writing order.
    metrics : list of dict
        One row per (modality, method): ``modality``, ``method``, ``psnr_db``, ``ms_ssim``,
        ``nrmse``, ``runtime_s``, ``details`` (see ``metrics.md`` for the normalisation).
    notes : list of str
        What was skipped and why (e.g. no bundled models).
    headline : str
        One line summarising the result.
    """

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    headline: str = ""


# --------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------
def _specimen_parts(specimen: str) -> list[str]:
    from piddpm.data import SPECIMENS

    parts = [p.strip() for p in str(specimen).split("+")]
    allowed = [n for n in SPECIMENS if n not in _SKIP_SPECIMENS] + ["mixture"]
    for p in parts:
        if p not in allowed:
            raise PiddpmError(
                f"specimen {specimen!r}: unknown part {p!r}; expected one of "
                f"{', '.join(allowed)}, or several joined by '+' (e.g. filaments+puncta)"
            )
    return parts


def render_demo_specimen(
    specimen: str, size: int, pixel_size_um: float, *, generator: np.random.Generator
) -> np.ndarray:
    """Render a specimen, or an overlay of several (``"filaments+puncta"``).

    Parameters
    ----------
    specimen : str
        A name of :data:`piddpm.data.SPECIMENS` (except ``images``), ``"mixture"``, or names
        joined by ``+``: each part is rendered with :func:`piddpm.data.render_specimen`
        (peak 1; diffuse haze only in the first), the parts are added with equal weight and
        the sum is rescaled to a peak of 1.
    size : int
        Image side, pixels.
    pixel_size_um : float
        Pixel size in the sample, micrometres.
    generator : numpy.random.Generator
        Source of all randomness.

    Returns
    -------
    numpy.ndarray, shape (size, size), float32
        Relative fluorophore density in ``[0, 1]``.
    """
    from piddpm.data import render_specimen

    parts = _specimen_parts(specimen)
    total = np.zeros((size, size), np.float64)
    for i, p in enumerate(parts):
        kwargs = {} if i == 0 or p == "mixture" else {"haze": (0.0, 0.0)}
        total += render_specimen(p, size, pixel_size_um, generator=generator, **kwargs)
    peak = float(total.max())
    if peak <= 0:
        raise PiddpmError(f"specimen {specimen!r} rendered an empty field; try another --seed")
    return (total / peak).astype(np.float32)


def check_output_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """Create the output folder, or refuse an existing non-empty one unless ``overwrite``.

    Returns
    -------
    Path
        The folder (created if needed).
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise PiddpmError(f"{out}: exists and is not a folder; choose another output (-o DIR)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PiddpmError(
            f"{out}: the output folder exists and is not empty; pass --overwrite to replace "
            "the files the demo writes (other files are kept), or choose another -o DIR"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PiddpmError(f"{out}: cannot create the output folder ({err})") from err
    return out


def ms_ssim_settings(size: int) -> tuple[int, int]:
    """``(win_size, scales)`` for MS-SSIM on ``size x size`` images.

    The most scales (up to the standard 5) for which a Gaussian window of 11 (else 7)
    taps fits at the coarsest scale: the image side must exceed
    ``(win_size - 1) * 2**(scales - 1)`` (see :func:`piddpm.metrics.ms_ssim`).
    """
    for scales in (5, 4, 3, 2, 1):
        for win in (11, 7):
            if size > (win - 1) * 2 ** (scales - 1):
                return win, scales
    raise PiddpmError(f"image side {size} px is too small for MS-SSIM (needs > 6 px)")


def select_models(modality: str) -> tuple[dict[str, Any], list[str]]:
    """Bundled models to use for a modality: ``{method: ModelEntry}`` and notes.

    A model qualifies when its ``modality`` is this one, ``"mixed"`` or unstated; one
    trained on exactly this modality is preferred, then the first by name.
    """
    from piddpm.models import list_models

    try:
        entries = list_models()
    except PiddpmError as err:
        return {}, [f"bundled models unreadable, skipped ({err})"]
    chosen: dict[str, Any] = {}
    for method in _MODEL_METHODS:
        fits = [
            e for e in entries if e.method == method and e.modality in (modality, "mixed", None)
        ]
        fits.sort(key=lambda e: (e.modality != modality, e.name))
        if fits:
            chosen[method] = fits[0]
    missing = [METHOD_LABELS[m] for m in _MODEL_METHODS if m not in chosen]
    notes = []
    if not entries:
        notes.append(
            f"{modality}: no bundled models installed; U-Net, DDPM and PI-DDPM skipped "
            "(Richardson-Lucy only)"
        )
    elif missing:
        notes.append(f"{modality}: no bundled {', '.join(missing)} model for it; skipped")
    return chosen, notes


def _kernel_size(micro: Microscope, size: int) -> int:
    from piddpm.optics import airy_unit_um

    au = float(airy_unit_um(micro.na, micro.em_wavelength_nm))
    k = 2 * math.ceil(KERNEL_HALF_WIDTH_AU * au / PIXEL_SIZE_UM) + 1
    cap = size - 1 if size % 2 == 0 else size
    return int(min(k, cap))


def _compute_psf(micro: Microscope, kernel: int) -> np.ndarray:
    from piddpm.optics import confocal_psf, project_psf, widefield_psf

    if micro.modality == "widefield":
        psf3 = widefield_psf(micro.na, micro.em_wavelength_nm, PIXEL_SIZE_UM, kernel, ri=micro.ri)
    else:
        psf3 = confocal_psf(
            micro.na, micro.ex_wavelength_nm, micro.em_wavelength_nm, micro.pinhole_au,
            PIXEL_SIZE_UM, kernel, ri=micro.ri,
        )  # fmt: skip
    return project_psf(psf3, "focus").double().numpy()


def demo_psf(modality: str, size: int) -> np.ndarray:
    """The in-focus PSF of the demo's ``modality`` microscope for a ``size``-pixel image
    (float64, unit sum, :data:`PIXEL_SIZE_UM` pixels)."""
    micro = MICROSCOPES[modality]
    return _compute_psf(micro, _kernel_size(micro, size))


def image_with_camera(
    gt: np.ndarray, psf: np.ndarray, photons: float, generator
) -> tuple[np.ndarray, float]:
    """``gt`` imaged through ``psf`` and the demo's camera (:data:`CAMERA`'s background and
    read noise, ``photons`` at the brightest blurred pixel; zero boundary), on the CPU in
    float64: the observation (float32, photo-electrons) and the photons per unit of
    ground-truth density. ``generator``: a :class:`torch.Generator` or a seed."""
    import torch

    from piddpm.acquisition import acquire

    shot = acquire(
        torch.from_numpy(gt.astype(np.float64)), torch.from_numpy(psf),
        photons=photons, background=CAMERA["background"], read_noise=CAMERA["read_noise"],
        boundary="zero", generator=generator,
    )  # fmt: skip
    return shot["observed"].float().numpy(), float(shot["scale"][0])


def _torch_seed(seq: np.random.SeedSequence) -> int:
    return int(seq.generate_state(1, dtype=np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF)


def _metrics(est: np.ndarray, gt: np.ndarray, win: int, scales: int) -> dict[str, float]:
    from piddpm.metrics import MS_SSIM_WEIGHTS, ms_ssim, nrmse, psnr

    est = est.astype(np.float64)
    ref = gt.astype(np.float64)
    return {
        "psnr_db": float(psnr(est, ref)),
        "ms_ssim": float(ms_ssim(est, ref, win_size=win, weights=MS_SSIM_WEIGHTS[:scales])),
        "nrmse": float(nrmse(est, ref)),
    }


def _write_text(path: Path, text: str, overwrite: bool) -> Path:
    from piddpm.io import atomic_path

    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """The metrics as a fixed-width text table (or a Markdown table)."""
    head = ["modality", "method", "PSNR (dB)", "MS-SSIM", "NRMSE", "time (s)"]
    body = [
        [
            r["modality"],
            METHOD_LABELS.get(r["method"], r["method"]),
            f"{r['psnr_db']:.2f}",
            f"{r['ms_ssim']:.4f}",
            f"{r['nrmse']:.4f}",
            f"{r['runtime_s']:.1f}",
        ]
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
    fmt = lambda row: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w)
        for i, (c, w) in enumerate(zip(row, widths, strict=True))
    )
    return "\n".join([fmt(head)] + [fmt(row) for row in body])


def _headline(rows: list[dict[str, Any]]) -> str:
    parts = []
    for modality in MICROSCOPES:
        mine = [r for r in rows if r["modality"] == modality]
        raw = next(r for r in mine if r["method"] == "input")
        best = max(
            (r for r in mine if r["method"] not in ("input", *ORACLE_METHODS)),
            key=lambda r: r["psnr_db"],
        )
        parts.append(
            f"{modality} {METHOD_LABELS[best['method']]} {best['psnr_db']:.1f} dB "
            f"(raw {raw['psnr_db']:.1f} dB, {best['psnr_db'] - raw['psnr_db']:+.1f} dB)"
        )
    return "best PSNR: " + "; ".join(parts)


NORMALISATION_NOTE = (
    "Every image is compared with the ground truth (relative density, peak 1) after the "
    "physical map `(v - b) / s`: `b` = {background:g} photons/pixel is the known background "
    "and `s` the known photons per unit of ground-truth density (photons at the brightest "
    "pixel of the blurred specimen / that pixel's blurred density). No per-image fitting. "
    "PSNR and NRMSE use the ground truth's range (max - min) as data range; NRMSE = RMSE / "
    "range. MS-SSIM: Gaussian window of {win} taps (sigma 1.5 px), {scales} scale(s) with "
    "the first {scales} Wang et al. (2003) weights renormalised, data range as for PSNR."
)


# --------------------------------------------------------------------------------------
# the demo
# --------------------------------------------------------------------------------------
def run_demo(
    out_dir: str | Path = "demo-out",
    *,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    specimen: str = DEFAULT_SPECIMEN,
    fast: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    samples: int | None = None,
    steps: int | None = None,
) -> DemoResult:
    """Run the demo and write its outputs (see ``docs/demo.md`` for the list of files).

    Parameters
    ----------
    out_dir : str or Path
        Output folder; an existing non-empty folder is refused unless ``overwrite``, which
        replaces only the files the demo writes.
    size : int
        Image side in pixels (``MIN_SIZE`` to ``MAX_SIZE``), at :data:`PIXEL_SIZE_UM`.
    seed : int
        Seed of the specimen, the noise and the diffusion sampling (same seed: same
        metrics).
    specimen : str
        See :func:`render_demo_specimen`.
    fast : bool
        Fewer posterior samples (:data:`PI_DDPM_SAMPLES`) and :data:`DDIM_STEPS_FAST`
        DDIM steps for the diffusion models (Richardson-Lucy is unchanged).
    overwrite : bool
        Allow a non-empty ``out_dir``.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ... for restoration (the simulation runs on CPU,
        so the observations do not depend on the device).
    progress : bool
        Show progress bars of the diffusion restorations.
    log : callable, optional
        Receives one line per stage (e.g. ``print``).
    samples : int, optional
        PI-DDPM posterior samples (``>= 2`` for an uncertainty map); default
        :data:`PI_DDPM_SAMPLES`.
    steps : int, optional
        DDIM steps of DDPM and PI-DDPM; default the model's (``fast``:
        :data:`DDIM_STEPS_FAST`).

    Returns
    -------
    DemoResult
    """
    from piddpm.restore import resolve_device

    size, seed = _check_demo_arguments(size, seed, samples, steps)
    _specimen_parts(specimen)
    dev = resolve_device(device)
    out = check_output_dir(out_dir, overwrite)
    win, scales = ms_ssim_settings(size)
    ctx = _Context(
        out=out, result=DemoResult(out_dir=out), win=win, scales=scales, device=dev,
        seed=seed, fast=bool(fast), samples=samples, steps=steps, progress=progress,
        say=log or (lambda _msg: None),
    )  # fmt: skip
    seeds = np.random.SeedSequence(seed).spawn(1 + len(MICROSCOPES))
    t0 = time.perf_counter()
    _render_ground_truth(ctx, specimen, size, seeds[0])
    settings = _demo_settings(ctx, specimen, size)
    for k, (modality, micro) in enumerate(MICROSCOPES.items()):
        settings["modalities"][modality] = _one_modality(ctx, micro, seeds[1 + k], specimen)
    note = _write_metrics_tables(ctx, specimen, size)
    result = ctx.result
    settings["normalisation"] = note
    settings["notes"] = result.notes
    settings["runtime_s"] = round(time.perf_counter() - t0, 2)
    result.files.append(_write_text(out / "demo.json", json.dumps(settings, indent=2) + "\n", True))
    return result


def _check_demo_arguments(size, seed, samples, steps) -> tuple[int, int]:
    """Validate the numeric arguments of :func:`run_demo`; returns ``(size, seed)`` as ints."""
    if isinstance(size, bool) or int(size) != size or not MIN_SIZE <= size <= MAX_SIZE:
        raise PiddpmError(f"size {size!r}: expected an integer from {MIN_SIZE} to {MAX_SIZE} px")
    size = int(size)
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise PiddpmError(f"seed {seed!r}: expected an integer >= 0")
    seed = int(seed)
    for label, value in (("samples", samples), ("steps", steps)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise PiddpmError(f"{label} {value!r}: expected a positive integer")
    return size, seed


def _render_ground_truth(
    ctx: _Context, specimen: str, size: int, seed_seq: np.random.SeedSequence
) -> None:
    """Render the specimen into ``ctx.gt`` and write ``ground_truth.tif``."""
    ctx.say(
        f"rendering specimen {specimen!r}: {size} x {size} px at {PIXEL_SIZE_UM} um "
        f"(seed {ctx.seed})"
    )
    ctx.gt = render_demo_specimen(
        specimen, size, PIXEL_SIZE_UM, generator=np.random.default_rng(seed_seq)
    )
    ctx.tiff(
        "ground_truth.tif", ctx.gt,
        {"content": "ground truth: relative fluorophore density, peak 1", "specimen": specimen,
         "seed": ctx.seed},
    )  # fmt: skip


def _demo_settings(ctx: _Context, specimen: str, size: int) -> dict[str, Any]:
    """The run's settings for ``demo.json`` (the modalities are filled in as they run)."""
    return {
        "piddpm_version": __version__,
        "specimen": specimen,
        "size_px": size,
        "pixel_size_um": PIXEL_SIZE_UM,
        "seed": ctx.seed,
        "fast": ctx.fast,
        "device": str(ctx.device),
        "camera": dict(CAMERA, gain_adu_per_e=1.0, offset_adu=0.0, boundary="zero"),
        "ms_ssim": {"win_size": ctx.win, "scales": ctx.scales},
        "modalities": {},
    }


def _write_metrics_tables(ctx: _Context, specimen: str, size: int) -> str:
    """Write ``metrics.csv`` and ``metrics.md``, set the headline; returns the
    normalisation note."""
    result, out = ctx.result, ctx.out
    note = NORMALISATION_NOTE.format(
        background=CAMERA["background"], win=ctx.win, scales=ctx.scales
    )
    buf = io.StringIO()
    fields = ["modality", "method", "psnr_db", "ms_ssim", "nrmse", "runtime_s", "details"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in result.metrics:
        writer.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in fields})
    result.files.append(_write_text(out / "metrics.csv", buf.getvalue(), True))
    result.headline = _headline(result.metrics)
    md = [
        "# piddpm demo: metrics",
        "",
        f"Specimen `{specimen}`, {size} x {size} px at {PIXEL_SIZE_UM} um, seed {ctx.seed}.",
        "",
        format_table(result.metrics, markdown=True),
        "",
        "**Normalisation.** " + note,
        "",
        "**RL, best count (oracle).** Richardson-Lucy stopped at the iteration count with the "
        "best PSNR against the ground truth: the ceiling of RL's automatic rule on this image, "
        "not a method (a real image has no ground truth). Not in the figure or the headline.",
        "",
        "**Headline.** " + result.headline,
    ]
    if result.notes:
        md += ["", "**Skipped.** " + " ".join(result.notes)]
    result.files.append(_write_text(out / "metrics.md", "\n".join(md) + "\n", True))
    return note


@dataclass
class _Context:
    """State shared by the stages of one demo run."""

    out: Path
    result: DemoResult
    win: int
    scales: int
    device: Any
    seed: int
    fast: bool
    samples: int | None
    steps: int | None
    progress: bool
    say: Callable[[str], None]
    gt: np.ndarray | None = None

    def tiff(self, name: str, data, meta: dict) -> None:
        from piddpm.io import write_tiff

        path = self.out / name
        write_tiff(
            path, data, axes="YX", pixel_size_um=(PIXEL_SIZE_UM, PIXEL_SIZE_UM),
            metadata={"piddpm": "demo", **meta}, overwrite=True,
        )  # fmt: skip
        self.result.files.append(path)


def _one_modality(
    ctx: _Context, micro: Microscope, seed_seq: np.random.SeedSequence, specimen: str
) -> dict[str, Any]:
    """Image ``ctx.gt`` through one microscope, restore, write TIFFs and the figure, add the
    metrics rows to ``ctx.result``; returns the settings used (for ``demo.json``)."""
    gt, modality, size = ctx.gt, micro.modality, ctx.gt.shape[0]
    ctx.say(f"{modality}: {micro.description}")
    kernel = _kernel_size(micro, size)
    psf = _compute_psf(micro, kernel)
    micro_meta = {
        "modality": modality, "na": micro.na, "ri": micro.ri,
        "em_wavelength_nm": micro.em_wavelength_nm, "ex_wavelength_nm": micro.ex_wavelength_nm,
        "pinhole_au": micro.pinhole_au, "pixel_size_um": PIXEL_SIZE_UM,
    }  # fmt: skip
    ctx.tiff(
        f"{modality}_psf.tif", psf,
        {"content": f"{modality} PSF, in-focus plane, unit sum", **micro_meta},
    )  # fmt: skip
    observed, scale, unit_meta = _simulate(ctx, micro, psf, seed_seq, micro_meta)
    bg = CAMERA["background"]

    rows: list[dict[str, Any]] = []
    panels: list[tuple[str, np.ndarray, str]] = []

    def record(method: str, est_gt: np.ndarray, runtime: float, details: str) -> None:
        m = _metrics(est_gt, gt, ctx.win, ctx.scales)
        rows.append(
            {"modality": modality, "method": method, **m, "runtime_s": runtime, "details": details}
        )
        if method not in ORACLE_METHODS:  # references using the ground truth: table only
            panels.append((METHOD_LABELS[method], est_gt, f"PSNR {m['psnr_db']:.1f} dB"))

    record("input", (observed.astype(np.float64) - bg) / scale, 0.0, "raw camera image")
    u, rl_time, n_iter = _restore_rl(ctx, modality, observed, psf, unit_meta)
    record("rl", u / scale, rl_time, f"{n_iter} iterations (auto rule)")
    chosen, std_gt = _restore_with_models(ctx, micro, observed, psf, scale, unit_meta, record)
    from piddpm.baselines.stopping import best_iteration_count

    t0 = time.perf_counter()
    best_u, best_n, _ = best_iteration_count(
        observed, psf.astype(np.float32), gt * scale,
        background=CAMERA["background"], read_noise=CAMERA["read_noise"],
    )  # fmt: skip
    record("rl-best", best_u / scale, time.perf_counter() - t0, f"{best_n} iterations, the "
           "count with the best PSNR against the ground truth (an oracle: not possible on "
           "real data)")  # fmt: skip

    panels.append(("ground truth", gt, specimen))
    fig_path = ctx.out / f"{modality}.png"
    from piddpm.demo_figure import write_demo_figure

    write_demo_figure(
        fig_path, panels, std_gt, gt,
        f"{micro.description}\n{CAMERA['photons']:g} photons peak, background "
        f"{CAMERA['background']:g}, read noise {CAMERA['read_noise']:g} e-; "
        f"{size} px at {PIXEL_SIZE_UM * 1000:g} nm",
        overwrite=True, pixel_size_um=PIXEL_SIZE_UM,
    )  # fmt: skip
    ctx.result.files.append(fig_path)
    ctx.result.metrics.extend(rows)
    return {
        **micro_meta, "psf_kernel_px": kernel, "photons_per_gt_unit": scale,
        "rl_iterations": n_iter, "models": {m: e.name for m, e in chosen.items()},
    }  # fmt: skip


def _simulate(
    ctx: _Context,
    micro: Microscope,
    psf: np.ndarray,
    seed_seq: np.random.SeedSequence,
    micro_meta: dict[str, Any],
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Image ``ctx.gt`` with ``psf`` and the camera, write ``{modality}_observed.tif``;
    returns the observation, the photons per unit of ground-truth density and the metadata
    of images in camera units."""
    import torch

    modality = micro.modality
    # simulation on the CPU in float64, so the observation does not depend on --device
    noise_gen = torch.Generator().manual_seed(_torch_seed(seed_seq))
    observed, scale = image_with_camera(ctx.gt, psf, CAMERA["photons"], noise_gen)
    unit_meta = {
        "units": "photo-electrons per pixel (gain 1, offset 0), background included",
        "photons_per_gt_unit": scale,
        "background_photons": CAMERA["background"],
        **micro_meta,
    }
    ctx.tiff(
        f"{modality}_observed.tif", observed,
        {"content": f"{modality} camera image (Poisson + read noise)", **unit_meta,
         "camera": dict(CAMERA, gain_adu_per_e=1.0, offset_adu=0.0)},
    )  # fmt: skip
    return observed, scale, unit_meta


def _restore_rl(
    ctx: _Context, modality: str, observed: np.ndarray, psf: np.ndarray, unit_meta: dict
) -> tuple[np.ndarray, float, int]:
    """Richardson-Lucy (Poisson maximum likelihood with the known PSF, background and read
    noise, the last as a shifted Poisson), write ``{modality}_rl.tif``; returns the estimate
    (background removed), runtime, iterations."""
    import torch

    from piddpm.baselines import richardson_lucy

    bg = CAMERA["background"]
    t = time.perf_counter()
    u, info = richardson_lucy(
        torch.from_numpy(observed).to(ctx.device),
        torch.from_numpy(psf.astype(np.float32)).to(ctx.device),
        "auto", background=bg, read_noise=CAMERA["read_noise"], boundary="zero",
        return_info=True,
    )  # fmt: skip
    u = u.cpu().double().numpy()
    rl_time = time.perf_counter() - t
    n_iter = info["num_iter"][0]
    ctx.say(f"{modality}: Richardson-Lucy stopped after {n_iter} iterations ({rl_time:.1f} s)")
    ctx.tiff(
        f"{modality}_rl.tif", u + bg,
        {"content": f"{modality} Richardson-Lucy restoration", "method": "rl",
         "num_iter": n_iter, "rule": "auto (Poisson discrepancy <= 1 under the shifted-"
         "Poisson model of the read noise, relative change < 1e-3, or 200 iterations)",
         **unit_meta},
    )  # fmt: skip
    return u, rl_time, n_iter


def _restore_with_models(
    ctx: _Context,
    micro: Microscope,
    observed: np.ndarray,
    psf: np.ndarray,
    scale: float,
    unit_meta: dict,
    record: Callable[[str, np.ndarray, float, str], None],
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Restore with the bundled models that fit the modality, write their TIFFs and
    ``record`` their metrics; returns the chosen models and the PI-DDPM std (ground-truth
    units, ``None`` without PI-DDPM samples)."""
    modality, bg = micro.modality, CAMERA["background"]
    chosen, notes = select_models(modality)
    for note in notes:
        ctx.say("note: " + note)
    ctx.result.notes.extend(notes)
    std_gt = None
    for method, entry in chosen.items():
        from piddpm.restore import restore

        n_samples, n_steps = 1, None
        if method == "pi-ddpm":
            n_samples = ctx.samples or PI_DDPM_SAMPLES[ctx.fast]
        if method != "unet":
            n_steps = ctx.steps or (DDIM_STEPS_FAST if ctx.fast else None)
        extra = f", {n_samples} samples" if n_samples > 1 else ""
        ctx.say(f"{modality}: {METHOD_LABELS[method]} ({entry.name}{extra})")
        t = time.perf_counter()
        res = restore(
            observed, model=entry.name, method=method, psf=psf.astype(np.float32),
            samples=n_samples, steps=n_steps, seed=ctx.seed, device=str(ctx.device),
            progress=ctx.progress, pixel_size_um=PIXEL_SIZE_UM,
            microscope={"modality": modality, "na": micro.na, "em_nm": micro.em_wavelength_nm,
                        "ri": micro.ri},  # the sampling, for models trained on other pixels
        )  # fmt: skip
        runtime = time.perf_counter() - t
        mean = np.asarray(res.mean, np.float64)
        ctx.tiff(
            f"{modality}_{method}.tif", mean,
            {"content": f"{modality} {METHOD_LABELS[method]} restoration", **unit_meta,
             "restore": res.metadata},
        )  # fmt: skip
        record(method, (mean - bg) / scale, runtime, f"model {entry.name}{extra}")
        if method == "pi-ddpm" and res.std is not None:
            std = np.asarray(res.std, np.float64)
            ctx.tiff(
                f"{modality}_pi-ddpm_std.tif", std,
                {"content": f"{modality} PI-DDPM uncertainty: per-pixel std of {n_samples} "
                 "posterior samples", **unit_meta},
            )  # fmt: skip
            std_gt = std / scale
    return chosen, std_gt
