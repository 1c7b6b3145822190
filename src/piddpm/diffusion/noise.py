"""Diffusion noise as a function of position: one noise field per plane, cropped per tile.

A sampler that draws ``torch.randn`` per tile gives every tile its own noise, so overlapping
tiles disagree and a tiled restore differs from an untiled one even where the network sees
the same pixels. :class:`PlaneNoise` instead defines the noise of a whole plane, for every
sampler draw (``key``) and posterior sample, as a deterministic function of
``(seed, key, sample, channel, y, x)``: the plane is cut into ``block x block`` cells, each
filled from its own generator seeded by ``(seed, key, sample, cell row, cell column)``.
Any window of it can be produced without drawing the rest, so a tile at ``(y0, x0)`` gets
exactly the values the whole plane would have there, at the cost of the cells it touches.
"""

from __future__ import annotations

import numpy as np
import torch

from piddpm import PiddpmError

__all__ = ["PlaneNoise", "TileNoise"]


class PlaneNoise:
    """Standard normal noise over an unbounded plane, addressed by absolute pixel position.

    Parameters
    ----------
    seed : int
        Seed of the whole field (e.g. derived from the restore seed and the plane index).
    block : int
        Side of the independently seeded cells in pixels (default 64).
    """

    def __init__(self, seed: int, block: int = 64) -> None:
        if block < 1:
            raise PiddpmError(f"noise block must be >= 1 pixel, got {block}")
        self.seed, self.block = int(seed), int(block)

    def _cell(self, key: int, sample: int, channels: int, cy: int, cx: int) -> torch.Tensor:
        ss = np.random.SeedSequence([self.seed & (2**63 - 1), key, sample, cy + 2**31, cx + 2**31])
        gen = torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))
        return torch.randn((channels, self.block, self.block), generator=gen)

    def window(
        self, key: int, sample: int, channels: int, y0: int, x0: int, height: int, width: int
    ) -> torch.Tensor:
        """The noise of draw ``key``, posterior sample ``sample`` over rows ``y0 .. y0 + height``
        and columns ``x0 .. x0 + width`` (any integers, also outside the image):
        float32 ``(channels, height, width)`` on the CPU."""
        b = self.block
        cy0, cy1 = y0 // b, (y0 + height - 1) // b
        cx0, cx1 = x0 // b, (x0 + width - 1) // b
        rows = [
            torch.cat(
                [self._cell(key, sample, channels, cy, cx) for cx in range(cx0, cx1 + 1)], dim=-1
            )
            for cy in range(cy0, cy1 + 1)
        ]
        full = torch.cat(rows, dim=-2)
        oy, ox = y0 - cy0 * b, x0 - cx0 * b
        return full[:, oy : oy + height, ox : ox + width]


class TileNoise:
    """The noise of a batch of tiles cut from :class:`PlaneNoise` fields: what a sampler calls.

    Parameters
    ----------
    fields : list of PlaneNoise
        One field per batch element (tiles of different planes use different fields).
    origins : list of (int, int)
        Top-left ``(y0, x0)`` of each tile in its plane (after any padding offset).
    num_samples : int
        Posterior samples per tile; the sampler's batch is ``len(origins) * num_samples``,
        sample-minor (as ``repeat_interleave``).

    Calling ``noise(key, shape, device, dtype)`` with ``shape = (B * N, C, H, W)`` returns the
    noise of draw ``key`` (0 for the initial ``r_T``, ``k + 1`` for the ``k``-th step).
    """

    def __init__(
        self, fields: list[PlaneNoise], origins: list[tuple[int, int]], num_samples: int = 1
    ) -> None:
        if len(fields) != len(origins):
            raise PiddpmError(f"{len(fields)} noise fields for {len(origins)} tile origins")
        self.fields, self.origins, self.num_samples = fields, origins, int(num_samples)

    def __call__(self, key: int, shape, device, dtype) -> torch.Tensor:
        n, c, h, w = (int(v) for v in shape)
        if n != len(self.origins) * self.num_samples:
            raise PiddpmError(
                f"noise for a batch of {n}, but {len(self.origins)} tiles x "
                f"{self.num_samples} samples were given"
            )
        parts = [
            field.window(int(key), s, c, y0, x0, h, w)
            for field, (y0, x0) in zip(self.fields, self.origins, strict=True)
            for s in range(self.num_samples)
        ]
        return torch.stack(parts).to(device=device, dtype=dtype)
