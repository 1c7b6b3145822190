"""A noise-level-conditioned U-Net for (PI-)DDPM, also used unconditioned as the supervised baseline.

The network maps ``inputs (B, in_channels, H, W)`` and a noise level ``gamma (B,)`` (the
alpha-bar of the diffusion, in (0, 1]) to ``(B, out_channels, H, W)``. For PI-DDPM the input
is ``concat(r_t, x)`` (2 channels) and the output ``(eps_hat, g_hat)`` (2 channels); for plain
DDPM the output is ``eps_hat`` (1 channel); the supervised baseline is built with
``conditioned=False``, 1 -> 1 channel, and ignores ``gamma``.

Conditioning: ``gamma`` is mapped to its log signal-to-noise ratio
``log(gamma / (1 - gamma))`` (clamped to [-20, 20]), embedded with sinusoids of geometrically
spaced frequencies and an MLP, and applied as a per-channel scale and shift (FiLM) after the
second normalisation of every residual block. The log-SNR resolves the low-noise end
(``gamma`` close to 1) that ``sqrt(gamma)`` compresses.

The network is fully convolutional: it restores images of any size that is a multiple of
``downsample_factor = 2 ** (len(channel_mults) - 1)``; :func:`pad_to_multiple` and
:func:`crop_padding` handle other sizes (reflect padding).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from piddpm import PiddpmError
from piddpm.padding import PadInfo, crop_padding, pad_to_multiple

Norm = Literal["group", "instance", "layer", "none"]
#: Normalisations whose output at a pixel depends only on that pixel's channels: a network
#: built only from these (and convolutions) is translation-equivariant, so a tile's interior
#: does not depend on what else the tile holds (see :class:`ChannelLayerNorm`).
PER_PIXEL_NORMS = ("layer", "none")
Activation = Literal["silu", "softplus"]

__all__ = [
    "PER_PIXEL_NORMS",
    "PRESETS",
    "ChannelLayerNorm",
    "PadInfo",
    "UNet",
    "build_unet",
    "crop_padding",
    "load_model",
    "pad_to_multiple",
    "save_model",
]

#: Architectures by name. ``tiny`` trains on a 2-core CPU; ``small`` is ~6 M parameters;
#: ``paper`` follows the PI-DDPM paper's 5-level, 64..1024-channel U-Net (softplus,
#: instance normalisation). Any key can be overridden in :func:`build_unet`.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "base_channels": 16,
        "channel_mults": (1, 2, 4, 4),
        "num_res_blocks": 1,
        "attention_levels": (),
        "norm": "group",
        "activation": "silu",
    },
    "small": {
        "base_channels": 32,
        "channel_mults": (1, 2, 4, 4),
        "num_res_blocks": 2,
        "attention_levels": (3,),
        "norm": "group",
        "activation": "silu",
    },
    "paper": {
        "base_channels": 64,
        "channel_mults": (1, 2, 4, 8, 16),
        "num_res_blocks": 1,
        "attention_levels": (),
        "norm": "instance",
        "activation": "softplus",
        "mid_block": False,
    },
}


def _activation(name: str) -> nn.Module:
    if name == "silu":
        return nn.SiLU()
    if name == "softplus":
        return nn.Softplus()
    raise PiddpmError(f"activation {name!r} unknown; expected 'silu' or 'softplus'")


def _act_temporary(act: nn.Module, h: torch.Tensor, keep: torch.Tensor | None = None):
    """``act(h)`` for a temporary ``h``: in place when no gradient is recorded (inference;
    measured 1.1x faster per forward on a CPU), unless ``h`` is ``keep`` (a tensor still
    needed, e.g. the block input that an identity norm passed through)."""
    if isinstance(act, nn.SiLU) and not torch.is_grad_enabled() and h is not keep:
        return F.silu(h, inplace=True)
    return act(h)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel (as in ConvNeXt), with a per-channel affine.

    ``y[b, c, i, j] = (x[b, c, i, j] - mean_c x[b, :, i, j]) / sqrt(var_c x[b, :, i, j] + eps)
    * weight[c] + bias[c]``. Unlike GroupNorm, whose statistics run over the whole image, the
    output at a pixel depends only on that pixel, so restoring a tile or the whole plane gives
    the same interior values, and a background-only tile is not rescaled to look like a busy one.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = float(eps)

    def forward(
        self, x: torch.Tensor, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normalise ``x (B, C, H, W)``; with ``scale, shift (C,)`` also apply the modulation
        ``y * scale + shift`` folded into the affine (one pass instead of three)."""
        weight, bias = self.weight, self.bias
        if scale is not None:
            weight, bias = weight * scale, bias * scale + shift
        # channels to the last axis (a view for channels_last tensors), fused layer_norm there
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, self.eps)
        return y.permute(0, 3, 1, 2)


