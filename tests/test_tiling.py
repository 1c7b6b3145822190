"""Tiles cover the image, blending is seamless, and a local operator commutes with tiling."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy import ndimage

from piddpm import PiddpmError
from piddpm.tiling import (
    axis_starts,
    blend_window,
    crop_to,
    hann_ramp,
    pad_to_multiple,
    restore_tiled,
    tile_positions,
)


def _smooth_image(shape, seed=0, sigma=3.0):
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), sigma)
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def _conv_fn(kernel):
    """A translation-equivariant local operator applied tile by tile (zero padding at edges)."""

    def fn(batch):
        return np.stack(
            [[ndimage.convolve(c, kernel, mode="constant") for c in tile] for tile in batch]
        )

    return fn


# ---------------------------------------------------------------- positions


@pytest.mark.parametrize(
    "length,tile,overlap",
    [
        (1, 8, 2),
        (7, 8, 2),
        (8, 8, 2),
        (9, 8, 2),
        (100, 32, 8),
        (257, 64, 1),
        (33, 8, 7),
        (40, 8, 0),
    ],
)
def test_tiles_cover_the_axis_with_at_least_the_requested_overlap(length, tile, overlap):
    starts = axis_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    covered = np.zeros(length, int)
    for s in starts:
        covered[s : s + size] += 1
    assert covered.min() >= 1
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        assert a < b and (a + size) - b >= overlap


def test_tile_positions_are_row_major_and_equal_sized():
    pos = tile_positions((50, 70), 32, 4)
    assert len(pos) == len(axis_starts(50, 32, 4)) * len(axis_starts(70, 32, 4))
    assert {(r.stop - r.start, c.stop - c.start) for r, c in pos} == {(32, 32)}
    assert pos[0] == (slice(0, 32), slice(0, 32))
    assert pos[-1] == (slice(18, 50), slice(38, 70))


@pytest.mark.parametrize("tile,overlap", [(0, 0), (8, 8), (8, 9), (8, -1), (2.5, 0)])
def test_bad_tile_or_overlap_is_refused(tile, overlap):
    with pytest.raises(PiddpmError, match="tile"):
        tile_positions((64, 64), tile, overlap)


# ---------------------------------------------------------------- window


@pytest.mark.parametrize("overlap", [1, 2, 7, 32])
def test_facing_hann_ramps_form_a_partition_of_unity(overlap):
    ramp = hann_ramp(overlap)
    assert np.all(ramp > 0) and np.all(ramp < 1)
    np.testing.assert_allclose(ramp + ramp[::-1], 1.0, atol=1e-12)
    assert np.all(np.diff(ramp) > 0) or overlap == 1


def test_window_is_untapered_at_image_borders_and_never_zero():
    w = blend_window((16, 16), 4, taper=(False, True, False, True))
    assert w.min() > 0
    assert np.all(w[0, :12] == 1) and np.all(w[:12, 0] == 1)
    assert w[-1, -1] < 0.01
    assert np.all(blend_window((5, 5), 8) > 0)  # overlap longer than the tile


# ---------------------------------------------------------------- blending


@pytest.mark.parametrize(
    "shape,tile,overlap",
    [((37, 53), 16, 5), ((5, 3), 16, 4), ((64, 64), 64, 8), ((40, 41), 8, 1), ((30, 30), 8, 0)],
)
def test_identity_operator_reproduces_the_image(shape, tile, overlap):
    img = np.random.default_rng(1).random(shape).astype(np.float32)
    out = restore_tiled(lambda b: b, img, tile, overlap, batch_size=3)
    assert out.shape == (1, *shape) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], img, rtol=1e-5, atol=1e-6)


def test_multichannel_output_and_input_channels():
    img = np.random.default_rng(2).random((2, 45, 33)).astype(np.float32)
    out = restore_tiled(lambda b: np.concatenate([b, 2 * b[:, :1]], 1), img, 16, 4, 2)
    assert out.shape == (3, 45, 33)
    np.testing.assert_allclose(out[:2], img, rtol=1e-5)
    np.testing.assert_allclose(out[2], 2 * img[0], rtol=1e-5)


def test_conv_tiled_matches_untiled_away_from_the_image_border():
    """A 7x7 Gaussian blur (radius 3) done in 48-px tiles agrees with the whole-image blur.

    Pixels within 3 px of a tile edge see zero padding; the Hann window gives them weight
    <= sin^2(pi/2 * 3.5/16) = 0.11, and the correct neighbour tile carries the rest, so the
    error stays a small fraction of what hard stitching would leave.
    """
    img = np.random.default_rng(3).random((150, 170)).astype(np.float32)
    y, x = np.mgrid[-3:4, -3:4]
    kernel = np.exp(-(x**2 + y**2) / 4.0)
    kernel /= kernel.sum()
    ref = ndimage.convolve(img, kernel, mode="constant")
    inner = (slice(3, -3), slice(3, -3))
    blended = restore_tiled(_conv_fn(kernel), img, 48, 16, 4)[0]
    stitched = restore_tiled(_conv_fn(kernel), img, 48, 1, 4)[0]
    err_blend = np.abs(blended - ref)[inner].max()
    err_stitch = np.abs(stitched - ref)[inner].max()
    assert err_blend < 0.02  # image values in [0, 1]
    assert err_blend < 0.25 * err_stitch
    # far from every tile edge the result is exact
    np.testing.assert_allclose(blended[20:28, 20:28], ref[20:28, 20:28], atol=1e-6)


def _boundary_jumps(out, starts_y, starts_x, tile):
    """Max |difference| between neighbouring pixels across tile edges and elsewhere."""
    dx = np.abs(np.diff(out, axis=1))
    dy = np.abs(np.diff(out, axis=0))
    edges_x = sorted({s - 1 for s in starts_x if s > 0} | {s + tile - 1 for s in starts_x[:-1]})
    edges_y = sorted({s - 1 for s in starts_y if s > 0} | {s + tile - 1 for s in starts_y[:-1]})
    at = max(dx[:, edges_x].max(), dy[edges_y, :].max())
    mask_x = np.ones(dx.shape[1], bool)
    mask_x[edges_x] = False
    mask_y = np.ones(dy.shape[0], bool)
    mask_y[edges_y] = False
    elsewhere = max(dx[:, mask_x].max(), dy[mask_y, :].max())
    return at, elsewhere


def test_no_step_at_tile_borders_even_for_a_tile_dependent_operator():
    """Subtracting each tile's mean (like instance normalisation) makes tiles disagree by an
    offset; blended, the offset is spread over the overlap and no step appears at the tile
    edges. Hard stitching of the same operator leaves steps (the test can fail)."""
    img = _smooth_image((200, 200), sigma=8.0)
    img += np.linspace(0, 1, 200, dtype=np.float32)[None, :]  # a trend: tile means differ

    def fn(b):
        return b - b.mean(axis=(-2, -1), keepdims=True)

    tile, overlap = 64, 24
    out = restore_tiled(fn, img, tile, overlap, 4)[0]
    sy = axis_starts(200, tile, overlap)
    at, elsewhere = _boundary_jumps(out, sy, sy, tile)
    assert at <= 1.2 * elsewhere

    hard = restore_tiled(fn, img, tile, 0, 4)[0]
    s0 = axis_starts(200, tile, 0)
    at_h, elsewhere_h = _boundary_jumps(hard, s0, s0, tile)
    assert at_h > 3 * elsewhere_h


def test_batch_size_does_not_change_a_deterministic_result():
    img = _smooth_image((90, 70), seed=4)
    fn = _conv_fn(np.ones((3, 3)) / 9)
    a = restore_tiled(fn, img, 32, 8, 1)
    b = restore_tiled(fn, img, 32, 8, 5)
    np.testing.assert_array_equal(a, b)


def test_memory_is_bounded_by_the_accumulator_and_one_batch():
    """Peak NumPy allocation ~ accumulator (2 x H x W float32) + one batch of tiles."""
    img = np.zeros((1024, 1024), np.float32)
    img[::7, ::5] = 1.0
    tracemalloc.start()
    try:
        restore_tiled(lambda b: b * 2.0, img, 64, 8, 2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    accumulator = 2 * img.nbytes
    assert peak < accumulator + 2 * 1024 * 1024  # < 2 MB beyond the accumulator


def test_dask_input_is_read_tile_by_tile():
    da = pytest.importorskip("dask.array")
    img = _smooth_image((100, 120), seed=5)
    lazy = da.from_array(img, chunks=(50, 60))
    out = restore_tiled(lambda b: b + 1, lazy, 40, 8, 2)
    np.testing.assert_allclose(out[0], img + 1, rtol=1e-6)


def test_progress_object_is_advanced_by_the_number_of_tiles():
    class Counter:
        n = 0

        def update(self, k):
            self.n += k

    c = Counter()
    restore_tiled(lambda b: b, np.zeros((70, 70), np.float32), 32, 4, 3, progress=c)
    assert c.n == len(tile_positions((70, 70), 32, 4))


def test_wrong_output_shape_from_the_tile_function_is_reported():
    with pytest.raises(PiddpmError, match="tile function returned shape"):
        restore_tiled(lambda b: b[..., :-1], np.zeros((20, 20), np.float32), 8, 2, 2)


# ---------------------------------------------------------------- padding


@pytest.mark.parametrize(
    "shape,factor", [((1, 1, 13, 7), 8), ((2, 1, 16, 16), 8), ((1, 1, 3, 2), 16), ((1, 1, 1, 5), 4)]
)
def test_pad_to_multiple_reflects_and_crops_back(shape, factor):
    x = np.random.default_rng(6).random(shape).astype(np.float32)
    p, size = pad_to_multiple(x, factor)
    assert p.shape[-2] % factor == 0 and p.shape[-1] % factor == 0
    assert size == shape[-2:]
    np.testing.assert_array_equal(crop_to(p, size), x)
    if shape[-1] > 2 and p.shape[-1] > shape[-1]:
        # mirror about the last column (reflect, not zero or edge replication)
        np.testing.assert_array_equal(p[..., : shape[-2], shape[-1]], x[..., shape[-1] - 2])


# ---------------------------------------------------------------- with real operators


def test_richardson_lucy_few_iterations_commutes_with_tiling():
    torch = pytest.importorskip("torch")
    rl = pytest.importorskip("piddpm.baselines").richardson_lucy
    img = _smooth_image((160, 160), seed=7) + 0.1
    y, x = np.mgrid[-4:5, -4:5]
    psf = np.exp(-(x**2 + y**2) / 4.0).astype(np.float32)
    psf /= psf.sum()
    psf_t = torch.from_numpy(psf)[None, None]

    def fn(batch):
        return rl(torch.from_numpy(batch), psf_t, num_iter=3)

    ref = fn(img[None, None])[0, 0].numpy()
    out = restore_tiled(fn, img, 64, 24, 4)[0]
    inner = (slice(12, -12), slice(12, -12))
    rel = np.abs(out - ref)[inner].max() / ref.max()
    assert rel < 0.01


def test_random_tiny_unet_tiled_agrees_with_untiled_away_from_borders():
    """The tiny U-Net normalises with GroupNorm, whose statistics are taken over the whole
    input: tiles see other statistics than the whole image, so the agreement is approximate
    (relative rms error < 0.4 for 96-px tiles of a 192-px image, much better than hard
    stitching), and the blend must still show no seams."""
    torch = pytest.importorskip("torch")
    networks = pytest.importorskip("piddpm.networks")
    torch.manual_seed(0)
    net = networks.build_unet("tiny", in_channels=1, out_channels=1, conditioned=False).eval()
    factor = net.downsample_factor
    img = _smooth_image((192, 192), seed=8)

    @torch.no_grad()
    def fn(batch):
        p, size = pad_to_multiple(batch, factor)
        return crop_to(net(torch.from_numpy(p), None), size)

    ref = fn(img[None, None])[0, 0].numpy()
    inner = (slice(16, -16), slice(16, -16))

    def rel_rms(out):
        return np.sqrt(((out - ref)[inner] ** 2).mean()) / ref[inner].std()

    out = restore_tiled(fn, img, 96, 48, 4)[0]
    stitched = restore_tiled(fn, img, 96, 1, 4)[0]
    assert rel_rms(out) < 0.4
    assert rel_rms(out) < 0.6 * rel_rms(stitched)
    s = axis_starts(192, 96, 48)
    at, elsewhere = _boundary_jumps(out, s, s, 96)
    assert at <= 1.5 * elsewhere


def test_tensor_end_padding_equals_the_numpy_one():
    """The tensor and NumPy end-padding helpers (piddpm.padding) pad identically."""
    import torch

    from piddpm.padding import pad_end_to_multiple, pad_tensor_end_to_multiple

    x = np.random.default_rng(3).random((2, 1, 13, 21)).astype(np.float32)
    for factor in (1, 4, 8):
        a, size_a = pad_end_to_multiple(x, factor)
        b, size_b = pad_tensor_end_to_multiple(torch.from_numpy(x), factor)
        assert size_a == size_b == (13, 21)
        np.testing.assert_array_equal(a, b.numpy())
