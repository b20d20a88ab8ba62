"""AutoencoderKL decoder in MLX with diffusers' structure and parameter names (NHWC).

One parameter tree drives two paths: the reference path (plain mlx.nn ops: GroupNorm,
SiLU, Upsample, Conv2d, full attention) and the fused path (group_norm_stats + conv3x3 with
norm/SiLU/upsample/residual/shortcut fused; attention that never holds its score matrix).
The same fused path runs on every backend: an op without a kernel on the stream's backend
runs as its reference composition (fusedconv.ops). ``set_fused`` switches in place.
"""

from __future__ import annotations

from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn

from .config import VAEConfig
from .nn import Conv3x3, GroupNorm
from .ops import ATTENTION_SCORES_BUDGET, attention_bounded, composition_is_faster, linear

EPS = 1e-6


def _linear(layer: nn.Module, x: mx.array) -> mx.array:
    """nn.Linear through fusedconv.linear (MLX's Linux CPU matmul runs at a few GFLOP/s; on a
    GPU it is MLX's matmul); a quantized layer (mflux's -q) runs as itself."""
    if isinstance(layer, nn.QuantizedLinear):
        return layer(x)
    return linear(x, layer.weight, layer.get("bias"))


def _conv1x1(conv: nn.Conv2d, x: mx.array) -> mx.array:
    """1x1 conv as one matmul: no im2col, only the output is allocated."""
    return linear(x, conv.weight.reshape(conv.weight.shape[0], -1), conv.get("bias"))


# Each stage module below has two forwards over the same parameters: `reference` (plain
# mlx.nn ops, as diffusers' forward) and `fused` (fusedconv's ops). Decoder.stages picks
# one of them per decode; nothing else knows which path runs.


class ResnetBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = GroupNorm(groups, cin, eps=EPS)
        self.conv1 = Conv3x3(cin, cout)
        self.norm2 = GroupNorm(groups, cout, eps=EPS)
        self.conv2 = Conv3x3(cout, cout)
        if cin != cout:
            self.conv_shortcut = nn.Conv2d(cin, cout, 1)

    def reference(self, x: mx.array) -> mx.array:
        h = self.conv1.unfused(nn.silu(self.norm1(x)))
        h = self.conv2.unfused(nn.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if "conv_shortcut" in self else x) + h

    def fused(self, x: mx.array) -> mx.array:
        h = self.conv1(x, norm=self.norm1.norm_args(x), silu=True)
        norm2 = self.norm2.norm_args(h)
        if "conv_shortcut" in self:  # the 1x1 shortcut runs inside conv2: only x, h and the output live
            sc = self.conv_shortcut
            return self.conv2(h, norm=norm2, silu=True, shortcut=(x, sc.weight, sc.get("bias")))
        return self.conv2(h, norm=norm2, silu=True, residual=x)

    def live_elements(self, px: int):
        """(elements alive at once in the fused forward, output pixels): x (for the residual or
        shortcut), h and the output."""
        cin, cout = self.conv1.weight.shape[-1], self.conv1.weight.shape[0]
        return px * (cin + 2 * cout), px

    def composed_live_elements(self, px: int):
        """(input channels, elements alive at once in the reference forward): x, and a composed
        conv's normalised / SiLU'd temporaries and output, measured on the H200 at 3x its input
        above the inputs (bench/reports/h200/2026-12-03/ops_1024_bfloat16.json); counted as 4x."""
        cin, cout = self.conv1.weight.shape[-1], self.conv1.weight.shape[0]
        return cin, px * (cin + 4 * max(cin, cout) + cout)


