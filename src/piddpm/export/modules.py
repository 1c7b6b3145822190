"""The ``torch.nn.Module`` s a BioImage Model Zoo package of a piddpm model runs.

The Zoo runs a ``pytorch_state_dict`` package as ``callable(**kwargs)`` (imported from the
installed ``piddpm``), then ``load_state_dict`` and ``forward(input)``: one tensor
``(batch, channel = 1, y, x)`` in model units ([-1, 1] after the package's preprocessing),
one tensor of the same shape out. Two modules do that:

- :class:`BMZUNet`: the supervised U-Net, one forward pass;
- :class:`BMZDiffusion`: PI-DDPM / DDPM, a whole deterministic sampler run in ``forward``
  (DDIM with ``eta_ddim = 0`` by default, the model's steps, guidance and regulariser), its
  starting noise drawn from a fixed seed (:class:`piddpm.diffusion.noise.PlaneNoise`), so
  the same input always gives the same output, as the Zoo's reproducibility test needs.

Both mirror the input by ``border_pad`` pixels beyond its borders (as ``piddpm restore``
does, so the network does not see its zero padding at the image edge), reflect-pad it to the
network's down-sampling factor, and crop back, so any size works. Their state dict is the
network's, under ``net.``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["BMZDiffusion", "BMZUNet"]


def _padded_call(fn, x: torch.Tensor, factor: int, border: int = 0) -> torch.Tensor:
    """``fn`` on ``x`` mirrored by ``border`` pixels on every side and reflect-padded at the
    end to a multiple of ``factor``, cropped back."""
    from piddpm.padding import crop_to, mirror_pad_tensor, pad_tensor_end_to_multiple

    h, w = x.shape[-2:]
    if border:
        x = mirror_pad_tensor(x, (border,) * 4)
    padded, size = pad_tensor_end_to_multiple(x, factor)
    out = crop_to(fn(padded), size)
    return out[..., border : border + h, border : border + w]


class BMZUNet(nn.Module):
    """The supervised U-Net of a piddpm ``unet`` model: ``(B, 1, H, W) -> (B, 1, H, W)``.

    Parameters
    ----------
    network : dict
        The :class:`piddpm.networks.UNet` keyword arguments (``model.json``'s ``network``).
    border_pad : int
        Pixels of mirrored border around the input (0 in packages made before it existed).
    """

    def __init__(self, network: dict[str, Any], border_pad: int = 0):
        super().__init__()
        from piddpm.networks import UNet

        self.net = UNet(**network)
        self.factor = int(self.net.downsample_factor)
        self.border_pad = int(border_pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One forward pass on ``x`` (model units, [-1, 1])."""
        return _padded_call(lambda t: self.net(t, None), x, self.factor, self.border_pad)


class BMZDiffusion(nn.Module):
    """A piddpm diffusion model (PI-DDPM or DDPM) with its sampler: ``(B, 1, H, W)`` in,
    the deterministic restoration ``(B, 1, H, W)`` out (model units).

    Parameters
    ----------
    network : dict
        The :class:`piddpm.networks.UNet` keyword arguments.
    method : str
        ``model.json``'s ``method`` (decides what ``guidance = "auto"`` means).
    schedule : dict
        The sampling schedule (``model.json``'s ``schedule``).
    sampler : dict
        A resolved :class:`piddpm.diffusion.settings.SamplerConfig` (``model_dump``).
    target : str
        What the network diffuses (``residual`` or ``direct``).
    seed : int
        Seed of the noise field the sampler draws from (every call draws the same noise).
    noise_block : int
        Cell size of that field in pixels (:class:`piddpm.diffusion.noise.PlaneNoise`).
    border_pad : int
        Pixels of mirrored border around the input (0 in packages made before it existed).

    Notes
    -----
    With ``samples = 1`` and ``eta_ddim = 0`` the output is the probability-flow (DDIM)
    solution from the fixed starting noise: not a posterior sample, and always the same.
    """

    def __init__(
        self,
        network: dict[str, Any],
        method: str,
        schedule: dict[str, Any],
        sampler: dict[str, Any],
        target: str = "residual",
        seed: int = 0,
        noise_block: int = 64,
        border_pad: int = 0,
    ):
        super().__init__()
        from piddpm.diffusion.schedules import schedule_from_config
        from piddpm.diffusion.settings import SamplerConfig
        from piddpm.networks import UNet

        self.net = UNet(**network)
        self.method, self.target = str(method), str(target)
        self.schedule = schedule_from_config(dict(schedule))
        self.config = SamplerConfig(**sampler)
        self.seed, self.noise_block = int(seed), int(noise_block)
        self.border_pad = int(border_pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the sampler on ``x`` (model units, [-1, 1]); the same input gives the same
        output (the noise comes from ``seed``)."""
        from piddpm.diffusion.noise import PlaneNoise, TileNoise
        from piddpm.diffusion.samplers import sample
        from piddpm.padding import mirror_pad_tensor

        b, (h, w) = self.border_pad, x.shape[-2:]
        field = PlaneNoise(self.seed, self.noise_block)
        # the mirrored plane starts at (-b, -b): the noise piddpm restore draws there
        noise = TileNoise([field] * x.shape[0], [(-b, -b)] * x.shape[0], self.config.samples)
        grown = mirror_pad_tensor(x, (b,) * 4) if b else x
        res = sample(
            self.net,
            grown.float(),
            self.schedule,
            self.config,
            method=self.method,
            noise=noise,
            target=self.target,
            guidance_norm=self.config.guidance_norm or "per-image",
        )
        return res.mean[..., b : b + h, b : b + w].to(x.dtype)
