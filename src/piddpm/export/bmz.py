"""Export a piddpm model as a BioImage Model Zoo package (``piddpm export bmz``).

:func:`export_bmz` writes one ``.zip`` holding a model description in the current
bioimage.io spec (format 0.5.x, ``bioimageio.yaml``) and the files it names:

- ``weights.pt``: the network's state dict for the ``pytorch_state_dict`` weights format
  (``torch.save``, as the spec requires; tensors only, loaded with ``weights_only=True``),
  run through :class:`piddpm.export.modules.BMZUNet` / :class:`~piddpm.export.modules.BMZDiffusion`
  from the installed ``piddpm`` with their keyword arguments;
- ``weights_torchscript.pt``: a traced U-Net (``torchscript``; U-Net models only, the
  diffusion sampler does not trace: its noise comes from seeded NumPy/torch generators);
- ``test_input.npy`` / ``test_output.npy``: a simulated observation and the package's output;
- ``cover.png``: that pair side by side;
- ``README.md``: the documentation (the package's own notes, then the model card);
- ``model.json``, ``model.safetensors``, ``MODEL_CARD.md``: the piddpm model itself, from
  which ``piddpm restore --model NAME.zip`` rebuilds the model (:mod:`piddpm.models.bmz`).

The description is written without ``bioimageio.spec`` (plain YAML); ``bioimageio test
NAME.zip`` (the ``bmz`` extra) checks it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from piddpm import PiddpmError, __version__
from piddpm.models.bmz import BMZ_CONFIG_FORMAT, BMZ_CONFIG_VERSION, DESCRIPTION_NAME

__all__ = ["BMZ_FORMAT_VERSION", "BMZExport", "export_bmz", "package_modules"]

#: The bioimage.io model spec version the description is written in.
BMZ_FORMAT_VERSION = "0.5.4"
#: Seed of the sampler's noise inside the exported diffusion module.
BMZ_SEED = 0
#: Side of the default test image in pixels.
TEST_SIZE = 64
#: The smallest input side the package declares; sizes grow in steps of the network's factor.
MIN_SIDE_FACTORS = 2

PAPER_CITATION = {
    "text": (
        "Li R., della Maggiora G., Andriasyan V., Petkidis A., Yushkevich A., Deshpande N., "
        "Kudryashev M., Yakimovich A. Microscopy image reconstruction with physics-informed "
        "denoising diffusion probabilistic model. Communications Engineering (2024)."
    ),
    "doi": "10.1038/s44172-024-00331-z",
}


class BMZExport:
    """What :func:`export_bmz` wrote: ``path`` (the zip), ``files`` (its members),
    ``formats`` (weights formats) and ``notes`` (what was left out and why)."""

    def __init__(self, path: Path, files: list[str], formats: list[str], notes: list[str]):
        self.path, self.files, self.formats, self.notes = path, files, formats, notes

    def __repr__(self) -> str:
        return f"BMZExport({str(self.path)!r}, formats={self.formats})"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_output(out: str | Path, overwrite: bool) -> Path:
    path = Path(out).expanduser()
    if path.suffix.lower() != ".zip":
        raise PiddpmError(f"output {path}: a BioImage Model Zoo package is a .zip file")
    if path.is_dir():
        raise PiddpmError(f"output {path} is a folder; expected a .zip file name")
    if not path.parent.is_dir():
        raise PiddpmError(
            f"output {path}: the folder {path.parent} does not exist; create it first"
        )
    if path.exists() and not overwrite:
        raise PiddpmError(f"output {path} already exists; pass --overwrite to replace it")
    return path


def package_modules(entry, device: str = "cpu"):
    """The Zoo module of a model entry and its architecture description.

    Returns
    -------
    module : torch.nn.Module
        :class:`~piddpm.export.modules.BMZUNet` or :class:`~piddpm.export.modules.BMZDiffusion`
        with the entry's weights, in eval mode.
    architecture : dict
        ``callable``, ``import_from`` and JSON ``kwargs`` for the description.
    """
    from piddpm.export.modules import BMZDiffusion, BMZUNet
    from piddpm.models import load_entry
    from piddpm.restore.settings import border_pad_for

    net = load_entry(entry, device)
    network = dict(net.config)
    border = border_pad_for(entry)  # the plane mirrored as piddpm restore does
    if entry.method == "unet":
        kwargs: dict[str, Any] = {"network": network, "border_pad": border}
        module = BMZUNet(**kwargs)
    else:
        kwargs = {
            "network": network,
            "method": entry.method,
            "schedule": dict(entry.config["schedule"]),
            "sampler": _sampler_settings(entry, net),
            "target": str(entry.config.get("target") or "residual"),
            "seed": BMZ_SEED,
            "border_pad": border,
        }
        module = BMZDiffusion(**kwargs)
    module.net.load_state_dict(net.state_dict())
    module = module.to(device).eval().requires_grad_(False)
    arch = {
        "callable": type(module).__name__,
        "import_from": "piddpm.export.modules",
        "kwargs": json.loads(json.dumps(kwargs)),
    }
    return module, arch


def _sampler_settings(entry, net) -> dict[str, Any]:
    """The model's restore defaults as a concrete, deterministic sampler configuration."""
    from piddpm.diffusion.settings import resolve_sampler_config
    from piddpm.restore.runners import diffusion_config
    from piddpm.restore.settings import schedule_for

    model_sampler = entry.config.get("sampler")
    model_sampler = dict(model_sampler) if isinstance(model_sampler, dict) else {}
    config = resolve_sampler_config(
        {"samples": 1, "eta_ddim": 0.0}, model_sampler, entry.restore_defaults
    )
    config = diffusion_config(
        config,
        entry.method,
        entry,
        schedule_for(entry),
        psf_known=False,
        steps_given=None,
        tile_invariant=bool(getattr(net, "tile_invariant", False)),
    )
    return config.model_dump(mode="json")