class Attention(nn.Module):
    """Single-head self-attention over pixels with a GroupNorm in front and a residual."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.group_norm = GroupNorm(groups, c, eps=EPS)
        self.to_q = nn.Linear(c, c)
        self.to_k = nn.Linear(c, c)
        self.to_v = nn.Linear(c, c)
        self.to_out = [nn.Linear(c, c)]
        self.scores_budget = ATTENTION_SCORES_BUDGET

    def _tokens(self, x: mx.array) -> mx.array:
        n, h, w, c = x.shape
        return self.group_norm(x).reshape(n, h * w, c)

    def reference(self, x: mx.array) -> mx.array:
        t = self._tokens(x)
        q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
        o = mx.fast.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=x.shape[-1] ** -0.5)
        return self.to_out[0](o[:, 0]).reshape(x.shape) + x

    def fused(self, x: mx.array) -> mx.array:
        t = self._tokens(x)
        q, k, v = _linear(self.to_q, t), _linear(self.to_k, t), _linear(self.to_v, t)
        o = attention_bounded(q, k, v, x.shape[-1] ** -0.5, self.scores_budget)
        return _linear(self.to_out[0], o).reshape(x.shape) + x

    def live_elements(self, px: int):
        """x (for the residual), q, k, v and the output."""
        return 5 * px * self.to_q.weight.shape[0], px


class Upsample2D(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = Conv3x3(c, c)

    def reference(self, x: mx.array) -> mx.array:
        return self.conv.unfused(nn.Upsample(scale_factor=2, mode="nearest")(x))

    def fused(self, x: mx.array) -> mx.array:
        return self.conv(x, upsample=2)

    def live_elements(self, px: int):
        """x and the output at 2x."""
        return 5 * px * self.conv.weight.shape[0], 4 * px

    def composed_live_elements(self, px: int):
        """x, the upsampled input and the conv's output at 2x (measured: twice the output above
        the input; counted as three times)."""
        c = self.conv.weight.shape[-1]
        return c, px * c * 13


class ConvIn(Conv3x3):
    def reference(self, z: mx.array) -> mx.array:
        return self.unfused(z)

    def fused(self, z: mx.array) -> mx.array:
        return self(z)

    def live_elements(self, px: int):
        return px * (self.weight.shape[-1] + self.weight.shape[0]), px


class MidBlock(nn.Module):
    def __init__(self, c: int, groups: int, add_attention: bool):
        super().__init__()
        self.resnets = [ResnetBlock2D(c, c, groups), ResnetBlock2D(c, c, groups)]
        self.attentions = [Attention(c, groups)] if add_attention else []


class UpDecoderBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, add_upsample: bool):
        super().__init__()
        self.resnets = [ResnetBlock2D(cin if i == 0 else cout, cout, groups) for i in range(layers)]
        self.upsamplers = [Upsample2D(cout)] if add_upsample else []


class OutputHead:
    """conv_norm_out -> SiLU -> conv_out as one stage (a view: the modules stay the decoder's,
    under diffusers' names)."""

    def __init__(self, norm: GroupNorm, conv: Conv3x3):
        self.norm, self.conv = norm, conv

    def reference(self, h: mx.array) -> mx.array:
        return self.conv.unfused(nn.silu(self.norm(h)))

    def fused(self, h: mx.array) -> mx.array:
        return self.conv(h, norm=self.norm.norm_args(h), silu=True)

    def live_elements(self, px: int):
        return px * (self.conv.weight.shape[-1] + self.conv.weight.shape[0]), px


class StageTree(nn.Module):
    """A decoder body of diffusers' layout (conv_in, mid_block.resnets / .attentions, up_blocks[i]
    .resnets / .upsamplers, an output head) as stages: each stage module has `reference` and
    `fused` forwards and says what its fused forward keeps alive (`live_elements`)."""

    def output_head(self):
        raise NotImplementedError

    def stage_modules(self):
        """The decode as (name, module) stages in order, from the module tree: one per resnet,
        attention and upsampler (evaluating between stages keeps only a stage's input,
        intermediates and output alive: MLX's CPU stream otherwise allocates far ahead)."""
        mid = self.mid_block
        out = [("conv_in", self.conv_in), ("mid_block.resnets.0", mid.resnets[0])]
        out += [(f"mid_block.attentions.{i}", a) for i, a in enumerate(mid.attentions)]
        out.append(("mid_block.resnets.1", mid.resnets[1]))
        for i, block in enumerate(self.up_blocks):
            out += [(f"up_blocks.{i}.resnets.{j}", r) for j, r in enumerate(block.resnets)]
            out += [(f"up_blocks.{i}.upsamplers.{j}", u) for j, u in enumerate(block.upsamplers)]
        out.append(("conv_out", self.output_head()))
        return out

    def peak_live_elements(self, latent_pixels: int, batch: int = 1) -> int:
        """Max over the stages of the activation elements that must coexist in the fused path."""
        peak, px = 0, latent_pixels
        for _, m in self.stage_modules():
            live, px = m.live_elements(px)
            peak = max(peak, live)
        return batch * peak

    def stages(self, fused: bool, latent_pixels: int = 0, batch: int = 1,
               prefer_composition: Callable[[int], bool] = lambda channels: False,
               scores_budget: Optional[int] = None, itemsize: int = 2):
        """(name, fn) per stage: the one place where the fused or the reference path is chosen.
        In the fused path, a resnet or upsampler whose input channels prefer_composition accepts
        (ops.composition_is_faster: wide convs on MLX's CUDA backend) runs its reference forward
        where that forward's live set stays under the fused decode's peak, so the peak holds.
        An attention's query chunks may hold scores_budget bytes of scores; None: what its own
        live set leaves under that peak (activations of `itemsize` bytes), at least
        ATTENTION_SCORES_BUDGET - at the latent's resolution that is most of the peak, and a
        4096^2 decode took 8192 chunks of 32 queries (each evaluated apart) at the minimum."""
        peak = self.peak_live_elements(latent_pixels, batch)
        out, px = [], latent_pixels
        for name, m in self.stage_modules():
            composed = False
            if fused and hasattr(m, "composed_live_elements"):
                channels, live = m.composed_live_elements(px)
                composed = batch * live <= peak and prefer_composition(channels)
            fused_live, out_px = m.live_elements(px)
            if hasattr(m, "scores_budget"):
                spare = itemsize * (peak - batch * fused_live)
                m.scores_budget = scores_budget if scores_budget is not None else max(ATTENTION_SCORES_BUDGET, spare)
            out.append((name, m.reference if composed or not fused else m.fused))
            px = out_px
        return out


class Decoder(StageTree):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, groups = cfg.decoder_channels, cfg.norm_num_groups
        self.conv_in = ConvIn(cfg.latent_channels, ch[-1])
        self.mid_block = MidBlock(ch[-1], groups, cfg.mid_block_add_attention)
        rev = list(reversed(ch))
        self.up_blocks = [
            UpDecoderBlock2D(rev[max(i - 1, 0)], c, cfg.layers_per_block + 1, groups, i < len(ch) - 1)
            for i, c in enumerate(rev)
        ]
        self.conv_norm_out = GroupNorm(groups, ch[0], eps=EPS)
        self.conv_out = Conv3x3(ch[0], cfg.out_channels)

    def output_head(self):
        return OutputHead(self.conv_norm_out, self.conv_out)


class LatentBatchNorm(nn.Module):
    """FLUX.2's latent BatchNorm statistics (`bn.running_mean`, `bn.running_var`, kept in f32)
    over the 2x2-patchified latent channels (4 C, channel c * 4 + 2 dy + dx)."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.running_mean = mx.zeros((channels,))
        self.running_var = mx.ones((channels,))
        self.eps = eps

    def denormalize(self, packed: mx.array) -> mx.array:
        if packed.ndim != 4 or packed.shape[-1] != self.running_mean.shape[0]:
            raise ValueError(f"latents: expected patchified NHWC latents [N, h/2, w/2, {self.running_mean.shape[0]}], "
                             f"got {packed.shape}")
        std = mx.sqrt(self.running_var.astype(mx.float32) + self.eps)
        return packed.astype(mx.float32) * std + self.running_mean.astype(mx.float32)

    @staticmethod
    def unpatchify(packed: mx.array) -> mx.array:
        n, h, w, c4 = packed.shape
        z = packed.reshape(n, h, w, c4 // 4, 2, 2).transpose(0, 1, 4, 2, 5, 3)
        return z.reshape(n, 2 * h, 2 * w, c4 // 4)


class StagedDecoder(nn.Module):
    """What every VAE decoder here shares: `decoder` (a module tree with stage_modules(),
    stages(fused) and peak_live_elements()), an optional `post_quant_conv`, the fused /
    reference switch, the memory check, and a decode evaluated stage by stage."""

    latent_channels: int  # of `decode`'s latents
    pipeline_latent_channels: int  # of `decode_latents`' (the pipeline's) latents
    upsample_factor: int

    def __init__(self):
        super().__init__()
        self.fused = True
        # Bytes of scores an attention's query chunk may hold where the backend has no attention
        # kernel; None: what fits under the decode's own peak (StageTree.stages).
        self.attention_scores_budget: Optional[int] = None
        # Input channels -> whether a conv stage runs faster as mlx.nn's composition on the
        # backend; taken where it fits under the fused peak (StageTree.stages).
        self.prefer_composition: Callable[[int], bool] = composition_is_faster

    def set_fused(self, flag: bool = True) -> "StagedDecoder":
        """Fused ops (True, the default) or the plain mlx.nn reference path (False)."""
        self.fused = bool(flag)
        return self

    def _check_latent(self, z: mx.array) -> None:
        if not isinstance(z, mx.array):
            raise TypeError(f"z: expected an mlx.core.array, got {type(z).__name__}")
        if z.ndim != 4 or z.shape[-1] != self.latent_channels:
            raise ValueError(f"z: expected NHWC latents [N, h, w, {self.latent_channels}] for this config, "
                             f"got {z.shape}")

    def stages(self, z: Optional[mx.array] = None):
        """The decode's (name, fn) stages; for latents z (else one latent pixel) the wide convs'
        path as decode() runs it."""
        n, pixels = (z.shape[0], z.shape[1] * z.shape[2]) if z is not None else (1, 1)
        itemsize = self.decoder.conv_in.weight.itemsize
        return self.decoder.stages(self.fused, pixels, n, self.prefer_composition, self.attention_scores_budget,
                                   itemsize)

    def check_memory(self, z: mx.array) -> None:
        """Refuses a decode whose analytic floor (the activations that must coexist; the
        weights are already loaded) exceeds what MLX may still allocate, before any work,
        and names the smaller plans that would fit."""
        n, h, w, _ = z.shape
        f = self.upsample_factor
        itemsize = self.decoder.conv_in.weight.itemsize
        need = itemsize * self.decoder.peak_live_elements(h * w, n)
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
        h = z
        if "post_quant_conv" in self:  # in its own dtype (mflux may keep it apart from the decoder's)
            pqc = self.post_quant_conv
            h = h.astype(pqc.weight.dtype)
            h = _conv1x1(pqc, h) if self.fused else pqc(h)
        h = h.astype(self.decoder.conv_in.weight.dtype)
        for name, stage in self.stages(h):
            h = stage(h)
            mx.eval(h)
            if on_stage is not None:
                on_stage(name)
        return h

    def __call__(self, z: mx.array) -> mx.array:
        return self.decode(z)


class AutoencoderKLDecoder(StagedDecoder):
    """``decoder(z)`` = diffusers ``AutoencoderKL.decode(z).sample`` in NHWC (z unscaled)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.latent_channels, self.upsample_factor = config.latent_channels, config.upsample_factor
        self.pipeline_latent_channels = config.latent_channels * (4 if config.latents_batch_norm else 1)
        if config.use_post_quant_conv:
            self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)
        self.decoder = Decoder(config)
        if config.latents_batch_norm:
            self.bn = LatentBatchNorm(4 * config.latent_channels, config.batch_norm_eps)

    def decode_latents(self, latents: mx.array, on_stage: Optional[Callable[[str], None]] = None) -> mx.array:
        """Undoes the pipeline's latent normalisation before decoding: for FLUX.2 the BatchNorm
        statistics on the 2x2-patchified latents [N, h/2, w/2, 4 C] and the unpatchify (as
        diffusers' Flux2Pipeline does before vae.decode); otherwise the scaling (and shift)."""
        if self.config.latents_batch_norm:
            return self.decode(self.bn.unpatchify(self.bn.denormalize(latents)), on_stage)
        z = latents / self.config.scaling_factor
        if self.config.shift_factor is not None:
            z = z + self.config.shift_factor
        return self.decode(z, on_stage)
