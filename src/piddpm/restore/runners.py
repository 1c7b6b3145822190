"""Per-method runners of :func:`piddpm.restore`: how a plane goes in, what a tile function
does, and how the tiles' output comes back in the input's intensity units.

A runner has ``metadata`` (its part of the result's metadata), ``samples``, ``tile_margin``
and ``out_channels``, and two methods used plane by plane (:mod:`piddpm.restore.planes`):

- ``prepare(p_index, plane, lo, span) -> (plane_in, tile_fn, overlap)``;
- ``finish(out, lo, span) -> (mean, std or None, residual or None)``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from piddpm import PiddpmError
from piddpm.acquisition import blur
from piddpm.baselines import RL_MAX_ITER, RL_TAU, richardson_lucy, rl_iterations
from piddpm.devices import bf16_is_fast
from piddpm.diffusion.settings import SamplerConfig
from piddpm.metrics.calibration import mean_gradient
from piddpm.padding import crop_to, reflect_pad
from piddpm.padding import pad_end_to_multiple as pad_to_multiple
from piddpm.resample import fourier_resample
from piddpm.restore.sampling import zoomed_shape

__all__ = ["DiffusionRunner", "RLRunner", "UNetRunner"]


# ---------------------------------------------------------------------------------------------
# tile functions: normalised tiles (B, 1, h, w) in, channels [mean, (std), (residual)] out


class DiffusionTiles:
    """Tile function for the diffusion methods: observation (normalised) -> mean[, std][, res]."""

    def __init__(self, runner: DiffusionRunner, noise_field):
        self.runner, self.noise_field = runner, noise_field

    def __call__(self, batch: np.ndarray, origins: list[tuple[int, int]]):
        from piddpm.diffusion.noise import TileNoise
        from piddpm.diffusion.samplers import sample

        run = self.runner
        padded, size = pad_to_multiple(batch, run.factor)
        x = torch.from_numpy(np.ascontiguousarray(padded)).to(run.device)
        # one noise field per plane, cropped at each tile's position: overlapping tiles draw
        # the same noise where they overlap (padding extends the tile down/right in the plane)
        noise = TileNoise([self.noise_field] * len(origins), origins, run.samples)
        res = sample(
            run.net,
            x,
            run.schedule,
            run.config,
            method=run.method,
            psf=run.psf_t,
            noise=noise,
            progress=False,
            **run.run_kwargs,
        )
        mean = crop_to(res.mean.detach().float(), size)
        outs = [mean]
        if run.samples > 1:
            std = res.std if res.std is not None else res.samples.float().std(dim=1)
            outs.append(crop_to(std.detach().float(), size))
        if run.with_residual:
            x0 = crop_to(x, size)
            outs.append((blur(mean, run.psf_t, boundary="reflect") - x0).abs() / 2.0)
        return torch.cat(outs, dim=1).cpu()


class UNetTiles:
    """Tile function for the supervised U-Net: one forward pass."""

    def __init__(self, runner: UNetRunner):
        self.runner = runner

    def __call__(self, batch: np.ndarray):
        run = self.runner
        padded, size = pad_to_multiple(batch, run.factor)
        x = torch.from_numpy(np.ascontiguousarray(padded)).to(run.device)
        with torch.no_grad():
            y = crop_to(run.net(x, None).float(), size)
        outs = [y]
        if run.with_residual:
            outs.append((blur(y, run.psf_t, boundary="reflect") - crop_to(x, size)).abs() / 2.0)
        return torch.cat(outs, dim=1).cpu()


class RLTiles:
    """Tile function for Richardson-Lucy on ``max(x - lo, 0) / (hi - lo)``."""

    def __init__(self, *, psf_t, num_iter, device, with_residual):
        self.psf_t, self.num_iter = psf_t, num_iter
        self.device, self.with_residual = device, with_residual

    def __call__(self, batch: np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        # RL on a mirror-extended tile: no dark rim from a zero boundary at the image border
        kh, kw = self.psf_t.shape[-2:]
        ph, pw = kh // 2, kw // 2
        h, w = x.shape[-2:]
        u = richardson_lucy(reflect_pad(x, ph, pw).clamp_min(0), self.psf_t, self.num_iter)
        u = u[..., ph : ph + h, pw : pw + w]
        outs = [u]
        if self.with_residual:
            outs.append((blur(u, self.psf_t, boundary="reflect") - x).abs())
        return torch.cat(outs, dim=1).cpu()


# ---------------------------------------------------------------------------------------------
# runners


class RLRunner:
    """Richardson-Lucy with the given or computed PSF; iterations per plane by the automatic
    rule (:func:`piddpm.baselines.rl_iterations`) unless ``steps`` fixes them."""

    method = "rl"
    samples = 1
    tile_margin = 0
    border_pad = 0  # RL pads each tile by the PSF's half-width itself (RLTiles)

    def __init__(self, *, psf_np, psf_t, steps, tile, overlap, device, with_residual):
        self.psf_np, self.psf_t, self.steps = psf_np, psf_t, steps
        self.tile, self.overlap, self.device = tile, overlap, device
        self.with_residual = with_residual
        self.out_channels = 1 + with_residual
        self.counts: list[int] = []
        rule = (
            None
            if steps
            else "per plane: discrepancy principle on the central tile (stop when the rms "
            f"residual |A u - x| reaches {RL_TAU} x the Immerkaer noise estimate; at most "
            f"{RL_MAX_ITER})"
        )
        self.metadata: dict[str, Any] = dict(
            sampler=None,
            steps=steps,
            eta=None,
            **{"lambda": None},
            regulariser=None,
            guidance=None,
            samples=1,
            rl_iteration_rule=rule,
        )

    def prepare(self, p_index, plane, lo, span):  # noqa: ARG002
        plane_in = (plane - lo) / span
        n_iter = (
            int(self.steps)
            if self.steps
            else rl_iterations(np.clip(plane_in, 0, None), self.psf_np, self.tile)
        )
        self.counts.append(n_iter)
        fn = RLTiles(
            psf_t=self.psf_t, num_iter=n_iter, device=self.device, with_residual=self.with_residual
        )
        overlap = max(int(self.overlap), min(max(self.psf_np.shape), self.tile // 2))
        return plane_in, fn, overlap

    def finish(self, out, lo, span):
        return out[0] * span + lo, None, (out[1] if self.with_residual else None)

    def final_metadata(self) -> dict[str, Any]:
        counts = self.counts
        if not counts:
            return {}
        return {
            "steps": counts[0] if len(set(counts)) == 1 else counts,
            "rl_iterations": counts if len(counts) <= 64 else counts[:64],
        }


class _LearnedRunner:
    """What the U-Net and the diffusion models share: the [-1, 1] map, the resampling into
    the model's pixel-size range and back, the calibrated std."""

    def __init__(self, *, net, entry, plan, plane_shape, overlap, device, psf_t, with_residual):
        self.net, self.entry, self.plan = net, entry, plan
        self.plane_shape, self.overlap, self.device = plane_shape, overlap, device
        self.psf_t, self.with_residual = psf_t, with_residual
        self.method = entry.method
        self.factor = int(getattr(net, "downsample_factor", 1))
        self.std_scale, self.std_floor, self.std_gradient = 1.0, 0.0, 0.0
        self.tile_margin = 0
        self.border_pad = 0  # restore() sets the model's (settings.border_pad_for)

    @property
    def out_channels(self) -> int:
        return 1 + (self.samples > 1) + self.with_residual

    @property
    def resamples(self) -> bool:
        return self.plan is not None and self.plan.resamples

    def prepare(self, p_index, plane, lo, span):
        plane_in = 2.0 * (plane - lo) / span - 1.0
        if self.resamples:
            plane_in = fourier_resample(plane_in, zoomed_shape(self.plane_shape, self.plan.zoom))
        return plane_in, self.tile_fn(p_index), int(self.overlap)

    def finish(self, out, lo, span):
        if self.resamples:
            out = np.stack([fourier_resample(c, self.plane_shape) for c in out])
            if self.samples > 1:
                out[1] = np.maximum(out[1], 0.0)
        mean = (out[0] + 1.0) * 0.5 * span + lo
        k, std = 1, None
        if self.samples > 1:
            spread = out[k] * self.std_scale + self.std_floor
            if self.std_gradient:  # more spread at edges (piddpm.metrics.fit_spread)
                spread = spread + self.std_gradient * mean_gradient(out[0])
            std = spread * 0.5 * span
            k += 1
        return mean, std, (out[k] if self.with_residual else None)

    def final_metadata(self) -> dict[str, Any]:
        return {}


