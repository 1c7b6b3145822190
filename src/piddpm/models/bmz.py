"""Read back a BioImage Model Zoo package that ``piddpm export bmz`` wrote.

Such a package (a ``.zip``) carries, beside the Zoo's files, the piddpm model itself
(``model.json`` + ``model.safetensors`` + ``MODEL_CARD.md``) and names them in its
description's ``config: {piddpm: {format: piddpm-bmz, model_json, weights, ...}}``.
:func:`entry_from_bmz` checks that entry and the files' sha256 (the description's
``attachments``), extracts the three files into a cache folder keyed by the zip's sha256, and
returns the :class:`piddpm.models.ModelEntry` of that folder: restoring with the package is
restoring with the model it was exported from. Any other package is refused with one line.
Nothing is unpickled: the weights read are the safetensors file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from piddpm import PiddpmError

__all__ = [
    "BMZ_CONFIG_FORMAT",
    "BMZ_CONFIG_VERSION",
    "DESCRIPTION_NAME",
    "bmz_cache_dir",
    "entry_from_bmz",
    "read_bmz_description",
]

#: ``config.piddpm.format`` of a package piddpm exported.
BMZ_CONFIG_FORMAT = "piddpm-bmz"
#: ``config.piddpm.version`` this piddpm writes and reads.
BMZ_CONFIG_VERSION = 1
#: The description's file name in the package (spec 0.5; ``rdf.yaml`` is read too).
DESCRIPTION_NAME = "bioimageio.yaml"


def bmz_cache_dir() -> Path:
    """Where packages are extracted: ``$PIDDPM_CACHE_DIR/bmz``, else
    ``$XDG_CACHE_HOME/piddpm/bmz``, else ``~/.cache/piddpm/bmz``."""
    root = os.environ.get("PIDDPM_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "bmz"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "piddpm" / "bmz"


def read_bmz_description(path: str | Path) -> dict[str, Any]:
    """The description (``bioimageio.yaml`` or ``rdf.yaml``) of a Zoo package, parsed.

    Raises
    ------
    PiddpmError
        Not a readable zip, or no description in it, or the description is not YAML.
    """
    import yaml

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            name = next((n for n in (DESCRIPTION_NAME, "rdf.yaml") if n in names), None)
            if name is None:
                raise PiddpmError(
                    f"{path} holds no bioimageio.yaml or rdf.yaml: not a BioImage Model Zoo package"
                )
            text = zf.read(name).decode("utf-8")
    except (zipfile.BadZipFile, OSError) as err:
        raise PiddpmError(
            f"{path} is not a readable zip file ({err}); expected a Zoo package"
        ) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PiddpmError(f"{path}: its {name} is not valid YAML ({type(err).__name__})") from None
    if not isinstance(doc, dict):
        raise PiddpmError(f"{path}: its {name} is not a YAML mapping")
    return doc


def _piddpm_config(path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    cfg = (doc.get("config") or {}).get("piddpm") if isinstance(doc.get("config"), dict) else None
    if not isinstance(cfg, dict) or cfg.get("format") != BMZ_CONFIG_FORMAT:
        raise PiddpmError(
            f"{path} is a BioImage Model Zoo package that piddpm did not export (its "
            f"description has no config.piddpm entry of format {BMZ_CONFIG_FORMAT!r}); run it "
            "with a Zoo tool (bioimageio.core, deepImageJ, ilastik)"
        )
    if int(cfg.get("version", 0)) > BMZ_CONFIG_VERSION:
        raise PiddpmError(
            f"{path}: config.piddpm version {cfg.get('version')} is newer than this piddpm "
            f"reads ({BMZ_CONFIG_VERSION}); update piddpm"
        )
    for key in ("model_json", "weights"):
        if not isinstance(cfg.get(key), str):
            raise PiddpmError(f"{path}: config.piddpm lacks {key!r} (the file name in the zip)")
    return cfg


def _extract(path: Path, doc: dict[str, Any], members: dict[str, str]) -> Path:
    """Extract ``members`` (target name -> name in the zip) into the cache folder of this
    zip's content, checking the sha256 the description lists; returns the folder."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    folder = bmz_cache_dir() / digest[:24]
    if all((folder / target).is_file() for target in members):
        return folder
    sums = {
        str(a.get("source")): a.get("sha256")
        for a in doc.get("attachments") or []
        if isinstance(a, dict)
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with zipfile.ZipFile(path) as zf:
            for target, name in members.items():
                try:
                    data = zf.read(name)
                except KeyError:
                    raise PiddpmError(
                        f"{path} lacks {name}, which its config.piddpm names"
                    ) from None
                want = sums.get(name)
                if want and hashlib.sha256(data).hexdigest() != want:
                    raise PiddpmError(
                        f"{path}: {name} does not match its sha256 in the description"
                    )
                (tmp / target).write_bytes(data)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def entry_from_bmz(path: str | Path):
    """The :class:`piddpm.models.ModelEntry` of a package ``piddpm export bmz`` wrote.

    Parameters
    ----------
    path : str or Path
        The ``.zip``.

    Returns
    -------
    ModelEntry
        Named by the zip's path; its files are in the cache (:func:`bmz_cache_dir`).

    Raises
    ------
    PiddpmError
        Not a zip, not a Zoo package, a Zoo package piddpm did not export, or a damaged one.
    """
    from piddpm.models import ModelEntry, _entry_from_folder

    path = Path(path).expanduser()
    if not path.is_file():
        raise PiddpmError(f"model package {path} does not exist")
    doc = read_bmz_description(path)
    cfg = _piddpm_config(path, doc)
    members = {"model.json": cfg["model_json"], "model.safetensors": cfg["weights"]}
    if isinstance(cfg.get("model_card"), str):
        members["MODEL_CARD.md"] = cfg["model_card"]
    folder = _extract(path, doc, members)
    entry = _entry_from_folder(folder, bundled=False)
    return ModelEntry(
        name=str(path),
        weights=entry.weights,
        config_path=entry.config_path,
        config=entry.config,
        bundled=False,
        card_path=entry.card_path,
    )
