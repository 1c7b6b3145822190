"""The napari plugin of piddpm (``pip install "piddpm[napari]"``; see ``docs/napari.md``).

Declared by the npe2 manifest ``napari.yaml`` (entry point ``napari.manifest``):

- the **Restore** widget (:class:`~piddpm.napari._restore_widget.RestoreWidget`): runs
  :func:`piddpm.restore` on an image layer in a worker thread, with a progress bar and Cancel,
  and adds the restoration, its uncertainty and its residual as layers;
- the **PSF** widget (:class:`~piddpm.napari._psf_widget.PsfWidget`): a 2-D or 3-D PSF layer
  from microscope settings (:func:`piddpm.optics.make_psf`);
- **sample data** (:mod:`piddpm.napari._sample_data`): the demo specimen as the demo's
  widefield and confocal microscopes see it, with its ground truth.

Importing this package imports neither napari nor Qt; the modules above do.
"""