class UNetRunner(_LearnedRunner):
    """The supervised U-Net: deterministic, one forward pass per tile."""

    samples = 1

    def __init__(self, *, ignored: list[str], samples: int, **kwargs):
        super().__init__(**kwargs)
        if samples > 1:
            warnings.warn("the U-Net is deterministic: samples > 1 ignored", stacklevel=3)
        if ignored:
            warnings.warn(f"method unet has no sampler: {', '.join(ignored)} ignored", stacklevel=3)
        self.metadata: dict[str, Any] = dict(
            sampler=None,
            steps=None,
            eta=None,
            **{"lambda": None},
            regulariser=None,
            guidance=None,
            samples=1,
        )

    def tile_fn(self, p_index):  # noqa: ARG002
        return UNetTiles(self)


class DiffusionRunner(_LearnedRunner):
    """PI-DDPM / DDPM: the sampler of a :class:`SamplerConfig`, one noise field per plane."""

    def __init__(
        self, *, config: SamplerConfig, schedule, seed: int, precision: str | None = None, **kwargs
    ):
        super().__init__(**kwargs)
        self.config, self.schedule, self.seed = config, schedule, seed
        self.samples = config.samples
        self.run_kwargs: dict[str, Any] = {"guidance_norm": config.guidance_norm}
        # auto: bf16 autocast where the model's defaults ask for it and the device runs bf16
        # fast (measured: docs/restore.md); elsewhere (e.g. CPUs without bf16 units) float32
        if precision in (None, "auto"):
            self.autocast = bool(self.entry.restore_defaults.get("autocast", False)) and (
                bf16_is_fast(self.device)
            )
        else:
            self.autocast = precision == "bf16"
        self.run_kwargs["autocast"] = self.autocast
        if self.entry.config.get("target"):
            self.run_kwargs["target"] = self.entry.config["target"]

    def tile_fn(self, p_index):
        from piddpm.diffusion.noise import PlaneNoise

        return DiffusionTiles(self, PlaneNoise((self.seed * 1_000_003 + p_index) % (2**63)))


