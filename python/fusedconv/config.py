"""AutoencoderKL decoder configurations (diffusers' config.json field names)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping, Optional, Tuple, Union


@dataclass(frozen=True)
class VAEConfig:
    latent_channels: int = 4
    out_channels: int = 3
    block_out_channels: Tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    scaling_factor: float = 0.18215
    shift_factor: Optional[float] = None

    @classmethod
    def from_dict(cls, d: Mapping) -> "VAEConfig":
        """From a diffusers config.json dict (unknown keys, e.g. the encoder's, are ignored)."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known and v is not None}
        if "block_out_channels" in kw:
            kw["block_out_channels"] = tuple(kw["block_out_channels"])
        return cls(**kw)

    @property
    def upsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


# Published values of each model family's VAE config.
PRESETS = {
    "sd1": VAEConfig(latent_channels=4, scaling_factor=0.18215),
    "sd2": VAEConfig(latent_channels=4, scaling_factor=0.18215),
    "sdxl": VAEConfig(latent_channels=4, scaling_factor=0.13025),
    "sd3": VAEConfig(latent_channels=16, use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609),
    "flux": VAEConfig(latent_channels=16, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159),
    # Z-Image ships the Flux VAE.
    "z-image": VAEConfig(latent_channels=16, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159),
}


def resolve_config(config: Union[None, str, Mapping, VAEConfig]) -> Optional[VAEConfig]:
    if config is None or isinstance(config, VAEConfig):
        return config
    if isinstance(config, str):
        key = config.lower()
        if key not in PRESETS:
            raise ValueError(f"config: unknown preset {config!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[key]
    if isinstance(config, Mapping):
        return VAEConfig.from_dict(config)
    raise TypeError(f"config: expected a preset name, a dict or a VAEConfig, got {type(config).__name__}")
