"""AutoencoderKL decoder in MLX with diffusers' structure and parameter names (NHWC).

One parameter tree drives two paths: the reference path (plain mlx.nn ops: GroupNorm,
SiLU, Upsample, Conv2d, full attention) and the fused path (group_norm_stats + conv3x3 with
norm/SiLU/upsample/residual/shortcut fused; attention that never holds its score matrix: a
flash-style primitive on the CPU, query chunks on the GPU). ``set_fused`` switches in place.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn

from .config import VAEConfig
from .memory import peak_live_elements
from .nn import Conv3x3, GroupNorm
from .ops import attention, linear

EPS = 1e-6
# Default bound on the attention scores (and softmax) held at once.
ATTENTION_SCORES_BUDGET = 64 * 2**20


def _on_cpu() -> bool:
    return mx.default_device() == mx.cpu


def _linear(layer: nn.Module, x: mx.array) -> mx.array:
    """nn.Linear through fusedconv.linear on the CPU (MLX's Linux CPU matmul runs at a few GFLOP/s);
    a quantized layer (mflux's -q) runs as itself."""
    if _on_cpu() and not isinstance(layer, nn.QuantizedLinear):
        return linear(x, layer.weight, layer.get("bias"))
    return layer(x)


def _conv1x1(conv: nn.Conv2d, x: mx.array) -> mx.array:
    """1x1 conv as one matmul: no im2col, only the output is allocated."""
    weight = conv.weight.reshape(conv.weight.shape[0], -1)
    if _on_cpu():
        return linear(x, weight, conv.get("bias"))
    return x @ weight.T + conv.bias


class ResnetBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = GroupNorm(groups, cin, eps=EPS)
        self.conv1 = Conv3x3(cin, cout)
        self.norm2 = GroupNorm(groups, cout, eps=EPS)
        self.conv2 = Conv3x3(cout, cout)
        if cin != cout:
            self.conv_shortcut = nn.Conv2d(cin, cout, 1)

    def __call__(self, x: mx.array, fused: bool) -> mx.array:
        has_shortcut = "conv_shortcut" in self
        if not fused:
            h = self.conv1.unfused(nn.silu(self.norm1(x)))
            h = self.conv2.unfused(nn.silu(self.norm2(h)))
            return (self.conv_shortcut(x) if has_shortcut else x) + h
        h = self.conv1(x, norm=self.norm1.norm_args(x), silu=True)
        norm2 = self.norm2.norm_args(h)
        if has_shortcut:  # the 1x1 shortcut runs inside conv2: only x, h and the output live
            sc = self.conv_shortcut
            return self.conv2(h, norm=norm2, silu=True, shortcut=(x, sc.weight, sc.get("bias")))
        return self.conv2(h, norm=norm2, silu=True, residual=x)


class Attention(nn.Module):
    """Single-head self-attention over pixels with a GroupNorm in front and a residual."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.group_norm = GroupNorm(groups, c, eps=EPS)
        self.to_q = nn.Linear(c, c)
        self.to_k = nn.Linear(c, c)
        self.to_v = nn.Linear(c, c)
        self.to_out = [nn.Linear(c, c)]

    def __call__(self, x: mx.array, fused: bool, scores_budget: int) -> mx.array:
        n, h, w, c = x.shape
        t = self.group_norm(x).reshape(n, h * w, c)
        scale = 1.0 / math.sqrt(c)
        if not fused:
            q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
            o = mx.fast.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)[:, 0]
            return self.to_out[0](o).reshape(n, h, w, c) + x
        q, k, v = _linear(self.to_q, t), _linear(self.to_k, t), _linear(self.to_v, t)
        if _on_cpu():
            o = attention(q, k, v, scale)  # flash-style CPU primitive: no scores in memory
        else:
            o = chunked_attention(q, k, v, scale, scores_budget)
        return _linear(self.to_out[0], o).reshape(n, h, w, c) + x


def attention_query_chunk(batch: int, tokens: int, itemsize: int, scores_budget: int) -> int:
    """Query rows per chunk so that scores + probabilities (+ the f32 softmax) fit the budget."""
    per_row = batch * tokens * (2 * itemsize + 4)
    return max(1, min(tokens, scores_budget // per_row))


def chunked_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, scores_budget: int) -> mx.array:
    """softmax(q k^T * scale) v, a block of query rows at a time: never tokens x tokens scores."""
    tokens = q.shape[1]
    rows = attention_query_chunk(q.shape[0], k.shape[1], q.itemsize, scores_budget)
    kt = k.transpose(0, 2, 1)
    outs = []
    for r0 in range(0, tokens, rows):
        s = (q[:, r0 : r0 + rows] * scale) @ kt
        outs.append(mx.softmax(s, axis=-1, precise=True) @ v)
        # Evaluate chunk by chunk: left lazy, MLX allocates the next chunks' scores
        # before the CPU stream has freed the previous ones.
        mx.eval(outs[-1])
    return outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=1)


class MidBlock(nn.Module):
    def __init__(self, c: int, groups: int, add_attention: bool):
        super().__init__()
        self.resnets = [ResnetBlock2D(c, c, groups), ResnetBlock2D(c, c, groups)]
        self.attentions = [Attention(c, groups)] if add_attention else []

    def __call__(self, x: mx.array, fused: bool, scores_budget: int) -> mx.array:
        x = self.resnets[0](x, fused)
        for attn in self.attentions:
            x = attn(x, fused, scores_budget)
        return self.resnets[1](x, fused)


class Upsample2D(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = Conv3x3(c, c)

    def __call__(self, x: mx.array, fused: bool) -> mx.array:
        if fused:
            return self.conv(x, upsample=2)
        return self.conv.unfused(nn.Upsample(scale_factor=2, mode="nearest")(x))


class UpDecoderBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, add_upsample: bool):
        super().__init__()
        self.resnets = [ResnetBlock2D(cin if i == 0 else cout, cout, groups) for i in range(layers)]
        self.upsamplers = [Upsample2D(cout)] if add_upsample else []

    def __call__(self, x: mx.array, fused: bool) -> mx.array:
        for r in self.resnets:
            x = r(x, fused)
        for u in self.upsamplers:
            x = u(x, fused)
        return x


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, groups = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = Conv3x3(cfg.latent_channels, ch[-1])
        self.mid_block = MidBlock(ch[-1], groups, cfg.mid_block_add_attention)
        rev = list(reversed(ch))
        self.up_blocks = [
            UpDecoderBlock2D(rev[max(i - 1, 0)], c, cfg.layers_per_block + 1, groups, i < len(ch) - 1)
            for i, c in enumerate(rev)
        ]
        self.conv_norm_out = GroupNorm(groups, ch[0], eps=EPS)
        self.conv_out = Conv3x3(ch[0], cfg.out_channels)

    def stages(self, fused: bool, scores_budget: int):
        """The decode as (name, fn) stages, each a function of the previous output.

        One stage per resnet / attention / upsampler: evaluating between stages keeps
        only a stage's input, its intermediates and its output alive (MLX's CPU stream
        otherwise allocates far ahead of the computation).
        """
        def tail(h):
            if fused:
                return self.conv_out(h, norm=self.conv_norm_out.norm_args(h), silu=True)
            return self.conv_out.unfused(nn.silu(self.conv_norm_out(h)))

        mid = self.mid_block
        out = [("conv_in", lambda z: self.conv_in(z) if fused else self.conv_in.unfused(z))]
        out.append(("mid_block.resnets.0", lambda h: mid.resnets[0](h, fused)))
        out += [(f"mid_block.attentions.{i}", lambda h, a=a: a(h, fused, scores_budget))
                for i, a in enumerate(mid.attentions)]
        out.append(("mid_block.resnets.1", lambda h: mid.resnets[1](h, fused)))
        for i, block in enumerate(self.up_blocks):
            out += [(f"up_blocks.{i}.resnets.{j}", lambda h, r=r: r(h, fused)) for j, r in enumerate(block.resnets)]
            out += [(f"up_blocks.{i}.upsamplers.0", lambda h, u=u: u(h, fused)) for u in block.upsamplers]
        out.append(("conv_out", tail))
        return out


class AutoencoderKLDecoder(nn.Module):
    """``decoder(z)`` = diffusers ``AutoencoderKL.decode(z).sample`` in NHWC (z unscaled)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        if config.use_post_quant_conv:
            self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)
        self.decoder = Decoder(config)
        self.fused = True
        self.attention_scores_budget = ATTENTION_SCORES_BUDGET

    def set_fused(self, flag: bool = True) -> "AutoencoderKLDecoder":
        """Fused ops (True, the default) or the plain mlx.nn reference path (False)."""
        self.fused = bool(flag)
        return self

    def _check_latent(self, z: mx.array) -> None:
        if not isinstance(z, mx.array):
            raise TypeError(f"z: expected an mlx.core.array, got {type(z).__name__}")
        if z.ndim != 4 or z.shape[-1] != self.config.latent_channels:
            raise ValueError(
                f"z: expected NHWC latents [N, h, w, {self.config.latent_channels}] for this config, got {z.shape}"
            )

    def stages(self):
        return self.decoder.stages(self.fused, self.attention_scores_budget)

    def check_memory(self, z: mx.array) -> None:
        """Refuses a decode whose analytic floor (the activations that must coexist; the
        weights are already loaded) exceeds what MLX may still allocate, before any work,
        and names the smaller plans that would fit."""
        n, h, w, _ = z.shape
        f = self.config.upsample_factor
        itemsize = self.decoder.conv_in.weight.itemsize
        need = itemsize * peak_live_elements(self.config, h * f, w * f, n)
        free = mx.get_memory_limit() - mx.get_active_memory()
        if need <= free:
            return
        plans = []
        if n > 1 and need // n <= free:
            plans.append("decode one image at a time")
        if itemsize == 4 and need // 2 <= free:
            plans.append("load the decoder in bfloat16 (dtype=mx.bfloat16)")
        hint = f"; would fit: {' or '.join(plans)}" if plans else ""
        raise MemoryError(f"z: decoding {n} image(s) of {h * f}x{w * f} needs at least {need / 2**30:.2f} GiB of "
                          f"activations, more than the {max(free, 0) / 2**30:.2f} GiB MLX may still allocate "
                          f"(mx.get_memory_limit() minus active memory){hint}")

    def decode(self, z: mx.array, on_stage: Optional[Callable[[str], None]] = None) -> mx.array:
        """Decodes stage by stage, evaluating each (bounds the lazy graph, reports progress)."""
        self._check_latent(z)
        self.check_memory(z)
        h = z.astype(self.decoder.conv_in.weight.dtype)
        if "post_quant_conv" in self:
            h = _conv1x1(self.post_quant_conv, h) if self.fused else self.post_quant_conv(h)
        for name, stage in self.stages():
            h = stage(h)
            mx.eval(h)
            if on_stage is not None:
                on_stage(name)
        return h

    def __call__(self, z: mx.array) -> mx.array:
        return self.decode(z)

    def decode_latents(self, latents: mx.array, on_stage: Optional[Callable[[str], None]] = None) -> mx.array:
        """Undoes the pipeline's latent scaling (and shift) before decoding."""
        z = latents / self.config.scaling_factor
        if self.config.shift_factor is not None:
            z = z + self.config.shift_factor
        return self.decode(z, on_stage)
