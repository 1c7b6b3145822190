"""``piddpm simulate``: write a synthetic paired dataset (Zarr v3) and a PNG preview."""

from __future__ import annotations

import argparse

from piddpm.choices import Modality, options

DESCRIPTION = """\
Simulate N training pairs: a specimen rendered at the microscope's pixel size (the ground
truth), blurred by a random microscope's PSF (periodic convolution) and imaged with Poisson
shot noise, background and read noise. Writes OUT.zarr (Zarr v3) with arrays
gt, observed, observed_clean (N, H, W) float32 and psf (N, k, k) float32, every sample in
model units (one affine map per sample from its noisy observation, min-max to [-1, 1]), and
the per-sample microscope and camera parameters as attrs["params"] (a list of dicts);
plus OUT.png, a montage of a few samples (ground truth over observation, PSF inset).

--specimen takes a name (filaments, puncta, er, nuclei, metaballs, phantom, natural,
images), 'mixture' (the default mixture: filaments 0.2, puncta 0.15, er 0.15, nuclei 0.1,
metaballs 0.1, phantom 0.05, natural 0.25) or weights such as 'filaments:0.3,natural:0.7'.
The same seed gives the same bytes.
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "simulate",
        help="write a synthetic (ground truth, observation, PSF) dataset as Zarr",
        description=DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--specimen",
        default="mixture",
        help="specimen name, 'mixture' or 'name:weight,...' (see above)",
    )
    p.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="image folder (tif/png/jpg) for the 'images' specimen (required) and 'natural' "
        "(default: scikit-image's sample photographs)",
    )
    p.add_argument(
        "--modality",
        choices=[*options(Modality), "both"],
        default="widefield",
        help="microscope type ('both': confocal with probability 0.5)",
    )
    p.add_argument("--n", type=int, default=16, help="number of samples")
    p.add_argument("--size", type=int, default=128, help="image side, pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--kernel-size", type=int, default=33, help="PSF kernel side, pixels (odd)")
    p.add_argument(
        "--psf-bank-size",
        type=int,
        default=None,
        help="number of distinct random microscopes (default: min(N, 256))",
    )
    p.add_argument(
        "--normalisation",
        choices=["minmax", "percentile"],
        default="minmax",
        help="per-sample affine map from the noisy observation to [-1, 1]",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="do not read or write the PSF bank disk cache (~/.cache/piddpm/psf_bank)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.zarr")
    p.add_argument("-o", "--output", required=True, metavar="OUT.zarr", help="output Zarr folder")
    return p


def _montage(path, gt, observed, psf, params, specimens, n_show: int = 6) -> None:
    """PNG preview: row 1 ground truth (PSF inset), row 2 observation; grey, labelled."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    n = min(n_show, gt.shape[0])
    fig, axes = plt.subplots(2, n, figsize=(2.3 * n, 5.0), squeeze=False)
    for i in range(n):
        p = params[i]
        kind = "confocal" if p["modality"] == 1.0 else "widefield"
        for row, (img, label) in enumerate(((gt[i], "ground truth"), (observed[i], "observed"))):
            ax = axes[row, i]
            ax.imshow(img, cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label)
        axes[0, i].set_title(
            f"#{i} {specimens[i]}\n{kind} NA {p['na']:.2f}, {p['em_wavelength_nm']:.0f} nm",
            fontsize=8,
        )
        axes[1, i].set_xlabel(
            f"{p['pixel_size_um'] * 1000:.0f} nm pixels, {p['photons']:.0f} photons", fontsize=8
        )
        inset = axes[0, i].inset_axes([0.68, 0.68, 0.3, 0.3])
        c, h = psf.shape[-1] // 2, min(8, psf.shape[-1] // 2)
        k = psf[i, c - h : c + h + 1, c - h : c + h + 1]
        inset.imshow(np.sqrt(k / k.max()), cmap="gray", interpolation="nearest")
        inset.set_xticks([])
        inset.set_yticks([])
        for spine in inset.spines.values():
            spine.set_edgecolor("yellow")
    fig.suptitle(
        "piddpm simulate: ground truth (inset: PSF centre, sqrt scale) / observation", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png", metadata={"Software": None})
    plt.close(fig)


def run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np
    import torch
    import zarr

    from piddpm import PiddpmError, __version__
    from piddpm.data import MicroscopeRanges, PairedDataset, PSFBank, SpecimenMixture
    from piddpm.data.dataset import normalisation_note
    from piddpm.io import atomic_path

    out = Path(args.output)
    if args.n < 1:
        raise PiddpmError(f"--n {args.n}: expected at least 1 sample")
    if args.size < 16:
        raise PiddpmError(f"--size {args.size}: expected at least 16 pixels")
    if out.exists() and not args.overwrite:
        raise PiddpmError(f"{out}: already exists; pass --overwrite to replace it")
    # per-sample work is on small arrays: intra-op threads only add synchronisation cost
    torch.set_num_threads(1)
    png = out.with_suffix(".png")
    if png.exists() and not args.overwrite:
        raise PiddpmError(f"{png}: the preview already exists; pass --overwrite to replace it")
    mixture = SpecimenMixture(args.specimen)
    prob = {"widefield": 0.0, "confocal": 1.0, "both": 0.5}[args.modality]
    ranges = MicroscopeRanges.create(confocal_probability=prob)
    n_kernels = args.psf_bank_size or min(args.n, 256)
    bank = PSFBank(
        ranges,
        n_kernels,
        kernel_size=args.kernel_size,
        seed=args.seed,
        cache_dir=False if args.no_cache else None,
    )
    ds = PairedDataset(
        size=args.size,
        length=args.n,
        specimens=mixture,
        ranges=ranges,
        seed=args.seed,
        bank=bank,
        normalisation=args.normalisation,
        images_dir=args.images,
        psf_choice="cycle",
    )
    k = bank.kernel_size
    arrays = {
        "gt": np.empty((args.n, args.size, args.size), np.float32),
        "observed": np.empty((args.n, args.size, args.size), np.float32),
        "observed_clean": np.empty((args.n, args.size, args.size), np.float32),
        "psf": np.empty((args.n, k, k), np.float32),
    }
    params, names = [], []
    for i in range(args.n):
        item = ds[i]
        for key in arrays:
            arrays[key][i] = item[key][0].numpy()
        params.append({"specimen": item["specimen"], **item["params"]})
        names.append(item["specimen"])

    attrs = {
        "piddpm_version": __version__,
        "command": "piddpm simulate",
        "specimen": args.specimen,
        "mixture": dict(zip(mixture.names, mixture.probabilities.tolist(), strict=True)),
        "modality": args.modality,
        "seed": args.seed,
        "n": args.n,
        "size": args.size,
        "kernel_size": k,
        "psf_bank_size": n_kernels,
        "psf_projection": bank.projection,
        "normalisation": args.normalisation,
        "normalisation_convention": normalisation_note(args.normalisation),
        "blur_boundary": "periodic",
        "units": "model units; physical photo-electrons = (v - norm_offset) / norm_scale",
        "ranges": ranges.model_dump(mode="json"),
        "images_dir": str(args.images) if args.images else None,
        "params": params,
    }
    json.dumps(attrs)  # fail before writing anything if not serialisable
    with atomic_path(out, overwrite=args.overwrite) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs.update(attrs)
        for key, arr in arrays.items():
            z = root.create_array(key, shape=arr.shape, dtype="float32", chunks=(1, *arr.shape[1:]))
            z[...] = arr
    with atomic_path(png, overwrite=True) as tmp_png:
        _montage(
            tmp_png,
            arrays["gt"],
            arrays["observed"],
            arrays["psf"],
            params,
            names,
        )
    print(
        f"wrote {out} ({args.n} samples, {args.size}x{args.size}, psf {k}x{k}, "
        f"specimen {args.specimen}, {args.modality}) and {png}"
    )
    return 0
