"""One optimisation step's loss, and validation: restoring held-out pairs with the EMA
network, scoring them and writing a preview."""

from __future__ import annotations

import time

import torch
from torch import nn

from piddpm.config import TrainConfig
from piddpm.training.outputs import psnr_db, write_preview


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _compute_loss(model, cfg: TrainConfig, batch: dict, schedule, generator):
    if cfg.method == "unet":
        from piddpm.diffusion import supervised_loss

        out = supervised_loss(
            model,
            batch["gt"],
            batch["observed"],
            kind=cfg.diffusion.supervised_loss,
            target=cfg.diffusion.target,
        )
    else:
        from piddpm.diffusion import diffusion_loss

        out = diffusion_loss(
            model,
            batch["gt"],
            batch["observed"],
            batch["observed_clean"],
            batch["psf"],
            schedule,
            method=cfg.method,
            physics_weight=cfg.diffusion.physics_weight if cfg.method == "pi-ddpm" else 0.0,
            target=cfg.diffusion.target,
            physics_norm=cfg.diffusion.physics_norm,
            physics_reference=cfg.diffusion.physics_reference,
            generator=generator,
        )
    if isinstance(out, tuple):
        loss, logs = out
    else:
        loss, logs = out, {}
    return loss, dict(logs)


@torch.no_grad()
def restore_batch(
    net: nn.Module,
    cfg: TrainConfig,
    observed: torch.Tensor,
    psf: torch.Tensor | None,
    schedule,
    *,
    num_steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Restore ``(B, 1, H, W)`` observations (model units) with a trained network.

    Diffusion methods sample with DDIM (``num_steps`` steps, learned physics guidance for
    pi-ddpm unless ``validation.guidance`` says otherwise); the U-Net predicts directly.
    """
    if cfg.method == "unet":
        from piddpm.diffusion import supervised_predict

        return supervised_predict(net, observed, target=cfg.diffusion.target).float()
    from piddpm.diffusion import sample

    settings = cfg.validation.sampler_config(cfg.method).model_copy(update={"steps": num_steps})
    res = sample(
        net,
        observed,
        schedule,
        settings,
        method=cfg.method,
        psf=psf,
        target=cfg.diffusion.target,
        generator=generator,
    )
    return res.mean.float()


@torch.no_grad()
def validate(net, cfg, val, schedule, dev, step, out, val_log) -> dict[str, float]:
    """Restore the validation pairs with ``net``, write the preview (and a ``val.csv`` row
    when ``val_log`` is given); returns ``psnr_db``, ``input_psnr_db``, ``num_samples``,
    ``step``."""
    t0 = time.perf_counter()
    net.eval()
    observed = val["observed"].to(dev)
    gt = val["gt"].to(dev)
    psf = val["psf"].to(dev)
    if cfg.channels_last:
        observed = observed.contiguous(memory_format=torch.channels_last)
    gen = torch.Generator(device=dev).manual_seed(cfg.validation.seed)
    with _autocast(dev, cfg.precision):
        restored = restore_batch(
            net, cfg, observed, psf, schedule, num_steps=cfg.validation.num_steps, generator=gen
        )
    restored = restored.float()
    psnr = psnr_db(restored, gt)
    psnr_in = psnr_db(observed.float(), gt)
    metrics = {
        "psnr_db": float(psnr.mean()),
        "input_psnr_db": float(psnr_in.mean()),
        "num_samples": int(gt.shape[0]),
        "step": int(step),
    }
    write_preview(
        out / "previews" / f"step_{step:07d}.png",
        [(observed[i, 0].cpu(), restored[i, 0].cpu(), gt[i, 0].cpu()) for i in range(gt.shape[0])],
    )
    if val_log is not None:
        val_log.write(
            {
                "step": step,
                "psnr_db": metrics["psnr_db"],
                "input_psnr_db": metrics["input_psnr_db"],
                "num_samples": metrics["num_samples"],
                "seconds": time.perf_counter() - t0,
            }
        )
    return metrics