def _norm(kind: str, channels: int, num_groups: int) -> nn.Module:
    if kind == "layer":
        return ChannelLayerNorm(channels)
    if kind == "none":
        return nn.Identity()
    if kind == "group":
        groups = math.gcd(channels, num_groups)
        return nn.GroupNorm(groups, channels)
    if kind == "instance":
        # GroupNorm with one channel per group == InstanceNorm2d(affine=True), without the
        # train/eval switch of running statistics.
        return nn.GroupNorm(channels, channels)
    raise PiddpmError(
        f"norm {kind!r} unknown; expected 'group', 'instance', 'layer' (per pixel) or 'none'"
    )


class NoiseLevelEmbedding(nn.Module):
    """Embed ``gamma (B,)`` as sinusoids of the log-SNR followed by a 2-layer MLP -> (B, dim)."""

    def __init__(self, dim: int, activation: str, num_frequencies: int = 32) -> None:
        super().__init__()
        # Periods from ~2 pi * 20 (longer than the clamped log-SNR range of 40) down to ~0.06.
        freqs = torch.exp(torch.linspace(math.log(1 / 20), math.log(100.0), num_frequencies))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_frequencies, dim), _activation(activation), nn.Linear(dim, dim)
        )

    def forward(self, gamma: torch.Tensor) -> torch.Tensor:
        g = gamma.to(torch.float32).clamp(1e-12, 1.0)
        logsnr = (torch.log(g) - torch.log1p(-g.clamp(max=1 - 1e-7))).clamp(-20.0, 20.0)
        arg = logsnr[:, None] * self.freqs[None, :]
        feats = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """norm -> act -> conv -> norm -> FiLM(emb) -> act -> dropout -> conv, plus a skip."""

    def __init__(self, cin, cout, emb_dim, norm, activation, num_groups, dropout) -> None:
        super().__init__()
        self.norm1 = _norm(norm, cin, num_groups)
        self.act1 = _activation(activation)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(norm, cout, num_groups)
        self.film = nn.Linear(emb_dim, 2 * cout) if emb_dim else None
        self.act2 = _activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(_act_temporary(self.act1, self.norm1(x), keep=x))
        film = self.film(emb) if self.film is not None else None
        if film is not None and film.shape[0] == 1 and isinstance(self.norm2, ChannelLayerNorm):
            # one noise level for the whole batch (UNet.forward's shared embedding): the FiLM
            # modulation is a per-channel affine, folded into the norm's
            scale, shift = film[0].chunk(2)
            h = self.norm2(h, 1 + scale, shift)
        else:
            h = self.norm2(h)
            if film is not None:
                scale, shift = film[:, :, None, None].chunk(2, dim=1)
                h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(_act_temporary(self.act2, h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all pixels (use only at low resolution), residual."""

    def __init__(self, channels: int, heads: int, norm: str, num_groups: int) -> None:
        super().__init__()
        if channels % heads:
            raise PiddpmError(f"attention: {channels} channels not divisible by {heads} heads")
        self.heads = heads
        self.norm = _norm(norm, channels, num_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class _Level(nn.Module):
    def __init__(self, blocks: list[ResBlock], attn: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)

    def forward(self, h, emb):
        for block, attn in zip(self.blocks, self.attn, strict=True):
            h = attn(block(h, emb))
        return h


class UNet(nn.Module):
    """Noise-level-conditioned U-Net (or plain U-Net with ``conditioned=False``).

    Parameters
    ----------
    in_channels, out_channels : int
        2 -> 2 for PI-DDPM (``concat(r_t, x)`` -> ``(eps_hat, g_hat)``), 2 -> 1 for DDPM,
        1 -> 1 for the supervised baseline.
    base_channels : int
        Width at full resolution (the cost of the network is mostly there).
    channel_mults : sequence of int
        Width of level ``l`` is ``base_channels * channel_mults[l]``; level ``l`` works at
        ``1 / 2**l`` of the input resolution.
    num_res_blocks : int
        Residual blocks per level, on the way down and on the way up.
    attention_levels : sequence of int
        Levels (0-based) with a self-attention layer after each residual block; the
        bottleneck also gets one when this is non-empty.
    conditioned : bool
        False builds the network without a noise-level embedding (``gamma`` is ignored).
    norm : {"group", "instance", "layer", "none"}
        ``group`` / ``instance``: statistics over the whole image (per group of channels), so
        the output depends on everything in the tile; ``layer`` (:class:`ChannelLayerNorm`,
        per pixel) or ``none``: the network is translation-equivariant for shifts that are
        multiples of :attr:`downsample_factor`, and its output at a pixel depends only on the
        receptive field around it (:meth:`receptive_field`).
    activation : {"silu", "softplus"}
    num_groups : int
        Groups of GroupNorm (reduced to a divisor of the channel count where needed).
    attention_heads : int
    dropout : float
    emb_dim : int or None
        Width of the noise-level embedding; default ``4 * base_channels``.
    mid_block : bool
        Two residual blocks (with attention between them when ``attention_levels`` is
        non-empty) at the bottleneck; off in the ``paper`` preset, whose deepest level is
        already 1024 channels wide.

    Notes
    -----
    Input ``(B, in_channels, H, W)`` with H, W multiples of :attr:`downsample_factor`;
    ``gamma`` a tensor ``(B,)`` (or a float) in (0, 1]. Output ``(B, out_channels, H, W)``.
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 2,
        *,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (),
        conditioned: bool = True,
        norm: Norm = "group",
        activation: Activation = "silu",
        num_groups: int = 8,
        attention_heads: int = 4,
        dropout: float = 0.0,
        emb_dim: int | None = None,
        mid_block: bool = True,
    ) -> None:
        super().__init__()
        mults = tuple(int(m) for m in channel_mults)
        attention_levels = tuple(int(a) for a in attention_levels)
        if (
            in_channels < 1
            or out_channels < 1
            or base_channels < 1
            or num_res_blocks < 1
            or not mults
        ):
            raise PiddpmError(
                f"UNet needs positive in/out channels, base_channels, num_res_blocks and at least one "
                f"level; got in={in_channels}, out={out_channels}, base={base_channels}, "
                f"blocks={num_res_blocks}, mults={mults}"
            )
        if any(m < 1 for m in mults):
            raise PiddpmError(f"UNet channel_mults must be positive, got {mults}")
        if any(not 0 <= a < len(mults) for a in attention_levels):
            raise PiddpmError(
                f"UNet attention_levels {attention_levels} must lie in 0..{len(mults) - 1}"
            )
        _activation(activation), _norm(norm, 8, 8)  # validate names early
        emb_dim = int(emb_dim or 4 * base_channels) if conditioned else 0
        self.config: dict[str, Any] = {
            "in_channels": int(in_channels),
            "out_channels": int(out_channels),
            "base_channels": int(base_channels),
            "channel_mults": list(mults),
            "num_res_blocks": int(num_res_blocks),
            "attention_levels": list(attention_levels),
            "conditioned": bool(conditioned),
            "norm": norm,
            "activation": activation,
            "num_groups": int(num_groups),
            "attention_heads": int(attention_heads),
            "dropout": float(dropout),
            "emb_dim": int(emb_dim) if conditioned else None,
            "mid_block": bool(mid_block),
        }
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.conditioned = bool(conditioned)
        self.downsample_factor = 2 ** (len(mults) - 1)

        def res(cin, cout):
            return ResBlock(cin, cout, emb_dim, norm, activation, num_groups, dropout)

        def attn(level, ch):
            if level in attention_levels:
                return SelfAttention(ch, attention_heads, norm, num_groups)
            return nn.Identity()

        self.embed = NoiseLevelEmbedding(emb_dim, activation) if conditioned else None
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        widths = [base_channels * m for m in mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = base_channels
        for level, width in enumerate(widths):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(res(ch, width))
                attns.append(attn(level, width))
                ch = width
            self.down.append(_Level(blocks, attns))
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = None
        if mid_block:
            mid_attn = (
                SelfAttention(ch, attention_heads, norm, num_groups)
                if attention_levels
                else nn.Identity()
            )
            self.mid = _Level([res(ch, ch), res(ch, ch)], [mid_attn, nn.Identity()])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            blocks, attns = [], []
            for j in range(num_res_blocks):
                blocks.append(res(ch + width if j == 0 else width, width))
                attns.append(attn(level, width))
                ch = width
            self.up.append(_Level(blocks, attns))
            if level > 0:
                self.upsample.append(nn.Conv2d(ch, widths[level - 1], 3, padding=1))
                ch = widths[level - 1]
        self.norm_out = _norm(norm, ch, num_groups)
        self.act_out = _activation(activation)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(
        self, inputs: torch.Tensor, gamma: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """Apply the network: ``inputs (B, in_channels, H, W)``, ``gamma (B,)`` -> ``(B, out_channels, H, W)``."""
        if inputs.ndim != 4 or inputs.shape[1] != self.in_channels:
            raise PiddpmError(
                f"UNet input must have shape (B, {self.in_channels}, H, W), got {tuple(inputs.shape)}"
            )
        h_in, w_in = inputs.shape[-2:]
        f = self.downsample_factor
        if h_in % f or w_in % f:
            raise PiddpmError(
                f"UNet input size {h_in}x{w_in} is not a multiple of {f}; pad it with pad_to_multiple(x, {f})"
            )
        emb = None
        if self.conditioned:
            if gamma is None:
                raise PiddpmError("this UNet is noise-level conditioned: pass gamma (B,) in (0, 1]")
            gamma = torch.as_tensor(gamma, device=inputs.device, dtype=torch.float32).reshape(-1)
            if gamma.numel() == 1:
                gamma = gamma.expand(inputs.shape[0])
            if gamma.numel() != inputs.shape[0]:
                raise PiddpmError(
                    f"gamma has {gamma.numel()} entries for a batch of {inputs.shape[0]}"
                )
            if not self.training and gamma.numel() > 1 and bool((gamma == gamma[0]).all()):
                gamma = gamma[:1]  # one embedding for the batch (samplers: one step per call)
            emb = self.embed(gamma)
        h = self.conv_in(inputs)
        skips = []
        for level, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
        if self.mid is not None:
            h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(_act_temporary(self.act_out, self.norm_out(h)))

    def pad_to_multiple(self, x: torch.Tensor) -> tuple[torch.Tensor, PadInfo]:
        """Reflect-pad ``x (..., H, W)`` to a multiple of :attr:`downsample_factor`."""
        return pad_to_multiple(x, self.downsample_factor)

    @staticmethod
    def crop_padding(x: torch.Tensor, info: PadInfo) -> torch.Tensor:
        """Undo :meth:`pad_to_multiple`."""
        return crop_padding(x, info)

    @property
    def tile_invariant(self) -> bool:
        """True when the output at a pixel depends only on its receptive field (per-pixel or no
        normalisation, no self-attention): tiled and whole-plane restores then agree in the
        tile interiors."""
        return self.config["norm"] in PER_PIXEL_NORMS and not self.config["attention_levels"]

    def receptive_radius(self) -> int:
        """Radius in input pixels of the receptive field of one output pixel (3x3 convolutions,
        stride-2 down-sampling, nearest up-sampling): beyond this distance from a tile edge, a
        :attr:`tile_invariant` network gives the same output as on the whole plane."""
        cfg = self.config
        levels, blocks = len(cfg["channel_mults"]), cfg["num_res_blocks"]
        r = 1  # conv_in
        for level in range(levels):
            r += 2 * blocks * 2**level
            if level < levels - 1:
                r += 2**level  # stride-2 conv, seen at the finer level
        if cfg["mid_block"]:
            r += 4 * 2 ** (levels - 1)
        for level in reversed(range(levels)):
            r += 2 * blocks * 2**level
            if level > 0:
                r += 2 ** (level - 1)  # 3x3 conv after the nearest up-sampling
        return r + 1  # conv_out

    def num_parameters(self) -> int:
        """Number of parameters (all of them: an EMA copy has ``requires_grad`` off)."""
        return sum(p.numel() for p in self.parameters())


def build_unet(
    preset: str = "tiny",
    in_channels: int = 2,
    out_channels: int = 2,
    conditioned: bool = True,
    **overrides: Any,
) -> UNet:
    """Build a :class:`UNet` from a named preset (:data:`PRESETS`), with keyword overrides.

    Examples
    --------
    >>> pi_ddpm = build_unet("tiny")                       # concat(r_t, x) -> (eps, g)
    >>> ddpm = build_unet("tiny", 2, 1)                    # concat(r_t, x) -> eps
    >>> unet = build_unet("small", 1, 1, conditioned=False) # supervised baseline
    """
    if preset not in PRESETS:
        raise PiddpmError(f"unknown network preset {preset!r}; expected one of {sorted(PRESETS)}")
    kwargs = {**PRESETS[preset], **overrides}
    try:
        return UNet(in_channels, out_channels, conditioned=conditioned, **kwargs)
    except TypeError as exc:
        raise PiddpmError(f"bad UNet option for preset {preset!r}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# model files: safetensors weights + JSON config, never pickle

_FORMAT = "piddpm-model"
_FORMAT_VERSION = 1


def _model_paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def save_model(
    path_stem: str | Path, net: UNet, config: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``<stem>.safetensors`` (weights) and ``<stem>.json`` (architecture + ``config``).

    Parameters
    ----------
    path_stem : str or Path
        Output path without suffix (a ``.safetensors``/``.json`` suffix is stripped).
    net : UNet
    config : dict, optional
        JSON-serialisable extras stored under ``"config"`` (e.g. method, schedule config,
        training settings, data normalisation).

    Returns
    -------
    (weights_path, json_path)

    Both files are written to temporary names then renamed (atomic on one file system).
    """
    if not isinstance(net, UNet):
        raise PiddpmError(f"save_model expects a piddpm UNet, got {type(net).__name__}")
    from safetensors.torch import save_file

    weights_path, json_path = _model_paths(path_stem)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    doc = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "network": net.config,
        "num_parameters": net.num_parameters(),
        "config": config or {},
    }
    try:
        text = json.dumps(doc, indent=2, sort_keys=True)
    except TypeError as exc:
        raise PiddpmError(f"save_model: config is not JSON-serialisable ({exc})") from None
    tmp_w = weights_path.with_name(weights_path.name + ".tmp")
    tmp_j = json_path.with_name(json_path.name + ".tmp")
    save_file(
        tensors,
        str(tmp_w),
        metadata={"format": _FORMAT, "network": json.dumps(net.config, sort_keys=True)},
    )
    tmp_j.write_text(text + "\n")
    tmp_w.replace(weights_path)
    tmp_j.replace(json_path)
    return weights_path, json_path


def load_model(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[UNet, dict[str, Any]]:
    """Load a model written by :func:`save_model`.

    Parameters
    ----------
    path : str or Path
        The stem, the ``.json`` or the ``.safetensors`` file; the other is found next to it.
    device : str or torch.device

    Returns
    -------
    net : UNet
        In eval mode.
    config : dict
        The ``config`` dict given to :func:`save_model`.

    Raises
    ------
    PiddpmError
        A file is missing or unreadable, or the weights do not match the architecture in the
        JSON (missing/unexpected tensors or wrong shapes); the message names both files.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_path, json_path = _model_paths(path)
    for p in (json_path, weights_path):
        if not p.is_file():
            raise PiddpmError(
                f"model file {p} not found (a model is a .json config plus a .safetensors file)"
            )
    try:
        doc = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PiddpmError(f"model config {json_path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or "network" not in doc:
        raise PiddpmError(f"{json_path} is not a piddpm model config (expected format {_FORMAT!r})")
    if doc.get("format_version", 0) > _FORMAT_VERSION:
        raise PiddpmError(
            f"{json_path} has format_version {doc['format_version']}; this piddpm reads <= {_FORMAT_VERSION}"
        )
    try:
        net = UNet(**doc["network"])
    except (TypeError, PiddpmError) as exc:
        raise PiddpmError(f"model config {json_path}: bad network description ({exc})") from None
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise PiddpmError(f"weights file {weights_path} is unreadable: {exc}") from None
    expected = net.state_dict()
    problems = [f"missing {k}" for k in expected if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in expected]
    problems += [
        f"{k}: shape {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; ... ({len(problems)} problems)" if len(problems) > 5 else ""
        )
        raise PiddpmError(
            f"weights {weights_path} do not match the network in {json_path}: {shown}"
        )
    net.load_state_dict(tensors, strict=True)
    return net.to(device).eval(), doc.get("config", {})
