"""The AutoencoderKL decoder API: model, configs and presets, weight loading, memory floor."""

from .config import PRESETS, VAEConfig
from .decoder import AutoencoderKLDecoder
from .memory import decoder_floor_bytes, decoder_parameter_count
from .weights import load_decoder, load_state

__all__ = [
    "PRESETS",
    "VAEConfig",
    "AutoencoderKLDecoder",
    "decoder_floor_bytes",
    "decoder_parameter_count",
    "load_decoder",
    "load_state",
]
