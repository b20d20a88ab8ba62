"""diffusers AutoencoderKL models with random weights, saved with save_pretrained."""

from __future__ import annotations

import numpy as np

CONFIGS = {
    # 3 blocks, post_quant_conv, one resnet per block (+1), SD-style 4 latent channels.
    "sd-like-3block": dict(block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4,
                           norm_num_groups=8, use_post_quant_conv=True),
    # 4 blocks, no post_quant_conv, Flux/SD3-style 16 latent channels.
    "flux-like-4block": dict(block_out_channels=(16, 32, 64, 64), layers_per_block=2, latent_channels=16,
                             norm_num_groups=8, use_post_quant_conv=False),
}


# diffusers AutoencoderKLFlux2 (FLUX.2): 32 latent channels, post_quant_conv, latent BatchNorm;
# the second with a decoder narrower than its encoder, as FLUX.2's small decoder.
FLUX2_CONFIGS = {
    "flux2-like": dict(block_out_channels=(16, 32, 64, 64), layers_per_block=1, latent_channels=32,
                       norm_num_groups=8),
    "flux2-narrow-decoder": dict(block_out_channels=(16, 32, 64, 64), decoder_block_out_channels=(8, 16, 24, 24),
                                 layers_per_block=1, latent_channels=32, norm_num_groups=8),
}


def randomize(model, seed: int):
    """Seeded random weights at each layer's scale (GroupNorm gamma around 1, small biases)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name_, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name_) and name_.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))  # GroupNorm gamma around 1
            else:
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(fan_in) * (1.0 if p.ndim > 1 else 0.1))
    return model


def diffusers_vae(name: str, seed: int = 0):
    from diffusers import AutoencoderKL

    cfg = dict(CONFIGS[name])
    n = len(cfg["block_out_channels"])
    model = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, **cfg,
    ).eval()
    return randomize(model, seed)


def diffusers_flux2_vae(name: str, seed: int = 0):
    import torch
    from diffusers import AutoencoderKLFlux2

    model = randomize(AutoencoderKLFlux2(**FLUX2_CONFIGS[name]).eval(), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # latent statistics far from (0, 1), so that a missed step shows
        model.bn.running_mean.copy_(torch.randn(model.bn.running_mean.shape, generator=gen))
        model.bn.running_var.copy_(0.5 + torch.rand(model.bn.running_var.shape, generator=gen) * 3)
    return model


def normalized(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| of two decoded images (numpy)."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def diffusers_decode(model, z_nhwc: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model.decode(torch.from_numpy(z_nhwc.transpose(0, 3, 1, 2).copy())).sample
    return out.numpy().transpose(0, 2, 3, 1)


def to_ldm(state: dict, num_up: int) -> dict:
    """diffusers decoder keys -> original LDM keys (the inverse of diffusers' converter)."""
    import re

    out = {}
    for key, value in state.items():
        if not (key.startswith(("decoder.", "post_quant_conv."))):
            continue
        k = key
        k = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", k)
        k = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{num_up - 1 - int(m[1])}.block.", k)
        k = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{num_up - 1 - int(m[1])}.upsample.", k)
        k = k.replace("conv_shortcut.", "nin_shortcut.").replace("conv_norm_out.", "norm_out.")
        if "mid_block.attentions.0." in k:
            k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
            k = (k.replace("group_norm.", "norm.").replace("to_q.", "q.").replace("to_k.", "k.")
                 .replace("to_v.", "v.").replace("to_out.0.", "proj_out."))
            if value.ndim == 2:
                value = value[:, :, None, None]  # LDM stores the projections as 1x1 convs
        out[k] = value
    return out


def fused_decode_peak(dec, latent_shape) -> int:
    """MLX's allocator peak (weights and latents included) of one fused bf16 decode of random
    latents by `dec`, its parameters cast to bf16 and evaluated first."""
    import gc

    import mlx.core as mx

    dec.set_dtype(mx.bfloat16)
    mx.eval(dec.parameters())
    z = (0.5 * mx.random.normal(latent_shape, key=mx.random.key(0))).astype(mx.bfloat16)
    mx.eval(z)
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    mx.eval(dec(z))
    return mx.get_peak_memory()
