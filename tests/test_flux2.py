"""FLUX.2's VAE (diffusers AutoencoderKLFlux2, incl. a decoder narrower than its encoder, as the
small decoder) against diffusers: loading from a diffusers folder and from a single file, the
decode, and decode_latents against Flux2Pipeline's own latent math."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from fusedconv.config import PRESETS
from fusedconv.memory import decoder_floor_bytes
from fusedconv.vae import AutoencoderKLDecoder, load_decoder
from vae_fixtures import FLUX2_CONFIGS, diffusers_decode, diffusers_flux2_vae, fused_decode_peak, normalized

# As tests/test_vae_diffusers.py: f32 accumulation order only; bf16 ~20 layers of rounding.
TOL = {mx.float32: 1e-4, mx.bfloat16: 0.05}


@pytest.fixture(scope="module", params=list(FLUX2_CONFIGS))
def saved(request, tmp_path_factory):
    model = diffusers_flux2_vae(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=str)
@pytest.mark.parametrize("latent_hw, batch", [((9, 7), 2), ((4, 6), 1)])
def test_decode_matches_diffusers(saved, dtype, latent_hw, batch):
    model, folder = saved
    dec = load_decoder(folder, dtype=dtype)
    assert dec.config.latents_batch_norm and dec.bn.running_mean.dtype == mx.float32
    z = np.random.default_rng(1).standard_normal((batch, *latent_hw, 32)).astype(np.float32)
    got = np.array(dec(mx.array(z)).astype(mx.float32))
    assert normalized(got, diffusers_decode(model, z)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=str)
def test_decode_latents_matches_the_pipeline(saved, dtype):
    """Patchified, BatchNorm-normalised latents [N, h/2, w/2, 128] -> image, as Flux2Pipeline:
    latents * sqrt(running_var + eps) + running_mean, unpatchify, vae.decode."""
    from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline

    model, folder = saved
    packed = np.random.default_rng(2).standard_normal((2, 3, 4, 128)).astype(np.float32)
    with torch.no_grad():
        lat = torch.from_numpy(packed.transpose(0, 3, 1, 2).copy())
        mean = model.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(model.bn.running_var.view(1, -1, 1, 1) + model.config.batch_norm_eps)
        want = model.decode(Flux2Pipeline._unpatchify_latents(lat * std + mean)).sample.numpy().transpose(0, 2, 3, 1)
    got = np.array(load_decoder(folder, dtype=dtype).decode_latents(mx.array(packed)).astype(mx.float32))
    assert got.shape == want.shape == (2, 6 * 8, 8 * 8, 3)
    assert normalized(got, want) <= TOL[dtype]


def test_single_file_checkpoint_loads_with_the_preset(saved, tmp_path):
    """A single .safetensors with the VAE's decoder, post_quant_conv and bn tensors (the FLUX.2
    ae.safetensors layout, in diffusers key names) loads with config="flux2"-like settings."""
    model, folder = saved
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    path = tmp_path / "ae.safetensors"
    save_file(state, str(path))
    cfg = dict(model.config)
    dec = load_decoder(path, config=cfg, dtype=mx.float32)
    z = np.random.default_rng(3).standard_normal((1, 5, 4, 32)).astype(np.float32)
    assert normalized(np.array(dec(mx.array(z))), diffusers_decode(model, z)) <= TOL[mx.float32]


def test_presets():
    big, small = PRESETS["flux2"], PRESETS["flux2-small"]
    assert big.latent_channels == small.latent_channels == 32 and big.latents_batch_norm
    assert small.decoder_channels == (96, 192, 384, 384) and big.decoder_channels == (128, 256, 512, 512)


@pytest.mark.parametrize("preset", ["flux2", "flux2-small"])
def test_fused_decode_at_512_peaks_within_10_percent_of_its_floor(preset):
    """Whole decode of the real-width decoder (random weights, bf16): MLX's peak (weights and
    latents included) against the analytic floor (weights + the largest set of live activations:
    the last up block's first resnet, x + h + out)."""
    cfg = PRESETS[preset]
    peak = fused_decode_peak(AutoencoderKLDecoder(cfg), (1, 64, 64, 32))
    floor = decoder_floor_bytes(cfg, 512, 512, mx.bfloat16)
    assert peak <= 1.10 * floor, (peak / 2**20, floor / 2**20)


def test_cli_decodes_patchified_flux2_latents(saved, tmp_path):
    """The CLI's default reads the pipeline's latents: for FLUX.2 patchified, 4 x 32 channels."""
    import subprocess
    import sys

    from PIL import Image

    _, folder = saved
    latents = tmp_path / "z.npy"
    np.save(latents, np.random.default_rng(5).standard_normal((1, 128, 3, 2)).astype(np.float32))  # NCHW
    run = lambda *extra: subprocess.run([sys.executable, "-m", "fusedconv.cli", "decode", *extra, "--weights",  # noqa: E731
                                         str(folder), "--quiet"], capture_output=True, text=True)
    res = run(str(latents), "-o", str(tmp_path / "f.png"))
    assert res.returncode == 0, res.stderr
    assert Image.open(tmp_path / "f.png").size == (2 * 2 * 8, 3 * 2 * 8)
    plain = tmp_path / "plain.npy"
    np.save(plain, np.random.default_rng(6).standard_normal((1, 32, 3, 2)).astype(np.float32))
    assert run(str(plain), "-o", str(tmp_path / "p.png"), "--no-scaling").returncode == 0
    res = run(str(plain), "-o", str(tmp_path / "x.png"))
    assert res.returncode == 2 and "128 channels" in res.stderr
