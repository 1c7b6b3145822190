"""Tests of the Richardson-Lucy engine's paired layout (two real slabs in one complex FFT)
against scipy's linear convolution, the real-FFT path and the adjoint identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve

from piddpm.baselines.rl_core import FFTBlur, rl_fixed_iterations

CASES = [
    # geometry, data shape, PSF shape: odd and even sides, odd and even row counts
    ("same", (96, 70), (31, 31)),
    ("same", (65, 77), (8, 9)),
    ("valid", (40, 64, 70), (9, 15, 7)),
    ("valid", (7, 75, 64), (7, 31, 31)),
]


def _linear_reference(u: np.ndarray, psf: np.ndarray, geometry: str) -> np.ndarray:
    """``A u`` from scipy's direct linear convolution: "valid" is ``mode="valid"`` on the
    extended object, "same" the full convolution cropped at the PSF centre ``k // 2``."""
    if geometry == "valid":
        return fftconvolve(u, psf, mode="valid")
    full = fftconvolve(u, psf, mode="full")
    return full[tuple(slice(k // 2, k // 2 + n) for k, n in zip(psf.shape, u.shape, strict=True))]


@pytest.mark.parametrize("geometry, shape, ks", CASES)
def test_paired_operator_is_the_linear_convolution_and_its_adjoint(geometry, shape, ks):
    rng = np.random.default_rng(1)
    psf = rng.random(ks)  # not symmetric: a wrong flip or shift would show
    op = FFTBlur(torch.from_numpy(psf), shape, geometry, pack=True)
    assert op.packed
    u = rng.random(op.object_shape)
    au = op.forward(torch.from_numpy(u)).numpy()
    np.testing.assert_allclose(au, _linear_reference(u, psf, geometry), atol=1e-11)
    r = rng.random(shape)
    atr = op.adjoint(torch.from_numpy(r)).numpy()
    assert atr.shape == op.object_shape
    # <A u, r> = <u, A^T r>
    assert abs((au * r).sum() - (u * atr).sum()) < 1e-10 * abs((au * r).sum())


@pytest.mark.parametrize("geometry, shape, ks", CASES)
def test_paired_iterations_equal_the_real_fft_path(geometry, shape, ks):
    """Same RL iterates, background and early stop (the monitor sees the same model)."""
    rng = np.random.default_rng(2)
    psf = torch.from_numpy(rng.random(ks))
    psf /= psf.sum()
    ops = [FFTBlur(psf, shape, geometry, pack=p) for p in (False, True)]
    y = torch.from_numpy(rng.random(shape) * 50 + 1)
    u0 = torch.from_numpy(rng.random(ops[0].object_shape) + 1)
    inv = ops[0].sensitivity((), torch.float64, "cpu").reciprocal()
    for background in (None, torch.tensor(0.5, dtype=torch.float64),
                       torch.from_numpy(rng.random(shape))):  # fmt: skip
        results, models = [], []
        for op in ops:
            seen = []

            def monitor(k, model, seen=seen):
                seen.append(model.clone())
                return k == 4

            u, done = rl_fixed_iterations(
                y, u0.clone(), op, 9, background=background, inv_sens=inv, monitor=monitor
            )
            assert done == 4
            results.append(u)
            models.append(seen[-1])
        torch.testing.assert_close(results[1], results[0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(models[1], models[0], rtol=1e-9, atol=1e-12)


def test_paired_batch_with_per_sample_psfs():
    """Leading axes: per-sample PSFs (B, 1, kh, kw) against per-plane calls."""
    rng = np.random.default_rng(3)
    psf = torch.from_numpy(rng.random((3, 1, 9, 9)))
    y = torch.from_numpy(rng.random((3, 2, 70, 61)) + 1)
    op = FFTBlur(psf, (70, 61), "same")
    assert op.packed
    u = torch.ones_like(y)
    u, _ = rl_fixed_iterations(y, u, op, 5, background=torch.tensor(0.1, dtype=torch.float64))
    for b in range(3):
        single = FFTBlur(psf[b, 0], (70, 61), "same", pack=False)
        ub, _ = rl_fixed_iterations(y[b], torch.ones_like(y[b]), single, 5,
                                    background=torch.tensor(0.1, dtype=torch.float64))  # fmt: skip
        torch.testing.assert_close(u[b], ub, rtol=1e-9, atol=1e-12)


def test_paired_layout_defaults_and_refusals():
    psf = torch.ones(9, 9) / 81
    assert FFTBlur(psf, (64, 64), "same").packed  # CPU default
    assert not FFTBlur(psf, (16, 64), "same").packed  # too few rows for the halo
    assert not FFTBlur(psf, (64, 64), "periodic").packed
    with pytest.raises(ValueError, match="paired layout"):
        FFTBlur(psf, (64, 64), "periodic", pack=True)
    with pytest.raises(ValueError, match="paired layout"):
        FFTBlur(psf, (12, 64), "same", pack=True)


@pytest.mark.parametrize(
    "geometry, shape, ks, lead",
    [*((g, s, k, ()) for g, s, k in CASES), ("periodic", (33, 40), (7, 5), ()),
     ("same", (40, 36), (7, 9), (3, 1)), ("valid", (30, 50), (7, 9), (2, 1))],
)  # fmt: skip
def test_sensitivity_is_the_adjoint_of_ones_and_one_inside(geometry, shape, ks, lead):
    """``A^T 1`` (computed from per-axis masks, without a transform of the volume) equals the
    adjoint applied to ones, per-sample PSFs included; for a unit-sum PSF it is 1 wherever
    the whole PSF sees data (every geometry's interior, everywhere when periodic) and
    falls off towards the borders."""
    rng = np.random.default_rng(3)
    psf = torch.from_numpy(rng.random(lead + ks))
    psf /= psf.sum(dim=tuple(range(-len(ks), 0)), keepdim=True)
    op = FFTBlur(psf, shape, geometry)
    sens = op.sensitivity(lead, torch.float64, "cpu")
    ref = op.adjoint(torch.ones(lead + shape, dtype=torch.float64))
    assert sens.shape == ref.shape
    torch.testing.assert_close(sens, ref, atol=1e-12, rtol=0)
    m = [k for k in ks] if geometry == "valid" else [k // 2 + 1 for k in ks]
    inner = (...,) + tuple(slice(mm, n - mm) for mm, n in zip(m, op.object_shape, strict=True))
    torch.testing.assert_close(sens[inner], torch.ones_like(sens[inner]), atol=1e-12, rtol=0)
    if geometry != "periodic":
        assert float(sens.min()) < 0.5