# ------------------------------------------------------------------------- test data


def make_test_input(entry, size: int = TEST_SIZE, seed: int = 0) -> np.ndarray:
    """A simulated observation ``(1, 1, size, size)`` float32 for the package's test: a
    specimen of the model's training mixture imaged by its modality at Nyquist sampling,
    200 photons at the brightest pixel, background 10."""
    from piddpm.acquisition import add_noise, blur
    from piddpm.data import render_specimen
    from piddpm.optics import confocal_psf, nyquist_pixel_um, widefield_psf

    na, em_nm = 0.8, 520.0
    pixel_um = nyquist_pixel_um(na, em_nm)
    gt = render_specimen("filaments", size, pixel_um, generator=np.random.default_rng(seed))
    k = min(33, size - 1 if size % 2 == 0 else size)  # odd, inside the image
    if entry.modality == "confocal":
        psf = confocal_psf(na, 488.0, em_nm, 1.0, pixel_um, k)
    else:
        psf = widefield_psf(na, em_nm, pixel_um, k)
    psf = psf.reshape(-1, k, k)[0][None, None]
    clean = blur(torch.from_numpy(gt)[None, None], psf / psf.sum(), boundary="periodic")
    gen = torch.Generator().manual_seed(seed)
    observed = add_noise(clean, photons=200.0, background=10.0, generator=gen)
    return observed.numpy().astype(np.float32)


