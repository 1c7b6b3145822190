"""What the restore and PSF widgets share: the microscope fields, the pixel size a layer's
scale gives, and one-line notifications."""

from __future__ import annotations

from magicgui import widgets

from piddpm.choices import Modality, options
from piddpm.demo import MICROSCOPES, PIXEL_SIZE_UM
from piddpm.resample import PLAUSIBLE_PIXEL_UM

__all__ = ["MicroscopeFields", "notify_error", "one_line", "pixel_size_um_of"]

_DEFAULT = MICROSCOPES["confocal"]  # NA 1.0 water, ex 488 / em 520 nm: the demo's microscope


class MicroscopeFields:
    """Modality, NA, refractive index, wavelengths and pixel size, as magicgui widgets."""

    def __init__(self):
        self.modality = widgets.ComboBox(
            label="modality", choices=options(Modality), value=options(Modality)[0]
        )
        self.na = widgets.FloatSpinBox(label="NA", value=_DEFAULT.na, min=0.05, max=1.7,
                                       step=0.05)  # fmt: skip
        self.ri = widgets.FloatSpinBox(label="refractive index", value=_DEFAULT.ri, min=1.0,
                                       max=1.8, step=0.01)  # fmt: skip
        self.em_nm = widgets.FloatSpinBox(label="emission (nm)", value=_DEFAULT.em_wavelength_nm,
                                          min=200.0, max=1500.0, step=5.0)  # fmt: skip
        self.ex_nm = widgets.FloatSpinBox(label="excitation (nm)",
                                          value=_DEFAULT.ex_wavelength_nm, min=200.0,
                                          max=1500.0, step=5.0)  # fmt: skip
        lo, hi = PLAUSIBLE_PIXEL_UM
        self.pixel_um = widgets.FloatSpinBox(label="pixel size (um)", value=PIXEL_SIZE_UM, min=lo,
                                             max=hi, step=0.005)  # fmt: skip
        self.pixel_um.native.setDecimals(4)
        self.ex_nm.tooltip = "confocal only"
        self.modality.changed.connect(self._sync)
        self._sync()

    @property
    def widgets(self) -> list:
        return [self.modality, self.na, self.ri, self.em_nm, self.ex_nm, self.pixel_um]

    def _sync(self, *_):
        self.ex_nm.enabled = self.modality.value == "confocal"

    def options(self) -> dict:
        """The keywords of :func:`piddpm.optics.make_psf` (``microscope=`` of restore)."""
        opts = dict(modality=self.modality.value, na=self.na.value, ri=self.ri.value,
                    em_nm=self.em_nm.value, pixel_um=self.pixel_um.value)  # fmt: skip
        if self.modality.value == "confocal":
            opts["ex_nm"] = self.ex_nm.value
        return opts

    def take_pixel_size(self, layer) -> None:
        """Fill in the pixel size from ``layer``'s scale, when it states one."""
        value = pixel_size_um_of(layer)
        if value is not None:
            self.pixel_um.value = value


def pixel_size_um_of(layer) -> float | None:
    """The lateral pixel size in micrometres that ``layer``'s scale gives, or None.

    A scale with a length unit (napari >= 0.6 ``layer.units``) is converted to micrometres; a
    scale without one is read as micrometres unless it is napari's default 1, which says
    nothing. Values no microscope produces are ignored.
    """
    if layer is None:
        return None
    scale = float(layer.scale[-1])
    unit = (getattr(layer, "units", None) or [None])[-1]
    value = None
    try:
        if unit is not None and unit.dimensionality == {"[length]": 1}:
            value = float((scale * unit).to("micrometer").magnitude)
    except (AttributeError, TypeError, ValueError):
        value = None
    if value is None and scale != 1.0:
        value = scale
    lo, hi = PLAUSIBLE_PIXEL_UM
    return value if value is not None and lo <= value <= hi else None


def one_line(err: BaseException) -> str:
    """An exception as one line: a :class:`PiddpmError`'s message, else ``Type: message``."""
    from piddpm import PiddpmError

    text = str(err).strip().splitlines()
    text = text[0] if text else ""
    return text if isinstance(err, PiddpmError) else f"{type(err).__name__}: {text}".rstrip(": ")


def notify_error(message: str) -> None:
    """A napari error notification, without a traceback."""
    from napari.utils import notifications

    notifications.show_error(message)