def diffusion_config(
    config: SamplerConfig,
    method: str,
    entry,
    schedule,
    *,
    psf_known: bool,
    steps_given,
    tile_invariant: bool,
) -> SamplerConfig:
    """Check a resolved sampler configuration against the model and make it concrete:
    guidance for the method, steps for the schedule, the guidance normalisation."""
    guidance = config.resolved_guidance(method)
    if guidance in ("learned", "both") and method != "pi-ddpm":
        raise PiddpmError(
            f"guidance {guidance!r} needs the learned physics gradient of a pi-ddpm "
            f"model; model {entry.name} is {method}: use guidance known (with a PSF) "
            "or none"
        )
    if guidance in ("known", "both") and not psf_known:
        raise PiddpmError(
            f"guidance {guidance!r} needs the PSF: give --psf FILE or the microscope options"
        )
    if config.sampler == "ddpm":
        if steps_given is not None and int(steps_given) != schedule.T:
            raise PiddpmError(
                f"the ancestral DDPM sampler runs all {schedule.T} steps of the "
                f"model's schedule; --steps {steps_given} is for --sampler ddim"
            )
    elif config.resolved_steps(schedule.T) > schedule.T:
        raise PiddpmError(
            f"steps {config.resolved_steps(schedule.T)} exceeds the model's {schedule.T} "
            "diffusion steps"
        )
    # a tile-invariant network gets a tile-invariant guidance step (no per-tile rms)
    norm = config.guidance_norm or ("none" if tile_invariant else "per-image")
    return config.model_copy(
        update={
            "guidance": guidance,
            "steps": config.resolved_steps(schedule.T),
            "eta_ddim": config.resolved_eta_ddim() if config.sampler == "ddim" else None,
            "guidance_norm": norm,
        }
    )


def diffusion_metadata(
    config: SamplerConfig,
    std_scale: float,
    std_floor: float,
    autocast: bool = False,
    std_gradient: float = 0.0,
) -> dict:
    """The sampler's part of the result's metadata."""
    several = config.samples > 1
    return dict(
        precision="bf16 autocast" if autocast else "float32",
        sampler=config.sampler,
        steps=config.steps,
        eta=config.eta,
        **{"lambda": config.lam},
        regulariser=config.regulariser_or_none(),
        guidance=config.guidance,
        samples=config.samples,
        eta_ddim=config.eta_ddim,
        guidance_norm=config.guidance_norm,
        std_scale=std_scale if several else None,
        std_floor=std_floor if several else None,
        std_gradient=std_gradient if several else None,
        noise="one field per plane (PlaneNoise), cropped per tile",
    )
