"""The AutoencoderKL decoder API: model, configs and presets, weight loading, memory floor."""

from .config import PRESETS, QwenImageConfig, VAEConfig
from .decoder import AutoencoderKLDecoder
from .qwen_image import QwenImageDecoder
from .memory import decoder_floor_bytes, decoder_parameter_count
from .weights import build_decoder, load_decoder, load_state

__all__ = [
    "PRESETS",
    "VAEConfig",
    "AutoencoderKLDecoder",
    "QwenImageConfig",
    "QwenImageDecoder",
    "decoder_floor_bytes",
    "decoder_parameter_count",
    "build_decoder",
    "load_decoder",
    "load_state",
]
