"""Analytic memory floor of a decode: weights + the largest set of tensors that
must be live at once (inputs still needed later + the op's output).

For the Flux/SD decoder the largest is the first resnet of the last up block at
full resolution: x (256 ch) + h (128 ch) + out (128 ch), 1 KiB per output pixel in bf16.
"""

from __future__ import annotations

import mlx.core as mx

from .config import VAEConfig


def decoder_parameter_count(cfg) -> int:
    """Parameters of the decoder of `cfg` (a VAEConfig or QwenImageConfig), from its module tree
    (built lazily: nothing is allocated)."""
    from mlx.utils import tree_flatten

    from .weights import build_decoder

    return sum(v.size for _, v in tree_flatten(build_decoder(cfg).parameters()))


def peak_live_elements(cfg, height: int, width: int, batch: int = 1) -> int:
    """Max over the decoder's stages of the activation elements that must coexist, from the
    module tree (each stage module says what its fused forward keeps alive)."""
    from .weights import build_decoder  # the decoders import nothing from here

    f = cfg.upsample_factor
    if height % f or width % f:
        raise ValueError(f"height/width: must be multiples of {f} for this config, got {height}x{width}")
    return build_decoder(cfg).decoder.peak_live_elements((height // f) * (width // f), batch)


def decoder_floor_bytes(cfg, height: int, width: int, dtype=mx.bfloat16, batch: int = 1) -> int:
    """Weights + peak live activations for decoding a batch of height x width images."""
    itemsize = mx.zeros((1,), dtype=dtype).itemsize
    return itemsize * (decoder_parameter_count(cfg) + peak_live_elements(cfg, height, width, batch))


def _conv_flops(px: int, cin: int, cout: int, k: int = 3) -> int:
    return 2 * px * cin * cout * k * k


def decoder_flops(cfg: VAEConfig, height: int, width: int, batch: int = 1) -> int:
    """Multiply-add FLOPs (2 per MAC) of the convolutions, shortcuts and attention of one decode."""
    ch = cfg.decoder_channels
    f = cfg.upsample_factor
    px = (height // f) * (width // f)
    top = ch[-1]
    total = _conv_flops(px, cfg.latent_channels, cfg.latent_channels, 1) if cfg.use_post_quant_conv else 0
    total += _conv_flops(px, cfg.latent_channels, top)
    total += 2 * 2 * _conv_flops(px, top, top)  # mid resnets
    if cfg.mid_block_add_attention:
        total += 4 * _conv_flops(px, top, top, 1) + 2 * 2 * px * px * top  # q,k,v,out + scores, weighted sum
    prev = top
    for i, c in enumerate(reversed(ch)):
        total += _conv_flops(px, prev, c) + _conv_flops(px, c, c)
        total += _conv_flops(px, prev, c, 1) if prev != c else 0
        total += cfg.layers_per_block * 2 * _conv_flops(px, c, c)
        if i < len(ch) - 1:
            px *= 4
            total += _conv_flops(px, c, c)
        prev = c
    total += _conv_flops(px, ch[0], cfg.out_channels)
    return batch * total
