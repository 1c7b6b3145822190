"""Neural networks: the noise-level-conditioned U-Net, its presets and model files.

See ``docs/architecture.md`` (contract) and ``docs/diffusion.md`` (how they are used).
"""

from piddpm.networks.unet import (
    PRESETS,
    PadInfo,
    UNet,
    build_unet,
    crop_padding,
    load_model,
    pad_to_multiple,
    save_model,
)

__all__ = [
    "PRESETS",
    "PadInfo",
    "UNet",
    "build_unet",
    "crop_padding",
    "load_model",
    "pad_to_multiple",
    "save_model",
]
