"""The restore widget: :func:`piddpm.restore` on a napari image layer, in a worker thread.

The widget only gathers the keywords of :func:`piddpm.restore`, runs it in a napari worker
(``create_worker``) with ``progress=`` a callable that drives the progress bar and stops the
run when Cancel was pressed, and turns the :class:`~piddpm.restore.RestoreResult` into
layers with the input's scale and translate. Every error becomes one notification line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui import widgets
from qtpy.QtCore import QObject, Signal

from piddpm import PiddpmError
from piddpm.choices import DiffusionMethod, Guidance, RestoreMethod, options
from piddpm.napari._common import MicroscopeFields, notify_error, one_line

if TYPE_CHECKING:
    import napari

__all__ = ["RestoreWidget"]

PLANE, STACK = "current plane", "whole stack"
#: rl-3d restores whole z-stacks in one call, without tile progress (so no Cancel): the CLI's.
METHODS = tuple(m for m in options(RestoreMethod) if m != "rl-3d")
#: Colormaps of the extra layers.
UNCERTAINTY_COLORMAP, RESIDUAL_COLORMAP = "magma", "viridis"


class _Cancelled(Exception):
    """Raised in the progress callable when Cancel was pressed (or napari quits)."""


class _Relay(QObject):
    """Carries the worker thread's progress reports into the GUI thread (queued signal)."""

    progressed = Signal(int, int)


