"""The pieces a run is built from: network, noise schedule, EMA, learning rate, seeds."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from piddpm import PiddpmError
from piddpm.config import ScheduleConfig, TrainConfig


def mix_seed(*values: int) -> int:
    """A 63-bit seed derived from integers (independent streams for distinct tuples)."""
    words = np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(2)
    return int((int(words[0]) << 31) ^ int(words[1])) & 0x7FFFFFFFFFFFFFFF


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of the run.

    Linear warm-up from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps`` steps, then
    ``constant``, ``cosine`` (to ``min_lr_ratio * lr`` at the last step) or ``halve``
    (``lr / 2`` from ``halve_at * steps`` on).
    """
    opt = cfg.optimizer
    if opt.warmup_steps and step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps
    if opt.lr_decay == "constant":
        return opt.lr
    if opt.lr_decay == "halve":
        return opt.lr * (0.5 if step >= opt.halve_at * cfg.steps else 1.0)
    span = max(cfg.steps - opt.warmup_steps - 1, 1)
    progress = min(max(step - opt.warmup_steps, 0) / span, 1.0)
    ratio = opt.min_lr_ratio + (1 - opt.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return opt.lr * ratio


def network_channels(method: str) -> dict[str, Any]:
    """``in_channels``, ``out_channels`` and ``conditioned`` of the network for a method.

    pi-ddpm: input ``concat(r_t, x)``, output ``(eps_hat, g_hat)``; ddpm: output ``eps_hat``;
    unet: observation in, restored image out, no noise-level conditioning.
    """
    if method == "pi-ddpm":
        return {"in_channels": 2, "out_channels": 2, "conditioned": True}
    if method == "ddpm":
        return {"in_channels": 2, "out_channels": 1, "conditioned": True}
    if method == "unet":
        return {"in_channels": 1, "out_channels": 1, "conditioned": False}
    raise PiddpmError(f"method must be pi-ddpm, ddpm or unet (got {method!r})")


def build_network(cfg: TrainConfig) -> nn.Module:
    """The network a configuration describes (freshly initialised from the global RNG)."""
    from piddpm.networks import build_unet

    ch = network_channels(cfg.method)
    return build_unet(cfg.model.preset, **ch, **cfg.model.overrides)


def load_initial_weights(net: nn.Module, cfg: TrainConfig) -> None:
    """Copy the weights of the model ``cfg.init_from`` names into ``net`` (fine-tuning).

    A ``ddpm`` run may start from a ``pi-ddpm`` model of the same network: the two differ
    only in the output layer, whose noise channel (the first) is kept and whose learned
    physics-gradient channel is dropped (a warm start; docs/training.md).

    Raises
    ------
    PiddpmError
        If the model cannot be found or read, or its method, preset or network overrides
        differ from ``cfg`` (the message names the model and the differing values).
    """
    from piddpm.models import load_entry, resolve_model

    entry = resolve_model(cfg.init_from)
    mcfg = entry.config
    mine = {"method": cfg.method, "preset": cfg.model.preset, "overrides": cfg.model.overrides}
    theirs = {k: mcfg.get(k) for k in mine}
    theirs["overrides"] = theirs["overrides"] or {}
    noise_head_only = (theirs["method"], mine["method"]) == ("pi-ddpm", "ddpm")
    diff = {
        k: (theirs[k], mine[k])
        for k in mine
        if theirs[k] != mine[k] and not (k == "method" and noise_head_only)
    }
    if diff:
        detail = ", ".join(f"{k}: {a!r} (model) vs {b!r} (config)" for k, (a, b) in diff.items())
        raise PiddpmError(f"init_from {cfg.init_from}: the network differs ({detail})")
    source = load_entry(entry, device="cpu")
    state = {k: v.detach().clone() for k, v in source.state_dict().items()}
    if noise_head_only:  # keep the noise channel of the output layer
        out = net.conv_out.out_channels
        for key in ("conv_out.weight", "conv_out.bias"):
            state[key] = state[key][:out].contiguous()
    net.load_state_dict(state)


def build_schedule(cfg: TrainConfig | ScheduleConfig):
    """The noise schedule (:class:`piddpm.diffusion.Schedule`) of a schedule section, or the
    training schedule of a configuration."""
    from piddpm.diffusion import cosine_schedule, linear_schedule

    s = cfg.schedule if isinstance(cfg, TrainConfig) else cfg
    if s.kind == "cosine":
        return cosine_schedule(s.T, s=s.cosine_s)
    return linear_schedule(s.T, s.beta_start, s.beta_end)


class EMA:
    """Exponential moving average of a network's parameters (buffers are copied).

    ``ema = d * ema + (1 - d) * param`` after each optimiser step, with
    ``d = min(decay, (1 + n) / (10 + n))`` at update ``n`` when ``warmup`` is on.
    """

    def __init__(self, net: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup, self.num_updates = float(decay), bool(warmup), 0
        self.module = copy.deepcopy(net).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay of the next update (``decay``, or less during the EMA warm-up)."""
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """Move the average towards ``net``'s parameters; copy its buffers."""
        d = self.current_decay()
        ema_p = [p for p in self.module.parameters()]
        net_p = [p.detach() for p in net.parameters()]
        torch._foreach_lerp_(ema_p, net_p, 1.0 - d)
        for eb, nb in zip(self.module.buffers(), net.buffers(), strict=True):
            eb.copy_(nb)
        self.num_updates += 1
