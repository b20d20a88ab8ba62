"""mflux drop-in: decode through fusedconv's fused ops.

    from fusedconv.integrations import mflux as fused_mflux
    fused_mflux.patch()      # every mflux Flux / Z-Image VAE now decodes with the fused ops
    fused_mflux.unpatch()    # back to mflux's own decoder

Covered (mflux 0.24): ``decode`` of the FLUX.1 VAE (mflux.models.flux), the Z-Image VAE
(mflux.models.z_image), the FLUX.2 VAE (mflux.models.flux2: the flux2, flux3, ernie_image,
fibo2, ideogram4, lens and moss_image families, and the FLUX.2 small decoder, whose widths are
read from the mflux decoder) and the Qwen-Image VAE (mflux.models.qwen's QwenVAE, which the
qwen, anima and krea2 families use, and ming_image's RGBA MingVAE), so every path that ends in
``vae.decode`` - plain generation, FLUX.2's ``decode_packed_latents`` and mflux's tiled decode
(each tile goes through ``decode``) - is fused; the block-decoder modes (``decode_mode``
low_memory / full_precision) are replaced by the full-frame fused decode, which needs no
strips. Qwen-Image decodes one frame (images); mflux's video VAEs (Wan, SeedVR2) are not
covered.

The fused decoder shares the mflux decoder's weight arrays (no copy): mflux's conv
wrappers (conv_in.conv2d, conv_norm_out.norm, ...) are the only names that differ from
diffusers'. It is built from the VAE's current arrays at every decode (a few
milliseconds), so it cannot go stale when mflux's weights change; the layers mflux
quantized (``-q 8`` / ``-q 4`` quantize the attention's Linear layers) are quantized the
same way and run as mflux runs them.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import replace
from typing import Dict, List, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..config import PRESETS, QwenImageConfig, VAEConfig
from ..decoder import AutoencoderKLDecoder
from ..qwen_image import QwenImageDecoder

# (module, class, preset, whether decode returns a frame axis [B, C, 1, H, W]) of each
# covered mflux VAE.
COVERED = [
    ("mflux.models.flux.model.flux_vae.vae", "VAE", "flux", True),
    ("mflux.models.z_image.model.z_image_vae.vae", "VAE", "z-image", True),
    ("mflux.models.flux2.model.flux2_vae.vae", "Flux2VAE", "flux2", False),
    ("mflux.models.qwen.model.qwen_vae.qwen_vae", "QwenVAE", "qwen-image", True),
    ("mflux.models.ming_image.model.ming_vae.ming_vae", "MingVAE", "qwen-image", True),
]

_originals: Dict[type, object] = {}


# mflux wraps three decoder layers in modules of its own, and FLUX.2's attention output
# projection is not a list; everything else has diffusers' names.
_MFLUX_WRAPPERS = {
    "conv_in.conv2d.": "conv_in.",
    "conv_in.conv.": "conv_in.",
    "conv_out.conv2d.": "conv_out.",
    "conv_out.conv.": "conv_out.",
    "conv_norm_out.norm.": "conv_norm_out.",
}
_FLUX2_ATTENTION_OUT = re.compile(r"^(mid_block\.attentions\.\d+\.)to_out(\.(?:weight|bias|scales|biases))?$")


def _diffusers_name(mflux_key: str) -> str:
    """mflux decoder parameter name -> fusedconv's (diffusers') name."""
    for wrapped, plain in _MFLUX_WRAPPERS.items():
        if mflux_key.startswith(wrapped):
            return plain + mflux_key[len(wrapped) :]
    return _FLUX2_ATTENTION_OUT.sub(r"\1to_out.0\2", mflux_key)


def _config(vae, preset: str) -> VAEConfig:
    """The preset, with the decoder widths of this mflux decoder (FLUX.2's small decoder)."""
    widths = tuple(reversed([block.resnets[-1].conv2.weight.shape[0] for block in vae.decoder.up_blocks]))
    cfg = PRESETS[preset]
    return cfg if widths == cfg.decoder_channels else replace(cfg, decoder_block_out_channels=widths)


def fused_decoder_for(vae, preset: str) -> AutoencoderKLDecoder:
    """A fused decoder that shares `vae.decoder`'s arrays (quantized layers included)."""
    quantized = {
        "decoder." + _diffusers_name(path): {"group_size": m.group_size, "bits": m.bits, "mode": m.mode}
        for path, m in vae.decoder.named_modules() if isinstance(m, nn.QuantizedLinear)
    }
    cfg = _config(vae, preset)
    dec = AutoencoderKLDecoder(cfg)
    if quantized:
        nn.quantize(dec, class_predicate=lambda path, m: quantized.get(path, False))
    weights: List[Tuple[str, mx.array]] = [
        ("decoder." + _diffusers_name(k), v) for k, v in tree_flatten(vae.decoder.parameters())
    ]
    if cfg.use_post_quant_conv:
        weights += [("post_quant_conv." + k, v) for k, v in tree_flatten(vae.post_quant_conv.parameters())]
    if cfg.latents_batch_norm:  # not used by decode; shared so that the tree loads strictly
        weights += [("bn.running_mean", vae.bn.running_mean), ("bn.running_var", vae.bn.running_var)]
    dec.load_weights(weights, strict=True)
    return dec


# mflux's Qwen-Image decoder: causal 3-D convs (MLX layout [O, T, H, W, I]; one frame with no
# history uses the last temporal slice), norms with `weight` [C, 1, 1, 1] for diffusers' gamma.
_QWEN_NAMES = [
    (re.compile(r"\.up_block(\d+)\."), r".up_blocks.\1."),
    (re.compile(r"\.skip_conv\."), ".conv_shortcut."),
    (re.compile(r"\.resample_conv\."), ".resample.1."),
    (re.compile(r"\.conv3d\."), "."),
    (re.compile(r"(norm\d?|norm_out|\.norm)\.weight$"), r"\1.gamma"),
]


def qwen_decoder_for(vae) -> QwenImageDecoder:
    """A fused Qwen-Image decoder on `vae`'s arrays (the 3x3 kernels as their last temporal slice)."""
    channels = vae.decoder.conv_out.conv3d.weight.shape[0]
    dec = QwenImageDecoder(QwenImageConfig(input_channels=channels))
    dec.clamp_output = False  # mflux's own decode returns the unclamped output
    weights = []
    for k, v in tree_flatten({"decoder": vae.decoder.parameters(), "post_quant_conv": vae.post_quant_conv.parameters()}):
        if ".time_conv." in k:  # temporal upsampling: never runs on a first frame
            continue
        for pattern, repl in _QWEN_NAMES:
            k = pattern.sub(repl, k)
        if v.ndim == 5:
            v = v[:, -1]
        elif k.endswith(".gamma"):
            v = v.reshape(-1)
        weights.append((k, v))
    dec.load_weights(weights, strict=True)
    return dec


def _qwen_latents(vae, latents: mx.array) -> mx.array:
    """mflux's latent normalisation undone: MingVAE's single scale, else Qwen-Image's mean / std."""
    if hasattr(vae, "SCALING_FACTOR"):
        return latents / vae.SCALING_FACTOR
    return latents * mx.array(vae.LATENTS_STD) + mx.array(vae.LATENTS_MEAN)


def _fused_decode(preset: str, frame_axis: bool):
    def decode(self, latents: mx.array) -> mx.array:
        if latents.ndim == 5:
            latents = latents[:, :, 0, :, :]
        latents = latents.transpose(0, 2, 3, 1)
        if preset == "qwen-image":
            image = qwen_decoder_for(self).decode(_qwen_latents(self, latents))
        else:
            image = fused_decoder_for(self, preset).decode(latents / self.scaling_factor + self.shift_factor)
        image = image.transpose(0, 3, 1, 2)
        return image[:, :, None, :, :] if frame_axis else image

    decode.__doc__ = f"fusedconv's fused decode (patched in by fusedconv.integrations.mflux, preset {preset!r})."
    return decode


def patch() -> List[str]:
    """Makes the covered mflux VAEs decode through fusedconv. Returns the patched classes.
    Every module is imported before any class is patched: a failed import patches nothing."""
    classes = [(getattr(importlib.import_module(m), c), f"{m}.{c}", preset, frames)
               for m, c, preset, frames in COVERED]
    for cls, _, preset, frames in classes:
        if cls not in _originals:
            _originals[cls] = cls.decode
            cls.decode = _fused_decode(preset, frames)
    return [name for _, name, _, _ in classes]


def unpatch() -> None:
    """Restores mflux's own decoders."""
    for cls, original in _originals.items():
        cls.decode = original
    _originals.clear()
