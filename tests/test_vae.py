"""The MLX AutoencoderKL decoder against diffusers (PyTorch CPU), both paths."""

import gc

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from fusedconv.config import PRESETS, VAEConfig
from fusedconv.decoder import attention_query_chunk, chunked_attention
from fusedconv.memory import decoder_floor_bytes, decoder_parameter_count
from fusedconv.vae import AutoencoderKLDecoder, load_decoder
from vae_fixtures import CONFIGS, diffusers_decode, diffusers_vae, to_ldm

torch = pytest.importorskip("torch", reason="diffusers parity needs the 'reference' extra")

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


def normalized(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


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
    name, model, folder = saved_vae
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
    z = mx.array(np.random.default_rng(2).standard_normal((1, 5, 6, CONFIGS[name]["latent_channels"])).astype(np.float32))
    assert mx.array_equal(dec(z), ref(z)).item()
    assert dec.config.scaling_factor == 0.5


def test_loading_reads_only_decoder_tensors(saved_vae, tmp_path):
    name, model, folder = saved_vae
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
    assert mx.get_peak_memory() - base < 2 * decoder_bytes + 8 * 2**20
    del dec


def test_decode_latents_applies_scaling_and_shift():
    cfg = VAEConfig(block_out_channels=(16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                    scaling_factor=0.5, shift_factor=0.25)
    dec = AutoencoderKLDecoder(cfg)
    lat = mx.random.normal((1, 3, 3, 4))
    assert mx.allclose(dec.decode_latents(lat), dec(lat / 0.5 + 0.25)).item()


def test_presets_have_published_values():
    assert PRESETS["flux"].latent_channels == 16 and not PRESETS["flux"].use_post_quant_conv
    assert PRESETS["sdxl"].scaling_factor == 0.13025
    assert PRESETS["sd3"].shift_factor == 0.0609


@pytest.mark.parametrize("preset", ["sd1", "flux"])
def test_parameter_count_formula_matches_model(preset):
    from mlx.utils import tree_flatten

    model = AutoencoderKLDecoder(PRESETS[preset])  # lazy init: nothing is allocated
    assert decoder_parameter_count(PRESETS[preset]) == sum(v.size for _, v in tree_flatten(model.parameters()))


def test_parameter_count_formula_matches_diffusers(saved_vae):
    name, model, folder = saved_vae
    want = sum(p.numel() for k, p in model.named_parameters() if k.startswith(("decoder.", "post_quant_conv.")))
    assert decoder_parameter_count(VAEConfig.from_dict(CONFIGS[name])) == want


def test_errors_name_the_argument(saved_vae, tmp_path):
    name, model, folder = saved_vae
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


def test_chunked_attention_matches_full_and_bounds_scores():
    q, k, v = (mx.random.normal((2, 300, 32)) for _ in range(3))
    full = mx.fast.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=0.2)[:, 0]
    budget = 2 * 300 * 40 * (2 * 4 + 4)  # 40 rows
    assert attention_query_chunk(2, 300, 4, budget) == 40
    got = chunked_attention(q, k, v, 0.2, budget)
    assert mx.allclose(got, full, atol=1e-5).item()


def test_attention_peak_stays_under_full_score_matrix():
    tokens, c = 4096, 64
    q, k, v = (mx.random.normal((1, tokens, c)) for _ in range(3))
    mx.eval(q, k, v)
    full_scores = tokens * tokens * 4
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    mx.eval(chunked_attention(q, k, v, 0.125, full_scores // 16))
    assert mx.get_peak_memory() - base < full_scores // 4


def test_fused_decode_peak_near_analytic_floor():
    """Activations dominate (small channels, 256x256): fused peak within 1.15x of the floor."""
    cfg = VAEConfig(block_out_channels=(32, 64, 64, 64), layers_per_block=2, latent_channels=16,
                    norm_num_groups=8, use_post_quant_conv=False)
    dec = AutoencoderKLDecoder(cfg)
    dec.set_dtype(mx.bfloat16)
    mx.eval(dec.parameters())
    z = mx.random.normal((1, 32, 32, 16)).astype(mx.bfloat16)
    mx.eval(z)
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()  # weights + latents
    mx.eval(dec(z))
    peak = mx.get_peak_memory() - base
    floor = decoder_floor_bytes(cfg, 256, 256, mx.bfloat16) - 2 * decoder_parameter_count(cfg)
    assert peak <= 1.15 * floor, (peak / 2**20, floor / 2**20)