class RestoreWidget(widgets.Container):
    """Restore an image layer with PI-DDPM, DDPM, U-Net or Richardson-Lucy.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=False)
        from piddpm.models import list_models

        self.viewer = viewer
        self._models = list_models()
        self._worker = None
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._t0 = 0.0
        w = widgets
        self.image = w.ComboBox(label="image", choices=self._image_layers)
        self.where = w.ComboBox(label="restore", choices=(PLANE, STACK), value=STACK)
        self.method = w.ComboBox(label="method", choices=METHODS, value=METHODS[0])
        self.model = w.ComboBox(label="model", choices=self._model_choices)
        self.model_folder = w.FileEdit(label="model folder", mode="d", nullable=True)
        self.model_folder.tooltip = (
            "your own model (model.json + model.safetensors); wins over the list"
        )
        self.steps = w.SpinBox(label="steps (0: auto)", value=0, min=0, max=10000)
        self.steps.tooltip = "diffusion steps, or RL iterations; 0: the model's / automatic"
        self.samples = w.SpinBox(label="samples", value=2, min=1, max=256)
        self.samples.tooltip = "posterior samples per tile; >= 2 gives the uncertainty (std)"
        self.seed = w.SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.guidance = w.ComboBox(label="guidance", choices=options(Guidance), value="auto")
        self.guidance.tooltip = "physics guidance; known / both need the microscope (a PSF)"
        self.use_microscope = w.CheckBox(label="microscope known", value=False)
        self.use_microscope.tooltip = (
            "learned methods: resample into the model's pixel range and compute the PSF "
            "(known-PSF guidance, residual); Richardson-Lucy always uses the microscope"
        )
        self.micro = MicroscopeFields()
        self.tile = w.SpinBox(label="tile (0: auto)", value=0, min=0, max=8192, step=16)
        self.batch = w.SpinBox(label="batch (0: auto)", value=0, min=0, max=256)
        self.batch.tooltip = (
            "tiles per batch; auto: 1 on the CPU (as fast, measured; progress and Cancel act "
            "after every tile), restore's default on a GPU"
        )
        self.device = w.ComboBox(label="device", choices=_devices(), value="auto")
        self.device_info = w.Label(value="")
        self.show_uncertainty = w.CheckBox(label="uncertainty layer", value=True)
        self.show_residual = w.CheckBox(label="residual layer", value=True)
        self.run_button = w.PushButton(text="Restore")
        self.cancel_button = w.PushButton(text="Cancel", enabled=False)
        self.progress = w.ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = w.Label(value="")
        for label in (self.status, self.device_info):
            label.native.setWordWrap(True)
        buttons = w.Container(widgets=[self.run_button, self.cancel_button], layout="horizontal",
                              labels=False)  # fmt: skip
        self.extend([
            self.image, self.where, self.method, self.model, self.model_folder, self.steps,
            self.samples, self.seed, self.guidance, self.use_microscope, *self.micro.widgets,
            self.tile, self.batch, self.device, self.device_info, self.show_uncertainty,
            self.show_residual, buttons, self.progress, self.status,
        ])  # fmt: skip
        self.image.changed.connect(self._on_layer)
        self.method.changed.connect(self._on_method)
        self.micro.modality.changed.connect(self._pick_model_for_modality)
        self.device.changed.connect(self._show_device)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        for event in ("inserted", "removed", "reordered"):
            getattr(viewer.layers.events, event).connect(self._refresh_layers)
        self._on_method()
        self._on_layer()
        self._show_device()

    # ------------------------------------------------------------------ choices and state
    def _image_layers(self, _widget=None):
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _model_choices(self, _widget=None):
        return [e.name for e in self._models if e.method == self.method.value] or [""]

    def _refresh_layers(self, *_):
        self.image.reset_choices()

    def _on_layer(self, *_):
        self.micro.take_pixel_size(self.image.value)

    def _on_method(self, *_):
        method = self.method.value
        self.model.reset_choices()
        learned, diffusion = method != "rl", method in options(DiffusionMethod)
        self.model.enabled = self.model_folder.enabled = learned
        self.samples.enabled = self.guidance.enabled = diffusion
        self.use_microscope.enabled = learned
        self._pick_model_for_modality()

    def _pick_model_for_modality(self, *_):
        """Select the bundled model of the method trained for the microscope's modality."""
        for e in self._models:
            if e.method == self.method.value and e.modality == self.micro.modality.value:
                self.model.value = e.name

    def _show_device(self, *_):
        from piddpm.restore import resolve_device

        try:
            dev = resolve_device(self.device.value)
        except PiddpmError as err:
            self.device_info.value = one_line(err)
            return
        self.device_info.value = _describe_device(dev, self.device.value)

    # ------------------------------------------------------------------ the run
    @property
    def running(self) -> bool:
        """Whether a restore is running."""
        return self._worker is not None

    def run(self) -> None:
        """Start the restore of the chosen layer in a worker thread."""
        if self.running:
            return
        try:
            layer = self.image.value
            image, index = self._input(layer)
            kwargs = self._restore_options()
            kwargs["name"] = f"layer {layer.name!r}"
        except PiddpmError as err:
            notify_error(one_line(err))
            return
        from napari.qt.threading import create_worker

        def report(done: int, total: int) -> None:  # in the worker thread
            if worker.abort_requested:
                raise _Cancelled
            self._relay.progressed.emit(done, total)

        worker = create_worker(_restore, image, kwargs, report, _start_thread=False)
        worker.returned.connect(lambda out: self._add_layers(layer, index, out))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.max, self.progress.value = 1, 0
        self.status.value = f"restoring {layer.name} ({kwargs['method']}) on {self._device()}"
        self._t0 = time.perf_counter()
        worker.start()

    def cancel(self) -> None:
        """Ask the running restore to stop after the batch of tiles it is on."""
        if self._worker is not None:
            self._worker.quit()
            self.status.value = "cancelling after the current batch of tiles ..."

    def _device(self) -> str:
        from piddpm.restore import resolve_device

        try:
            return str(resolve_device(self.device.value))
        except PiddpmError:
            return str(self.device.value)

    def _input(self, layer):
        """The array to restore, and the leading index of the plane (None: whole stack)."""
        if layer is None:
            raise PiddpmError("no image layer to restore: open an image or a piddpm sample")
        if getattr(layer, "rgb", False):
            raise PiddpmError(
                f"layer {layer.name!r} is an RGB image; piddpm restores grey images: split its "
                "channels first (right-click the layer > Split RGB)"
            )
        data = layer.data[0] if layer.multiscale else layer.data
        if data.ndim < 2:
            raise PiddpmError(f"layer {layer.name!r} has {data.ndim} dimension(s); expected 2+")
        if data.ndim == 2 or self.where.value == STACK:
            return (data if _kind_kept(data) else np.asarray(data)), None
        point = self.viewer.dims.point[-layer.ndim :]
        coords = layer.world_to_data(point)[: data.ndim - 2]
        index = tuple(
            int(min(max(round(float(c)), 0), n - 1))
            for c, n in zip(coords, data.shape[:-2], strict=True)
        )
        return np.asarray(data[index]), index

    def _restore_options(self) -> dict:
        """The keywords of :func:`piddpm.restore` the fields give."""
        method = self.method.value
        kw = dict(method=method, seed=int(self.seed.value), device=self.device.value,
                  residual=None if self.show_residual.value else False)  # fmt: skip
        if self.steps.value:
            kw["steps"] = int(self.steps.value)
        if self.tile.value:
            kw["tile"] = int(self.tile.value)
        if self.batch.value:
            kw["batch_size"] = int(self.batch.value)
        elif self._device() == "cpu":
            kw["batch_size"] = 1
        if method in options(DiffusionMethod):
            kw["samples"] = int(self.samples.value)
            if self.guidance.value != "auto":
                kw["guidance"] = self.guidance.value
        if method == "rl":
            kw["model"] = None
        else:
            folder = self.model_folder.value
            kw["model"] = Path(folder) if folder not in (None, "", Path()) else self.model.value
            if not kw["model"]:
                raise PiddpmError(f"no bundled {method} model: choose a model folder")
        if method == "rl" or self.use_microscope.value:
            kw["microscope"] = self.micro.options()
            kw["pixel_size_um"] = kw["microscope"]["pixel_um"]
        return kw

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.max, self.progress.value = max(total, 1), done
        elapsed = time.perf_counter() - self._t0
        self.status.value = f"{done} / {total} tiles, {elapsed:.1f} s on {self._device()}"

    def _on_finished(self) -> None:
        worker, self._worker = self._worker, None
        self.run_button.enabled, self.cancel_button.enabled = True, False
        if worker is not None and worker.abort_requested:
            from napari.utils import notifications

            self.status.value = "cancelled"
            notifications.show_info("piddpm: restore cancelled")

    def _add_layers(self, layer, index, outcome: dict) -> None:
        """The result as layers (mean, uncertainty, residual), or the error as a notification."""
        if "error" in outcome:
            self.status.value = "failed: " + outcome["error"]
            notify_error(outcome["error"])
            return
        res, elapsed = outcome["result"], time.perf_counter() - self._t0
        meta = res.metadata
        name = f"{layer.name} {meta['method']}"
        scale, translate = np.asarray(layer.scale), np.asarray(layer.translate, dtype=float)
        units = getattr(layer, "units", None)  # napari >= 0.6; same units: same rendering
        if index is not None:  # one plane, placed where it was in the stack
            translate = translate.copy()
            translate[: len(index)] += np.asarray(index) * scale[: len(index)]

        def add(data, suffix, low=0.5, **kw):
            if index is not None:
                data = np.asarray(data).reshape((1,) * len(index) + tuple(data.shape))
            limits = _display_range(data, low)
            if limits is not None:
                kw["contrast_limits"] = limits
            if units is not None:
                kw["units"] = units
            return self.viewer.add_image(data, name=name + suffix, scale=scale,
                                         translate=translate, metadata={"piddpm": meta},
                                         **kw)  # fmt: skip

        add(res.mean, "", colormap="gray")
        notes = []
        if self.show_uncertainty.value:
            if res.std is not None:
                add(res.std, " uncertainty", low=0.0, colormap=UNCERTAINTY_COLORMAP)
            else:
                notes.append("no uncertainty (needs a diffusion method and samples >= 2)")
        if self.show_residual.value:
            if res.residual is not None:
                add(res.residual, " residual", low=0.0, colormap=RESIDUAL_COLORMAP)
            else:
                notes.append("no residual (needs the microscope: tick 'microscope known')")
        self.progress.value = self.progress.max
        done = f"{name}: {elapsed:.1f} s on {meta.get('device', self._device())}"
        self.status.value = "; ".join([done, *notes])


