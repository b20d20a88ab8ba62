"""The Qwen-Image VAE decoder (diffusers' AutoencoderKLQwenImage: the Wan 2.1 VAE
architecture) for images, in MLX (NHWC), with diffusers' parameter names.

An image is one frame decoded with no history, so the causal 3-D convolutions (zero-padded
by two frames in front) reduce to 2-D 3x3 convolutions with the last temporal slice of their
kernels, and the temporal upsamplers' time convolutions never run (diffusers skips them on a
first chunk). What remains: a per-pixel RMS norm (``x / max(||x||_2, 1e-12) * sqrt(C) *
gamma``), SiLU, 3x3 convs, residual blocks with 1x1 shortcuts, single-head attention in the
middle block, nearest-2x upsamplers whose conv halves the channels, and an output clamped to
[-1, 1]. ``decoder(z)`` equals ``AutoencoderKLQwenImage.decode(z[:, :, None]).sample[:, :, 0]``
in NHWC; ``decode_latents`` first undoes the pipeline's normalisation (latents * std + mean).

The fused path normalises on load: ``pixel_norm_stats`` + ``conv3x3(pixel_norm=...)``.
"""

from __future__ import annotations

from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn

from .config import QwenImageConfig
from .decoder import ConvIn, StagedDecoder, StageTree, _conv1x1
from .nn import Conv3x3
from .ops import attention_bounded, pixel_norm_stats

RMS_EPS = 1e-12  # F.normalize's

class RMSNorm(nn.Module):
    """x / max(||x||_2 over channels, 1e-12) * sqrt(C) * gamma (no bias in the decoder)."""

    def __init__(self, dims: int):
        super().__init__()
        self.gamma = mx.ones((dims,))

    def __call__(self, x: mx.array) -> mx.array:
        x32 = x.astype(mx.float32)
        norm = mx.maximum(mx.sqrt((x32 * x32).sum(-1, keepdims=True)), RMS_EPS)
        return (x32 / norm).astype(x.dtype) * (x.shape[-1] ** 0.5) * self.gamma

    def pixel_norm_args(self, x: mx.array):
        """The (stats, gamma, beta) that conv3x3(pixel_norm=...) applies on load."""
        return pixel_norm_stats(x, RMS_EPS), self.gamma, mx.zeros_like(self.gamma)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = RMSNorm(cin)
        self.conv1 = Conv3x3(cin, cout)
        self.norm2 = RMSNorm(cout)
        self.conv2 = Conv3x3(cout, cout)
        if cin != cout:
            self.conv_shortcut = nn.Conv2d(cin, cout, 1)

    def reference(self, x: mx.array) -> mx.array:
        skip = self.conv_shortcut(x) if "conv_shortcut" in self else x
        h = self.conv1.unfused(nn.silu(self.norm1(x)))
        return self.conv2.unfused(nn.silu(self.norm2(h))) + skip

    def fused(self, x: mx.array) -> mx.array:
        h = self.conv1(x, pixel_norm=self.norm1.pixel_norm_args(x), silu=True)
        norm2 = self.norm2.pixel_norm_args(h)
        if "conv_shortcut" in self:
            sc = self.conv_shortcut
            return self.conv2(h, pixel_norm=norm2, silu=True, shortcut=(x, sc.weight, sc.get("bias")))
        return self.conv2(h, pixel_norm=norm2, silu=True, residual=x)

    def live_elements(self, px: int):
        """x (for the residual or shortcut), h and the output (the [H, W] statistics are 1/C of h)."""
        cin, cout = self.conv1.weight.shape[-1], self.conv1.weight.shape[0]
        return px * (cin + 2 * cout), px


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels, RMS norm in front, a residual."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = RMSNorm(c)
        self.to_qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        self.scores_budget = None

    def _qkv(self, x: mx.array, fused: bool):
        n, h, w, c = x.shape
        t = self.norm(x).reshape(n, h * w, c)  # at the middle block's (latent) resolution: small
        qkv = _conv1x1(self.to_qkv, t) if fused else self.to_qkv(t[:, None])[:, 0]
        return qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]

    def reference(self, x: mx.array) -> mx.array:
        q, k, v = self._qkv(x, fused=False)
        o = mx.fast.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=x.shape[-1] ** -0.5)
        return self.proj(o[:, 0][:, None])[:, 0].reshape(x.shape) + x

    def fused(self, x: mx.array) -> mx.array:
        q, k, v = self._qkv(x, fused=True)
        o = attention_bounded(q, k, v, x.shape[-1] ** -0.5, self.scores_budget)
        return _conv1x1(self.proj, o).reshape(x.shape) + x

    def live_elements(self, px: int):
        """x (for the residual), the normalised tokens, q, k, v and the output."""
        return 6 * px * self.proj.weight.shape[0], px


