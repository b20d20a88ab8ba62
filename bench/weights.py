"""Random decoder weights for the benchmarks (no model can be downloaded): a seeded
diffusers AutoencoderKL saved once with save_pretrained, which every method then loads
the way a user would (fusedconv.load_decoder, AutoencoderKL.from_pretrained)."""

from __future__ import annotations

from pathlib import Path

from fusedconv.config import PRESETS


def ensure_weights(config: str, seed: int, root: Path) -> Path:
    """Folder with config.json + diffusion_pytorch_model.safetensors for the preset; made once."""
    folder = root / f"weights_{config}_seed{seed}"
    if (folder / "config.json").exists():
        return folder
    import torch
    from diffusers import AutoencoderKL

    cfg = PRESETS[config]
    n = len(cfg.block_out_channels)
    torch.manual_seed(seed)
    model = AutoencoderKL(
        in_channels=3, out_channels=cfg.out_channels, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups, use_post_quant_conv=cfg.use_post_quant_conv,
        scaling_factor=cfg.scaling_factor, shift_factor=cfg.shift_factor,
    ).eval()
    model.save_pretrained(folder)
    return folder
