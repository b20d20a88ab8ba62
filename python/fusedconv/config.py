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
    # FLUX.2 (AutoencoderKLFlux2): the decoder may be narrower than the encoder, and the
    # pipeline's latents are 2x2-patchified and normalised by BatchNorm running statistics
    # (`bn` in the checkpoint) that decode_latents undoes before decoding.
    decoder_block_out_channels: Optional[Tuple[int, ...]] = None
    latents_batch_norm: bool = False
    batch_norm_eps: float = 1e-4

    @classmethod
    def from_dict(cls, d: Mapping) -> "VAEConfig":
        """From a diffusers config.json dict (unknown keys, e.g. the encoder's, are ignored)."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known and v is not None}
        for key in ("block_out_channels", "decoder_block_out_channels"):
            if key in kw:
                kw[key] = tuple(kw[key])
        if d.get("_class_name") == "AutoencoderKLFlux2":
            kw["latents_batch_norm"] = True
        return cls(**kw)

    @property
    def decoder_channels(self) -> Tuple[int, ...]:
        return self.decoder_block_out_channels or self.block_out_channels

    @property
    def upsample_factor(self) -> int:
        return 2 ** (len(self.decoder_channels) - 1)


# The Qwen-Image pipeline's latent statistics (diffusers' AutoencoderKLQwenImage defaults).
QWEN_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,
                     0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
QWEN_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,
                    1.5579, 1.6382, 1.1253, 2.8251, 1.916)


@dataclass(frozen=True)
class QwenImageConfig:
    """diffusers' AutoencoderKLQwenImage config.json fields that the decoder uses."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: Tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    input_channels: int = 3  # the image's channels (diffusers' name; 4 in mflux's RGBA Ming-Image)
    latents_mean: Tuple[float, ...] = QWEN_LATENTS_MEAN
    latents_std: Tuple[float, ...] = QWEN_LATENTS_STD

    @classmethod
    def from_dict(cls, d: Mapping) -> "QwenImageConfig":
        known = {f.name for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known and v is not None}
        return cls(**kw)

    @property
    def dims(self) -> Tuple[int, ...]:
        """Channels entering the middle block, then leaving each up block."""
        return tuple(self.base_dim * u for u in (self.dim_mult[-1], *reversed(self.dim_mult)))

    @property
    def upsample_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)


def config_from_dict(d: Mapping) -> Union[VAEConfig, "QwenImageConfig"]:
    """A diffusers config.json dict: AutoencoderKLQwenImage's (by class name or its fields)
    or AutoencoderKL / AutoencoderKLFlux2's."""
    if d.get("_class_name") == "AutoencoderKLQwenImage" or ("z_dim" in d and "base_dim" in d):
        return QwenImageConfig.from_dict(d)
    return VAEConfig.from_dict(d)


# Published values of each model family's VAE config.
PRESETS = {
    "sd1": VAEConfig(latent_channels=4, scaling_factor=0.18215),
    "sd2": VAEConfig(latent_channels=4, scaling_factor=0.18215),
    "sdxl": VAEConfig(latent_channels=4, scaling_factor=0.13025),
    "sd3": VAEConfig(latent_channels=16, use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609),
    "flux": VAEConfig(latent_channels=16, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159),
    # Z-Image ships the Flux VAE.
    "z-image": VAEConfig(latent_channels=16, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159),
    # FLUX.2 (also mflux's flux3, ernie_image, fibo2, ideogram4, lens, moss_image families), and
    # its small decoder (FLUX.2 Klein's 96/192/384/384 decoder on the same latents).
    "flux2": VAEConfig(latent_channels=32, scaling_factor=1.0, shift_factor=0.0, latents_batch_norm=True),
    "flux2-small": VAEConfig(latent_channels=32, scaling_factor=1.0, shift_factor=0.0, latents_batch_norm=True,
                             decoder_block_out_channels=(96, 192, 384, 384)),
    # Qwen-Image (also mflux's anima, krea2 and ming families): the Wan 2.1 VAE, decoded a frame at a time.
    "qwen-image": QwenImageConfig(),
}


def resolve_config(config):
    """A preset name, a config.json dict or a config -> the config (None stays None)."""
    if config is None or isinstance(config, (VAEConfig, QwenImageConfig)):
        return config
    if isinstance(config, str):
        key = config.lower()
        if key not in PRESETS:
            raise ValueError(f"config: unknown preset {config!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[key]
    if isinstance(config, Mapping):
        return config_from_dict(config)
    raise TypeError(f"config: expected a preset name, a dict or a VAEConfig, got {type(config).__name__}")
