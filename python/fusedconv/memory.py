"""Analytic memory floor of a decode: weights + the largest set of tensors that
must be live at once (inputs still needed later + the op's output).

For the Flux/SD decoder the largest is the first resnet of the last up block at
full resolution: x (256 ch) + h (128 ch) + out (128 ch), 1 KiB per output pixel in bf16.
"""

from __future__ import annotations

import mlx.core as mx

from .config import VAEConfig


def _conv3x3(cin: int, cout: int) -> int:
    return 9 * cin * cout + cout


def _resnet(cin: int, cout: int) -> int:
    shortcut = cin * cout + cout if cin != cout else 0
    return 2 * cin + _conv3x3(cin, cout) + 2 * cout + _conv3x3(cout, cout) + shortcut


def decoder_parameter_count(cfg: VAEConfig) -> int:
    ch = cfg.block_out_channels
    top = ch[-1]
    n = _conv3x3(cfg.latent_channels, top)
    n += 2 * _resnet(top, top)
    if cfg.mid_block_add_attention:
        n += 2 * top + 4 * (top * top + top)
    prev = top
    for i, c in enumerate(reversed(ch)):
        n += _resnet(prev, c) + cfg.layers_per_block * _resnet(c, c)
        if i < len(ch) - 1:
            n += _conv3x3(c, c)
        prev = c
    n += 2 * ch[0] + _conv3x3(ch[0], cfg.out_channels)
    if cfg.use_post_quant_conv:
        n += cfg.latent_channels**2 + cfg.latent_channels
    return n


def peak_live_elements(cfg: VAEConfig, height: int, width: int, batch: int = 1) -> int:
    """Max over the decoder's ops of the activation elements that must coexist."""
    ch = cfg.block_out_channels
    f = cfg.upsample_factor
    if height % f or width % f:
        raise ValueError(f"height/width: must be multiples of {f} for this config, got {height}x{width}")
    px = (height // f) * (width // f)
    top = ch[-1]
    live = [px * (cfg.latent_channels + top)]  # conv_in
    live.append(px * 3 * top)  # mid resnets: x (residual), h, out
    if cfg.mid_block_add_attention:
        live.append(px * 5 * top)  # x (residual), q, k, v, out
    prev = top
    for i, c in enumerate(reversed(ch)):
        live.append(px * (prev + 2 * c))  # first resnet: x (for the shortcut), h, out
        live.append(px * 3 * c)  # further resnets: x (residual), h, out
        if i < len(ch) - 1:
            live.append(px * c + 4 * px * c)  # upsampler: x, out at 2x
            px *= 4
        prev = c
    live.append(px * (ch[0] + cfg.out_channels))  # conv_out
    return batch * max(live)


def decoder_floor_bytes(cfg: VAEConfig, height: int, width: int, dtype=mx.bfloat16, batch: int = 1) -> int:
    """Weights + peak live activations for decoding a batch of height x width images."""
    itemsize = mx.zeros((1,), dtype=dtype).itemsize
    return itemsize * (decoder_parameter_count(cfg) + peak_live_elements(cfg, height, width, batch))


def _conv_flops(px: int, cin: int, cout: int, k: int = 3) -> int:
    return 2 * px * cin * cout * k * k


def decoder_flops(cfg: VAEConfig, height: int, width: int, batch: int = 1) -> int:
    """Multiply-add FLOPs (2 per MAC) of the convolutions, shortcuts and attention of one decode."""
    ch = cfg.block_out_channels
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
