"""The specimen registry, the default mixture, and drawing / rendering one specimen by name."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import numpy as np

from piddpm import PiddpmError
from piddpm.data.specimens._random import _SmoothNoise, _uniform
from piddpm.data.specimens.cells import draw_er, draw_filaments, draw_nuclei, draw_puncta
from piddpm.data.specimens.images import draw_images, draw_natural
from piddpm.data.specimens.scene import Scene
from piddpm.data.specimens.shapes import draw_metaballs, draw_phantom

#: name -> scene generator ``(extent_nm, rng, **options) -> Scene``.
SPECIMENS: Mapping[str, Callable[..., Scene]] = {
    "filaments": draw_filaments,
    "puncta": draw_puncta,
    "er": draw_er,
    "nuclei": draw_nuclei,
    "metaballs": draw_metaballs,
    "phantom": draw_phantom,
    "natural": draw_natural,
    "images": draw_images,
}

#: The default mixture (what ``--specimen mixture`` means): cell-biology structures first,
#: plus generic shape/texture priors. ``images`` needs a folder and is not included.
DEFAULT_MIXTURE: Mapping[str, float] = {
    "filaments": 0.2,
    "puncta": 0.15,
    "er": 0.15,
    "nuclei": 0.1,
    "metaballs": 0.1,
    "phantom": 0.05,
    "natural": 0.25,
}


def _check_name(name: str) -> None:
    if name not in SPECIMENS:
        raise PiddpmError(
            f"unknown specimen {name!r}; expected one of {', '.join(SPECIMENS)} or 'mixture'"
        )


def draw_specimen(
    name: str,
    extent_nm: float,
    *,
    generator: np.random.Generator,
    images_dir: str | os.PathLike | None = None,
    **options,
) -> Scene:
    """Draw the physical description of one specimen over a field ``extent_nm`` wide."""
    _check_name(name)
    if name in ("natural", "images"):
        options["images_dir"] = images_dir
    try:
        return SPECIMENS[name](float(extent_nm), generator, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise PiddpmError(f"specimen {name!r}: {err}") from err
        raise


def render_specimen(
    name: str,
    size: int,
    pixel_size_um: float,
    *,
    generator: np.random.Generator,
    images_dir: str | os.PathLike | None = None,
    normalise: bool = True,
    haze: tuple[float, float] = (0.0, 0.03),
    **options,
) -> np.ndarray:
    """Draw and render one specimen.

    Parameters
    ----------
    name : str
        One of :data:`SPECIMENS` (``filaments, puncta, er, nuclei, metaballs, phantom,
        natural, images``) or ``"mixture"`` (the :data:`DEFAULT_MIXTURE`).
    size : int
        Output side in pixels.
    pixel_size_um : float
        Pixel size in um; the field of view is ``size * pixel_size_um`` um wide.
    generator : numpy.random.Generator
        Source of all randomness (the result is a function of its state).
    images_dir : path, optional
        Image folder for ``natural`` (default: scikit-image's photographs) and ``images``
        (required).
    normalise : bool
        Rescale to a peak of 1 (default). ``False`` returns the raw area-averaged density.
    haze : (float, float)
        Range of a diffuse out-of-structure fluorescence added after normalisation, as a
        fraction of the peak (smooth, 5-20 um correlation); ``(0, 0)`` disables it.
    **options
        Passed to the generator (e.g. ``width_nm=25`` for filaments).

    Returns
    -------
    numpy.ndarray, shape (size, size), float32
        Values in ``[0, 1]`` when ``normalise`` (the default).
    """
    if name == "mixture":
        return SpecimenMixture().render(
            size, pixel_size_um, generator=generator, images_dir=images_dir
        )
    size = int(size)
    if size < 1 or not (pixel_size_um > 0):
        raise PiddpmError(
            f"size {size} and pixel_size_um {pixel_size_um} must be positive for a specimen"
        )
    extent = size * pixel_size_um * 1000.0
    for _ in range(50):  # a sparse specimen can miss a small field: draw again
        scene = draw_specimen(name, extent, generator=generator, images_dir=images_dir, **options)
        img = scene.render(size, pixel_size_um)
        peak = float(img.max())
        if not normalise or peak > 0:
            break
    else:
        raise PiddpmError(
            f"specimen {name!r} left a {extent / 1000:.3g} um field empty in 50 draws; "
            f"check its options {options}"
        )
    if not normalise:
        return img.astype(np.float32)
    img /= peak
    h = _uniform(generator, haze) if haze[1] > 0 else 0.0
    if h > 0:
        bg = _SmoothNoise(generator, extent, corr_nm=_uniform(generator, (5000.0, 20000.0)), n=32)
        centre = (np.arange(size) + 0.5) * pixel_size_um * 1000.0
        img += h * np.exp(0.5 * bg(centre[None, :], centre[:, None]))
        img /= img.max()
    return np.clip(img, 0.0, 1.0).astype(np.float32)


class SpecimenMixture:
    """A weighted choice of specimen generators: each sample is one specimen, picked with
    probability proportional to its weight.

    Parameters
    ----------
    weights : mapping name -> weight, or str, optional
        ``{"filaments": 0.3, "natural": 0.7}`` or the string ``"filaments:0.3,natural:0.7"``
        (a bare name means weight 1; ``"mixture"`` means :data:`DEFAULT_MIXTURE`). Default:
        :data:`DEFAULT_MIXTURE`.
    options : mapping name -> dict, optional
        Generator options per specimen (e.g. ``{"images": {"source_pixel_size_um": 0.03}}``).
    """

    def __init__(
        self,
        weights: Mapping[str, float] | str | None = None,
        options: Mapping[str, Mapping] | None = None,
    ):
        if weights is None or weights == "mixture":
            weights = dict(DEFAULT_MIXTURE)
        elif isinstance(weights, str):
            weights = self.parse(weights)
        weights = dict(weights)
        for name, w in weights.items():
            _check_name(name)
            if not (np.isfinite(w) and w >= 0):
                raise PiddpmError(f"mixture weight for {name!r} is {w}; expected >= 0")
        total = float(sum(weights.values()))
        if total <= 0:
            raise PiddpmError(f"mixture weights {weights} sum to 0; expected a positive sum")
        self.names = list(weights)
        self.probabilities = np.array([weights[n] / total for n in self.names])
        self.options = {k: dict(v) for k, v in (options or {}).items()}

    @staticmethod
    def parse(spec: str) -> dict[str, float]:
        """Parse ``"name:weight,name:weight"`` (a bare ``name`` has weight 1)."""
        out: dict[str, float] = {}
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            name, _, w = part.partition(":")
            name = name.strip()
            if name == "mixture":
                out.update(DEFAULT_MIXTURE)
                continue
            _check_name(name)
            try:
                out[name] = float(w) if w.strip() else 1.0
            except ValueError:
                raise PiddpmError(
                    f"mixture entry {part!r}: weight {w!r} is not a number; expected name:weight"
                ) from None
        if not out:
            raise PiddpmError(f"empty specimen mixture {spec!r}; expected 'name:weight,...'")
        return out

    def __repr__(self) -> str:
        body = ",".join(f"{n}:{p:.3g}" for n, p in zip(self.names, self.probabilities, strict=True))
        return f"SpecimenMixture({body!r})"

    def choose(self, generator: np.random.Generator) -> str:
        """Pick a specimen name (consumes one uniform draw)."""
        i = int(np.searchsorted(np.cumsum(self.probabilities), generator.random(), side="right"))
        return self.names[min(i, len(self.names) - 1)]

    def render(
        self,
        size: int,
        pixel_size_um: float,
        *,
        generator: np.random.Generator,
        images_dir: str | os.PathLike | None = None,
        name: str | None = None,
    ) -> np.ndarray:
        """Pick a specimen (or use ``name``) and render it; see :func:`render_specimen`."""
        name = name or self.choose(generator)
        return render_specimen(
            name,
            size,
            pixel_size_um,
            generator=generator,
            images_dir=images_dir,
            **self.options.get(name, {}),
        )
