"""``restore(progress=callable)``: per-batch progress reports and stopping by raising (the
hook the napari widget's progress bar and Cancel button use)."""

from __future__ import annotations

import numpy as np
import pytest

from piddpm.restore import restore


def _psf(size=5, sigma=1.0):
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def test_a_callable_progress_gets_tiles_done_and_total_per_batch():
    calls = []
    image = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    kw = dict(method="rl", psf=_psf(), steps=2, tile=32, overlap=8, batch_size=2, device="cpu")
    r = restore(image, progress=lambda done, total: calls.append((done, total)), **kw)
    total = calls[0][1]
    assert calls[0] == (0, total) and calls[-1] == (total, total) and total % 2 == 0
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) > 3
    plain = restore(image, progress=False, **kw)
    np.testing.assert_array_equal(r.mean, plain.mean)


def test_raising_in_the_progress_callable_stops_the_restore():
    seen = []

    class Stop(Exception):
        pass

    def stop_after_first_batch(done, total):
        seen.append(done)
        if done > 0:
            raise Stop

    image = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
    with pytest.raises(Stop):
        restore(image, method="rl", psf=_psf(), steps=2, tile=32, overlap=8, batch_size=1,
                device="cpu", progress=stop_after_first_batch)  # fmt: skip
    assert seen == [0, 1]
