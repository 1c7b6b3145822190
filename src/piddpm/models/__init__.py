"""Registry of bundled models, and resolution of a user's own model files.

A bundled model is a folder ``src/piddpm/models/<name>/`` holding

- ``model.safetensors``: the weights,
- ``model.json``: the configuration written by :mod:`piddpm.models.files` (``method``,
  ``preset``, ``schedule``, ``target``, ``normalisation``, ...) and optionally
  ``modality`` (``"widefield"`` / ``"confocal"``), ``aliases`` (extra names),
  ``description`` (one line) and ``restore_defaults`` (the settings
  :func:`piddpm.restore` uses when the caller leaves them unset: ``sampler``, ``steps``,
  ``eta``, ``eta_ddim``, ``regulariser``, ``lam``, ``guidance``, ``percentiles``; and the
  recommended ``tile`` / ``overlap`` in pixels, measured by ``piddpm models bundle``),
- ``MODEL_CARD.md``: what it was trained on, how well it does, where it fails.

Short names map to folders: ``widefield`` -> ``pi-ddpm-widefield``, ``confocal`` ->
``pi-ddpm-confocal`` (plus any ``aliases`` a model lists). A user's own model is given by
path: a folder with ``model.json`` + ``model.safetensors``, or the ``.safetensors`` file with
a ``.json`` of the same stem (or ``model.json``) beside it.

Modules: this one is the registry (names, aliases, paths -> :class:`ModelEntry`);
:mod:`piddpm.models.files` reads and writes the model files; :mod:`piddpm.models.bundle`
(``piddpm models bundle``) makes a bundled model from a training run, with
:mod:`piddpm.models.tuning` (restore defaults, held-out scores) and
:mod:`piddpm.models.cards` (``MODEL_CARD.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piddpm import PiddpmError
from piddpm.models.files import MODEL_METHODS, read_model_config  # noqa: F401 (MODEL_METHODS: kept importable here)

__all__ = [
    "MODELS_DIR",
    "ALIASES",
    "ModelEntry",
    "list_models",
    "resolve_model",
    "load_bundled",
    "load_entry",
]

#: Where bundled model folders live.
MODELS_DIR = Path(__file__).resolve().parent

#: Built-in short names.
ALIASES: dict[str, str] = {
    "widefield": "pi-ddpm-widefield",
    "confocal": "pi-ddpm-confocal",
}


@dataclass(frozen=True)
class ModelEntry:
    """A model on disk: where its files are and what its configuration says.

    Attributes
    ----------
    name : str
        Folder name for a bundled model; the path for a user's model.
    weights : Path
        The ``.safetensors`` file.
    config_path : Path
        The ``.json`` configuration.
    config : dict
        The parsed configuration.
    bundled : bool
        Whether it ships with piddpm.
    card_path : Path or None
        ``MODEL_CARD.md`` if present.
    """

    name: str
    weights: Path
    config_path: Path
    config: dict[str, Any] = field(repr=False)
    bundled: bool = False
    card_path: Path | None = None

    @property
    def method(self) -> str:
        """``"pi-ddpm"``, ``"ddpm"`` or ``"unet"`` (from the configuration)."""
        return str(self.config.get("method", ""))

    @property
    def modality(self) -> str | None:
        """``"widefield"``/``"confocal"``/... if the configuration states it."""
        mod = self.config.get("modality")
        if mod is None:
            mod = (
                (self.config.get("data") or {}).get("modality")
                if isinstance(self.config.get("data"), dict)
                else None
            )
        return None if mod is None else str(mod)

    @property
    def aliases(self) -> list[str]:
        """Built-in short names for this model and the ``aliases`` its configuration lists."""
        extra = [str(a) for a in self.config.get("aliases", []) or []]
        return sorted({k for k, v in ALIASES.items() if v == self.name} | set(extra))

    @property
    def card(self) -> str:
        """The model card text ('' if there is none)."""
        if self.card_path is not None and self.card_path.is_file():
            return self.card_path.read_text(encoding="utf-8")
        return ""

    @property
    def summary(self) -> str:
        """One line: the configuration's ``description`` or the card's first prose line."""
        desc = self.config.get("description")
        if desc:
            return str(desc).strip().splitlines()[0]
        for line in self.card.splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "---", "|", "<!--")):
                return line
        return f"{self.method or 'unknown method'} model"

    @property
    def restore_defaults(self) -> dict[str, Any]:
        """Settings for :func:`piddpm.restore` recommended by the model (may be empty)."""
        d = self.config.get("restore_defaults") or self.config.get("inference") or {}
        return dict(d) if isinstance(d, dict) else {}


def _entry_from_folder(folder: Path, *, bundled: bool) -> ModelEntry:
    cfg_path, weights = folder / "model.json", folder / "model.safetensors"
    missing = [p.name for p in (cfg_path, weights) if not p.is_file()]
    if missing:
        raise PiddpmError(
            f"model folder {folder} lacks {' and '.join(missing)}; a model folder holds "
            "model.json and model.safetensors"
        )
    card = folder / "MODEL_CARD.md"
    return ModelEntry(
        name=folder.name if bundled else str(folder),
        weights=weights,
        config_path=cfg_path,
        config=read_model_config(cfg_path),
        bundled=bundled,
        card_path=card if card.is_file() else None,
    )


def _bundled_folders() -> list[Path]:
    if not MODELS_DIR.is_dir():
        return []
    return sorted(
        p
        for p in MODELS_DIR.iterdir()
        if p.is_dir()
        and not p.name.startswith((".", "_"))  # temporary / cache folders are never models
        and (p / "model.json").is_file()
        and (p / "model.safetensors").is_file()
    )


def list_models() -> list[ModelEntry]:
    """The bundled models, sorted by name (empty if none are installed)."""
    return [_entry_from_folder(p, bundled=True) for p in _bundled_folders()]


def _no_model_message(name: str) -> str:
    available = [p.name for p in _bundled_folders()]
    if not available:
        return (
            f"no bundled model named {name!r}: this installation ships no bundled models yet. "
            "Pass --model PATH (a folder with model.json + model.safetensors, e.g. written by "
            "`piddpm train`) or use --method rl with a PSF (--psf FILE or the microscope "
            "options)"
        )
    names = sorted(set(available) | {a for a, t in ALIASES.items() if t in available})
    return (
        f"unknown model {name!r}: not a bundled model ({', '.join(names)}) and no such file "
        "or folder; see `piddpm models`"
    )


def _looks_like_path(text: str) -> bool:
    return (
        "/" in text
        or "\\" in text
        or text.startswith(".")
        or text.endswith((".safetensors", ".json", ".zip"))
        or Path(text).exists()
    )


def resolve_model(name_or_path: str | Path) -> ModelEntry:
    """Find a model by bundled name, alias or path.

    Parameters
    ----------
    name_or_path : str or Path
        A bundled name (``"pi-ddpm-widefield"``), an alias (``"widefield"``), a model folder,
        a ``.safetensors`` file (its ``.json`` of the same stem beside it), a ``.json``
        file (its ``.safetensors`` of the same stem beside it) or a ``.zip`` BioImage Model
        Zoo package written by ``piddpm export bmz`` (:mod:`piddpm.models.bmz`).

    Returns
    -------
    ModelEntry

    Raises
    ------
    PiddpmError
        If nothing matches (the message says whether any bundled models exist and suggests
        ``--model PATH`` or ``--method rl``), or a file is missing or unreadable.
    """
    if isinstance(name_or_path, ModelEntry):
        return name_or_path
    text = str(name_or_path)
    if not isinstance(name_or_path, Path) and not _looks_like_path(text):
        folder_name = ALIASES.get(text, text)
        folder = MODELS_DIR / folder_name
        if folder.is_dir() and (folder / "model.json").is_file():
            return _entry_from_folder(folder, bundled=True)
        for entry in list_models():  # aliases declared by the models themselves
            if text in entry.aliases:
                return entry
        raise PiddpmError(_no_model_message(text))

    path = Path(text).expanduser()
    if path.is_dir():
        return _entry_from_folder(path, bundled=False)
    if not path.exists():
        raise PiddpmError(f"model file or folder {path} does not exist")
    if path.suffix.lower() == ".zip":  # a BioImage Model Zoo package piddpm exported
        from piddpm.models.bmz import entry_from_bmz

        return entry_from_bmz(path)
    if path.suffix == ".safetensors":
        weights, cfg_path = path, path.with_suffix(".json")
        if not cfg_path.is_file():
            raise PiddpmError(
                f"model weights {path} have no configuration beside them; expected "
                f"{cfg_path.name} in {path.parent}"
            )
    elif path.suffix == ".json":
        cfg_path, weights = path, path.with_suffix(".safetensors")
        if not weights.is_file():
            raise PiddpmError(
                f"model configuration {path} has no weights beside it; expected "
                f"{weights.name} in {path.parent}"
            )
    else:
        raise PiddpmError(
            f"model path {path} is neither a folder nor a .safetensors/.json/.zip file"
        )
    card = path.parent / "MODEL_CARD.md"
    return ModelEntry(
        name=str(path),
        weights=weights,
        config_path=cfg_path,
        config=read_model_config(cfg_path),
        bundled=False,
        card_path=card if card.is_file() else None,
    )


def load_entry(entry: ModelEntry, device: str = "cpu"):
    """Build the network an entry describes and load its weights.

    Returns
    -------
    torch.nn.Module
        In eval mode on ``device``.

    Raises
    ------
    PiddpmError
        If the weights do not match the configuration (missing/unexpected tensors, wrong
        shapes) or cannot be read; the message names the file.
    """
    from piddpm.models.files import load_network

    key = _cache_key(entry, device)
    if key is not None and key in _LOADED:
        return _LOADED[key]
    try:
        net, _ = load_network(entry.weights, device=device)
    except PiddpmError as err:
        raise PiddpmError(f"cannot load model {entry.name}: {err}") from err
    except Exception as err:  # noqa: BLE001 - any other failure also means a bad model file
        raise PiddpmError(
            f"cannot load model {entry.weights} with its configuration {entry.config_path}: "
            f"{type(err).__name__}: {err}"
        ) from err
    net.eval().requires_grad_(False)
    if key is not None:
        while len(_LOADED) >= _CACHE_SIZE:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = net
    return net


#: Networks loaded in this process, keyed by file identity (path, size, mtime) and device, so
#: that repeated ``restore`` calls (stacks, benchmarks, the demo) do not re-read the weights.
_LOADED: dict[tuple, object] = {}
_CACHE_SIZE = 8


def _cache_key(entry: ModelEntry, device: str) -> tuple | None:
    try:
        files = (Path(entry.weights), Path(entry.config_path))
        stats = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except (OSError, TypeError):
        return None
    return (*stats, str(device))


def load_bundled(name: str, device: str = "cpu"):
    """Load a bundled model by name or alias.

    Returns
    -------
    (torch.nn.Module, ModelEntry)
    """
    entry = resolve_model(name)
    return load_entry(entry, device), entry
