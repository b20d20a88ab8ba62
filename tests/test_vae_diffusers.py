"""The MLX AutoencoderKL decoder against diffusers' AutoencoderKL (PyTorch CPU, the
'reference' extra), both paths, and weight loading from diffusers and LDM files."""

import gc

import mlx.core as mx
import numpy as np
import pytest
import torch
from fusedconv.config import VAEConfig
from fusedconv.memory import decoder_parameter_count
from fusedconv.vae import load_decoder
from safetensors.numpy import save_file
from vae_fixtures import CONFIGS, diffusers_decode, diffusers_vae, normalized, to_ldm

# Normalised error (max abs / max |ref|) of a whole decode. f32: accumulation-order
# differences only, growing with depth (~20 convs): 1e-4. bf16: every activation and
# weight is rounded to bf16 (u = 2^-8) at each of ~20 layers; errors add roughly as a
# random walk, sqrt(20) * u ~ 0.018; 0.05 leaves room for the tail.
TOL = {mx.float32: 1e-4, mx.bfloat16: 0.05}


@pytest.fixture(scope="module", params=list(CONFIGS))
def saved_vae(request, tmp_path_factory):
    model = diffusers_vae(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return request.param, model, folder


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=str)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("latent_hw, batch", [((9, 7), 2), ((4, 5), 1)])
def test_matches_diffusers(saved_vae, dtype, fused, latent_hw, batch):
    name, model, folder = saved_vae
    dec = load_decoder(folder, dtype=dtype).set_fused(fused)
    c = CONFIGS[name]["latent_channels"]
    z = np.random.default_rng(1).standard_normal((batch, *latent_hw, c)).astype(np.float32)
    want = diffusers_decode(model, z)
    got = np.array(dec(mx.array(z)).astype(mx.float32))
    assert got.shape == want.shape
    assert normalized(got, want) <= TOL[dtype]


def test_pipeline_folder_with_vae_subfolder(saved_vae, tmp_path):
    name, model, _folder = saved_vae
    model.save_pretrained(tmp_path / "vae")
    dec = load_decoder(tmp_path, dtype=mx.float32)
    assert dec.config.block_out_channels == CONFIGS[name]["block_out_channels"]


def test_ldm_single_file_with_prefix_and_foreign_tensors(saved_vae, tmp_path):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    name, model, folder = saved_vae
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    n_up = len(CONFIGS[name]["block_out_channels"])
    ldm = to_ldm(state, n_up)
    # Our inverse mapping is the one diffusers' own converter undoes.
    cfg = dict(model.config)
    back = convert_ldm_vae_checkpoint({k: torch.from_numpy(v) for k, v in ldm.items()}, cfg)
    for k, v in back.items():
        np.testing.assert_array_equal(v.numpy().reshape(state[k].shape), state[k])
    assert {k for k in state if k.startswith(("decoder.", "post_quant_conv."))} == set(back)
    # A full checkpoint: prefixed VAE tensors next to an encoder and a UNet.
    file = {f"first_stage_model.{k}": v for k, v in ldm.items()}
    file["first_stage_model.encoder.conv_in.weight"] = np.zeros((8, 3, 3, 3), np.float32)
    file["model.diffusion_model.input_blocks.0.0.weight"] = np.zeros((4, 4), np.float32)
    path = tmp_path / "model.safetensors"
    save_file(file, str(path))
    dec = load_decoder(path, config={**CONFIGS[name], "scaling_factor": 0.5}, dtype=mx.float32)
    ref = load_decoder(folder, dtype=mx.float32)
    c = CONFIGS[name]["latent_channels"]
    z = mx.array(np.random.default_rng(2).standard_normal((1, 5, 6, c)).astype(np.float32))
    assert mx.array_equal(dec(z), ref(z)).item()
    assert dec.config.scaling_factor == 0.5


def test_loading_reads_only_decoder_tensors(saved_vae, tmp_path):
    name, model, _folder = saved_vae
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    decoder_bytes = sum(v.nbytes for k, v in state.items() if k.startswith(("decoder.", "post_quant_conv.")))
    state["encoder.huge"] = np.zeros((64, 2**20), np.float32)  # 256 MiB that must never be read
    path = tmp_path / "vae.safetensors"
    save_file(state, str(path))
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    dec = load_decoder(path, config=CONFIGS[name], dtype=mx.float32)
    # The f32 weights themselves plus one tensor in flight (the largest is 9*64*64*4 B).
    assert mx.get_peak_memory() - base < decoder_bytes + 2 * 2**20
    del dec


def test_parameter_count_formula_matches_diffusers(saved_vae):
    name, model, _folder = saved_vae
    want = sum(p.numel() for k, p in model.named_parameters() if k.startswith(("decoder.", "post_quant_conv.")))
    assert decoder_parameter_count(VAEConfig.from_dict(CONFIGS[name])) == want


def test_errors_name_the_argument(saved_vae, tmp_path):
    name, _model, folder = saved_vae
    dec = load_decoder(folder, dtype=mx.float32)
    with pytest.raises(ValueError, match="z"):
        dec(mx.zeros((1, 4, 4, CONFIGS[name]["latent_channels"] + 1)))
    with pytest.raises(FileNotFoundError, match="path"):
        load_decoder(tmp_path / "missing")
    with pytest.raises(ValueError, match="config"):
        load_decoder(folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="config"):
        load_decoder(folder, config="sd9")
    empty = tmp_path / "empty.safetensors"
    save_file({"model.diffusion_model.w": np.zeros(3, np.float32)}, str(empty))
    with pytest.raises(ValueError, match="no VAE decoder"):
        load_decoder(empty, config="flux")
    with pytest.raises(ValueError, match="does not fit|expects"):
        load_decoder(folder, config="flux")