class Upsampler(nn.Module):
    """Nearest 2x, then a 3x3 conv that halves the channels (diffusers' `resample.1`)."""

    def __init__(self, c: int):
        super().__init__()
        self.resample = [nn.Identity(), Conv3x3(c, c // 2)]

    def reference(self, x: mx.array) -> mx.array:
        return self.resample[1].unfused(nn.Upsample(scale_factor=2, mode="nearest")(x))

    def fused(self, x: mx.array) -> mx.array:
        return self.resample[1](x, upsample=2)

    def live_elements(self, px: int):
        conv = self.resample[1].weight
        return px * conv.shape[-1] + 4 * px * conv.shape[0], 4 * px


class OutputHead:
    """norm_out -> SiLU -> conv_out -> clamp to [-1, 1], as one stage (a view of the decoder's modules)."""

    def __init__(self, norm: RMSNorm, conv: Conv3x3, clamp: bool):
        self.norm, self.conv, self.clamp = norm, conv, clamp

    def _out(self, y: mx.array) -> mx.array:
        return mx.clip(y, -1.0, 1.0) if self.clamp else y

    def reference(self, h: mx.array) -> mx.array:
        return self._out(self.conv.unfused(nn.silu(self.norm(h))))

    def fused(self, h: mx.array) -> mx.array:
        return self._out(self.conv(h, pixel_norm=self.norm.pixel_norm_args(h), silu=True))

    def live_elements(self, px: int):
        return px * (self.conv.weight.shape[-1] + self.conv.weight.shape[0]), px


class MidBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.resnets = [ResidualBlock(c, c), ResidualBlock(c, c)]
        self.attentions = [AttentionBlock(c)]


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, upsample: bool):
        super().__init__()
        self.resnets = [ResidualBlock(cin if i == 0 else cout, cout) for i in range(layers)]
        self.upsamplers = [Upsampler(cout)] if upsample else []


class Decoder3d(StageTree):
    def __init__(self, cfg: QwenImageConfig):
        super().__init__()
        dims = cfg.dims
        self.conv_in = ConvIn(cfg.z_dim, dims[0])
        self.mid_block = MidBlock(dims[0])
        self.up_blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            cin = cin // 2 if i > 0 else cin  # the previous block's upsampler halved the channels
            self.up_blocks.append(UpBlock(cin, cout, cfg.num_res_blocks + 1, i != len(cfg.dim_mult) - 1))
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = Conv3x3(dims[-1], cfg.input_channels)
        self.clamp_output = True

    def output_head(self):
        return OutputHead(self.norm_out, self.conv_out, self.clamp_output)


class QwenImageDecoder(StagedDecoder):
    """``decoder(z)`` = diffusers ``AutoencoderKLQwenImage.decode(z[:, :, None]).sample[:, :, 0]``, NHWC."""

    def __init__(self, config: QwenImageConfig):
        super().__init__()
        self.config = config
        self.latent_channels, self.upsample_factor = config.z_dim, config.upsample_factor
        self.pipeline_latent_channels = config.z_dim
        self.post_quant_conv = nn.Conv2d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)

    @property
    def clamp_output(self) -> bool:
        """Clamp the image to [-1, 1], as diffusers' decode does (True by default)."""
        return self.decoder.clamp_output

    @clamp_output.setter
    def clamp_output(self, flag: bool) -> None:
        self.decoder.clamp_output = bool(flag)

    def decode_latents(self, latents: mx.array, on_stage: Optional[Callable[[str], None]] = None) -> mx.array:
        """Undoes the pipeline's normalisation (latents * latents_std + latents_mean, per channel)
        before decoding, as QwenImagePipeline does."""
        std = mx.array(self.config.latents_std, dtype=mx.float32)
        mean = mx.array(self.config.latents_mean, dtype=mx.float32)
        return self.decode(latents.astype(mx.float32) * std + mean, on_stage)
