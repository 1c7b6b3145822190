"""The PSF widget: microscope settings in, a 2-D or 3-D PSF layer out
(:func:`piddpm.optics.make_psf` / :func:`~piddpm.optics.kernels.make_psf_3d`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui import widgets

from piddpm import PiddpmError
from piddpm.napari._common import MicroscopeFields, notify_error, one_line

if TYPE_CHECKING:
    import napari

__all__ = ["PsfWidget"]

PSF_2D, PSF_3D = "2-D (in focus)", "3-D (z-stack)"


class PsfWidget(widgets.Container):
    """Compute the PSF of a microscope and add it as an image layer.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.micro = MicroscopeFields()
        self.dims = widgets.ComboBox(label="PSF", choices=(PSF_2D, PSF_3D), value=PSF_2D)
        self.z_step_um = widgets.FloatSpinBox(label="z step (um)", value=0.2, min=0.01,
                                              max=20.0, step=0.05)  # fmt: skip
        self.n_z = widgets.SpinBox(label="planes (0: auto)", value=0, min=0, max=513)
        self.size = widgets.SpinBox(label="size px (0: auto)", value=0, min=0, max=1025)
        self.button = widgets.PushButton(text="Make PSF")
        self.extend([*self.micro.widgets, self.dims, self.z_step_um, self.n_z, self.size,
                     self.button])  # fmt: skip
        self.dims.changed.connect(self._sync)
        self.button.clicked.connect(self.make)
        self._sync()

    def _sync(self, *_):
        self.z_step_um.enabled = self.n_z.enabled = self.dims.value == PSF_3D

    def make(self):
        """Add the PSF layer (and return it); an error is a one-line notification."""
        from piddpm.optics import make_psf
        from piddpm.optics.kernels import make_psf_3d

        opts = self.micro.options()
        if self.size.value:
            opts["size"] = int(self.size.value) | 1  # odd
        pixel = opts["pixel_um"]
        try:
            if self.dims.value == PSF_3D:
                z = float(self.z_step_um.value)
                psf = make_psf_3d(z_step_um=z, n_z=int(self.n_z.value) or None, **opts)
                scale = (z, pixel, pixel)
            else:
                psf, scale = make_psf(**opts), (pixel, pixel)
        except (PiddpmError, ValueError, RuntimeError) as err:
            notify_error(one_line(err))
            return None
        words = [opts["modality"], f"NA {opts['na']:g}", f"em {opts['em_nm']:g} nm"]
        name = "PSF " + " ".join(words) + (" 3-D" if psf.ndim == 3 else "")
        return self.viewer.add_image(psf, name=name, scale=scale, units=("um",) * psf.ndim,
                                     colormap="inferno", metadata={"piddpm": {"psf": opts}})  # fmt: skip
