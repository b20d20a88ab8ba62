"""The Qwen-Image VAE (diffusers AutoencoderKLQwenImage, the Wan 2.1 architecture) decoded as an
image against diffusers: weights from a diffusers folder (3-D kernels sliced as they stream in),
both paths, odd latent sizes, batch 2, decode_latents against the pipeline's normalisation, and
the fused decode's peak against its floor at 512^2 with the real widths.

Tolerances: f32, accumulation order only (1e-4). bf16: the reference path rounds about four
times per layer (norm, SiLU, conv, add) over ~30 layers: as a random walk sqrt(120) * 2^-8 =
0.043 of the output scale; 0.07 leaves room for the tail (the fused path rounds less)."""

import mlx.core as mx
import numpy as np
import pytest
import torch

from fusedconv.config import PRESETS
from fusedconv.vae import QwenImageDecoder, load_decoder
from vae_fixtures import fused_decode_peak, normalized, randomize

TOL = {mx.float32: 1e-4, mx.bfloat16: 0.07}
SMALL = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from diffusers import AutoencoderKLQwenImage

    model = randomize(AutoencoderKLQwenImage(**SMALL).eval(), 0)
    folder = tmp_path_factory.mktemp("qwen")
    model.save_pretrained(folder)
    return model, folder


def diffusers_decode(model, z_nhwc):
    with torch.no_grad():
        out = model.decode(torch.from_numpy(z_nhwc.transpose(0, 3, 1, 2).copy())[:, :, None]).sample[:, :, 0]
    return out.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=str)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("latent_hw, batch", [((9, 7), 2), ((4, 6), 1)])
def test_decode_matches_diffusers(saved, dtype, fused, latent_hw, batch):
    model, folder = saved
    dec = load_decoder(folder, dtype=dtype).set_fused(fused)
    assert isinstance(dec, QwenImageDecoder)
    z = (0.5 * np.random.default_rng(1).standard_normal((batch, *latent_hw, 16))).astype(np.float32)
    got = np.array(dec(mx.array(z)).astype(mx.float32))
    want = diffusers_decode(model, z)
    assert got.shape == want.shape == (batch, 8 * latent_hw[0], 8 * latent_hw[1], 3)
    assert (np.abs(want) < 1.0).mean() > 0.9  # mostly inside the clamp: the comparison means something
    assert normalized(got, want) <= TOL[dtype]


def test_decode_latents_undoes_the_pipeline_normalisation(saved):
    model, folder = saved
    dec = load_decoder(folder, dtype=mx.float32)
    latents = (0.3 * np.random.default_rng(2).standard_normal((1, 5, 4, 16))).astype(np.float32)
    mean, std = np.array(model.config.latents_mean, np.float32), np.array(model.config.latents_std, np.float32)
    want = diffusers_decode(model, latents * std + mean)
    got = np.array(dec.decode_latents(mx.array(latents)))
    assert normalized(got, want) <= TOL[mx.float32]


def test_fused_decode_at_512_peaks_within_10_percent_of_its_floor():
    """Real widths (base 96, 384 in the middle), random weights, bf16: MLX's peak against weights +
    the largest set of live activations (the last up block's resnets at full resolution)."""
    from fusedconv.memory import decoder_floor_bytes
    from mlx.utils import tree_flatten

    cfg = PRESETS["qwen-image"]
    dec = QwenImageDecoder(cfg)
    peak = fused_decode_peak(dec, (1, 64, 64, 16))
    weights = sum(v.nbytes for _, v in tree_flatten(dec.parameters()))
    floor = decoder_floor_bytes(cfg, 512, 512, mx.bfloat16)
    assert abs(floor - weights - 2 * dec.decoder.peak_live_elements(64 * 64)) < 2**20
    assert peak <= 1.10 * floor, (peak / 2**20, floor / 2**20)


def test_cli_decodes_qwen_image_latents(saved, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    _, folder = saved
    latents = tmp_path / "z.npy"
    np.save(latents, (0.3 * np.random.default_rng(4).standard_normal((1, 16, 5, 3))).astype(np.float32))  # NCHW
    res = subprocess.run([sys.executable, "-m", "fusedconv.cli", "decode", str(latents), "--weights", str(folder),
                          "-o", str(tmp_path / "q.png"), "--quiet"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert Image.open(tmp_path / "q.png").size == (24, 40)