def _restore(image, kwargs: dict, report) -> dict:
    """Runs in the worker thread: ``{"result": RestoreResult}``, ``{"error": one line}`` or
    ``{"cancelled": True}``; never raises (napari would show a traceback)."""
    from piddpm.restore import restore

    try:
        return {"result": restore(image, progress=report, **kwargs)}
    except _Cancelled:
        return {"cancelled": True}
    except Exception as err:  # noqa: BLE001 - every failure is a one-line notification
        return {"error": one_line(err)}


def _display_range(data, low: float, high: float = 99.5, values: int = 1 << 20):
    """Contrast limits from the ``low`` and ``high`` percentiles of (a subsample of) a NumPy
    result, so that a few extreme pixels do not darken the layer; None for other arrays."""
    if not isinstance(data, np.ndarray) or data.size == 0:
        return None
    step = max(int(np.sqrt(data.size / values)), 1)
    sub = data[..., ::step, ::step]
    sub = sub[np.isfinite(sub)]
    if sub.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(sub, (low, high)))
    return (lo, hi) if hi > lo else None


def _kind_kept(data) -> bool:
    """Arrays restore takes as they are (NumPy, Dask, torch); others are read whole."""
    return isinstance(data, np.ndarray) or type(data).__module__.split(".")[0] in ("dask", "torch")


def _devices() -> list[str]:
    """``auto``, ``cpu`` and the accelerators torch sees."""
    import torch

    found = ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    return found + (["mps"] if mps is not None and mps.is_available() else [])


def _describe_device(dev, choice: str) -> str:
    """One line: where the restore runs, and why a GPU is not used when there is none."""
    import torch

    if dev.type == "cuda":
        return f"runs on {dev} ({torch.cuda.get_device_name(dev)})"
    if dev.type == "cpu" and choice == "auto":
        return "runs on cpu: torch sees no CUDA or MPS GPU (slow for diffusion)"
    return f"runs on {dev}"