def preprocess(x: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """The package's preprocessing in NumPy: per sample, ``scale_range`` (the percentiles
    to 0 and 1, eps 1e-6) then ``scale_linear`` (gain 2, offset -1): [-1, 1]."""
    axes = tuple(range(1, x.ndim))
    lo = np.quantile(x, percentiles[0] / 100.0, axis=axes, keepdims=True)
    hi = np.quantile(x, percentiles[1] / 100.0, axis=axes, keepdims=True)
    scaled = ((x - lo) / (hi - lo + 1e-6)).astype(np.float32)
    return (scaled * np.float32(2.0) + np.float32(-1.0)).astype(np.float32)


def postprocess(y: np.ndarray) -> np.ndarray:
    """The package's postprocessing: ``scale_linear`` gain 0.5, offset 0.5 ([-1, 1] -> [0, 1])."""
    return (y * np.float32(0.5) + np.float32(0.5)).astype(np.float32)


def _cover_png(test_in: np.ndarray, test_out: np.ndarray) -> bytes:
    """Input | output side by side (2:1), each scaled to its 0.1/99.9 percentiles."""
    from PIL import Image as PILImage

    def gray(a: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(a, (0.1, 99.9))
        return (np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1) * 255).round().astype(np.uint8)

    both = np.concatenate([gray(test_in[0, 0]), gray(test_out[0, 0])], axis=1)
    scale = max(1, 256 // both.shape[0])
    both = np.kron(both, np.ones((scale, scale), dtype=np.uint8))
    buf = io.BytesIO()
    PILImage.fromarray(both).save(buf, format="PNG")
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _tif(a: np.ndarray) -> bytes:
    """A 2-D float32 TIFF of the plane of a ``(1, 1, H, W)`` array (the sample tensors)."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(a[0, 0], dtype=np.float32))
    return buf.getvalue()


def _state_dict_bytes(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, buf)
    return buf.getvalue()


def _torchscript_bytes(module, example: torch.Tensor) -> bytes | None:
    """A traced U-Net (input sides must be multiples of its factor), or None."""
    from piddpm.export.modules import BMZUNet

    if not isinstance(module, BMZUNet):
        return None

    class _Plain(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x, None)

    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        # the shape checks in UNet.forward become constants: fine for the sizes the axes allow
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_Plain(module.net).eval(), example, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    return buf.getvalue()


# ------------------------------------------------------------------------- description


def _display_name(entry) -> str:
    stem = Path(entry.name).name if not entry.bundled else entry.name
    return re.sub(r"[^A-Za-z0-9_+\- ()]", "-", f"piddpm {stem}")[:128]


def _axes(factor: int, tensor_id: str | None) -> list[dict[str, Any]]:
    """Batch, one channel, y and x: parameterised for the input, the input's for an output."""
    axes: list[dict[str, Any]] = [{"type": "batch"}, {"type": "channel", "channel_names": ["c0"]}]
    for ax in ("y", "x"):
        size: dict[str, Any] = (
            {"min": MIN_SIDE_FACTORS * factor, "step": factor}
            if tensor_id is None
            else {"tensor_id": tensor_id, "axis_id": ax}
        )
        axes.append({"type": "space", "id": ax, "size": size})  # pixel size: any (README)
    return axes


def _tensors(entry, percentiles, factor: int, files: dict[str, bytes]) -> dict[str, Any]:
    lo, hi = (float(p) for p in percentiles)
    pre = [
        {
            "id": "scale_range",
            "kwargs": {"axes": ["channel", "y", "x"], "min_percentile": lo, "max_percentile": hi},
        },
        {"id": "scale_linear", "kwargs": {"gain": 2.0, "offset": -1.0}},
    ]
    inputs = {
        "id": "raw",
        "description": f"a 2-D {entry.modality or 'fluorescence'} plane, any units; its "
        f"{lo:g}/{hi:g} percentiles map to [-1, 1]",
        "axes": _axes(factor, None),
        "test_tensor": {"source": "test_input.npy", "sha256": _sha256(files["test_input.npy"])},
        "sample_tensor": {
            "source": "sample_input.tif",
            "sha256": _sha256(files["sample_input.tif"]),
        },
        "data": {"type": "float32"},
        "preprocessing": pre,
    }
    outputs = {
        "id": "restored",
        "description": f"the restoration; 0 and 1 are the input's {lo:g} and {hi:g} "
        "percentiles (README: back to the input's units)",
        "axes": _axes(factor, "raw"),
        "test_tensor": {"source": "test_output.npy", "sha256": _sha256(files["test_output.npy"])},
        "sample_tensor": {
            "source": "sample_output.tif",
            "sha256": _sha256(files["sample_output.tif"]),
        },
        "data": {"type": "float32"},
        "postprocessing": [{"id": "scale_linear", "kwargs": {"gain": 0.5, "offset": 0.5}}],
    }
    return {"inputs": [inputs], "outputs": [outputs]}


def _weights(arch: dict, files: dict[str, bytes]) -> dict[str, Any]:
    version = torch.__version__.split("+")[0]
    weights: dict[str, Any] = {
        "pytorch_state_dict": {
            "source": "weights.pt",
            "sha256": _sha256(files["weights.pt"]),
            "architecture": arch,
            "pytorch_version": version,
        }
    }
    if "weights_torchscript.pt" in files:
        weights["torchscript"] = {
            "source": "weights_torchscript.pt",
            "sha256": _sha256(files["weights_torchscript.pt"]),
            "pytorch_version": version,
            "parent": "pytorch_state_dict",
        }
    return weights


def _description(entry, arch, percentiles, factor, files: dict[str, bytes]) -> dict[str, Any]:
    """The ``bioimageio.yaml`` content (spec :data:`BMZ_FORMAT_VERSION`)."""
    method = entry.method
    attachments = [
        {"source": name, "sha256": _sha256(files[name])}
        for name in ("model.json", "model.safetensors", "MODEL_CARD.md")
        if name in files
    ]
    return {
        "format_version": BMZ_FORMAT_VERSION,
        "type": "model",
        "name": _display_name(entry),
        "description": entry.summary[:1024],
        "authors": [{"name": "piddpm developers"}],
        "cite": [PAPER_CITATION],
        "license": "BSD-3-Clause",
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": [
            "fluorescence-light-microscopy",
            "2d",
            "denoising",
            "deconvolution",
            "pytorch",
            "piddpm",
            method,
            *([entry.modality] if entry.modality else []),
            *(["diffusion-model"] if method != "unet" else []),
        ],
        "version": "1",
        **_tensors(entry, percentiles, factor, files),
        "weights": _weights(arch, files),
        "attachments": attachments,
        "config": {
            "piddpm": {
                "format": BMZ_CONFIG_FORMAT,
                "version": BMZ_CONFIG_VERSION,
                "model_json": "model.json",
                "weights": "model.safetensors",
                **({"model_card": "MODEL_CARD.md"} if "MODEL_CARD.md" in files else {}),
                "method": method,
                "source_model": entry.name,
                "piddpm_version": __version__,
            }
        },
    }


def _readme(entry, arch, percentiles, formats: list[str]) -> str:
    """The package documentation: what the package does and cannot do, then the card."""
    lo, hi = (float(p) for p in percentiles)
    lines = [
        f"# {_display_name(entry)}",
        "",
        f"{entry.summary}",
        "",
        f"A BioImage Model Zoo package of the piddpm model `{entry.name}` (method "
        f"`{entry.method}`), written by `piddpm export bmz` (piddpm {__version__}). Weights: "
        f"{', '.join(formats)}. Architecture: `{arch['import_from']}.{arch['callable']}` from "
        "the installed `piddpm` package (`pip install piddpm`, with torch >= 2.2).",
        "",
        "## Input, output and what the spec cannot express",
        "",
        f"- Input `raw`: one 2-D plane `(batch, channel=1, y, x)`, float32, sides >= "
        f"{MIN_SIDE_FACTORS} x the network's factor and multiples of it (the module pads "
        "other sizes itself). Preprocessing (in the description): per image, `scale_range` "
        f"maps the {lo:g} / {hi:g} percentiles to 0 / 1, then `scale_linear` (x 2 - 1) to "
        "[-1, 1], the model's units.",
        "- Output `restored`: same shape, on the input's percentile scale (0 and 1 = the "
        "input's percentiles; postprocessing `scale_linear` x 0.5 + 0.5). **Not expressible "
        "in the spec:** the map back to the input's intensity units, "
        "`y * (p_hi - p_lo) + p_lo`; piddpm restore applies it.",
        "- **Not in the package:** tiling of large images with blended seams, resampling "
        "into the model's pixel-size range (pixels 0.5-1.6 x lambda / 4 NA), stacks and time "
        "series plane by plane, the data-consistency map, reading the microscope from the "
        "file. `piddpm restore IN -o OUT --model THIS.zip` does all of that with this package.",
    ]
    if entry.method != "unet":
        cfg = arch["kwargs"]["sampler"]
        lines += [
            "",
            "## The diffusion sampler inside `forward`",
            "",
            f"`forward` runs the whole sampler: `{cfg['sampler']}` with {cfg['steps']} network "
            f"passes, eta_ddim {cfg['eta_ddim']}, guidance `{cfg['guidance']}` (eta "
            f"{cfg['eta']}, normalisation `{cfg['guidance_norm']}`), regulariser "
            f"`{cfg['regulariser']}` (lambda {cfg['lam']}), the model's `restore_defaults`. "
            f"Its starting noise comes from a fixed seed ({BMZ_SEED}), so the output is "
            "deterministic. Limits:",
            "",
            "- **no posterior samples and no uncertainty map**: one deterministic (DDIM, "
            "eta_ddim 0) restoration; `piddpm restore --samples N --uncertainty` gives them;",
            "- **fixed steps and settings** (the model's defaults); change them with piddpm;",
            "- **no tiling**: a large image is one pass over the whole plane, with memory and "
            "time growing with its area (a tool that tiles it gets seams, and every tile "
            "starts from the same noise);",
            "- **no known-PSF guidance** (the package has no PSF input); the learned guidance "
            "of PI-DDPM needs none.",
            "- Weights: `pytorch_state_dict` only (the sampler's seeded noise does not trace to "
            "TorchScript).",
        ]
    else:
        lines += [
            "",
            "The U-Net is one forward pass; the TorchScript weights need input "
            "sides that are multiples of the network's factor (as the axes declare).",
        ]
    lines += [
        "",
        "## Files",
        "",
        "`weights.pt` (state dict written with `torch.save`, tensors only, as the spec's "
        "`pytorch_state_dict` format requires), `model.json` + `model.safetensors` + "
        "`MODEL_CARD.md` (the piddpm model; `piddpm restore --model THIS.zip` uses them), "
        "`test_input.npy` / `test_output.npy` (a simulated observation, 200 photons, and this "
        "package's output), `cover.png` (that pair).",
        "",
        "## Citation",
        "",
        f"{PAPER_CITATION['text']} https://doi.org/{PAPER_CITATION['doi']}",
        "",
        "---",
        "",
    ]
    card = entry.card.strip()
    return "\n".join(lines) + "\n" + (card or "(this model has no model card)") + "\n"


# ------------------------------------------------------------------------- export


def export_bmz(
    model: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    test_size: int = TEST_SIZE,
    torchscript: bool = True,
) -> BMZExport:
    """Write a model as a BioImage Model Zoo package (``.zip``).

    Parameters
    ----------
    model : str or Path
        A bundled model name or alias, or a model folder (a training run's output folder:
        ``model.json`` + ``model.safetensors``).
    out : str or Path
        The ``.zip`` to write (atomically: a temporary file next to it is renamed).
    overwrite : bool
        Replace an existing ``out``.
    test_size : int
        Side of the test image in pixels (a multiple of the network's factor; 64).
    torchscript : bool
        Also write TorchScript weights where they work (the U-Net).

    Returns
    -------
    BMZExport

    Raises
    ------
    PiddpmError
        An unknown model, an output that is not a ``.zip`` in an existing folder, an existing
        output without ``overwrite``, a bad ``test_size``.
    """
    from piddpm.io import atomic_path
    from piddpm.models import resolve_model
    from piddpm.restore.settings import percentiles_from_config

    path = _check_output(out, overwrite)
    entry = resolve_model(model)
    module, arch = package_modules(entry)
    factor = int(module.net.downsample_factor)
    if isinstance(test_size, bool) or int(test_size) != test_size or test_size < 2 * factor:
        raise PiddpmError(f"test_size {test_size!r}: expected an integer >= {2 * factor}")
    if test_size % factor:
        raise PiddpmError(f"test_size {test_size}: expected a multiple of {factor}")
    percentiles = percentiles_from_config(entry.config)
    test_in = make_test_input(entry, int(test_size))
    with torch.no_grad():
        y = module(torch.from_numpy(preprocess(test_in, percentiles))).numpy()
    test_out = postprocess(y)
    files: dict[str, bytes] = {
        "test_input.npy": _npy(test_in),
        "test_output.npy": _npy(test_out),
        "cover.png": _cover_png(test_in, test_out),
        "sample_input.tif": _tif(test_in),
        "sample_output.tif": _tif(test_out),
        "weights.pt": _state_dict_bytes(module),
        "model.json": entry.config_path.read_bytes(),
        "model.safetensors": entry.weights.read_bytes(),
    }
    if entry.card_path is not None:
        files["MODEL_CARD.md"] = entry.card_path.read_bytes()
    notes = []
    if torchscript:
        ts = _torchscript_bytes(module, torch.from_numpy(preprocess(test_in, percentiles)))
        if ts is not None:
            files["weights_torchscript.pt"] = ts
        else:
            notes.append("no TorchScript weights: the diffusion sampler does not trace")
    formats = ["pytorch_state_dict"] + (
        ["torchscript"] if "weights_torchscript.pt" in files else []
    )
    files["README.md"] = _readme(entry, arch, percentiles, formats).encode("utf-8")
    rdf = _description(entry, arch, percentiles, factor, files)
    import yaml

    files[DESCRIPTION_NAME] = yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True).encode()
    with atomic_path(path, overwrite=overwrite) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in [DESCRIPTION_NAME, *sorted(set(files) - {DESCRIPTION_NAME})]:
                zf.writestr(name, files[name])
    return BMZExport(path, sorted(files), formats, notes)
